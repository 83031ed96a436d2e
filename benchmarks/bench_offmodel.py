"""Off-model trials: accuracy and calibration of U on captures the model did not make (issue 14).

Captures come from the realistic renderer (:mod:`metrology.render`), which shares no imaging code
with the solver's model: the frame is the central crop of a larger, non-periodic field; the pupil is
a hard circle on that field's finer lattice; the LED has a Gaussian spectrum and a finite emitter;
each camera pixel integrates the intensity; with ``--spherical`` each LED's exact spherical wave
lights the sample (``--model-spherical``: and the station states ``led_array.spherical_illumination``,
the model's common curvature); with ``--stray-light F`` each LED's veiling glare, a haze with a linear
gradient across the frame (:class:`RealPhysics`), drawn per LED around ``F`` (clear-pupil units), which
the station frees as its uniform stray-light term (``lens.stray_light``; ``--no-stray-model``: not, to
print the bias without it). Every trial draws a new lens, misalignment and noise,
and the station's constants as they really are from their stated uncertainties (the station
file's ``[uncertainty]`` table): wavelength centroid, NA, magnification, camera pixel, LED pitch,
emitter size, spectral width. The tool gets the station file's stated values and the reference
map of the field of view (a ``.npy`` reference: the sample beyond the frame is unknown to it).

Parts:

* ``trials`` (default): per trial the Noll 5-15 error, the LED shift error, the reduced chi-square
  of the weighted fit, bound hits, convergence; then per coefficient and for the RMS wavefront the
  RMS of error / u and the coverage of U = 2u over the trials (targets 0.7-1.4 and >= 90 %).
* ``sweep``: lenses straddling an astigmatism limit (a spec with ``term 6 <= limit``): false PASS
  and FAIL, and the INCONCLUSIVE rate among lenses whose truth is more than 2U from the limit.

Run: ``python benchmarks/bench_offmodel.py [--part trials|sweep] [--mode known|blind] [--trials 30]
[--frame 48 --leds 9] [--workers N] [--spectral-points N] [--spherical] [--model-spherical]
[--stray-light F [--stray-gradient G] [--no-stray-model]] [--json out.json]``. Prints the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

import numpy as np
from common import machine, standard_lens, standard_misalignment, standard_station

from metrology.analysis.spec import Validity
from metrology.render import RealPhysics, field_side, render_intensity
from metrology.solver.refit_budget import EDGE_KEY
from metrology.references import _synthesise, broadband_coefficients
from metrology.simulate import check_misalignment, stray_light_levels

LED_FWHM_NM = 25.0
"""Stated LED spectral width of the trial station (FWHM, nm)."""
MARGIN_FRACTION = 0.5
"""The rendered field extends this fraction of the frame beyond each side."""


def trial_station(frame: int):
    """The fixture 4x bench at ``frame`` px, stating a 25 nm LED spectrum (modelled with the station
    default, 2 wavelengths since 2026-12-03; rendered continuous, :class:`RealPhysics`)."""
    return standard_station(frame).replace(spectral_fwhm_nm=LED_FWHM_NM)


def draw_constants(station, rng) -> dict:
    """True station constants drawn from the stated standard uncertainties (normal)."""
    u = station.uncertainty
    return {
        "centroid_nm": station.wavelength_nm + rng.normal(0, u["wavelength_nm"]),
        "fwhm_nm": max(1.0, LED_FWHM_NM + rng.normal(0, u["spectral_fwhm_nm"])),
        "na": station.na + rng.normal(0, u["na"]),
        "magnification": station.magnification + rng.normal(0, u["magnification"]),
        "camera_pixel_um": station.camera_pixel_um + rng.normal(0, u["camera_pixel_um"]),
        "pitch_mm": station.led_pitch_mm + rng.normal(0, u["led_pitch_mm"]),
        "led_size_mm": max(0.0, station.led_size_mm + rng.normal(0, u["led_size_mm"])),
    }


def render_capture(station, leds, lens, truth, consts, seed, photons=2e4, spherical=False, stray=None):
    """Noisy frames (uint16) and the FOV reference map (object grid) of one off-model capture
    (``spherical``: each LED's exact spherical wave, as whenever the station states it; ``stray``:
    ``(per-LED mean glare, gradient)`` of :class:`RealPhysics`, or None)."""
    n, up = station.frame_px, station.upsampling
    pix = consts["camera_pixel_um"] / consts["magnification"]
    n_large = field_side(n, MARGIN_FRACTION)
    sample = _synthesise(*broadband_coefficients(n_large * pix, seed=seed), n_large * up * 2)
    physics = RealPhysics(margin=MARGIN_FRACTION, centroid_nm=consts["centroid_nm"], fwhm_nm=consts["fwhm_nm"],
                          spectral_points=5, pixel_integration=True, emitter_points=3,
                          true_na=consts["na"], true_pixel_um=consts["camera_pixel_um"],
                          true_magnification=consts["magnification"], true_pitch_mm=consts["pitch_mm"],
                          spherical_illumination=spherical or station.spherical_illumination,
                          stray_light=tuple(stray[0]) if stray else (), stray_gradient=stray[1] if stray else 0.0)
    rendered_station = station.replace(led_size_mm=consts["led_size_mm"])
    mis = check_misalignment(truth, len(leds))
    inten = render_intensity(rendered_station, leds, mis, sample, lens, physics)
    cam = station.camera
    rng = np.random.default_rng([seed, 7])
    e = rng.poisson(photons * np.asarray(mis["illumination.brightness"])[:, None, None] * inten).astype(float)
    e += rng.normal(0, cam.read_noise_e, e.shape)
    frames = np.clip(np.round(e / cam.photons_per_count + cam.background_counts), 0, cam.full_scale).astype(np.uint16)
    c0 = (n_large - n) // 2 * up * 2
    ref = sample[c0 : c0 + n * up * 2 : 2, c0 : c0 + n * up * 2 : 2]
    return frames, ref, mis


def with_fitted_na(schedule):
    """``schedule`` with the pupil edge's NA free as blind mode frees it (blind's default spec: its
    step, release round and bounds), where it is not already: the ``--fit-na`` trials of known mode."""
    from dataclasses import replace as replaced

    from metrology.solver.schedule import default_specs

    if any(p.path == "pupil.na" for p in schedule.parameters):
        return schedule
    na = next(p for p in default_specs("blind") if p.path == "pupil.na")
    return replaced(schedule, parameters=schedule.parameters + (na,))


def fit_capture(station, leds, frames, ref, mode, budget=None, fit_na=False):
    """The pipeline's fit and measurement (margin, schedule and budget as for a file reference);
    ``budget``: keyword options of ``measurement_from_fit`` (``finite_budget``, ``free_sample_budget``,
    ``refit_radius``, ``refit_edge``; by default the edge term where the fit requires it, as the
    pipeline)."""
    import torch

    from metrology.physics import StationModel
    from metrology.solver import NoiseModel, reconstruct
    from metrology.solver.schedule import station_schedule
    from metrology.solver.uncertainty import measurement_from_fit

    g = replace(station.geometry(leds), margin_px=max(4, round(station.frame_px / 8)))
    model = StationModel(g, ref if mode != "blind" else None, None, dtype=torch.float32)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale)
    schedule = station_schedule(g, mode)
    fit = reconstruct(model, frames, noise, with_fitted_na(schedule) if fit_na else schedule,
                      background_counts=station.background_counts if g.stray_light else None)  # as the pipeline
    return fit, measurement_from_fit(fit, station.uncertainty, **(budget or {}))


def held_from_stated(truth: dict, station, mode: str, seed: int) -> dict:
    """The truth of the parameters the mode holds at nominal, drawn from their stated standard
    uncertainty (normal) instead of the misalignment range: what the budget claims about them. (A
    station misaligned beyond its stated tolerance in a held term is outside what U covers; the
    budget page says which terms a mode holds.)"""
    from metrology.parameters import BY_PATH
    from metrology.solver.budget import STANDS_FOR

    rng = np.random.default_rng([seed, 2025])
    out = dict(truth)
    for key, path in STANDS_FOR.items():
        if path in truth and mode not in BY_PATH[path].fit.modes:  # a held misalignment term
            size = np.size(truth[path])
            draw = rng.normal(0.0, station.uncertainty[key], size)
            out[path] = float(draw[0]) if np.ndim(truth[path]) == 0 else draw.tolist()
    return out


def stated_constants(station) -> dict:
    """The station constants exactly as stated (the ``--exact-constants`` trials)."""
    return {"centroid_nm": station.wavelength_nm, "fwhm_nm": LED_FWHM_NM, "na": station.na,
            "magnification": station.magnification, "camera_pixel_um": station.camera_pixel_um,
            "pitch_mm": station.led_pitch_mm, "led_size_mm": station.led_size_mm}


def trial(station, leds, seed, mode, lens=None, exact=False, budget=None, spherical=False, stray=None, fit_na=False):
    """One trial; ``stray``: ``(level, gradient)`` of the rendered veiling glare (each LED's mean drawn by
    :func:`metrology.simulate.stray_light_levels`), or None."""
    rng = np.random.default_rng([seed, 2024])
    lens = standard_lens(seed) if lens is None else lens
    truth = held_from_stated(standard_misalignment(seed, len(leds)), station, mode, seed)
    consts = stated_constants(station) if exact else draw_constants(station, rng)
    glare = (stray_light_levels(stray[0], len(leds), np.random.default_rng([seed, 2026])), stray[1]) if stray else None
    frames, ref, mis = render_capture(station, leds, lens, truth, consts, seed, spherical=spherical, stray=glare)
    fit, meas = fit_capture(station, leds, frames, ref, mode, budget, fit_na)
    z = meas.zernike_waves
    e = z[4:15] - lens[4:15]
    u = meas.zernike_u[4:15]
    rms_true = float(np.sqrt(np.sum(lens[4:] ** 2)))
    rms_meas = float(np.sqrt(np.sum(z[4:] ** 2)))
    from metrology.analysis.propagation import derived_figures

    figs = derived_figures(np.nan_to_num(z), np.nan_to_num(meas.zernike_cov), meas.wavelength_nm, meas.na,
                           n_draws=400)
    u_rms = float(figs["rms_waves"].u)
    no_unit = without_unit_term(meas)  # the budget before the wavelength's unit term, for comparison
    values = {s.name: s.value for s in meas.station}
    # with --refit-edge: u without the edge term, for comparison (the term adds its contribution in
    # quadrature, rank one: tests/test_recovery.py)
    edge = next((b for b in meas.budget if b.name == EDGE_KEY), None)
    shift = 1e3 * math.hypot(values.get("illumination.shift_mm[0]", float("nan")) - mis["illumination.shift_mm"][0],
                             values.get("illumination.shift_mm[1]", float("nan")) - mis["illumination.shift_mm"][1])
    return {
        "seed": seed, "converged": bool(fit.converged), "message": fit.message,
        "reduced_chi2": float(fit.reduced_chi2), "reduced_chi2_noise": float(fit.reduced_chi2_noise),
        "at_bounds": len(fit.at_bounds), "at_bounds_blocking": blocking_bounds(fit.at_bounds, meas.arrays.get("sample_px")),
        "error_5_15": float(np.sqrt(np.sum(e**2))), "shift_error_um": shift,
        "err": e.tolist(), "u": u.tolist(), "rms_true": rms_true, "rms_measured": rms_meas, "u_rms": u_rms,
        # the parts of u (waves, Noll 5-15): noise (Type A), fit (noise widened by the mismatch estimates),
        # and the largest Type B source per coefficient: where an outlier's u came from
        "u_noise": np.sqrt(np.clip(np.diag(meas.parts.noise)[4:15], 0, None)).tolist() if meas.parts else None,
        "u_fit": np.sqrt(np.clip(np.diag(meas.parts.fit)[4:15], 0, None)).tolist() if meas.parts else None,
        "largest_per_noll": [max(meas.budget, key=lambda b: abs(b.zernike[j])).name if meas.budget else ""
                             for j in range(4, 15)],
        "largest": meas.budget and max(meas.budget, key=lambda b: float(np.abs(b.zernike[4:15]).max())).name,
        "effective_data_fraction": (fit.weights.summary().get("effective_data_fraction")
                                    if fit.weights is not None else 1.0),
        "time_s": float(fit.wall_time_s), "constants": consts, "lens": np.asarray(lens).tolist(),
        # the pupil radius's two re-fits (--refit-radius): converged, time; None where they did not run
        "radius_refits": meas.arrays.get("uncertainty_method", {}).get("pupil_radius_refits"),
        "edge_refit": meas.arrays.get("uncertainty_method", {}).get("pupil_edge_refit"),
        "geometry_z": geometry_z(meas, mis),
        "u_plain": np.sqrt(np.clip(u**2 - edge.zernike[4:15] ** 2, 0, None)).tolist() if edge else None,
        "geometry_z_plain": geometry_z(meas, mis, edge) if edge else None,
        # the pupil edge's NA: fitted (blind mode) or held, against the NA that gives the true pupil radius
        "na": float(meas.na), "na_u": next((e.u for e in meas.lens_parameters if e.name == "pupil.na"), None),
        "na_effective_truth": effective_na(station, consts),
        # the same measurement's u without the wavelength's unit term (budget.in_stated_waves): the
        # budget before 2026-12-03 16:30 UTC, computed from the same fit
        "u_no_unit": no_unit[0], "u_rms_no_unit": no_unit[1],
        "stray_error": (stray_error(fit.model, glare[0], mis["illumination.brightness"])
                        if glare is not None and station.stray_light else None),
    }


def stray_error(model, rendered: np.ndarray, brightness) -> dict:
    """The fitted stray light against the rendered glare's mean (both clear-pupil units, per LED), and
    at the worst LED its illumination NA and its fitted and true brightness (a frame whose haze and
    brightness traded places shows there)."""
    import torch

    d = model.illumination.stray_light.detach().double().cpu().numpy() - rendered
    k = int(np.argmax(np.abs(d)))
    with torch.no_grad():
        na = float(model.illumination.spatial_frequencies()[k].double().norm() * model.geometry.wavelength_um)
    return {"median_abs": float(np.median(np.abs(d))), "max_abs": float(np.abs(d).max()),
            "median_rendered": float(np.median(rendered)), "worst": k, "worst_illumination_na": na,
            "worst_brightness": float(model.illumination.brightness[k].detach()),
            "worst_brightness_true": float(np.asarray(brightness)[k])}


def without_unit_term(meas) -> tuple:
    """``(u of Noll 5-15, u of the RMS wavefront)`` of ``meas`` with the wavelength's unit term
    (``W u / lambda_s`` on its budget row, :func:`metrology.solver.budget.in_stated_waves`) taken out:
    the covariance loses the row's outer product and gains that of the row without the term."""
    from metrology.analysis.propagation import derived_figures

    row = next((b for b in meas.budget if b.name == "wavelength_nm"), None)
    if row is None:
        return None, None
    new = np.asarray(row.zernike, dtype=float)
    old = new - np.asarray(meas.zernike_waves, dtype=float) * row.u / meas.wavelength_nm
    cov = np.asarray(meas.zernike_cov, dtype=float) - np.outer(new, new) + np.outer(old, old)
    figs = derived_figures(np.nan_to_num(meas.zernike_waves), np.nan_to_num(cov), meas.wavelength_nm, meas.na,
                           n_draws=400)
    return np.sqrt(np.clip(np.diag(cov)[4:15], 0, None)).tolist(), float(figs["rms_waves"].u)


