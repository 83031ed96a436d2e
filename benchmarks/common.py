"""Shared pieces of the benchmarks: the machine line and the issue's standard case."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEVICE = "cpu"
"""Where :func:`fit` runs (``--device`` of the benchmarks that take it)."""


def machine() -> str:
    """One line naming the machine the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f"; fits on GPU {torch.cuda.get_device_name(0)}" if DEVICE.startswith("cuda") else ""
    return (f"{cpu}; {os.cpu_count()} CPUs visible, torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}{gpu}")


def standard_station(frame_px: int = 64):
    """15x15 LEDs, 4 mm pitch, 90 mm, 4x/0.1, 12-bit camera, upsampling 4 (fixture bench)."""
    from metrology.io.station_file import load_station

    st = load_station(ROOT / "fixtures" / "stations" / "bench-4x-15x15.toml")
    return st if st.frame_px == frame_px else st.replace(frame_px=frame_px, upsampling=4)


def standard_lens(seed: int, rms: float | None = None, n_terms: int = 36) -> np.ndarray:
    """Aberrations of 0.05-0.15 waves RMS spread over Noll 5-15 (the standard case)."""
    rng = np.random.default_rng([seed, 5])
    z = np.zeros(n_terms)
    z[4:15] = rng.normal(0, 1, 11)
    rms = rng.uniform(0.05, 0.15) if rms is None else rms
    return z * rms / np.sqrt((z**2).sum())


def standard_misalignment(seed: int, n_leds: int) -> dict:
    """Random misalignment up to +/-1 mm shift, +/-3 deg rotation, +/-3 mm distance (and tilt,
    brightness, defocus, position as drawn by the simulator)."""
    from metrology.simulate import draw_misalignment

    return draw_misalignment(np.random.default_rng([seed, 11]), n_leds=n_leds)


def simulate(station, coeffs, truth, seed, **kw):
    from metrology.simulate import simulate_capture

    return simulate_capture(station, coeffs, truth, seed=seed, **kw)


def fit(station, capture, truth, mode="known", frozen=(), max_iterations=None):
    """Fit a simulated capture through the pipeline's model building (reference from the truth)."""
    import torch

    from metrology.io.capture import relative_exposure
    from metrology.physics import StationModel
    from metrology.references import catalogue_over_field
    from metrology.solver import NoiseModel, default_schedule, reconstruct
    from metrology.solver.uncertainty import measurement_from_fit

    g = station.geometry(capture.leds)
    ref = None
    if mode != "blind":
        ref = catalogue_over_field(truth["reference_sample"], station.fov_um, g, seed=truth["reference_seed"])
    model = StationModel(g, ref, relative_exposure(capture), dtype=torch.float32).to(DEVICE)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale)
    schedule = default_schedule(mode, g.zernike_terms, max_iterations)
    if frozen:
        schedule = schedule.without(*frozen)
    res = reconstruct(model, capture.frames, noise, schedule,
                      initialise_geometry=not any(p.startswith("illumination.") for p in frozen))
    return res, measurement_from_fit(res)


def errors(meas, truth) -> dict:
    """Coefficient and misalignment errors of a measurement against the simulation truth."""
    z = np.asarray(truth["pupil.zernike_waves"])[: meas.zernike_waves.size]
    e = meas.zernike_waves - z
    out = {"zernike_rms_5_15": float(np.sqrt((e[4:15] ** 2).sum())), "zernike_max_5_15": float(np.abs(e[4:15]).max())}
    values = {s.name: s.value for s in meas.station}
    t_shift = truth["illumination.shift_mm"]
    if "illumination.shift_mm[0]" in values:
        out["shift_um"] = 1e3 * float(np.hypot(values["illumination.shift_mm[0]"] - t_shift[0],
                                               values["illumination.shift_mm[1]"] - t_shift[1]))
        out["rotation_deg"] = abs(values["illumination.rotation_deg"] - truth["illumination.rotation_deg"])
    if "illumination.distance_error_mm" in values:  # held at nominal in blind mode
        out["distance_mm"] = abs(values["illumination.distance_error_mm"] - truth["illumination.distance_error_mm"])
    if "sample.defocus_um" in values:
        out["defocus_um"] = abs(values["sample.defocus_um"] - truth["sample.defocus_um"])
    return out
