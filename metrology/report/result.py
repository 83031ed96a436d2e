"""The inspection result document: built here from the measurement, the verdict and the figures.

The document (schema ``metrology/schemas/inspection_result.schema.json``, ``docs/report.md``) is
plain JSON; :func:`build_document` fills it from plain objects (no torch, no solver): the
:class:`~metrology.measurement.Measurement`, the :class:`~metrology.analysis.verdict.Verdict`, the
station status and the figures of merit (:func:`figures_of_merit`). Non-finite numbers are written
as JSON ``null`` (:func:`~metrology.report.document.finite_or_none`), in this document as in the
calibration summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metrology import __version__
from metrology.analysis.budget import budget_document
from metrology.analysis.figures import cutoff_cyc_per_mm
from metrology.analysis.lens_detail import report_figures
from metrology.analysis.propagation import derived_figures
from metrology.analysis.wavefront import zernike_table
from metrology.conventions import CONVENTIONS_TEXT, COVERAGE_FACTOR, DECISION_RULE
from metrology.parameters import element_label, parse_element
from metrology.report.document import SCHEMA_VERSION, finite_or_none

DEFAULT_MTF_FRACTIONS = (0.1, 0.25, 0.5)
"""MTF reported at these fractions of the incoherent cut-off when the spec names no frequency."""


def _q(quantity, measured: bool = True) -> dict:
    """``{"value", "u", "U"}`` of a figure; all null when nothing was measured."""
    if not measured:
        return {"value": None, "u": None, "U": None}
    v, u = float(quantity.value), float(quantity.u)
    return {"value": finite_or_none(v), "u": finite_or_none(u), "U": finite_or_none(COVERAGE_FACTOR * u)}


def _capped(x, lo: float, hi: float, if_nan: float) -> float:
    """``x`` clipped to ``[lo, hi]``; ``if_nan`` when it is NaN (the schema wants a number here)."""
    x = float(x)
    return if_nan if np.isnan(x) else float(min(max(x, lo), hi))


def conventions_block() -> dict:
    """The ``conventions`` block: the conventions text and its parts (:mod:`metrology.conventions`)."""
    return {
        "text": CONVENTIONS_TEXT,
        "zernike_ordering": "Noll",
        "zernike_normalisation": "Noll: unit RMS over the unit disk; cos for even j, sin for odd j",
        "axes": "x along image columns, y along image rows, +y down on every map, z towards the objective",
        "units": "mm station, um sample plane, nm wavelength/OPD, waves Zernike (OPD / the stated wavelength)",
        "decision_rule": DECISION_RULE,
        "coverage_factor": int(COVERAGE_FACTOR),
    }


def figures_of_merit(measurement, spec) -> dict:
    """Lens figures with uncertainties (Monte Carlo over the coefficient covariance); every one
    null when the measurement has no finite coefficients (a fit that measured nothing).

    ``strehl`` is the on-axis Strehl ratio (pupil integral, the judged one); ``strehl_psf`` the peak
    of the sampled PSF with its own uncertainty; ``pvr_waves`` Evans' robust PV and
    ``fit_residual_waves`` the residual it adds (:func:`metrology.analysis.lens_detail.report_figures`).
    """
    ok = bool(np.all(np.isfinite(measurement.zernike_waves)))
    c = np.nan_to_num(measurement.zernike_waves)
    cov = np.nan_to_num(measurement.zernike_cov)
    cut = cutoff_cyc_per_mm(measurement.wavelength_nm, measurement.na)
    freqs = [m.frequency_cyc_per_mm for m in spec.mtf] if spec is not None and spec.mtf else [
        round(f * cut, 1) for f in DEFAULT_MTF_FRACTIONS
    ]
    figs = derived_figures(c, cov, measurement.wavelength_nm, measurement.na, mtf_frequencies_cyc_per_mm=freqs)
    extra = report_figures(c, cov, pv=figs["pv_waves"])
    return {
        "rms_waves": _q(figs["rms_waves"], ok),
        "rms_nm": _q(figs["rms_nm"], ok),
        "pv_waves": _q(figs["pv_waves"], ok),
        "pvr_waves": _q(extra["pvr_waves"], ok),
        "strehl": _q(figs["strehl"], ok),
        "strehl_psf": _q(extra["strehl_psf"], ok),
        "fit_residual_waves": float(extra["fit_residual_waves"]) if ok else 0.0,
        "mtf": [
            {"frequency_cyc_per_mm": float(f), **_q(figs[f"mtf@{f:g}"], ok)} for f in freqs
        ],
    }


def float32_value(x) -> float:
    """``x`` with the digits a float32 holds: ``0.1`` for the NA a float32 model reports as
    ``0.10000000149011612`` (the shortest decimal that reads back to the same float32)."""
    return float(str(np.float32(x)))


def covariance_block(cov) -> dict:
    """``zernike_covariance``: the coefficient covariance (waves^2), Noll 1..K, null where not finite."""
    cv = np.asarray(cov, dtype=float)
    return {"noll": list(range(1, cv.shape[0] + 1)), "unit": "waves^2",
            "matrix": [[finite_or_none(x) for x in row] for row in cv]}


def report_block(report_id: str, loaded) -> dict:
    """``report``: the report ID and the specification file, revision and hash it was judged against."""
    spec = loaded.spec
    entry = next((i for i in loaded.inputs if i["role"] == "spec"), None)
    spec_block = None
    if spec is not None and entry is not None:
        band = list(spec.wavelength_band_nm) if spec.wavelength_band_nm else None
        spec_block = {"file": Path(entry["path"]).name, "revision": spec.revision, "sha256": entry["sha256"],
                      "wavelength_band_nm": band}
    return {"id": report_id, "spec": spec_block}


def _zernike_rows(measurement) -> list:
    u = measurement.zernike_u
    rows = []
    for row in zernike_table(measurement.zernike_waves, u=u):
        rows.append({
            "noll": int(row["noll"]), "n": int(row["n"]), "m": int(row["m"]), "name": row["name"],
            "family": row["family"], "value_waves": finite_or_none(row["value_waves"]),
            "u_waves": finite_or_none(row["u_waves"]), "U_waves": finite_or_none(row["U_waves"]),
            "alignment": bool(row["alignment"]),
        })
    return rows


def _station_rows(estimates) -> list:
    """One row per estimate (:class:`~metrology.measurement.StationEstimate`), named, labelled and in
    the unit of the registry."""
    rows = []
    for s in estimates:
        p, _ = parse_element(s.name)
        rows.append({"name": s.name, "label": element_label(s.name), "unit": p.unit,
                     "value": finite_or_none(s.value), "u": finite_or_none(s.u),
                     "U": finite_or_none(COVERAGE_FACTOR * float(s.u))})
    return rows


def _solver_block(solver) -> dict:
    return {
        "mode": solver.mode, "loss": solver.loss_name, "iterations": int(solver.iterations),
        "converged": bool(solver.converged), "final_loss": finite_or_none(solver.final_loss),
        "reduced_chi2": finite_or_none(solver.reduced_chi2),
        "history": [finite_or_none(h) for h in solver.history], "message": solver.message,
        "at_bounds": [str(n) for n in solver.at_bounds],
        "reduced_chi2_noise": finite_or_none(solver.reduced_chi2_noise),
        "data_uncertainty": _data_uncertainty(solver.data_uncertainty),
    }


def _data_uncertainty(summary: dict) -> dict:
    """The learned data uncertainty (:mod:`metrology.solver.weights`) in plain numbers."""
    if not summary:
        return {}
    return {
        "frame_scale": [finite_or_none(x) for x in summary.get("frame_scale", [])],
        "band_scale_median": [finite_or_none(x) for x in summary.get("band_scale_median", [])],
        "effective_data_fraction": finite_or_none(summary.get("effective_data_fraction")),
        "frames_scaled_above_2": int(summary.get("frames_scaled_above_2", 0)),
    }


def _verdict_block(verdict) -> dict:
    return {
        "overall": verdict.overall,
        "reasons": list(verdict.reasons) + [f"warning: {w}" for w in verdict.warnings],
        "valid": bool(verdict.valid),
        "limits": [
            {"name": r.name, "kind": r.kind, "limit": float(r.limit), "unit": r.unit,
             "value": finite_or_none(r.value), "u": finite_or_none(r.u), "U": finite_or_none(r.U),
             "verdict": r.verdict, "reason": r.reason, "key": r.key}
            for r in verdict.limits
        ],
        **({"zones": [_zone(z) for z in verdict.zones]} if verdict.zones else {}),
    }


def _zone(zone: dict) -> dict:
    """A field zone's verdict (:func:`metrology.analysis.zones.judge_zone`) with JSON numbers."""
    figures = [{**f, **{k: finite_or_none(f[k]) for k in ("value", "u", "U")}} for f in zone["figures"]]
    return {**zone, "figures": figures}


