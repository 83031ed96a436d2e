"""One inspection end to end: validate, measure, judge, record, then the report files.

The Python API: :func:`inspect` returns an :class:`InspectionResult` without writing anything;
:func:`write_report` writes its PDF and JSON (and, with an audit store, :func:`record` appends the
inspection record that commits them); :func:`run_inspection` (the CLI's single capture) composes
them and always records: the store is ``--audit-db`` or the default of
:func:`metrology.pipeline.audit_store_path`. The result document is built in
:mod:`metrology.report.result`. The PDF, the JSON (and the sample, when asked) and the audit record
are written as one unit (:mod:`metrology.io.results`); page 1 and the JSON state the record's seq
and the chain hash it extends. Exit codes: 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2, bad input, is raised
as InputError before any file is written; a failure to write or record the results leaves nothing
and is an internal error, 4, at the command line).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from metrology import __version__
from metrology.analysis.figures import cutoff_cyc_per_mm, mtf_azimuths, mtf_diffraction_limited, psf
from metrology.analysis.propagation import MTF_AZIMUTHS_DEG
from metrology.analysis.zones import field_mtf, judge_field, mtf_vs_field
from metrology.analysis.wavefront import wavefront_map
from metrology.audit.drift import check_and_record
from metrology.audit.status import record_inspection
from metrology.audit.store import AuditStore, HeadMoved
from metrology.io.files import safe_file_name
from metrology.io.results import ResultsNotWritten, new_unit, recover, write_unit
from metrology.limits import MAX_NAME_CHARS, MAX_SERIAL_CHARS, check_text
from metrology.pipeline import (Timer, audit_store_path, check_output_dir, ensure_output_dir, load_inputs, measure,
                                prepare_audit_store, station_status)
from metrology.pipeline_field import measure_field
from metrology.progress import reporter
from metrology.report.document import document_bytes
from metrology.report.field_result import field_block
from metrology.report.pdf import render_inspection_report
from metrology.report.plots import ReportArrays
from metrology.report.result import build_document, figures_of_merit
from metrology.report.sample_files import check_sample_format, sample_bytes
from metrology.solver.quality import frames_left_out

EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


@dataclass
class InspectionOutcome:
    document: dict
    pdf_path: Path
    json_path: Path
    exit_code: int
    sample_path: Path | None = None
    extra: dict = field(default_factory=dict)


def build_arrays(fit, measurement):
    """Arrays behind the report's figures."""
    c = np.nan_to_num(measurement.zernike_waves)
    model = fit.model
    g = model.geometry
    p, pix = psf(c, n_pupil=64, pad=4)
    p0, _ = psf(np.zeros_like(c), n_pupil=64, pad=4)
    half = p.shape[0] // 2
    w = 24
    nu = np.linspace(0.0, 1.0, 61)
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
        mtf_freq_cyc_per_mm=nu * cutoff_cyc_per_mm(measurement.wavelength_nm, measurement.na),
        # the judged MTF is the worst of these azimuths: the curve shows the same quantity
        mtf=mtf_azimuths(c, nu, MTF_AZIMUTHS_DEG).min(axis=0),
        mtf_diffraction=mtf_diffraction_limited(nu),
        mtf_label="worst of " + "/".join(f"{a:g}" for a in MTF_AZIMUTHS_DEG) + " deg azimuth",
        sample_amplitude=np.abs(t),
        sample_phase=np.angle(t),
        sample_pixel_um=g.object_pixel_um,
        frames=frames,
        loss_history=np.asarray(fit.history, dtype=float),
        led_xy_mm=xy,
        led_brightness=brightness,
        led_residual=_fitted_frames_only(fit, fit.frame_residuals),
        led_scale=None if fit.weights is None else fit.weights.frame_scale(),
    )


def _fitted_frames_only(fit, per_frame) -> np.ndarray:
    """``per_frame`` (J,) with NaN where no pixel of the frame was fitted (blank, repeated): the
    report's LED maps draw those grey instead of as a perfect fit."""
    values = np.asarray(per_frame, dtype=float).copy()
    values[frames_left_out(fit.mask)] = np.nan
    return values


