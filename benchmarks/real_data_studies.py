"""Studies of the UConn real captures (issue 14): the physics ablation with a residual analysis, and
the geometry from two crops of one capture.

Used by ``benchmarks/bench_real_data.py --ablation`` and ``--crops`` (see docs/real-data.md). Every
figure here comes from the real captures (``../shared/data/uconn-bloodsmear``).

Ablation: each physics term of issue 14 on and off, one at a time against the all-on model, plus the
all-off model (the station as issue 7 read it). The UConn description states neither the LEDs'
spectral width, their emitter size, nor a vignetting aperture, so the all-on model assumes typical
values (:data:`ASSUMED`): a real user of a foreign capture has to do the same.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

ASSUMED = {
    "spectral_fwhm_nm": {"red": 20.0, "green": 30.0, "blue": 25.0},  # typical RGB SMD LED datasheets
    "led_size_mm": 0.2,  # emitter die of an RGB SMD LED (not stated by the authors)
    "vignetting": (1.1, 0.05, 0.05),  # start of the fitted second aperture: just touching the stop
    "emission_exponent": 4.0,  # Lambertian emitter (cos^1) times cos^3 of distance and obliquity
}

TERMS = ("pixel integration", "LED spectral width", "margin (non-periodic field)", "two-circle vignetting",
         "cos^p emission", "learned data weights", "source-averaged pupil edge", "stray light")


def configuration(colour: str, crop_px: int, off: frozenset) -> dict:
    """Station replacements, schedule options and pupil edge of one ablation row (``off``: the terms
    switched off)."""
    on = lambda t: t not in off  # noqa: E731
    return {
        "station": {
            "pixel_integration": on("pixel integration"),
            "spectral_fwhm_nm": ASSUMED["spectral_fwhm_nm"][colour] if on("LED spectral width") else 0.0,
            "margin_px": max(4, round(crop_px / 8)) if on("margin (non-periodic field)") else 0,
            "vignetting": ASSUMED["vignetting"] if on("two-circle vignetting") else None,
            "emission_exponent": ASSUMED["emission_exponent"] if on("cos^p emission") else 0.0,
            "led_size_mm": ASSUMED["led_size_mm"],
            "stray_light": on("stray light"),
        },
        "data_weights": on("learned data weights"),
        "edge": "source" if on("source-averaged pupil edge") else "coverage",
    }


def fit_real(capture, station, config: dict, iterations: int, zernike_terms: int = 15):
    """Blind fit of a real patch under one configuration; ``(model, fit, cpu_s, wall_s)``."""
    from bench_real_data import minimal_upsampling

    from metrology.physics import StationModel
    from metrology.pipeline import foreign_noise
    from metrology.solver import reconstruct
    from metrology.solver.schedule import station_schedule

    st = station.replace(zernike_terms=zernike_terms, **config["station"])
    g = minimal_upsampling(st.geometry(capture.leds))
    model = StationModel(g)
    model.pupil.edge = config["edge"]
    schedule = dataclasses.replace(station_schedule(g, "blind", max_iterations=iterations),
                                   data_weights=config["data_weights"])
    c0, t0 = time.process_time(), time.perf_counter()
    # with each frame's stray light fitted, the background is held at the description's HDR offset
    fit = reconstruct(model, capture.frames, foreign_noise(capture), schedule,
                      background_counts=st.background_counts if st.stray_light else None)
    return model, fit, time.process_time() - c0, time.perf_counter() - t0


def ablation_rows(colour: str, crop_px: int, iterations: int) -> list[dict]:
    """All on, each term off alone, all off: reduced chi-square (camera noise and learned variances),
    Noll 5-15 change against all-on (waves, RMS over the 11 terms), times; the all-on row carries
    its model and fit for :func:`residual_analysis`."""
    from bench_real_data import real_patch

    capture, station, _ = real_patch(colour, crop_px)
    rows = []
    cases = [("all on", frozenset())] + [(f"- {t}", frozenset([t])) for t in TERMS] + [("all off", frozenset(TERMS))]
    for name, off in cases:
        model, fit, cpu, wall = fit_real(capture, station, configuration(colour, crop_px, off), iterations)
        z = model.pupil.zernike_waves.detach().cpu().numpy().astype(float)
        rows.append({"case": name, "chi2_noise": fit.reduced_chi2_noise, "chi2_weighted": fit.reduced_chi2,
                     "zernike": z, "cpu_s": cpu, "wall_s": wall, "converged": bool(fit.converged),
                     "iterations": fit.iterations, "defocus_um": float(model.sample.defocus_um.detach()),
                     "model": model if not off else None, "fit": fit if not off else None, "capture": capture})
    ref = rows[0]["zernike"][4:15]
    for r in rows:
        r["dz_waves"] = float(np.sqrt(np.mean((r["zernike"][4:15] - ref) ** 2)))
    return rows


# ------------------------------------------------------------------------------ residual analysis
def whitened_residuals(model, fit, frames) -> np.ndarray:
    """``(data - model) / sigma`` against the camera noise on the fit's valid pixels, (J, n, n)."""
    from metrology.solver.losses import noise_variance

    with torch.no_grad():
        pred = model().double()
        data = torch.as_tensor(np.asarray(frames, dtype=np.float64))
        var = noise_variance(pred, fit.noise.gain_e_per_count, fit.noise.read_noise_counts,
                             float(model.camera.background_counts))
        z = fit.mask.double().cpu() * (data - pred.cpu()) / var.cpu().sqrt()
    return z.numpy()


