"""One inspection end to end: the result document, the report arrays and the files.

Exit codes: 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2, bad input, is raised as InputError before any
file is written).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from metrology import __version__
from metrology.conventions import ALIGNMENT_NOLL, CONVENTIONS_TEXT, COVERAGE_FACTOR, DECISION_RULE
from metrology.pipeline import Timer, audit_store_path, check_output_dir, load_inputs, measure, station_status

EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}
DEFAULT_MTF_FRACTIONS = (0.1, 0.25, 0.5)
"""MTF reported at these fractions of the incoherent cut-off when the spec names no frequency."""


@dataclass
class InspectionOutcome:
    document: dict
    pdf_path: Path
    json_path: Path
    exit_code: int


def _q(quantity) -> dict:
    v, u = float(quantity.value), float(quantity.u)
    return {"value": v, "u": u, "U": COVERAGE_FACTOR * u}


def _finite(x, default=0.0) -> float:
    x = float(x)
    return x if math.isfinite(x) else default


def conventions_block() -> dict:
    return {
        "text": CONVENTIONS_TEXT,
        "zernike_ordering": "Noll",
        "zernike_normalisation": "Noll: unit RMS over the unit disk; cos for even j, sin for odd j",
        "axes": "x along image columns, y along image rows, +y down on every map, z towards the objective",
        "units": "mm station, um sample plane, nm wavelength/OPD, waves Zernike",
        "decision_rule": DECISION_RULE,
        "coverage_factor": int(COVERAGE_FACTOR),
    }


def figures_of_merit(measurement, spec) -> dict:
    """Lens figures with uncertainties (Monte Carlo over the coefficient covariance)."""
    from metrology.analysis.figures import cutoff_cyc_per_mm, strehl_psf
    from metrology.analysis.propagation import derived_figures

    c = np.nan_to_num(measurement.zernike_waves)
    cov = np.nan_to_num(measurement.zernike_cov)
    cut = cutoff_cyc_per_mm(measurement.wavelength_nm, measurement.na)
    freqs = [m.frequency_cyc_per_mm for m in spec.mtf] if spec is not None and spec.mtf else [
        round(f * cut, 1) for f in DEFAULT_MTF_FRACTIONS
    ]
    figs = derived_figures(c, cov, measurement.wavelength_nm, measurement.na, mtf_frequencies_cyc_per_mm=freqs)
    strehl = figs["strehl"]
    s_psf = strehl_psf(c)
    return {
        "rms_waves": _q(figs["rms_waves"]),
        "rms_nm": _q(figs["rms_nm"]),
        "pv_waves": _q(figs["pv_waves"]),
        # the pupil is a Zernike model (no residual map beyond it): PVr = PV + 3 x 0
        "pvr_waves": _q(figs["pv_waves"]),
        "strehl": _q(strehl),
        "strehl_psf": {"value": float(s_psf), "u": float(strehl.u), "U": COVERAGE_FACTOR * float(strehl.u)},
        "fit_residual_waves": 0.0,
        "mtf": [
            {"frequency_cyc_per_mm": float(f), **_q(figs[f"mtf@{f:g}"])} for f in freqs
        ],
    }


def build_document(loaded, fit, measurement, verdict, status, figures, timings, serial, operator, now) -> dict:
    """The result document (schema ``metrology/schemas/inspection_result.schema.json``)."""
    from metrology.analysis.wavefront import zernike_table

    cap = loaded.capture
    u = measurement.zernike_u
    table = zernike_table(measurement.zernike_waves, u=u)
    zern = []
    for row in table:
        j = int(row["noll"])
        zern.append({
            "noll": j, "n": int(row["n"]), "m": int(row["m"]), "name": row["name"], "family": row["family"],
            "value_waves": _finite(row["value_waves"]), "u_waves": _finite(u[j - 1]),
            "U_waves": _finite(COVERAGE_FACTOR * u[j - 1]), "alignment": j in ALIGNMENT_NOLL,
        })
    ident = measurement.identifiability
    q = measurement.quality
    return {
        "schema_version": "1.0",
        "software": {"name": "lens-metrology", "version": __version__, "compute_device": fit.device},
        "created_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lens": {"model": cap.lens_model or (loaded.spec.model if loaded.spec is not None else ""),
                 "serial": serial},
        "operator": operator,
        "station": {"id": loaded.station.station_id, "calibration": {
            "status": status["status"], "reason": status.get("reason", ""),
            "calibrated_utc": status.get("calibrated_utc"), "valid_until": status.get("valid_until")}},
        "inputs": loaded.inputs,
        "conventions": conventions_block(),
        "wavelength_nm": float(measurement.wavelength_nm),
        "na": float(measurement.na),
        "tile_center_mm": [float(x) for x in measurement.tile_center_mm],
        "zernike": zern,
        "figures_of_merit": figures,
        "station_misalignment": [
            {"name": s.name, "label": s.label, "unit": s.unit, "value": float(s.value), "u": float(s.u),
             "U": COVERAGE_FACTOR * float(s.u)} for s in measurement.station
        ],
        "identifiability": {
            "condition_number": float(min(ident.condition_number, 1e300)),
            "max_abs_correlation": float(min(max(ident.max_abs_correlation, 0.0), 1.0)),
            "strong_pairs": [{"a": a, "b": b, "correlation": float(c)} for a, b, c in ident.strong_pairs[:20]],
            "unidentifiable": list(ident.unidentifiable),
        },
        "data_quality": {
            "saturated_fraction": float(q.saturated_fraction), "hot_pixels": int(q.hot_pixels),
            "blank_frames": [int(b) for b in q.blank_frames],
            "flags": [{"code": c, "message": m, "severity": s} for c, m, s in q.flags],
        },
        "solver": {
            "mode": measurement.solver.mode, "loss": measurement.solver.loss_name,
            "iterations": int(measurement.solver.iterations), "converged": bool(measurement.solver.converged),
            "final_loss": _finite(measurement.solver.final_loss, -1.0),
            "reduced_chi2": _finite(measurement.solver.reduced_chi2, -1.0),
            "history": [_finite(h, -1.0) for h in measurement.solver.history],
            "message": measurement.solver.message,
            "at_bounds": [str(n) for n in measurement.solver.at_bounds],
        },
        "verdict": {
            "overall": verdict.overall,
            "reasons": list(verdict.reasons) + [f"warning: {w}" for w in getattr(verdict, "warnings", [])],
            "limits": [
                {"name": r.name, "kind": r.kind, "limit": float(r.limit), "unit": r.unit,
                 "value": _finite(r.value, -1.0), "u": _finite(r.u, -1.0), "U": _finite(r.U, -1.0),
                 "verdict": r.verdict, "reason": r.reason}
                for r in verdict.limits
            ],
        },
        "timings_s": {k: float(timings.get(k, 0.0)) for k in ("load", "reconstruct", "analyse", "report")},
    }


def build_arrays(fit, measurement):
    """Arrays behind the report's figures."""
    import torch

    from metrology.analysis.figures import mtf_curve, psf
    from metrology.analysis.wavefront import wavefront_map
    from metrology.report.plots import ReportArrays

    c = np.nan_to_num(measurement.zernike_waves)
    model = fit.model
    g = model.geometry
    p, pix = psf(c, n_pupil=64, pad=4)
    p0, _ = psf(np.zeros_like(c), n_pupil=64, pad=4)
    half = p.shape[0] // 2
    w = 24
    curve = mtf_curve(c, measurement.wavelength_nm, measurement.na, n_points=61)
    with torch.no_grad():
        pred = model().cpu().numpy()
        t = model.sample.transmission().cpu().numpy()
        k = torch.linalg.vector_norm(model.illumination.spatial_frequencies(), dim=-1).cpu().numpy()
        xy = model.illumination.led_positions_mm()[:, :2].cpu().numpy()
        brightness = model.illumination.brightness.cpu().numpy()
    data = fit.data.cpu().numpy()
    bright = int(np.argmin(k))
    dark_candidates = np.where(k > 1.3 * g.cutoff)[0]
    dark = int(dark_candidates[np.argmin(k[dark_candidates])]) if dark_candidates.size else int(np.argmax(k))
    frames = {
        name: {"led": tuple(int(x) for x in g.leds[j]), "measured": data[j], "modelled": pred[j]}
        for name, j in (("bright", bright), ("dark", dark))
    }
    return ReportArrays(
        pupil_phase_waves=wavefront_map(c, 128),
        psf=p[half - w : half + w, half - w : half + w],
        psf_pixel_um=pix * g.wavelength_um / measurement.na,
        psf_diffraction=p0[half - w : half + w, half - w : half + w],
        mtf_freq_cyc_per_mm=curve["frequency_cyc_per_mm"],
        mtf=np.minimum(curve["mtf_x"], curve["mtf_y"]),
        mtf_diffraction=curve["mtf_diffraction_limited"],
        sample_amplitude=np.abs(t),
        sample_phase=np.angle(t),
        sample_pixel_um=g.object_pixel_um,
        frames=frames,
        loss_history=np.asarray(fit.history, dtype=float),
        led_xy_mm=xy,
        led_brightness=brightness,
        led_residual=np.asarray(fit.frame_residuals, dtype=float),
    )


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