@dataclass
class InspectionResult:
    """What one inspection found, before (or without) any file being written.

    Attributes
    ----------
    document : dict
        The result document (schema ``metrology/schemas/inspection_result.schema.json``), the
        content of the JSON file.
    arrays : metrology.report.plots.ReportArrays
        The arrays behind the report's figures.
    measurement : metrology.measurement.Measurement
        Zernike coefficients, station estimates and their uncertainties (numpy, no torch).
    status : dict
        The station's calibration status for this run (``"none"`` without an audit store).
    created : datetime
        Time of the run (UTC); it names the result files.
    field_measurement : metrology.pipeline_field.FieldMeasurement or None
        A full-field capture's tiles, field model, distortion and curvature (None: one tile).
    """

    document: dict
    arrays: object
    measurement: object
    status: dict
    created: datetime
    field_measurement: object = None

    @property
    def verdict(self) -> str:
        """PASS, FAIL or INCONCLUSIVE."""
        return self.document["verdict"]["overall"]

    @property
    def exit_code(self) -> int:
        """0 PASS, 1 FAIL, 3 INCONCLUSIVE (the CLI's exit codes)."""
        return EXIT[self.verdict]

    @property
    def file_stem(self) -> str:
        """``<station>_<serial>_<UTC>``: the result files' name without extension and without the
        unit's random token (:func:`write_report` appends ``_<token>``)."""
        doc = self.document
        return (f"{safe_file_name(doc['station']['id'])}_{safe_file_name(doc['lens']['serial'])}_"
                f"{self.created.strftime('%Y%m%dT%H%M%SZ')}")


def report_id(station_id: str, now: datetime, inputs: list) -> str:
    """``<station>-<UTC yyyymmddThhmmssZ>-<8 hex>``: the hex is the start of the SHA-256 of the
    station, the time and the input hashes, so two reports never share an ID unless they come from
    the same files on the same station in the same second."""
    h = hashlib.sha256(f"{station_id}|{now.isoformat()}".encode())
    for item in inputs:
        h.update(f"|{item['role']}:{item['sha256']}".encode())
    return f"{safe_file_name(station_id, 'station')}-{now.strftime('%Y%m%dT%H%M%SZ')}-{h.hexdigest()[:8]}"


def _store_to_use(store_path, create: bool):
    """``store_path`` when the run may create a store, or a store is there (or it is a database
    URL); else None: reading the calibration status never creates a store."""
    if create or store_path is None or isinstance(store_path, str) or Path(store_path).exists():
        return store_path
    return None


def _measure(loaded, mode, max_iterations, rep, device, tile_jobs=None):
    """``(loaded, fit, measurement, field_measurement)``: one tile's fit, or a full-field capture's
    tiles (:func:`metrology.pipeline_field.measure_field`, ``tile_jobs`` processes) with the tile
    nearest the axis driving the single-tile report and verdict (its inputs, fit and measurement
    returned)."""
    if loaded.station.field_layout is None:
        return (loaded, *measure(loaded, mode, max_iterations, rep, device=device), None)
    fm = measure_field(loaded, mode, max_iterations, rep, device=device, workers=tile_jobs)
    return fm.loaded[fm.central], fm.fits[fm.central], fm.measurements[fm.central], fm