def build_document(loaded, measurement, verdict, status, figures, timings, serial, operator, now,
                   compute_device: str = "cpu", report_id: str | None = None, covariance=None) -> dict:
    """The result document (schema ``metrology/schemas/inspection_result.schema.json``).

    Parameters
    ----------
    loaded : metrology.pipeline.LoadedInputs
        Its ``capture`` (lens model), ``spec`` (model, when the capture names none), ``station``
        (id) and ``inputs`` (role, path, SHA-256 of every input file).
    measurement : metrology.measurement.Measurement
    verdict : metrology.analysis.verdict.Verdict
    status : dict
        Station calibration status (:func:`metrology.pipeline.station_status`).
    figures : dict
        :func:`figures_of_merit`.
    timings : dict
        Seconds per section (``load``, ``reconstruct``, ``analyse``, ``report``).
    serial, operator : str
    now : datetime
        Creation time (UTC).
    compute_device : str
        Where the fit ran (``software.compute_device``).
    report_id : str, optional
        The report ID (``report.id``); the block is left out without one.
    covariance : ndarray, shape (K, K), optional
        Coefficient covariance for ``zernike_covariance`` (left out without one).
    """
    cap = loaded.capture
    ident = measurement.identifiability
    q = measurement.quality
    doc = {
        "schema_version": SCHEMA_VERSION,
        "software": {"name": "lens-metrology", "version": __version__, "compute_device": compute_device},
        "created_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lens": {"model": cap.lens_model or (loaded.spec.model if loaded.spec is not None else ""),
                 "serial": serial},
        "operator": operator,
        "station": {"id": loaded.station.station_id, "calibration": {
            "status": status["status"], "reason": status.get("reason", ""),
            "calibrated_utc": status.get("calibrated_utc"), "valid_until": status.get("valid_until")}},
        "inputs": loaded.inputs,
        "conventions": conventions_block(),
        "wavelength_nm": float32_value(measurement.wavelength_nm),
        "na": float32_value(measurement.na),
        "tile_center_mm": [float32_value(x) for x in measurement.tile_center_mm],
        "zernike": _zernike_rows(measurement),
        "figures_of_merit": figures,
        "station_misalignment": _station_rows(measurement.station),
        "identifiability": {
            # capped: a condition number that is not finite is "as bad as it gets", 1e300
            "condition_number": _capped(ident.condition_number, 0.0, 1e300, 1e300),
            "max_abs_correlation": _capped(ident.max_abs_correlation, 0.0, 1.0, 1.0),
            "strong_pairs": [{"a": a, "b": b, "correlation": float(c)} for a, b, c in ident.strong_pairs[:20]
                             if np.isfinite(c)],
            "unidentifiable": list(ident.unidentifiable),
        },
        "data_quality": {
            "saturated_fraction": float(q.saturated_fraction), "hot_pixels": int(q.hot_pixels),
            "blank_frames": [int(b) for b in q.blank_frames],
            "duplicate_frames": [[int(j), int(i)] for j, i in getattr(q, "duplicate_frames", [])],
            "flags": [{"code": c, "message": m, "severity": s} for c, m, s in q.flags],
        },
        "solver": _solver_block(measurement.solver),
        "verdict": _verdict_block(verdict),
        "timings_s": {k: float(timings.get(k, 0.0)) for k in ("load", "reconstruct", "analyse", "report")},
        "uncertainty_budget": budget_document(measurement),
    }
    if measurement.vignetting:
        doc["vignetting"] = _station_rows(measurement.vignetting)
    if measurement.lens_parameters:
        doc["lens_parameters"] = _station_rows(measurement.lens_parameters)
    if report_id is not None:
        doc["report"] = report_block(report_id, loaded)
        doc["audit_record"] = None
    if covariance is not None:
        doc["zernike_covariance"] = covariance_block(covariance)
    return doc