def _groups(values: np.ndarray, labels: np.ndarray, names) -> list[tuple]:
    """``(name, mean chi2 per pixel, share of the total, count)`` of each label."""
    total = values.sum()
    return [(n, float(values[labels == i].mean()), float(values[labels == i].sum() / total), int((labels == i).sum()))
            for i, n in enumerate(names) if (labels == i).any()]


def residual_analysis(model, fit, frames, *, delta_na: float = 0.01) -> dict:
    """Chi-square per pixel of a fit, split by LED class and ring, spatial-frequency band and region.

    Each entry is ``(group, mean chi2 per pixel, share of the total chi2, count)``; a model that
    explains the data to the camera noise reads ~1 in every group.

    * LED class: bright field (illumination NA < NA - ``delta_na``), transition, dark field
      (> NA + ``delta_na``), from the fitted illumination; ring: the LED's Chebyshev distance on
      the board from the centre LED.
    * Frequency band: per-frame Parseval split of ``sum z^2`` by ``|f| / (NA / lambda)``.
    * Region: distance of the pixel from the frame's edge (px).
    """
    z = whitened_residuals(model, fit, frames)
    j, n, _ = z.shape
    z2 = z**2
    per_frame = z2.reshape(j, -1).mean(axis=1)
    g = model.geometry
    with torch.no_grad():
        s = (model.illumination.spatial_frequencies().double().norm(dim=-1) * g.wavelength_um).numpy()
    led_class = np.where(s < g.na - delta_na, 0, np.where(s > g.na + delta_na, 2, 1))
    rc = np.asarray(g.leds, dtype=float)
    ring = np.maximum(np.abs(rc[:, 0] - g.led_center_row), np.abs(rc[:, 1] - g.led_center_col)).round().astype(int)
    fz = np.abs(np.fft.fft2(z, norm="ortho")) ** 2  # Parseval: sum over cells = sum z^2 per frame
    f = np.fft.fftfreq(n, g.pixel_um)
    fr = np.hypot(f[:, None], f[None, :]) / (g.na / g.wavelength_um)
    edges = np.array([0.5, 1.0, 1.5, 2.0])
    band = np.digitize(fr, edges)
    band_names = ["< 0.5", "0.5-1", "1-1.5", "1.5-2", ">= 2"]
    idx = np.arange(n)
    dist = np.minimum.outer(np.minimum(idx, n - 1 - idx), np.minimum(idx, n - 1 - idx))
    region = np.digitize(dist, [2, 4, 8])
    region_names = ["0-1 px from edge", "2-3 px", "4-7 px", ">= 8 px"]
    worst = np.argsort(per_frame)[::-1][:5]
    return {
        "led_class": _groups(per_frame, led_class, ["bright field", "transition", "dark field"]),
        "ring": _groups(per_frame, ring, [f"ring {i}" for i in range(ring.max() + 1)]),
        "band": _groups(fz.reshape(-1), np.broadcast_to(band, z.shape).reshape(-1), band_names),
        "region": _groups(z2.reshape(-1), np.broadcast_to(region, z.shape).reshape(-1), region_names),
        "worst_frames": [(int(i), float(per_frame[i]), float(per_frame[i] / per_frame.sum()), float(s[i])) for i in worst],
        "illumination_na": s,
        "per_frame": per_frame,
    }


def print_ablation(colour: str, rows: list[dict], crop_px: int, wavelength_nm: float) -> None:
    print(f"\n[{colour}] ablation, blind, {crop_px}px centre patch, 225 LEDs (reduced chi2: camera noise / "
          "learned variances; dNoll: RMS change of Noll 5-15 against all on)")
    print(f"  {'case':34s} {'chi2 noise':>10s} {'chi2 wtd':>9s} {'dNoll waves':>11s} {'nm':>6s} {'defocus':>8s} "
          f"{'conv':>5s} {'it':>3s} {'cpu s':>6s}")
    for r in rows:
        print(f"  {r['case']:34s} {r['chi2_noise']:10.2f} {r['chi2_weighted']:9.2f} {r['dz_waves']:11.4f} "
              f"{r['dz_waves'] * wavelength_nm:6.1f} {r['defocus_um']:+8.1f} {str(r['converged']):>5s} "
              f"{r['iterations']:3d} {r['cpu_s']:6.0f}")