def effective_na(station, consts: dict) -> float:
    """The NA that gives the rendered pupil radius in the model's frequency pixels, ``NA N p / (lambda M)``,
    with the station's stated pixel, magnification and wavelength: what a fitted NA should find."""
    scale = (consts["camera_pixel_um"] / consts["magnification"]) / (station.camera_pixel_um / station.magnification)
    return consts["na"] * scale * station.wavelength_nm / consts["centroid_nm"]


def geometry_z(meas, mis, without=None) -> dict:
    """``(estimate - truth) / u`` of each LED-geometry element the mode fits (:data:`GEOMETRY_Z`);
    ``without``: a budget source whose contribution is taken out of ``u`` first."""
    out = {}
    for est in meas.station:
        path, _, index = est.name.partition("[")
        u = est.u if without is None else math.sqrt(max(est.u**2 - without.station.get(est.name, 0.0) ** 2, 0.0))
        if path in GEOMETRY_Z and path in mis and u > 0:
            true = np.ravel(mis[path])[int(index[:-1]) if index else 0]
            out[est.name] = float((est.value - true) / u)
    return out


GEOMETRY_Z = ("illumination.shift_mm", "illumination.rotation_deg", "illumination.distance_error_mm",
              "illumination.tilt_deg")
"""The LED-geometry estimates whose U the trials also check (error / u against the rendered truth)."""