def inspect(capture, station, spec, *, reference=None, serial=None, operator="", audit_db=None, mode="known",
            max_iterations=None, progress=None, now=None, device="auto", create_store=False,
            tile_jobs=None) -> InspectionResult:
    """Inspect one capture and return the result; no file is written.

    Parameters
    ----------
    capture, station, spec : str or Path
        Capture TIFF, station description and lens specification (docs/formats.md, docs/spec.md).
    reference : str, optional
        Reference sample: catalogue ``ID[:seed=N]`` or a ``.npy`` map (default: from the capture;
        none needed in blind mode).
    serial, operator : str, optional
        Lens serial (default: from the capture) and operator name for the report.
    audit_db : str or Path, optional
        Audit store (SQLite file or ``postgresql://`` URL) read for the station's calibration
        status; default as every command (:func:`metrology.pipeline.audit_store_path`); a store that
        does not exist yet gives status ``"none"`` and is not created. Nothing is recorded here:
        see :func:`record`.
    mode : {"known", "prior", "blind"}
    max_iterations : int, optional
    progress : Progress or callable ``(i, n, loss)``, optional
        Stages and iterations (:func:`metrology.progress.reporter`).
    now : datetime, optional
        Time of the run (default now, UTC).
    device : str
        Where the fit runs: ``auto`` (default, as the CLI: a CUDA GPU when torch sees one), ``cpu``,
        ``cuda[:N]``.
    create_store : bool
        Create the audit store when it does not exist (the CLI: every inspection is recorded);
        default False (the API reads an existing store only).
    tile_jobs : int or tile executor, optional
        Full-field captures: processes fitting the tiles (default one per core; any number gives the
        same result), or a tile executor (Ray tasks): :func:`metrology.pipeline_field.measure_field`.

    Raises
    ------
    InputError
        Bad input, before the fit; the message names the file and the problem.

    Notes
    -----
    With an audit store, the store is proved writable and its hash chain verified from the stored
    checkpoint before the fit (:func:`metrology.pipeline.prepare_audit_store`): a broken chain makes
    the station status ``"untrusted"`` and the verdict INCONCLUSIVE. No record is appended; only
    the verification checkpoint in the store's ``audit_meta`` moves forward.
    """
    rep = reporter(progress)
    timer = Timer()
    now = now or datetime.now(timezone.utc)
    rep.stage("load inputs")
    check_text(operator, "--operator", "operator name", MAX_NAME_CHARS)
    if serial is not None:
        check_text(serial, "--serial", "lens serial", MAX_SERIAL_CHARS, allow_empty=False)
    loaded = load_inputs(capture, station, spec, reference, mode=mode)
    store_path = _store_to_use(audit_store_path(audit_db), create_store)
    if store_path is not None:
        prepare_audit_store(store_path)  # a foreign, read-only or corrupt store fails now, before the fit
    serial_used = serial or loaded.capture.lens_serial or "unknown-serial"
    timer.lap("load")
    layout = loaded.station.field_layout
    loaded, fit, measurement, field_measurement = _measure(loaded, mode, max_iterations, rep, device, tile_jobs)
    timer.lap("reconstruct")
    rep.stage("analyse (verdict, figures of merit)")
    status = station_status(store_path, loaded, measurement, now)
    mtf = field_mtf(field_measurement, loaded.spec, measurement.wavelength_nm, measurement.na)
    verdict = judge_field(measurement, loaded.spec, status, field_measurement, mtf=mtf)
    figures = figures_of_merit(measurement, loaded.spec)
    arrays = build_arrays(fit, measurement)
    timer.lap("analyse")
    doc = build_document(loaded, measurement, verdict, status, figures, timer.sections, serial_used, operator, now,
                         fit.device, report_id=report_id(loaded.station.station_id, now, loaded.inputs),
                         covariance=measurement.zernike_cov)
    if field_measurement is not None:
        doc["field"] = field_block(layout, loaded.station, field_measurement,
                                   mtf_vs_field(field_measurement, loaded.spec, mtf))
    # the options as given: with the input hashes they identify the run (batch resume)
    doc["extensions"] = {"run": {"mode": mode, "reference": reference, "reference_used": loaded.reference_label,
                                 "serial": serial, "max_iterations": max_iterations}}
    return InspectionResult(doc, arrays, measurement, status, now, field_measurement)


