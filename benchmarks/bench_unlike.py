"""Blind inspection of stations unlike the fixtures (issue 14): does it converge, and does the
reconstructed sample resolve what the synthetic aperture allows?

Three stations the fixtures do not cover, each misaligned within the simulator's ranges (LED-array
shift +/-1 mm, rotation +/-3 deg, distance +/-3 mm; the tilt, which blind mode holds, drawn from its
stated 0.5 deg), with its constants (wavelength, NA, magnification, pixel, pitch) drawn from their
stated uncertainties:

* ``few-wide``: 5 x 5 LEDs at 10 mm pitch (neighbouring pupils overlap ~35 % in area);
* ``sparse``: a random 15 % of the LEDs of a dense 19 x 19 board at 2 mm pitch, within an
  illumination NA of 0.2 (gaps of several pitches between lit LEDs);
* ``small-pixels``: 2.4 um camera pixels (0.6 um at the object, so little spectrum is aliased
  and each frame carries only its own disk), 7 x 7 LEDs at 8 mm pitch (~43 % overlap).

Each capture is a USAF-like grating target (:func:`metrology.analysis.resolution.grating_target`)
rendered by the independent renderer :mod:`metrology.render` (the off-model path: non-periodic
field, hard pupil edge on a finer lattice, 25 nm LED spectrum, finite emitter, pixel integration),
written as a capture file with its station file, and inspected in blind mode from the nominal
description through the product's own entry point, :func:`metrology.inspect`. Printed per station:
the verdict and its first reason (one line), convergence, reduced chi-square, the Noll 5-15 error
against the rendered lens, the LED-shift error, and the resolved period of the grating target
against the theoretical ``lambda / (NA + NA_illumination)`` along the grating axes.

Run: ``python benchmarks/bench_unlike.py [--case few-wide] [--seed 1]``. Prints the machine.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace as dc_replace
from pathlib import Path

import numpy as np
from bench_offmodel import draw_constants, held_from_stated
from common import ROOT, machine, standard_lens, standard_misalignment, standard_station

from metrology.analysis import resolution as ra
from metrology.io.capture import Capture, write_capture
from metrology.physics.illumination import max_nominal_illumination_na
from metrology.render import RealPhysics, field_side, render_intensity
from metrology.simulate import check_misalignment

SPEC = ROOT / "fixtures" / "specs" / "plan-4x-010.toml"
MARGIN = 0.25
"""Clear glass around the target, as a fraction of the frame on each side (the field is not periodic)."""
PERIODS_UM = (4.0, 3.0, 2.5, 2.0, 1.8, 1.6, 1.4, 1.2)
"""Grating periods (um): on a 32-px frame a cell holds ~8 um, so no period above 4 um (a patch must
hold two periods for its floor to be low); the true target on each station's grid resolves all."""
LED_FWHM_NM = 25.0


def _sparse_leds(rows: int, pitch_mm: float, distance_mm: float, na_max: float, fraction: float, seed: int):
    """A random ``fraction`` of a square board's LEDs within illumination NA ``na_max`` (the centre
    LED always lit, so that the capture has a bright-field frame on axis)."""
    c = (rows - 1) / 2
    inside = [(r, col) for r in range(rows) for col in range(rows)
              if math.hypot(r - c, col - c) * pitch_mm / math.hypot(math.hypot(r - c, col - c) * pitch_mm, distance_mm)
              <= na_max]
    rng = np.random.default_rng([seed, 31])
    centre = (int(c), int(c))
    others = [p for p in inside if p != centre]
    keep = rng.choice(len(others), size=max(1, round(fraction * len(others))), replace=False)
    return [centre] + sorted(others[i] for i in keep)


def cases(seed: int) -> dict:
    """Station description (as its file states it) and lit LEDs of each unlike station."""
    base = standard_station(32).replace(spectral_fwhm_nm=LED_FWHM_NM, zernike_terms=15)

    def board(name, **changes):
        st = base.replace(station_id=f"unlike-{name}", led_center_row=None, led_center_col=None, upsampling=None,
                          **changes)
        # one step above the minimum: the LED spectrum's short wavelengths reach further out
        return st.replace(upsampling=st.upsampling + 1)

    few = board("few-wide", led_rows=5, led_cols=5, led_pitch_mm=10.0)
    sparse = board("sparse", led_rows=19, led_cols=19, led_pitch_mm=2.0)
    small = board("small-pixels", led_rows=7, led_cols=7, led_pitch_mm=8.0, camera_pixel_um=2.4, frame_px=64)
    return {
        "few-wide": (few, [(r, c) for r in range(5) for c in range(5)]),
        "sparse": (sparse, _sparse_leds(19, 2.0, sparse.led_distance_mm, 0.2, 0.15, seed)),
        "small-pixels": (small, [(r, c) for r in range(7) for c in range(7)]),
    }