def blocking_bounds(names, side) -> int:
    """How many of the verdict's findings about the fit's values on a bound make it INCONCLUSIVE
    (:func:`metrology.analysis.verdict.bound_findings`: a per-LED brightness or stray light on a bound
    is a warning; sample values on their bounds block only inside the field or beyond the validity's
    fraction; any other parameter blocks)."""
    from metrology.analysis.verdict import bound_findings

    return len(bound_findings(names, side, Validity().max_border_bounded_fraction)[0])


def valid(r) -> bool:
    """The verdict's validity checks (metrology.analysis.spec.Validity defaults): a fit the tool
    would judge, with the pupil edge's re-fit converged where U has its term; the others end
    INCONCLUSIVE and are counted, not measured."""
    limits = Validity()
    eff = r.get("effective_data_fraction")
    edge_ok = (r.get("edge_refit") or {}).get("converged", True)
    return bool(r["converged"] and edge_ok and r["reduced_chi2"] <= limits.max_reduced_chi2
                and r.get("at_bounds_blocking", r["at_bounds"]) == 0  # rows before 2026-12-04: every bound hit
                and (eff is None or eff >= limits.min_effective_data_fraction))


def summarise(rows):
    judged = [r for r in rows if valid(r)]
    print(f"\n{len(rows) - len(judged)} of {len(rows)} trials INCONCLUSIVE by the verdict's validity checks "
          f"(seeds {[r['seed'] for r in rows if not valid(r)]}); U judged on the other {len(judged)}")
    if judged and len(judged) < len(rows):  # U where the tool would not judge, for the record
        ratio_all = np.array([r["err"] for r in rows]) / np.array([r["u"] for r in rows])
        print(f"all {len(rows)} trials, judged or not: RMS(err/u) {np.sqrt(np.mean(ratio_all**2)):.2f}, "
              f"coverage {100 * np.mean(np.abs(ratio_all) <= 2):.0f} %")
    rows = judged or rows
    err = np.array([r["err"] for r in rows])
    u = np.array([r["u"] for r in rows])
    ratio = err / u
    cover = np.abs(err) <= 2 * u
    print(f"\n{len(rows)} trials: Noll 5-15 error median {np.median([r['error_5_15'] for r in rows]):.5f}, "
          f"max {max(r['error_5_15'] for r in rows):.5f} waves; LED shift error max "
          f"{max(r['shift_error_um'] for r in rows):.1f} um; reduced chi2 (weighted) max "
          f"{max(r['reduced_chi2'] for r in rows):.2f}; bound hits {sum(r['at_bounds'] for r in rows)}; "
          f"converged {sum(r['converged'] for r in rows)}/{len(rows)}")
    print(f"{'Noll':>4} {'RMS(err/u)':>11} {'coverage of U':>14} {'median u':>10}")
    for i, j in enumerate(range(5, 16)):
        print(f"{j:>4} {np.sqrt(np.mean(ratio[:, i] ** 2)):>11.2f} {100 * cover[:, i].mean():>13.0f}% "
              f"{np.median(u[:, i]):>10.5f}")
    r_rms = np.array([(r["rms_measured"] - r["rms_true"]) / r["u_rms"] for r in rows])
    print(f" RMS wavefront: RMS(err/u) {np.sqrt(np.mean(r_rms**2)):.2f}, coverage {100 * np.mean(np.abs(r_rms) <= 2):.0f} %")
    print(f" all coefficients: RMS(err/u) {np.sqrt(np.mean(ratio**2)):.2f} (target 0.7-1.4), "
          f"coverage {100 * cover.mean():.0f} % (target >= 90 %)")
    if rows[0].get("u_no_unit"):  # the same fits without the wavelength's unit term (the budget before it)
        ru = err / np.array([r["u_no_unit"] for r in rows])
        rr = np.array([(r["rms_measured"] - r["rms_true"]) / r["u_rms_no_unit"] for r in rows])
        print(f" without the wavelength's unit term: RMS(err/u) {np.sqrt(np.mean(ru**2)):.2f}, coverage "
              f"{100 * np.mean(np.abs(ru) <= 2):.0f} %; RMS wavefront {np.sqrt(np.mean(rr**2)):.2f}, "
              f"{100 * np.mean(np.abs(rr) <= 2):.0f} %")
    if rows[0].get("u_plain"):  # --refit-edge: the same fits without the edge term
        rp = err / np.array([r["u_plain"] for r in rows])
        print(f" without the edge term: RMS(err/u) {np.sqrt(np.mean(rp**2)):.2f}, coverage "
              f"{100 * np.mean(np.abs(rp) <= 2):.0f} %; per Noll 5-15 "
              f"{' '.join(f'{np.sqrt(np.mean(rp[:, i] ** 2)):.2f}' for i in range(11))}")
    for key, what in (("geometry_z", ""), ("geometry_z_plain", " (without the edge term)")):
        names = sorted({n for r in rows for n in (r.get(key) or {})})
        for name in names:  # the station's U, which the lens's calibration does not check
            z = np.array([r[key][name] for r in rows if name in (r.get(key) or {})])
            print(f" {name}{what}: RMS(err/u) {np.sqrt(np.mean(z**2)):.2f}, coverage "
                  f"{100 * np.mean(np.abs(z) <= 2):.0f} %, max |err|/u {np.abs(z).max():.1f} ({z.size} trials)")
    fitted = [r for r in rows if r.get("na_u")]  # the NA fitted (blind mode): its error against the radius rendered
    if fitted:
        rel = np.array([100 * (r["na"] / r["na_effective_truth"] - 1) for r in fitted])
        z = np.array([(r["na"] - r["na_effective_truth"]) / r["na_u"] for r in fitted])
        print(f" pupil edge NA (fitted): error median {np.median(rel):+.2f} %, range {rel.min():+.2f} to {rel.max():+.2f} %; "
              f"RMS(err/u) {np.sqrt(np.mean(z**2)):.2f}, coverage {100 * np.mean(np.abs(z) <= 2):.0f} % ({len(fitted)} trials)")
    stray = [r["stray_error"] for r in rows if r.get("stray_error")]
    if stray:  # the fitted uniform term against the rendered glare's mean (clear-pupil units)
        print(f" stray light: |fitted - rendered mean| median {np.median([s['median_abs'] for s in stray]):.5f}, worst LED "
              f"{max(s['max_abs'] for s in stray):.5f} (rendered median {np.median([s['median_rendered'] for s in stray]):.5f})")
        for r in rows:  # a haze off by more than 10x the rendered median: where, and the brightness beside it
            s = r.get("stray_error") or {}
            if s.get("max_abs", 0.0) > 10 * s.get("median_rendered", np.inf) and "worst" in s:
                print(f"  seed {r['seed']}: LED {s['worst']} (illumination NA {s['worst_illumination_na']:.4f}) haze off by "
                      f"{s['max_abs']:.4f}, brightness {s['worst_brightness']:.3f} (true {s['worst_brightness_true']:.3f})")
    far = [(r, i) for r in rows for i in range(11) if abs(r["err"][i]) > 4 * r["u"][i]]
    for r, i in far:  # where U misses by more than 2 U: how small u was, and against what
        part = f", fit part {r['u_fit'][i]:.5f}" if r.get("u_fit") else ""
        print(f" beyond 4 u: seed {r['seed']} Noll {i + 5}: error {r['err'][i]:+.5f}, u {r['u'][i]:.5f}{part} "
              f"(median u of its trial {np.median(r['u']):.5f})")


