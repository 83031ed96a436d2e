"""The literal simulator for full-field stations: one full sensor frame per LED, through a lens whose
pupil changes across the field.

The sensor is drawn in blocks of one tile (:meth:`metrology.io.field_layout.FieldLayout.blocks`,
aligned with the station's tile grid and covering the whole sensor): each block is rendered by
the single-tile literal simulator (:func:`metrology.simulate_optics.simulate_intensity`: fine grid, hard
pupil, exact illumination angles from the block's own centre, finite LEDs, pixel integration) with
the lens pupil at the block's field vector ``H`` (:meth:`metrology.io.lens_file.LensDescription.field_coefficients`),
one station misalignment for the whole frame, and the part of the reference sample it sees
(the catalogue sample repeats with one tile's field of view, :func:`metrology.io.field_layout.tile_reference`).
The camera (shot and read noise, gain, background, quantisation, saturation) then records the
whole frame at once. The lens's second aperture (``[field] vignetting`` of the lens file) cuts each
block's pupil at the block's ``H`` (:func:`metrology.field_terms.vignetting_at`, a hard edge).
Within a block the pupil is constant: the simulator's field dependence is
piecewise, the solver's tiles see exactly one block each when ``overlap_px = 0``.
"""

from __future__ import annotations

import numpy as np

from metrology.errors import InputError
from metrology.field_terms import vignetting_at
from metrology.io.capture import Capture
from metrology.io.field_layout import tile_reference
from metrology.references import CATALOGUE, reference_transmission
from metrology.simulate import _camera_counts, _lens_and_camera_truth, check_misalignment
from metrology.simulate_optics import simulate_intensity


def field_truth_zernike(station, lens, tiles, per_field_noise_waves: float = 0.0, noise_seed: int = 0) -> np.ndarray:
    """True pupil phase Noll 1..K (waves at the station wavelength) at each tile's field vector,
    plus independent Gaussian noise of ``per_field_noise_waves`` on every lens term (Noll 5..K) of
    every tile (the per-field Zernike noise of a real lens), shape (T, K)."""
    k = max(station.zernike_terms, lens.max_noll, 11)
    h = np.array([t.h for t in tiles], dtype=np.float64).reshape(-1, 2)
    z = lens.field_coefficients(h, k, wavelength_nm=station.wavelength_nm)
    if per_field_noise_waves > 0:
        rng = np.random.default_rng([int(noise_seed), 16])
        z[:, 4:] += rng.normal(0.0, per_field_noise_waves, z[:, 4:].shape)
    return z