def write_report(result: InspectionResult, out_dir="reports", *, audit_db=None, notify=None,
                 export_sample=None) -> tuple:
    """Write ``<station>_<serial>_<UTC>_<token>.pdf`` and ``.json`` (and the sample) into
    ``out_dir`` with the audit record, as one unit (:func:`metrology.io.results.write_unit`).

    Unfinished results that killed runs left in ``out_dir`` are first completed or removed
    (:func:`recover_results`). The files are then written under temporary names, the inspection
    record that names them and their SHA-256 is appended (the commit), and they get their final
    names; ``token`` (8 random hex digits, the record's ``result.id``) keeps concurrent runs apart.
    Page 1 of the PDF and the JSON state the record's seq and the chain hash it extends
    (``audit_record``), read from the store before the files are made; the record is appended only
    onto that head (:func:`_write_unit`). Drift alarms are evaluated after the commit (not for an
    untrusted store). ``notify(line)`` receives the recovery notes and warnings. ``export_sample``
    (``"tif"`` or ``"h5"``) adds the reconstructed sample with its pixel size to the unit
    (:mod:`metrology.report.sample_files`). Without ``audit_db`` nothing is recorded and
    ``audit_record`` is null.

    Returns
    -------
    pdf_path, json_path : Path

    Raises
    ------
    metrology.io.results.ResultsNotWritten
        The files could not be written or the record not appended (a full disk, a locked store):
        nothing was kept.
    """
    notify = notify or (lambda line: None)
    t0 = time.perf_counter()
    out = ensure_output_dir(check_output_dir(out_dir))
    store_path = audit_store_path(audit_db) if audit_db is not None else None
    for line in recover_results(out, store_path):
        notify(line)
    paths = _write_unit(result, out, store_path, export_sample, t0)
    if store_path is not None:
        try:
            _check_alarms(result, store_path)
        except Exception as exc:  # noqa: BLE001 - the report stands; the alarm check is reported, not fatal
            notify(f"warning: drift alarms not evaluated ({type(exc).__name__}: {exc})")
    return paths[".pdf"], paths[".json"]


HEAD_ATTEMPTS = 5
"""How often the files are made again when other writers keep appending to the audit store."""


def _write_unit(result: InspectionResult, out: Path, store_path, export_sample, t0: float) -> dict:
    """Make the unit's files and write them with the record as the commit; suffix -> final path.

    The record carries the files' SHA-256, so its own chain hash cannot be in them: they state the
    seq it will have and the chain hash it extends, read from the store's head, and the record is
    appended only onto that head (:class:`~metrology.audit.store.HeadMoved` otherwise: nothing is
    kept and the files are made again for the new head).
    """
    doc = result.document
    for attempt in range(HEAD_ATTEMPTS):
        head = None
        if store_path is not None:
            with AuditStore(store_path) as store:
                head = store.head()
            doc["audit_record"] = {"store": _store_label(store_path), "seq": head[0] + 1,
                                   "previous_chain_sha256": head[1]}
        else:
            doc["audit_record"] = None
        suffixes = (".pdf", ".json") + ((f"_sample.{export_sample}",) if export_sample else ())
        unit = new_unit(out, result.file_stem, suffixes, info={
            "store": None if store_path is None else str(store_path), "station_id": doc["station"]["id"]})
        contents = {}
        if export_sample is not None:
            key = f"_sample.{export_sample}"
            contents[key] = sample_bytes(export_sample, result.arrays, doc)
            doc["outputs"] = [{"role": "sample", "path": str(unit.files[key]),
                               "sha256": hashlib.sha256(contents[key]).hexdigest()}]
        contents[".pdf"] = render_inspection_report(doc, result.arrays, report_started=t0)
        doc["timings_s"]["report"] = float(time.perf_counter() - t0)
        contents[".json"] = document_bytes(doc)
        def commit(unit=unit, contents=contents, head=head):
            _append_inspection(result, store_path, _result_ref(unit, contents), head)
        try:
            return write_unit(unit, contents, commit if store_path is not None else None)
        except ResultsNotWritten as exc:
            if not isinstance(exc.__cause__, HeadMoved) or attempt == HEAD_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _store_label(store_path) -> str:
    """The store as written into the result: a file path, or a database URL without its password."""
    if isinstance(store_path, str) and "://" in store_path:
        # lazy: the PostgreSQL backend loads only for a database URL
        from metrology.audit.postgres_db import redact

        return redact(store_path)
    return str(store_path)


def _result_ref(unit, contents: dict) -> dict:
    """The ``result`` field of the audit record: the unit's id, file names and their SHA-256."""
    return {"id": unit.token, "files": {s.lstrip("."): p.name for s, p in unit.files.items()},
            "sha256": {s.lstrip("."): hashlib.sha256(data).hexdigest() for s, data in contents.items()}}