def print_residuals(colour: str, res: dict) -> None:
    print(f"  [{colour}] residual analysis of the all-on fit (mean chi2 per pixel against the camera noise, share):")
    for key in ("led_class", "ring", "band", "region"):
        print(f"    by {key.replace('_', ' ')}: " + "; ".join(f"{n} {m:.1f} ({100 * s:.0f} %, {c})" for n, m, s, c in res[key]))
    print("    worst frames (index, chi2/px, share, illumination NA): "
          + "; ".join(f"{i} {m:.0f} {100 * s:.1f} % {na:.3f}" for i, m, s, na in res["worst_frames"]))


# ------------------------------------------------------------------------------ two crops
CROP_GEOMETRY = ("illumination.shift_mm[0]", "illumination.shift_mm[1]", "illumination.rotation_deg")
"""What a blind fit measures of the LED array (it holds the distance and the tilt)."""


def crop_fit(colour: str, row0: int, col0: int, crop_px: int, iterations: int, margin_px: int | None = None) -> dict:
    """Blind all-on fit of the ``crop_px`` crop at ``(row0, col0)`` of the full real frame, its tile
    centre moved to the crop's centre (``tile_center_mm``: x along columns, y along rows); per
    :data:`CROP_GEOMETRY` parameter ``(value, u total, u of the fit part)``, and the fit's figures."""
    from bench_real_data import DATA, DESCRIPTION

    from metrology.io.foreign import load_foreign
    from metrology.solver.uncertainty import covariance, measurement_from_fit

    capture, station = load_foreign(DATA / f"bloodsmear_{colour}.mat", DESCRIPTION)
    n = capture.frames.shape[-1]
    pixel_mm = station.camera_pixel_um / station.magnification * 1e-3
    x0, y0 = station.tile_center_mm
    tile = (x0 + (col0 + crop_px / 2 - n / 2) * pixel_mm, y0 + (row0 + crop_px / 2 - n / 2) * pixel_mm)
    sub = dataclasses.replace(capture, frames=np.ascontiguousarray(
        capture.frames[:, row0 : row0 + crop_px, col0 : col0 + crop_px]))
    station = station.replace(frame_px=crop_px, tile_center_mm=tile)
    config = configuration(colour, crop_px, frozenset())
    if margin_px is not None:
        config["station"]["margin_px"] = margin_px
    model, fit, cpu, _ = fit_real(sub, station, config, iterations)
    meas = measurement_from_fit(fit, station.uncertainty)
    cov_fit = covariance(fit)[0].double().cpu().numpy()
    index = {name: i for i, name in enumerate(fit.columns.names)}
    out = {s.name: (s.value, s.u, float(np.sqrt(max(cov_fit[index[s.name], index[s.name]], 0.0))))
           for s in meas.station if s.name in CROP_GEOMETRY}
    out.update(tile_mm=tile, chi2_noise=fit.reduced_chi2_noise, chi2=fit.reduced_chi2, converged=bool(fit.converged),
               cpu_s=cpu, defocus_um=float(model.sample.defocus_um.detach()))
    return out


def crop_agreement(colour: str, crop_px: int, iterations: int, frame_px: int = 128, margin_px: int | None = None) -> None:
    """Print the blind geometry of two crops of one real capture (centred on the frame's quarter
    points on its diagonal: half a frame apart in x and in y) and its difference against the
    combined U (k = 2) of the two, total and of the fit part alone."""
    q = frame_px // 4
    corners = ((q - crop_px // 2,) * 2, (3 * q - crop_px // 2,) * 2)
    a, b = (crop_fit(colour, r, c, crop_px, iterations, margin_px) for r, c in corners)
    margin = max(4, round(crop_px / 8)) if margin_px is None else margin_px
    print(f"\n[{colour}] two {crop_px}px crops at (row, col) {corners[0]} and {corners[1]} of one capture, blind, all on "
          f"(margin {margin} px); "
          f"tiles {np.round(a['tile_mm'], 4).tolist()} / {np.round(b['tile_mm'], 4).tolist()} mm")
    for fit, name in ((a, "A"), (b, "B")):
        print(f"  {name}: reduced chi2 {fit['chi2_noise']:.1f} (noise) / {fit['chi2']:.2f} (learned), converged "
              f"{fit['converged']}, defocus {fit['defocus_um']:+.1f} um, {fit['cpu_s']:.0f} CPU-s")
    for key in CROP_GEOMETRY:
        (va, ua, fa), (vb, ub, fb) = a[key], b[key]
        u_total, u_fit = 2 * np.hypot(ua, ub), 2 * np.hypot(fa, fb)
        print(f"  {key:26s} A {va:+.4f}  B {vb:+.4f}  |A - B| {abs(va - vb):.4f}  combined U (k=2) {u_total:.4f} "
              f"(ratio {abs(va - vb) / u_total:.2f}); fit part alone {u_fit:.4f} (ratio {abs(va - vb) / u_fit:.2f})")