def run_inspection(capture, station, spec, *, reference=None, serial=None, operator="", out_dir="reports",
                   audit_db=None, mode="known", max_iterations=None, progress=None, now=None,
                   device="cpu") -> InspectionOutcome:
    """Inspect one capture: validate, reconstruct, analyse, decide, write the PDF and JSON.

    Everything is validated first; the files are written atomically at the end (JSON last), and
    an inspection record is appended to the audit store when one is configured. ``device`` chooses
    where the fit runs (``cpu``, ``cuda``, ``auto``; recorded as ``software.compute_device``).
    """
    from metrology.analysis.verdict import judge
    from metrology.report.document import write_json_atomic
    from metrology.report.pdf import write_inspection_report

    timer = Timer()
    now = now or datetime.now(timezone.utc)
    out = check_output_dir(out_dir)
    loaded = load_inputs(capture, station, spec, reference)
    store_path = audit_store_path(audit_db)
    if store_path is not None:
        from metrology.audit.store import AuditStore

        AuditStore(store_path).close()  # a foreign or corrupt store fails now, before the fit
    serial = serial or loaded.capture.lens_serial or "unknown-serial"
    timer.lap("load")
    fit, measurement = measure(loaded, mode, max_iterations, progress, device=device)
    timer.lap("reconstruct")
    status = station_status(store_path, loaded, measurement, now)
    verdict = judge(measurement, loaded.spec, status)
    figures = figures_of_merit(measurement, loaded.spec)
    arrays = build_arrays(fit, measurement)
    timer.lap("analyse")
    stem = f"{safe_name(serial)}_{now.strftime('%Y%m%dT%H%M%SZ')}"
    pdf_path, json_path = out / f"{stem}.pdf", out / f"{stem}.json"
    doc = build_document(loaded, fit, measurement, verdict, status, figures, timer.sections, serial, operator, now)
    write_inspection_report(doc, arrays, pdf_path)
    timer.lap("report")
    doc["timings_s"] = {k: float(timer.sections.get(k, 0.0)) for k in ("load", "reconstruct", "analyse", "report")}
    try:
        write_json_atomic(json_path, doc)
    except Exception:
        pdf_path.unlink(missing_ok=True)
        raise
    if store_path is not None:
        _record(store_path, loaded, measurement, doc, status, serial, operator, now)
    return InspectionOutcome(doc, pdf_path, json_path, EXIT[verdict.overall])


def _record(store_path, loaded, measurement, doc, status, serial, operator, now) -> None:
    from metrology.audit.drift import check_and_record
    from metrology.audit.status import record_inspection
    from metrology.audit.store import AuditStore

    zern = {t["noll"]: (t["value_waves"], t["U_waves"]) for t in doc["zernike"] if not t["alignment"]}
    with AuditStore(store_path) as store:
        record_inspection(
            store, loaded.station.station_id, operator=operator, software_version=__version__,
            inputs={i["role"]: i["sha256"] for i in loaded.inputs}, misalignment=measurement.station,
            serial=serial, zernike=zern, figures={k: doc["figures_of_merit"][k] for k in ("rms_waves", "strehl")},
            verdict=doc["verdict"]["overall"], status=status, now=now,
        )
        check_and_record(store, loaded.station.station_id)