def simulate_full_frame(station, lens, truth: dict | None = None, *, seed: int = 0, reference: str = "random-broadband",
                        reference_seed: int = 0, photons: float = 2e4, leds=None, noise: bool = True,
                        per_field_noise_waves: float = 0.0, per_field_noise_seed: int = 0, oversample: int = 2,
                        led_subsources: int = 9, exposure_s: float = 0.01, progress=None):
    """Simulate a full-field capture of ``station`` (a station with ``[field]``) through ``lens``.

    Parameters
    ----------
    station : StationDescription
        With a :class:`~metrology.io.field_layout.FieldLayout` (``field_layout``).
    lens : LensDescription
        Its ``field_terms`` give the field dependence.
    truth : dict, optional
        Station misalignment by model path (one for the whole frame).
    seed, reference, reference_seed, photons, leds, noise, oversample, led_subsources, exposure_s
        As :func:`metrology.simulate.simulate_capture`.
    per_field_noise_waves : float
        Standard deviation of independent per-block noise on every lens Zernike term (waves).
    per_field_noise_seed : int
        Seed of that noise (a property of the lens: keep it fixed across captures of one lens).
    progress : callable ``progress(i, total)``, optional
        Called after each block.

    Returns
    -------
    capture : Capture
        Frames ``(J, rows, cols)`` (``field.sensor_px``).
    truth : dict
        The misalignment, the on-axis ``pupil.*`` and ``camera.*`` entries, ``field.vignetting`` (the
        lens's ``(r, s)``) and ``field.blocks``: every block's ``origin_px``, ``center_mm``, ``h``, true
        ``zernike_waves`` and second aperture ``vignetting`` (``(r, cx, cy)`` or None).
    """
    layout = station.field_layout
    if layout is None:
        raise InputError(station.source or "station", "a full-frame simulation needs a [field] section")
    if reference not in CATALOGUE:
        raise InputError(reference, f"unknown reference sample; known: {', '.join(CATALOGUE)}")
    leds = station.led_list() if leds is None else [tuple(map(int, rc)) for rc in leds]
    mis = check_misalignment(truth or {}, len(leds))
    blocks = layout.blocks(station.camera_pixel_um / station.magnification, station.tile_center_mm)
    z = field_truth_zernike(station, lens, blocks, per_field_noise_waves, per_field_noise_seed)
    log_amp = lens.apodisation_coefficients() if lens.apodisation else None
    tile = layout.tile_px
    fine = reference_transmission(reference, station.fov_um, tile * station.upsampling * int(oversample),
                                  seed=reference_seed)
    rows, cols = layout.sensor_px
    intensity = np.zeros((len(leds), rows, cols))
    for b, block in enumerate(blocks):
        part = simulate_intensity(station.tile_station(block), leds, mis, tile_reference(fine, block, tile), z[b],
                                  lens_na=lens.na, log_amplitude=log_amp, led_subsources=led_subsources,
                                  vignetting=vignetting_at(lens.field_vignetting, block.h))
        r0, c0 = block.origin_px
        r1, c1 = max(r0, 0), max(c0, 0)
        intensity[:, r1 : r0 + tile, c1 : c0 + tile] = part[:, r1 - r0 : rows - r0, c1 - c0 : cols - c0]
        if progress is not None:
            progress(b + 1, len(blocks))
    exposure = np.full(len(leds), float(exposure_s))
    rel = exposure / np.median(exposure)
    electrons = photons * (np.asarray(mis["illumination.brightness"]) * rel)[:, None, None] * intensity
    frames = _camera_counts(electrons, station.camera, np.random.default_rng([int(seed), 7]), noise)
    out = dict(mis)
    on_axis = lens.field_coefficients(np.zeros((1, 2)), z.shape[1], wavelength_nm=station.wavelength_nm)[0]
    out.update(_lens_and_camera_truth(station, on_axis, lens.na, log_amp, photons / station.camera.photons_per_count))
    out.update({
        "seed": int(seed), "reference_sample": reference, "reference_seed": int(reference_seed),
        "station_id": station.station_id, "lens_model": lens.model, "lens_serial": lens.serial,
        "leds": [list(rc) for rc in leds], "relative_exposure": rel.tolist(), "photons": float(photons),
        "oversample": int(oversample), "led_subsources": int(led_subsources), "noise": bool(noise),
        "per_field_noise_waves": float(per_field_noise_waves), "per_field_noise_seed": int(per_field_noise_seed),
        "field.lens_terms": {k: (list(v) if isinstance(v, tuple) else v) for k, v in lens.field_terms.items()},
        "field.vignetting": lens.field_vignetting and list(lens.field_vignetting),
        "field.blocks": [{"origin_px": list(bl.origin_px), "center_mm": list(bl.center_mm), "h": list(bl.h),
                          "zernike_waves": z[b].tolist(),
                          "vignetting": vignetting_at(lens.field_vignetting, bl.h)} for b, bl in enumerate(blocks)],
    })
    capture = Capture(frames=frames, leds=leds, exposure_s=exposure, station_id=station.station_id,
                      lens_serial=lens.serial, lens_model=lens.model, reference_sample=reference,
                      wavelength_nm=station.wavelength_nm,
                      extra={"simulated": True, "reference_seed": int(reference_seed), "full_field": True})
    return capture, out
