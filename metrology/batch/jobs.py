"""The captures of a batch: from paths, folders or a CSV manifest; and what is already done.

Manifest (CSV, UTF-8, a header row; ``#`` starts a comment line)::

    capture,station,spec,serial,operator,reference,mode
    lens-001.tif,st-4x-01.toml,plan-4x-010.toml,LENS-001,alice,,known
    lens-002.tif,,,LENS-002,,,

Only ``capture`` is required; an empty cell takes the command line's value (``--station``,
``--spec``, ``--operator``, ...). Relative paths are relative to the manifest's folder. A header
naming an unknown column is bad input for the whole manifest; a row that cannot be run (no
station, a bad mode) is an input error of that capture only.

Resume: a capture is done when the output folder holds a result JSON (and its PDF) whose input
hashes (capture, station, spec and reference files, SHA-256) and run options (mode, reference,
serial and iteration options as given) equal the job's. Result JSON files are written last and
atomically, so a batch killed half-way leaves complete results or none for each capture.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from metrology.errors import InputError
from metrology.io.files import file_sha256

CAPTURE_SUFFIXES = (".tif", ".tiff")
MANIFEST_COLUMNS = ("capture", "station", "spec", "serial", "operator", "reference", "mode")
MODES = ("known", "prior", "blind")


@dataclass(frozen=True)
class Job:
    """One capture to inspect, with every option resolved (picklable: it travels to workers).

    ``error`` is set when the job cannot run at all (a manifest row without a station, ...):
    it is then reported as that capture's input error without running.
    """

    index: int
    capture: str
    station: str | None
    spec: str | None
    out_dir: str
    reference: str | None = None
    serial: str | None = None
    operator: str = ""
    mode: str = "known"
    max_iterations: int | None = None
    device: str = "auto"
    audit_db: str | None = None
    threads: int | None = None
    origin: str = ""
    error: str | None = None
    tiles_on_ray: bool = False  # a full-field capture's tile groups as Ray tasks (set by the Ray executor)

    @property
    def name(self) -> str:
        """Short label of the capture for the verdict lines (its file name)."""
        return Path(self.capture).name or self.capture


def _folder_captures(folder: Path) -> list:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CAPTURE_SUFFIXES)
    if not found:
        raise InputError(folder, f"no capture files ({', '.join('*' + s for s in CAPTURE_SUFFIXES)}) in this folder")
    return found


def _manifest_rows(manifest: Path):
    """``(line number, {column: value})`` of each data row; raises InputError on a bad header."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(manifest, f"cannot read the manifest ({getattr(exc, 'strerror', None) or exc})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(manifest, "empty manifest (a header row with a 'capture' column is needed)")
    reader = csv.reader([line for _, line in lines])
    header = [h.strip().lower() for h in next(reader)]
    unknown = [h for h in header if h not in MANIFEST_COLUMNS]
    if unknown or "capture" not in header or len(set(header)) != len(header):
        problem = (f"unknown column {unknown[0]!r}" if unknown else "no 'capture' column"
                   if "capture" not in header else "a column is named twice")
        raise InputError(manifest, f"line {lines[0][0]}: {problem} (columns: {', '.join(MANIFEST_COLUMNS)})")
    for (n, _), cells in zip(lines[1:], reader):
        if len(cells) > len(header):
            yield n, None
            continue
        yield n, {h: c.strip() for h, c in zip(header, cells)}


def _manifest_jobs(manifest: Path, base: Job) -> list:
    jobs = []
    folder = manifest.parent

    def path(value):
        return os.path.abspath(folder / value) if value else value

    for n, row in _manifest_rows(manifest):
        origin = f"{manifest.name} line {n}"
        if row is None:
            jobs.append(replace(base, capture=origin, origin=origin, error=f"{manifest}: line {n}: more cells than columns"))
            continue
        job = replace(base, capture=path(row.get("capture")) or origin, origin=origin,
                      station=path(row.get("station")) or base.station, spec=path(row.get("spec")) or base.spec,
                      serial=row.get("serial") or None, operator=row.get("operator") or base.operator,
                      reference=row.get("reference") or base.reference, mode=row.get("mode") or base.mode)
        if not row.get("capture"):
            job = replace(job, error=f"{manifest}: line {n}: no capture named")
        elif job.mode not in MODES:
            job = replace(job, error=f"{manifest}: line {n}: mode {job.mode!r} is not one of {', '.join(MODES)}")
        elif not job.station:
            job = replace(job, error=f"{manifest}: line {n}: no station (a 'station' cell or --station)")
        jobs.append(job)
    return jobs


def collect_jobs(captures, manifest=None, *, base: Job) -> list:
    """The batch's jobs, numbered from 0 in the order given.

    Parameters
    ----------
    captures : sequence of str
        Capture files and folders (a folder stands for its ``*.tif``/``*.tiff`` files, sorted).
        Paths become absolute (workers of a cluster may run in another folder).
    manifest : str, optional
        CSV manifest (module docstring); its rows come after ``captures``.
    base : Job
        The command line's options, copied into every job (``capture`` and ``index`` ignored).

    Raises
    ------
    InputError
        A folder without captures, an unreadable manifest or one with a bad header; nothing has
        run yet. (A missing capture file is that capture's own input error, found when it runs.)
    """
    jobs = []
    for item in captures:
        p = Path(item)
        paths = _folder_captures(p) if p.is_dir() else [p]
        jobs += [replace(base, capture=os.path.abspath(c), origin=str(c)) for c in paths]
    if manifest is not None:
        jobs += _manifest_jobs(Path(manifest), base)
    if not jobs:
        raise InputError("CAPTURE", "no capture to inspect (give capture files, folders or --manifest)")
    if base.station is None:
        jobs = [j if j.station or j.error else replace(j, error=f"{j.capture}: no station (--station)") for j in jobs]
    return [replace(j, index=i) for i, j in enumerate(jobs)]


# ------------------------------------------------------------------ resume
def _run_key(hashes, mode, reference, serial, max_iterations) -> tuple:
    return (tuple(sorted(hashes)), mode, reference, serial, max_iterations)


def job_key(job: Job):
    """The job's identity for resume: input file hashes and run options; None when an input
    file cannot be read (the job then runs and reports it)."""
    files = [("capture", job.capture), ("station", job.station)]
    if job.spec:
        files.append(("spec", job.spec))
    ref_is_file = bool(job.reference) and Path(job.reference).is_file()
    if ref_is_file:
        files.append(("reference", job.reference))
    try:
        hashes = [(role, file_sha256(path)) for role, path in files]
    except (InputError, TypeError):
        return None
    return _run_key(hashes, job.mode, "file" if ref_is_file else job.reference, job.serial, job.max_iterations)


def document_key(doc: dict):
    """The same identity read back from a result document; None for a document without it."""
    try:
        run = doc["extensions"]["run"]
        hashes = [(i["role"], i["sha256"]) for i in doc["inputs"]]
        ref_is_file = any(role == "reference" for role, _ in hashes)
        return _run_key(hashes, run["mode"], "file" if ref_is_file else run["reference"], run["serial"],
                        run["max_iterations"])
    except (KeyError, TypeError):
        return None


def completed_results(out_dir) -> dict:
    """``{key: (json path, document)}`` of the complete results in ``out_dir`` (JSON and PDF present)."""
    done = {}
    folder = Path(out_dir)
    if not folder.is_dir():
        return done
    for path in sorted(folder.glob("*.json")):
        if not path.with_suffix(".pdf").is_file():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        key = document_key(doc) if isinstance(doc, dict) else None
        if key is not None:
            done[key] = (path, doc)
    return done