def recover_results(out: Path, store_path) -> list:
    """Complete or remove the results that killed runs left in ``out`` (one line per unit settled).

    A unit counts as committed when its audit record exists: looked up by its id in the store it
    names (that of this run, or another SQLite file that exists; any other: left alone).
    """

    def committed(state):
        where, token = (state.get("info") or {}).get("store"), state.get("token")
        if where is None:
            return False  # no store: only a final file shows a commit, and none exists
        if (store_path is None or where != str(store_path)) and ("://" in where or not Path(where).is_file()):
            return None
        with AuditStore(where, create=False) as store:
            return any((r.content.get("result") or {}).get("id") == token
                       for r in store.records(station_id=(state.get("info") or {}).get("station_id"),
                                              kind="inspection"))

    return recover(out, committed)


def record(result: InspectionResult, audit_db, result_files: dict | None = None) -> None:
    """Append the inspection record of ``result`` to the audit store, then any new drift alarm.

    ``result_files``: the ``result`` field naming the files the record commits (``id``, ``files``,
    ``sha256``; :func:`write_report` fills it). Drift alarms are not evaluated when the store
    failed its integrity check (the records they read cannot be trusted).
    """
    _append_inspection(result, audit_db, result_files)
    _check_alarms(result, audit_db)


def _append_inspection(result: InspectionResult, audit_db, result_files: dict | None, head=None) -> None:
    doc = result.document
    zern = {t["noll"]: (t["value_waves"], t["U_waves"]) for t in doc["zernike"] if not t["alignment"]}
    with AuditStore(audit_db) as store:
        record_inspection(
            store, doc["station"]["id"], operator=doc["operator"], software_version=__version__,
            inputs={i["role"]: i["sha256"] for i in doc["inputs"]}, misalignment=result.measurement.station,
            serial=doc["lens"]["serial"], zernike=zern,
            figures={k: doc["figures_of_merit"][k] for k in ("rms_waves", "strehl")},
            verdict=result.verdict, status=result.status, now=result.created, result=result_files,
            extra={"report_id": (doc.get("report") or {}).get("id")}, expect_head=head,
        )


def _check_alarms(result: InspectionResult, audit_db) -> None:
    if result.status.get("status") == "untrusted":  # alarms read the records: only a sound chain
        return
    with AuditStore(audit_db) as store:
        check_and_record(store, result.document["station"]["id"])


def run_inspection(capture, station, spec, *, reference=None, serial=None, operator="", out_dir="reports",
                   audit_db=None, mode="known", max_iterations=None, progress=None, now=None,
                   device="auto", notify=None, export_sample=None, tile_jobs=None) -> InspectionOutcome:
    """Inspect one capture: validate, reconstruct, analyse, decide, record, write the PDF and JSON.

    :func:`inspect` then :func:`write_report` with the audit store (``audit_db`` or the default
    store of every command: every inspection is recorded). Everything is validated first, the
    output folder included (without creating it: bad input leaves nothing, not even ``out_dir``).
    ``progress``: a :class:`metrology.progress.Progress` (stages and iterations) or a plain callable.
    ``notify(line)`` receives the recovery notes and warnings of :func:`write_report`.
    ``tile_jobs``: processes fitting a full-field capture's tiles (:func:`inspect`).
    """
    check_output_dir(out_dir)
    if export_sample is not None:
        check_sample_format(export_sample)
    store_path = audit_store_path(audit_db)
    result = inspect(capture, station, spec, reference=reference, serial=serial, operator=operator,
                     audit_db=store_path, mode=mode, max_iterations=max_iterations, progress=progress, now=now,
                     device=device, create_store=True, tile_jobs=tile_jobs)
    reporter(progress).stage("record and write the report")
    pdf_path, json_path = write_report(result, out_dir, audit_db=store_path, notify=notify,
                                       export_sample=export_sample)
    sample = next((Path(o["path"]) for o in result.document.get("outputs") or [] if o["role"] == "sample"), None)
    return InspectionOutcome(result.document, pdf_path, json_path, result.exit_code, sample)