def pupil_overlap(step_na: float, na: float) -> float:
    """Area fraction two pupil disks of radius ``na`` share at centre distance ``step_na``."""
    d = min(step_na / (2 * na), 1.0)
    return (2 * math.acos(d) - 2 * d * math.sqrt(1 - d * d)) / math.pi


def render_target(station, leds, truth, lens, consts, seed: int, photons: float = 2e4):
    """Noisy frames (uint16) of the grating target, and the target's patches and blank cells (um
    from the centre of the reconstruction grid's pixel [0, 0])."""
    n, up = station.frame_px, station.upsampling
    pixel = station.camera_pixel_um / station.magnification  # stated object pixel (the tool's grid)
    n_large = field_side(n, MARGIN)
    fine = 2  # the renderer's lattice is twice as fine as the tool's reconstruction grid
    image, patches, blanks = ra.grating_target(n * up * fine, pixel / (up * fine), PERIODS_UM)
    large = np.ones((n_large * up * fine,) * 2, dtype=np.complex128)
    c0 = (n_large - n) // 2 * up * fine
    large[c0 : c0 + n * up * fine, c0 : c0 + n * up * fine] = image
    physics = RealPhysics(margin=MARGIN, centroid_nm=consts["centroid_nm"], fwhm_nm=consts["fwhm_nm"],
                          spectral_points=5, pixel_integration=True, emitter_points=3, true_na=consts["na"],
                          true_pixel_um=consts["camera_pixel_um"], true_magnification=consts["magnification"],
                          true_pitch_mm=consts["pitch_mm"])
    mis = check_misalignment(truth, len(leds))
    inten = render_intensity(station.replace(led_size_mm=consts["led_size_mm"]), leds, mis, large, lens, physics)
    cam = station.camera
    rng = np.random.default_rng([seed, 7])
    e = rng.poisson(photons * np.asarray(mis["illumination.brightness"])[:, None, None] * inten).astype(float)
    e += rng.normal(0, cam.read_noise_e, e.shape)
    frames = np.clip(np.round(e / cam.photons_per_count + cam.background_counts), 0, cam.full_scale).astype(np.uint16)
    # the fine lattice's pixel [0, 0] centre sits half a fine pixel before the coarse grid's
    half = 0.5 * pixel / (up * fine)
    patches = [dc_replace(p, center_um=(p.center_um[0] - half, p.center_um[1] - half)) for p in patches]
    blanks = [(x - half, y - half) for x, y in blanks]
    control = np.abs(image).reshape(n * up, fine, n * up, fine).mean(axis=(1, 3))  # the truth on the tool's grid
    return frames, patches, blanks, mis, control


def run_case(name: str, station, leds, seed: int) -> dict:
    """Render, write, inspect blind; the figures of one unlike station."""
    import metrology

    geometry = station.geometry(leds)
    na_ill_axis = max(abs(float(v)) for xy in _nominal_k(geometry) for v in xy) * geometry.wavelength_um
    lens = standard_lens(seed, rms=0.03, n_terms=15)
    truth = held_from_stated(standard_misalignment(seed, len(leds)), station, "blind", seed)
    truth["sample.position_um"] = [0.0, 0.0]  # the target stays where its patches are measured (blind: a free sample)
    consts = draw_constants(station, np.random.default_rng([seed, 2024]))
    consts["fwhm_nm"] = LED_FWHM_NM
    frames, patches, blanks, mis, control = render_target(station, leds, truth, lens, consts, seed)
    with tempfile.TemporaryDirectory(prefix="unlike") as tmp:
        st_path, cap_path = Path(tmp) / "station.toml", Path(tmp) / "capture.tif"
        st_path.write_text(station.to_toml())
        write_capture(cap_path, Capture(frames=frames, leds=leds, exposure_s=np.full(len(leds), 0.05),
                                        station_id=station.station_id, lens_serial=f"UNLIKE-{name}",
                                        wavelength_nm=station.wavelength_nm))
        t0 = time.process_time()
        result = metrology.inspect(cap_path, st_path, SPEC, mode="blind", device="cpu", audit_db=Path(tmp) / "a.sqlite")
        cpu = time.process_time() - t0
    m, arrays, verdict = result.measurement, result.arrays, result.document["verdict"]
    z = np.nan_to_num(m.zernike_waves)
    err = z[4:15] - lens[4:15]
    values = {s.name: s.value for s in m.station}
    shift_um = 1e3 * math.hypot(values["illumination.shift_mm[0]"] - mis["illumination.shift_mm"][0],
                                values["illumination.shift_mm[1]"] - mis["illumination.shift_mm"][1])
    amp = np.asarray(arrays.sample_amplitude)
    n_grid = station.frame_px * station.upsampling
    c = (amp.shape[0] - n_grid) // 2
    amp = amp[c : c + n_grid, c : c + n_grid]
    lam = geometry.wavelength_um
    na_ill = max_nominal_illumination_na(geometry)
    cutoff = ra.synthetic_aperture_cutoff(station.na, na_ill, lam)
    res = ra.grating_resolution(amp, arrays.sample_pixel_um, patches, blanks, cutoff_cpum=cutoff)
    truth_res = ra.grating_resolution(control, arrays.sample_pixel_um, patches, blanks)
    return {
        "case": name, "leds": len(leds), "verdict": verdict["overall"],
        "why": verdict["reasons"][0] if verdict["reasons"] else "", "converged": m.solver.converged,
        "reduced_chi2": m.solver.reduced_chi2, "reduced_chi2_noise": m.solver.reduced_chi2_noise,
        "error_5_15": float(np.sqrt(np.sum(err**2))), "shift_error_um": shift_um, "cpu_s": cpu,
        "resolved_um": res.resolved_period_um, "control_um": truth_res.resolved_period_um, "theory_axis_um": lam / (station.na + na_ill_axis),
        "bright_field_um": lam / station.na, "patches": res.patches, "amplitude": amp,
        "lens_rms_waves": float(np.sqrt(np.sum(lens[4:] ** 2))),
    }


