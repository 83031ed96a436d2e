"""One station calibration end to end: measure a golden lens, check closure, record it.

A calibration measures a *golden lens* (a lens whose pupil Zernike coefficients an independent
instrument certified, with expanded uncertainties ``U``, k = 2) on the station, estimating the
station misalignment together with the lens exactly as ``inspect`` does. The closure check
(:func:`metrology.audit.golden.closure_check`) compares every certified term with the measured one
through the normalised error

``En = |measured - certified| / sqrt(U_meas^2 + U_cert^2)``  (pass if ``En <= 1``)

with ``U_meas = k u`` from the measurement's covariance. The outcome is appended to the audit
store as a ``calibration`` record (:func:`metrology.audit.status.record_calibration`): the
closure per term, the station misalignment measured during the calibration (the reference state
for the drift check of later inspections) and, for a passed closure, ``valid_until = now +
validity_days`` from the station description. ``inspect`` then reads the station status from the
store (:func:`metrology.audit.status.station_status`) and turns its verdict INCONCLUSIVE when the
last calibration failed or expired, or when the station drifted since (see ``docs/calibration.md``).

Exit codes: 0 closure passed, 1 closure failed (recorded as a failed calibration), 2 bad input
(raised as :class:`~metrology.errors.InputError` before anything is measured or recorded), 4 an
internal error at the command line (e.g. the store locked when the record is appended).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from metrology import __version__
from metrology.audit.golden import closure_check, load_certificate, measured_from_measurement
from metrology.audit.status import record_calibration
from metrology.audit.canonical import parse_utc
from metrology.audit.store import AuditStore
from metrology.conventions import CONVENTIONS_TEXT, COVERAGE_FACTOR
from metrology.errors import InputError
from metrology.io.files import safe_file_name
from metrology.io.results import new_unit, write_unit
from metrology.limits import MAX_NAME_CHARS, check_text
from metrology.pipeline import (audit_store_path, check_output_dir, ensure_output_dir, load_inputs, measure,
                                prepare_audit_store)
from metrology.progress import reporter
from metrology.report.document import document_bytes, finite_or_none

EXIT = {True: 0, False: 1}
"""Exit code by closure outcome (passed -> 0, failed -> 1)."""

WAVELENGTH_TOLERANCE_NM = 0.5
"""Largest difference between the certificate's and the station's wavelength (nm)."""

NA_TOLERANCE = 1e-3
"""Largest difference between the certificate's and the station's NA."""

@dataclass
class CalibrationOutcome:
    """Result of :func:`run_calibration`.

    Attributes
    ----------
    closure : metrology.audit.golden.ClosureResult
        Per certified term: measured and certified value with U (waves), En, pass.
    record : metrology.audit.store.Record
        The ``calibration`` record appended to the audit store (``record.seq``, ``record.utc``,
        ``record.content["valid_until"]``: ISO UTC text, None for a failed closure).
    status : dict
        ``{"status": "passed" | "failed", "station_id", "calibration_seq", "calibrated_utc",
        "valid_until", "validity_days", "golden_lens_id", "max_En", "failed_terms"}``.
    measurement : metrology.measurement.Measurement
        The golden lens measurement (station misalignment included).
    summary : dict
        The JSON summary (also written to ``summary_path`` when an output folder was given).
    summary_path : Path or None
    exit_code : int
        0 closure passed, 1 closure failed.
    """

    closure: object
    record: object
    status: dict
    measurement: object
    summary: dict
    summary_path: Path | None
    exit_code: int


def check_certificate(cert, station, certificate_path) -> None:
    """Check that a golden certificate applies to ``station``.

    Parameters
    ----------
    cert : metrology.audit.golden.GoldenCertificate
    station : metrology.io.StationDescription
    certificate_path : str or Path
        Named in the errors.

    Raises
    ------
    InputError
        Naming the certificate: wavelength differs by more than
        :data:`WAVELENGTH_TOLERANCE_NM` nm (coefficients in waves depend on it), NA differs by more
        than :data:`NA_TOLERANCE` (the Zernike normalisation disk), or a certified Noll index is
        beyond the station's ``zernike_terms``.
    """
    if abs(cert.wavelength_nm - station.wavelength_nm) > WAVELENGTH_TOLERANCE_NM:
        raise InputError(certificate_path, f"wavelength_nm: the certificate is for {cert.wavelength_nm:g} nm, "
                                           f"station {station.station_id} works at {station.wavelength_nm:g} nm")
    if abs(cert.na - station.na) > NA_TOLERANCE:
        raise InputError(certificate_path, f"na: the certificate normalises the pupil at NA {cert.na:g}, "
                                           f"station {station.station_id} has NA {station.na:g}")
    beyond = [j for j in cert.coefficients if j > station.zernike_terms]
    if beyond:
        raise InputError(certificate_path, f"zernike: certified Noll {', '.join(map(str, beyond))} beyond the "
                                           f"station's reconstruction.zernike_terms = {station.zernike_terms}")


def _solver_summary(measurement) -> dict:
    s = measurement.solver
    return {"mode": s.mode, "iterations": int(s.iterations), "converged": bool(s.converged),
            "reduced_chi2": finite_or_none(s.reduced_chi2), "message": s.message}


def build_summary(loaded, cert, certificate_path, closure, record, measurement, operator, frozen,
                  compute_device: str = "cpu") -> dict:
    """The small JSON summary of one calibration (plain, JSON-ready)."""
    c = record.content
    return {
        "kind": "calibration",
        "software": {"name": "lens-metrology", "version": __version__, "compute_device": compute_device},
        "created_utc": record.utc,
        "station": {"id": loaded.station.station_id, "validity_days": float(loaded.station.validity_days)},
        "operator": operator,
        "golden": {"id": cert.id, "serial": cert.serial, "issuer": cert.issuer, "date": cert.date,
                   "certificate": str(certificate_path)},
        "inputs": list(loaded.inputs) + [{"role": "golden", "path": str(certificate_path),
                                          "sha256": cert.sha256}],
        "closure": closure.to_dict(),
        "calibration": {"seq": int(record.seq), "passed": bool(closure.passed),
                        "valid_until": c.get("valid_until"), "chain_sha256": record.chain_sha256},
        "misalignment": [
            {"name": s.name, "unit": s.unit, "value": finite_or_none(s.value), "U": finite_or_none(COVERAGE_FACTOR * float(s.u))}
            for s in measurement.station
        ],
        "frozen_at_nominal": list(frozen),
        "solver": _solver_summary(measurement),
        "conventions": CONVENTIONS_TEXT,
        "exit_code": EXIT[bool(closure.passed)],
    }


def run_calibration(capture, station, golden, *, operator: str = "", audit_db=None, out_dir=None,
                    reference=None, mode: str = "known", max_iterations=None, frozen=(), progress=None,
                    now=None, device="cpu") -> CalibrationOutcome:
    """Calibrate a station with a golden lens: validate, measure, check closure, record.

    Parameters
    ----------
    capture : str or Path
        Capture of the golden lens imaging the reference sample on the station.
    station : str or Path
        Station description TOML (gives ``validity_days`` and the drift limits).
    golden : str or Path
        Golden lens certificate TOML (``docs/audit.md``).
    operator : str
        Who calibrated (recorded).
    audit_db : str or Path, optional
        Audit store; default as every command (:func:`metrology.pipeline.audit_store_path`), created
        when missing.
    out_dir : str or Path, optional
        Folder for the JSON summary ``calibration_<station>_<UTC>_<token>.json`` (written
        atomically; a random token in the name).
    reference : str, optional
        Reference sample (as ``inspect --reference``; default from the capture).
    mode, max_iterations, progress, device
        Passed to :func:`metrology.pipeline.measure`.
    frozen : sequence of str
        Parameter paths held at nominal (diagnostics and tests: e.g.
        :data:`metrology.solver.schedule.GEOMETRY_PATHS` shows what an uncalibrated model does).
    now : datetime or ISO text, optional
        Time of the calibration (UTC); default now.

    Returns
    -------
    CalibrationOutcome

    Raises
    ------
    InputError
        Before anything is measured or recorded: an unreadable or foreign audit store, missing or
        malformed capture / station / certificate, certificate not matching the station
        (wavelength, NA, Zernike terms), unwritable output folder.
    """
    rep = reporter(progress)
    rep.stage("load inputs")
    store_path = audit_store_path(audit_db)
    now_t = parse_utc(now, "now") if now is not None else datetime.now(timezone.utc)
    golden_path = Path(golden)
    if not golden_path.is_file():
        raise InputError(golden_path, "golden certificate file not found")
    cert = load_certificate(golden_path)
    loaded = load_inputs(capture, station, None, reference, mode=mode)
    check_certificate(cert, loaded.station, golden_path)
    check_text(operator, "--operator", "operator name", MAX_NAME_CHARS)
    out = check_output_dir(out_dir) if out_dir is not None else None
    prepare_audit_store(store_path)  # a foreign, read-only or corrupt store fails now, before the fit
    fit, measurement = measure(loaded, mode, max_iterations, rep, frozen=tuple(frozen), device=device)
    rep.stage("closure and audit record")
    closure = closure_check(measured_from_measurement(measurement), cert,
                            wavelength_nm=measurement.wavelength_nm, source=loaded.capture_path)
    inputs = {i["role"]: i["sha256"] for i in loaded.inputs}
    inputs["golden"] = cert.sha256
    station_id = loaded.station.station_id
    with AuditStore(store_path) as store:
        record = record_calibration(
            store, station_id, operator, closure, misalignment=measurement.station,
            validity_days=float(loaded.station.validity_days), inputs=inputs, software_version=__version__,
            now=now_t, extra={"solver": _solver_summary(measurement), "frozen_at_nominal": list(frozen),
                              "certificate": {"issuer": cert.issuer, "date": cert.date}},
        )
    status = _status(closure, record, cert, loaded.station)
    summary = build_summary(loaded, cert, golden_path, closure, record, measurement, operator, frozen, fit.device)
    summary_path = None
    if out is not None:
        stamp = now_t.strftime("%Y%m%dT%H%M%SZ")
        # a random token in the name: two calibrations of a station in one second never collide
        unit = new_unit(ensure_output_dir(out), f"calibration_{safe_file_name(station_id, 'station')}_{stamp}",
                        (".json",))
        summary_path = write_unit(unit, {".json": document_bytes(summary)})[".json"]
    return CalibrationOutcome(closure, record, status, measurement, summary, summary_path,
                              EXIT[bool(closure.passed)])


def _status(closure, record, cert, station) -> dict:
    """The :attr:`CalibrationOutcome.status` of a recorded calibration."""
    return {
        "status": "passed" if closure.passed else "failed",
        "station_id": station.station_id,
        "calibration_seq": int(record.seq),
        "calibrated_utc": record.utc,
        "valid_until": record.content.get("valid_until"),
        "validity_days": float(station.validity_days),
        "golden_lens_id": cert.id,
        "max_En": float(closure.max_En),
        "failed_terms": list(closure.failed_terms),
    }


def one_line(outcome: CalibrationOutcome) -> str:
    """The one-line result ``calibrate`` prints."""
    s, cl = outcome.status, outcome.closure
    terms = ", ".join(f"Noll {t.noll} En {t.En:.2f}" for t in cl.per_term if not t.passed)
    if cl.passed:
        head = (f"CLOSURE PASSED station {s['station_id']} with {cl.golden_lens_id} ({cl.golden_serial}): "
                f"max En {cl.max_En:.2f} over Noll {', '.join(str(t.noll) for t in cl.per_term)}; "
                f"calibration seq {s['calibration_seq']} valid until {s['valid_until']}")
    else:
        head = (f"CLOSURE FAILED station {s['station_id']} with {cl.golden_lens_id} ({cl.golden_serial}): "
                f"{terms} > 1; recorded as failed calibration seq {s['calibration_seq']}")
    return head + (f" -> {outcome.summary_path}" if outcome.summary_path is not None else "")
