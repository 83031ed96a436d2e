"""Resolved period of a known grating target against the synthetic aperture (issue 14).

A USAF-like amplitude target (:func:`metrology.analysis.resolution.grating_target`: square-wave
bar patches at known periods and orientations, blank cells for the floor) is rendered by the
independent renderer (:mod:`metrology.render`, the off-model path: non-periodic field, hard pupil on
a finer lattice, pixel integration), reconstructed blind by the solver, and measured with
:func:`~metrology.analysis.resolution.grating_resolution` (lock-in at each grating's vector against
the blank-window floor, phase-coherent halves, capped at the synthetic aperture). Prints the
resolved period against the theoretical ``lambda / (NA + NA_illumination_max)`` and the bright
field's ``lambda / NA``, and the spectral SNR of the complex transmission.

Run: ``python benchmarks/bench_resolution.py [--frame 48] [--leds 7] [--iterations 25]``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from common import machine, standard_station

from metrology.analysis import resolution as ra
from metrology.render import RealPhysics, field_side, render_intensity
from metrology.simulate import check_misalignment

PERIODS_UM = (8.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.6)
MARGIN = 0.25


def target_capture(station, leds, seed: int = 1, photons: float = 2e4):
    """Frames of the grating target (clear glass around the frame) and the target's layout."""
    n, up = station.frame_px, station.upsampling
    pixel = station.camera_pixel_um / station.magnification
    n_large = field_side(n, MARGIN)
    image, patches, blanks = ra.grating_target(n * up, pixel / up, PERIODS_UM)
    large = np.ones((n_large * up,) * 2, dtype=np.complex128)
    c0 = (n_large - n) // 2 * up
    large[c0 : c0 + n * up, c0 : c0 + n * up] = image
    truth = check_misalignment({}, len(leds))
    inten = render_intensity(station, leds, truth, large, np.zeros(15), RealPhysics(margin=MARGIN, emitter_points=1))
    cam = station.camera
    rng = np.random.default_rng(seed)
    e = rng.poisson(photons * inten).astype(float) + rng.normal(0, cam.read_noise_e, inten.shape)
    frames = np.clip(np.round(e / cam.photons_per_count + cam.background_counts), 0, cam.full_scale).astype(np.uint16)
    return frames, patches, blanks


def reconstruct_target(station, leds, frames, iterations: int):
    """Blind fit; the frame's part of the reconstructed transmission, the fit and the illumination NA."""
    from metrology.physics import StationModel
    from metrology.solver import NoiseModel, reconstruct
    from metrology.solver.schedule import station_schedule

    g = replace(station.geometry(leds), margin_px=max(4, station.frame_px // 8))
    model = StationModel(g, None, None, dtype=torch.float32)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale)
    fit = reconstruct(model, frames, noise, station_schedule(g, "blind", max_iterations=iterations))
    m = g.margin_px * g.upsampling
    t = model.sample.transmission().detach().cpu().numpy()
    t = t[m : t.shape[0] - m, m : t.shape[1] - m] if m else t
    with torch.no_grad():
        k = model.illumination.spatial_frequencies().double().numpy()
    return t, fit, float(np.hypot(k[:, 0], k[:, 1]).max() * g.wavelength_um), float(np.abs(k).max() * g.wavelength_um)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", type=int, default=48)
    ap.add_argument("--leds", type=int, default=7, help="side of the centred LED square")
    ap.add_argument("--iterations", type=int, default=25)
    args = ap.parse_args(argv)
    print("machine:", machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    station = standard_station(args.frame).replace(zernike_terms=15)
    h = args.leds // 2
    leds = [(r, c) for r in range(7 - h, 8 + h) for c in range(7 - h, 8 + h)]
    frames, patches, blanks = target_capture(station, leds)
    t0 = time.process_time()
    t, fit, na_ill, na_axis = reconstruct_target(station, leds, frames, args.iterations)
    px = station.camera_pixel_um / station.magnification / station.upsampling
    lam = station.wavelength_nm * 1e-3
    cutoff = ra.synthetic_aperture_cutoff(station.na, na_ill, lam)
    res = ra.grating_resolution(np.abs(t), px, patches, blanks, cutoff_cpum=cutoff)
    snr = ra.spectral_snr_resolution(t, px, cutoff)
    print(f"render.py (off-model) grating target, {args.frame}px, {len(leds)} LEDs (illumination NA max {na_ill:.3f}), "
          f"blind, {fit.iterations} it, {time.process_time() - t0:.0f} CPU-s, reduced chi2 {fit.reduced_chi2:.2f} "
          f"({fit.reduced_chi2_noise:.2f} against the camera noise), converged {fit.converged}")
    for r in res.patches:
        print(f"  period {r.patch.period_um:4.1f} um, {r.patch.angle_deg:4.0f} deg: modulation {r.modulation:.3f}, "
              f"floor {r.floor:.4f}, coherence {r.coherence:.2f}, within the aperture {r.within_aperture}: "
              f"{'resolved' if r.resolved else 'not resolved'}")
    print(f"resolved period {res.resolved_period_um} um; theoretical lambda / (NA + NA_ill) {res.theoretical_period_um:.2f} um "
          f"(corner LEDs), {lam / (station.na + na_axis):.2f} um for bars along the axes (the gratings here); "
          f"bright field lambda / NA {lam / station.na:.2f} um; spectral SNR of the transmission up to "
          f"{snr.frequency_cpum:.3f} cycles/um (period {1 / max(snr.frequency_cpum, 1e-9):.2f} um)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
