"""Running a batch: one job per capture on an executor, one verdict line each, a summary, an exit code.

Exit code of a batch: the worst outcome over its captures, in this order (worst first)::

    2  at least one capture could not be inspected (bad input, or the worker failed): its line names
       the file and the problem; the other captures still ran
    3  else at least one INCONCLUSIVE (the lens must be measured again)
    1  else at least one FAIL
    0  every capture PASSed

A capture skipped because its result already exists counts with the verdict of that result.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
import traceback
from dataclasses import dataclass, replace

from metrology.batch.ray_tiles import RayTiles
from metrology.errors import InputError
from metrology.inspection import run_inspection
from metrology.report.layout import HUGE_U
from metrology.solver.device import fit_threads
from metrology.tables import format_table

SEVERITY = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 2, "ERROR": 3}
"""Outcome order for the batch's exit code (higher is worse)."""
EXIT_CODES = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3, "ERROR": 2}


@dataclass
class JobOutcome:
    """What became of one capture (picklable: it travels back from workers).

    ``status`` is PASS, FAIL, INCONCLUSIVE or ERROR; ``skipped`` marks a result found from an
    earlier run (not inspected again). ``peak_rss_mb`` is the peak resident memory of the process
    that ran it, ``worker`` its host and process id.
    """

    index: int
    capture: str
    status: str
    message: str
    station_id: str = ""
    serial: str = ""
    rms_waves: tuple | None = None
    pdf_path: str | None = None
    json_path: str | None = None
    skipped: bool = False
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    worker: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def _waves(x: float) -> str:
    """A figure in waves for a line or a table: 4 decimals, or 2 significant figures from
    :data:`~metrology.report.layout.HUGE_U` on, as the report writes it (the U of a fit that did not
    determine the figure, e.g. 5.6e+133)."""
    return f"{x:.4f}" if abs(x) < HUGE_U else f"{x:.2g}"


def verdict_line(document: dict, pdf_path) -> str:
    """``PASS <serial>: RMS v +/- U waves (k=2) [(first reason)] -> <pdf>``: the CLI's verdict line."""
    rms = document["figures_of_merit"]["rms_waves"]
    v = document["verdict"]
    why = "" if v["overall"] == "PASS" else f" ({v['reasons'][0]})" if v["reasons"] else ""
    figure = ("RMS not measured" if rms["value"] is None  # a fit that measured nothing (docs/spec.md)
              else f"RMS {rms['value']:.4f} +/- {_waves(rms['U'] or 0.0)} waves (k=2)")
    return f"{v['overall']} {document['lens']['serial']}: {figure}{why} -> {pdf_path}"


def outcome_from_document(job, document: dict, pdf_path, json_path, **extra) -> JobOutcome:
    """The outcome of a job whose result document is ``document``."""
    rms = document["figures_of_merit"]["rms_waves"]
    return JobOutcome(job.index, job.capture, document["verdict"]["overall"], verdict_line(document, pdf_path),
                      station_id=document["station"]["id"], serial=document["lens"]["serial"],
                      rms_waves=(rms["value"], rms["U"]), pdf_path=str(pdf_path), json_path=str(json_path), **extra)


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def failed(job, message: str) -> JobOutcome:
    """An ERROR outcome of ``job`` (its input error, or the worker's failure)."""
    return JobOutcome(job.index, job.capture, "ERROR", message)


def run_job(job) -> JobOutcome:
    """Inspect one capture (``job``): write its PDF and JSON, record it; never raises.

    Runs in a worker (a process of the pool, a Ray task, or this process). An input error or any
    other exception becomes an ERROR outcome naming the capture, so one capture never stops the
    others.
    """
    t0 = time.perf_counter()
    with fit_threads(job.threads):
        outcome = _inspect(job)
    return replace(outcome, seconds=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(),
                   worker=f"{platform.node()}:{os.getpid()}")


def _inspect(job) -> JobOutcome:
    if job.error:
        return failed(job, job.error)
    try:
        out = run_inspection(job.capture, job.station, job.spec, reference=job.reference, serial=job.serial,
                             operator=job.operator, out_dir=job.out_dir, audit_db=job.audit_db, mode=job.mode,
                             max_iterations=job.max_iterations, device=job.device,
                             # the batch's processes own the cores: a capture's tiles run here, or
                             # on Ray as groups of tasks where the capture is a Ray task
                             tile_jobs=RayTiles(job.threads) if job.tiles_on_ray else 1)
        outcome = outcome_from_document(job, out.document, out.pdf_path, out.json_path)
    except InputError as exc:
        outcome = failed(job, str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure is this capture's, reported and contained
        where = traceback.extract_tb(exc.__traceback__)[-1]
        outcome = failed(job, f"{job.capture}: {type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:"
                              f"{where.lineno})")
    return outcome


def worst_exit_code(outcomes) -> int:
    """The batch's exit code (module docstring): the worst outcome's code; 0 for none."""
    if not outcomes:
        return 0
    return EXIT_CODES[max((o.status for o in outcomes), key=SEVERITY.__getitem__)]


def progress_line(outcome: JobOutcome, n_jobs: int) -> str:
    """``[i/n] <verdict line>`` printed as each capture finishes (ERROR lines name the problem)."""
    head = f"[{outcome.index + 1}/{n_jobs}]"
    if outcome.status == "ERROR":
        return f"{head} ERROR {outcome.message}"
    done = " (done before, same input hashes: skipped)" if outcome.skipped else ""
    return f"{head} {outcome.message}{done}"


def summary_table(outcomes) -> str:
    """The batch summary: one row per capture in input order, then the counts and the exit code."""
    rows = [["#", "capture", "station", "serial", "verdict", "RMS waves (U, k=2)", "result / problem"]]
    for o in sorted(outcomes, key=lambda o: o.index):
        rms = f"{_waves(o.rms_waves[0])} ({_waves(o.rms_waves[1])})" if o.rms_waves else "-"
        verdict = o.status + (" (earlier)" if o.skipped else "")
        where = o.pdf_path if o.status != "ERROR" else o.message
        rows.append([o.index + 1, os.path.basename(o.capture), o.station_id or "-", o.serial or "-", verdict, rms,
                     where])
    counts = {s: sum(o.status == s for o in outcomes) for s in SEVERITY}
    skipped = sum(o.skipped for o in outcomes)
    tail = (f"{len(outcomes)} capture(s): {counts['PASS']} PASS, {counts['FAIL']} FAIL, "
            f"{counts['INCONCLUSIVE']} INCONCLUSIVE, {counts['ERROR']} not inspected (error); "
            f"{skipped} skipped as done before; exit code {worst_exit_code(outcomes)}")
    return format_table(rows) + "\n" + tail
