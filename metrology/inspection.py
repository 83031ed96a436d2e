"""One inspection end to end: validate, measure, judge, then the report arrays and the files.

The result document is built in :mod:`metrology.report.result`; this module runs the steps and
writes the PDF, the JSON and the audit record. Exit codes: 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2, bad
input, is raised as InputError before any file is written).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from metrology import __version__
from metrology.analysis.figures import mtf_curve, psf
from metrology.analysis.verdict import judge
from metrology.analysis.wavefront import wavefront_map
from metrology.audit.drift import check_and_record
from metrology.audit.status import record_inspection
from metrology.audit.store import AuditStore
from metrology.io.files import safe_file_name
from metrology.pipeline import Timer, audit_store_path, check_output_dir, load_inputs, measure, station_status
from metrology.report.document import write_json_atomic
from metrology.report.pdf import write_inspection_report
from metrology.report.plots import ReportArrays
from metrology.report.result import build_document, figures_of_merit

EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


@dataclass
class InspectionOutcome:
    document: dict
    pdf_path: Path
    json_path: Path
    exit_code: int


def build_arrays(fit, measurement):
    """Arrays behind the report's figures."""
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
        led_scale=None if fit.weights is None else fit.weights.frame_scale(),
    )


def run_inspection(capture, station, spec, *, reference=None, serial=None, operator="", out_dir="reports",
                   audit_db=None, mode="known", max_iterations=None, progress=None, now=None,
                   device="cpu") -> InspectionOutcome:
    """Inspect one capture: validate, reconstruct, analyse, decide, write the PDF and JSON.

    Everything is validated first; the files are written atomically at the end (JSON last), and
    an inspection record is appended to the audit store when one is configured. ``device`` chooses
    where the fit runs (``cpu``, ``cuda``, ``auto``; recorded as ``software.compute_device``).
    """
    timer = Timer()
    now = now or datetime.now(timezone.utc)
    out = check_output_dir(out_dir)
    loaded = load_inputs(capture, station, spec, reference)
    store_path = audit_store_path(audit_db)
    if store_path is not None:
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
    stem = f"{safe_file_name(serial)}_{now.strftime('%Y%m%dT%H%M%SZ')}"
    pdf_path, json_path = out / f"{stem}.pdf", out / f"{stem}.json"
    doc = build_document(loaded, measurement, verdict, status, figures, timer.sections, serial, operator, now,
                         fit.device)
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
    zern = {t["noll"]: (t["value_waves"], t["U_waves"]) for t in doc["zernike"] if not t["alignment"]}
    with AuditStore(store_path) as store:
        record_inspection(
            store, loaded.station.station_id, operator=operator, software_version=__version__,
            inputs={i["role"]: i["sha256"] for i in loaded.inputs}, misalignment=measurement.station,
            serial=serial, zernike=zern, figures={k: doc["figures_of_merit"][k] for k in ("rms_waves", "strehl")},
            verdict=doc["verdict"]["overall"], status=status, now=now,
        )
        check_and_record(store, loaded.station.station_id)