def _one_thread() -> None:
    """Worker start-up: one OpenMP/torch thread per process (the processes are the parallelism)."""
    import torch

    torch.set_num_threads(1)


def run_trials(jobs, workers, json_path=None):
    """Run ``trial(*job)`` for every job, ``workers`` processes at a time; yield each row as it ends
    (and rewrite ``json_path`` with every row so far, so an interrupted study keeps its trials)."""
    rows = []
    pool = None
    if workers <= 1:
        results = (trial(*job) for job in jobs)
    else:
        pool = ProcessPoolExecutor(workers, initializer=_one_thread)
        results = (f.result() for f in as_completed([pool.submit(trial, *job) for job in jobs]))
    try:
        for r in results:
            rows.append(r)
            if json_path:
                with open(json_path, "w") as fh:
                    json.dump(rows, fh, indent=1, default=float)
            yield r
    finally:  # workers stopped here, not by the interpreter's exit (which raised "Bad file descriptor")
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def sweep(station, leds, n_lenses, mode, limit=0.05, workers=1, json_path=None):
    """Lenses with astigmatism (Noll 6) from 0.02 to 0.08 waves around ``limit``: the decision rule
    on the measured value and its U (ISO 14253-1)."""
    jobs = []
    for i, a6 in enumerate(np.linspace(0.02, 0.08, n_lenses)):
        lens = standard_lens(700 + i, rms=0.03)
        lens[5] = a6
        jobs.append((station, leds, 700 + i, mode, lens))
    rows = []
    for r in run_trials(jobs, workers, json_path):
        a6 = float(np.asarray(r["lens"])[5])
        z6, u6 = a6 + r["err"][1], r["u"][1]
        U = 2 * u6
        verdict = "INCONCLUSIVE" if not valid(r) else ("PASS" if abs(z6) + U <= limit else
                                                    "FAIL" if abs(z6) - U > limit else "INCONCLUSIVE")
        truth = "PASS" if a6 <= limit else "FAIL"
        far = abs(a6 - limit) > 2 * U
        rows.append({**r, "a6": a6, "measured": z6, "U": U, "verdict": verdict, "truth": truth, "far": far})
        print(f"  a6 {a6:.4f} measured {z6:.4f} +/- {U:.4f} -> {verdict} (truth {truth}{', far' if far else ''}; "
              f"chi2r {r['reduced_chi2']:.2f}, {'converged' if r['converged'] else 'NOT converged'})", flush=True)
    false_pass = sum(r["verdict"] == "PASS" and r["truth"] == "FAIL" for r in rows)
    false_fail = sum(r["verdict"] == "FAIL" and r["truth"] == "PASS" for r in rows)
    far = [r for r in rows if r["far"]]
    inc_far = sum(r["verdict"] == "INCONCLUSIVE" for r in far)
    print(f"\n{n_lenses} lenses: false PASS {false_pass}, false FAIL {false_fail}; INCONCLUSIVE among lenses "
          f"more than 2U from the limit: {inc_far} of {len(far)} ({100 * inc_far / max(len(far), 1):.0f} %, target <= 10 %)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("trials", "sweep"), default="trials")
    ap.add_argument("--mode", choices=("known", "prior", "blind"), default="known")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--frame", type=int, default=48)
    ap.add_argument("--leds", type=int, default=9)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (instead of --first-seed and --trials)")
    ap.add_argument("--json", default=None, help="write every trial's numbers here")
    ap.add_argument("--workers", type=int, default=1, help="trials run in this many processes")
    ap.add_argument("--finite-budget", action="store_true",
                    help="the constants' effects evaluated at c +/- u (measurement_from_fit(finite_budget=True))")
    ap.add_argument("--free-sample-budget", action="store_true",
                    help="blind/prior: the constants' effects with the fitted sample following them "
                         "(measurement_from_fit(free_sample_budget=True))")
    ap.add_argument("--refit-radius", action="store_true",
                    help="blind/prior: the NA, magnification and pixel as one pupil-radius term, by two warm "
                         "re-fits at +/- its u (measurement_from_fit(refit_radius=True))")
    ap.add_argument("--refit-edge", action="store_true",
                    help="the pupil edge's model form: the fit re-run with the other edge discretisation, the "
                         "difference as one standard uncertainty (measurement_from_fit(refit_edge=True))")
    ap.add_argument("--exact-constants", action="store_true",
                    help="the station's constants exactly as stated (only the physics is off-model)")
    ap.add_argument("--spectral-points", type=int, default=None,
                    help="the model's wavelengths across the LED spectrum (default: the station's, 2)")
    ap.add_argument("--spherical", action="store_true",
                    help="each LED's exact spherical wave rendered (the model keeps the station's plane waves)")
    ap.add_argument("--stray-light", type=float, default=0.0, metavar="F",
                    help="render each LED's veiling glare around F (clear-pupil units, log-uniform F/3 to 3F) and "
                         "state lens.stray_light (the model's uniform term)")
    ap.add_argument("--stray-gradient", type=float, default=0.3,
                    help="the glare's peak-to-peak change across the frame, fraction of its mean (default 0.3)")
    ap.add_argument("--no-stray-model", action="store_true",
                    help="with --stray-light: the station does not state the term (the bias without it)")
    ap.add_argument("--fit-na", action="store_true",
                    help="known/prior: fit the pupil edge's NA as blind mode does (from round 3; U then carries "
                         "the edge's model-form term)")
    ap.add_argument("--model-spherical", action="store_true",
                    help="the station states led_array.spherical_illumination: the model's common curvature "
                         "(and the rendering's spherical waves)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    st = trial_station(args.frame)
    if args.spectral_points:
        st = st.replace(spectral_points=args.spectral_points)
    if args.model_spherical:
        st = st.replace(spherical_illumination=True)
    if args.stray_light and not args.no_stray_model:
        st = st.replace(stray_light=True)
    stray = (args.stray_light, args.stray_gradient) if args.stray_light else None
    h = args.leds // 2
    leds = [(r, c) for r in range(7 - h, 8 + h) for c in range(7 - h, 8 + h)]
    t0 = time.perf_counter()
    if args.part == "sweep":
        rows = sweep(st, leds, args.trials, args.mode, workers=args.workers, json_path=args.json)
    else:
        rows = []
        budget = {"finite_budget": args.finite_budget, "free_sample_budget": args.free_sample_budget,
                  "refit_radius": args.refit_radius, "refit_edge": args.refit_edge or None}
        seeds = ([int(x) for x in args.seeds.split(",")] if args.seeds
                 else [args.first_seed + k for k in range(args.trials)])
        jobs = [(st, leds, seed, args.mode, None, args.exact_constants, budget, args.spherical, stray, args.fit_na)
                for seed in seeds]
        for r in run_trials(jobs, args.workers, args.json):
            rows.append(r)
            print(f"  seed {r['seed']}: error {r['error_5_15']:.5f} waves, shift {r['shift_error_um']:.1f} um, "
                  f"chi2r {r['reduced_chi2']:.2f} (noise {r['reduced_chi2_noise']:.2f}), bounds {r['at_bounds']}, data fraction {r['effective_data_fraction'] or float('nan'):.2f}, "
                  f"{'converged' if r['converged'] else 'NOT converged'}, RMS(err/u) "
                  f"{np.sqrt(np.mean((np.array(r['err']) / np.array(r['u'])) ** 2)):.2f}, largest constant "
                  f"{r['largest']}, {r['time_s']:.0f} s; NA {r['na']:.5f} (effective truth {r['na_effective_truth']:.5f})"
                  + ("" if r["converged"] else f"; {r['message'][:160]}"), flush=True)
        summarise(rows)
    print(f"\n{args.part} {args.mode}{' (constants as stated)' if args.exact_constants else ''}: {args.frame} px "
          f"frames, {len(leds)} LEDs, {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