def _nominal_k(geometry):
    """Nominal illumination spatial frequencies (cycles/um), shape (J, 2)."""
    import torch

    from metrology.physics import StationModel

    model = StationModel(geometry, None, None, dtype=torch.float64)
    with torch.no_grad():
        return model.illumination.spatial_frequencies().numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("few-wide", "sparse", "small-pixels"), action="append",
                    help="run only these stations (repeatable; default all three)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--patches", action="store_true", help="print every grating patch's lock-in figures")
    ap.add_argument("--save", default=None, help="folder to save each reconstructed amplitude (.npy)")
    args = ap.parse_args(argv)
    print("machine:", machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    all_cases = cases(args.seed)
    rows = []
    for name in args.case or list(all_cases):
        station, leds = all_cases[name]
        g = station.geometry(leds)
        k = _nominal_k(g) * g.wavelength_um  # illumination NA vectors of the lit LEDs
        gaps = np.hypot(*(k[:, None, :] - k[None, :, :]).transpose(2, 0, 1)) + np.eye(len(leds)) * 1e9
        step, worst = float(np.median(gaps.min(axis=1))), float(gaps.min(axis=1).max())
        print(f"\n{name}: {len(leds)} LEDs of a {station.led_rows} x {station.led_cols} board at "
              f"{station.led_pitch_mm:g} mm pitch, {station.camera_pixel_um:g} um pixels "
              f"({station.camera_pixel_um / station.magnification:.3f} um at the object), {station.frame_px} px frames, upsampling "
              f"{station.upsampling}; neighbouring pupils overlap {100 * pupil_overlap(step, station.na):.0f} % "
              f"in area (median over the lit LEDs' nearest lit neighbour; least {100 * pupil_overlap(worst, station.na):.0f} %)",
              flush=True)
        r = run_case(name, station, leds, args.seed)
        rows.append(r)
        resolved = f"{r['resolved_um']:.2f} um" if r["resolved_um"] else "none"
        print(f"  {r['verdict']}{' - ' + r['why'] if r['why'] else ''}\n"
              f"  {'converged' if r['converged'] else 'NOT converged'}, reduced chi2 {r['reduced_chi2']:.2f} "
              f"({r['reduced_chi2_noise']:.2f} against the camera noise), Noll 5-15 error {r['error_5_15']:.4f} "
              f"waves, LED shift error {r['shift_error_um']:.0f} um, {r['cpu_s']:.0f} CPU-s\n"
              f"  resolved period {resolved} against the theoretical {r['theory_axis_um']:.2f} um along the axes "
              f"(bright field alone {r['bright_field_um']:.2f} um; target periods {', '.join(map(str, PERIODS_UM))} um; "
              f"the true target on the same grid: {r['control_um']} um)",
              flush=True)
        if args.patches:
            for p in r["patches"]:
                print(f"    period {p.patch.period_um:4.1f} um, {p.patch.angle_deg:3.0f} deg: modulation "
                      f"{p.modulation:.3f}, floor {p.floor:.4f}, coherence {p.coherence:.2f}: "
                      f"{'resolved' if p.resolved else 'not resolved'}")
        if args.save:
            np.save(Path(args.save) / f"unlike-{name}-amplitude.npy", r["amplitude"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
