"""`metrology inspect` under accident and attack (issue 15): internal errors, a locked store, injected
text, swapped and planted files, fits that cannot be finite, concurrent runs with one serial.

Every failure ends in one line on stderr and a documented exit code (2 bad input, 4 internal error),
with nothing half-written; a fit that measures nothing ends in an INCONCLUSIVE report.
"""

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

import metrology.audit.sqlite_db as sqlite_db
import metrology.inspection as inspection
import metrology.pipeline as pipeline
from metrology.audit.store import AuditStore
from metrology.cli import main
from metrology.io.capture import read_capture
from metrology.report.document import validate_document
from tests.sim_cases import FIXTURES, bench_station, centre_leds, lens_coefficients, simulate_to

SPEC = FIXTURES / "specs" / "plan-4x-010.toml"
FAST = ("--max-iterations", "2")  # the verdicts here do not depend on convergence


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """32-px frames, 5x5 LEDs of the 4x bench, 15 Zernike terms fitted: a cheap inspection."""
    capture, station, _ = simulate_to(tmp_path_factory.mktemp("tiny"), bench_station(32), lens_coefficients(0.03, 1),
                                      seed=1, leds=centre_leds(5))
    station.write_text(station.read_text().replace("zernike_terms = 36", "zernike_terms = 15"))
    return capture, station


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def inspect_args(capture, station, out, *extra, spec=SPEC):
    return ["inspect", capture, "--station", station, "--spec", spec, "--out", out, *extra]


PROGRESS_LINE = re.compile(r"^[a-z-]+ \d\d:\d\d:\d\d \+\d+:\d\d:\d\d ")
"""A progress line on a piped stderr (metrology.progress): stages of a run that got past its inputs."""


def one_line_error(err, prefix="metrology: error:"):
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def assert_nothing_written(out):
    assert not out.exists() or list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())


def inspection_records(db):
    with AuditStore(db, create=False) as store:
        return store.records(kind="inspection")


# ------------------------------------------------------------------ internal errors: exit 4, one line
def test_an_unexpected_exception_exits_4_on_one_line(tiny, tmp_path, capsys, monkeypatch):
    """A bug is not a FAIL (exit 1 on main, with a traceback): exit 4, one line, nothing written."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero\nin the middle of the fit")

    monkeypatch.setattr(inspection, "measure", broken)
    out = tmp_path / "out"
    code, stdout, err = run_cli(inspect_args(*tiny, out), capsys)
    line = one_line_error(err, "metrology: internal error:")
    assert code == 4 and stdout == "" and "ZeroDivisionError" in line
    assert_nothing_written(out)


def _lock(db):
    """Another writer holding the store's write lock (a real SQLite lock, on its own connection)."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    return con


def test_store_locked_before_the_fit_exits_4_at_once(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", 0.3)
    db, out = tmp_path / "audit.sqlite", tmp_path / "out"
    AuditStore(db).close()
    holder = _lock(db)
    try:
        t0 = time.perf_counter()
        code, stdout, err = run_cli(inspect_args(*tiny, out, "--audit-db", db), capsys)
        elapsed = time.perf_counter() - t0
    finally:
        holder.close()
    line = one_line_error(err, "metrology: internal error:")
    assert code == 4 and "locked" in line and elapsed < 10, (line, elapsed)
    assert_nothing_written(out)


def test_store_locked_at_the_commit_leaves_no_pdf_and_no_json(tiny, tmp_path, capsys, monkeypatch):
    """The store is locked by another writer after the fit, when the record is appended: on main the
    PDF and the JSON were already written (a PASS PDF with no audit record) and the run exited 1."""
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_S", 0.3)
    db, out = tmp_path / "audit.sqlite", tmp_path / "out"
    AuditStore(db).close()
    holders = []
    judge = inspection.judge_field

    def judge_then_lock(*args, **kwargs):
        holders.append(_lock(db))
        return judge(*args, **kwargs)

    monkeypatch.setattr(inspection, "judge_field", judge_then_lock)
    try:
        code, stdout, err = run_cli(inspect_args(*tiny, out, "--audit-db", db, *FAST), capsys)
    finally:
        for con in holders:
            con.close()
    line = one_line_error(err, "metrology: internal error:")
    assert code == 4 and holders and "nothing was kept" in line and "locked" in line, line
    assert_nothing_written(out)
    assert inspection_records(db) == []


def test_store_without_its_records_table_is_bad_input_before_the_fit(tiny, tmp_path, capsys):
    db, out = tmp_path / "audit.sqlite", tmp_path / "out"
    with AuditStore(db) as store:
        store.append("alarm", "bench-4x-15x15", {"note": "x"})
    con = sqlite3.connect(db)
    con.execute("DROP TABLE audit_records")
    con.commit()
    con.close()
    code, _, err = run_cli(inspect_args(*tiny, out, "--audit-db", db), capsys)
    line = one_line_error(err)
    assert code == 2 and "audit.sqlite" in line and "audit_records" in line
    assert_nothing_written(out)


# ------------------------------------------------------------------ text, numbers and files refused before the fit
@pytest.mark.parametrize("option, value, needle", [
    ("--serial", "LENS-1\nFAIL LENS-2", "U+000A"),
    ("--serial", "L" * 5000, "5000 characters"),
    ("--serial", "LENS\u202e1", "U+202E"),
    ("--operator", "Q\x1b[2JA", "U+001B"),
])
def test_text_with_control_characters_or_too_long_is_refused(tiny, tmp_path, capsys, option, value, needle):
    """A newline in a serial split the verdict line on main (a second line starting with FAIL, exit 0);
    a 5000-character serial failed with ENAMETOOLONG after the fit."""
    out = tmp_path / "out"
    code, stdout, err = run_cli(inspect_args(*tiny, out, option, value), capsys)
    line = one_line_error(err)
    assert code == 2 and option in line and needle in line and stdout == ""
    assert_nothing_written(out)


def _with_metadata(src, dst, **changes):
    cap = read_capture(src)
    meta = cap.metadata()
    meta.update(changes)
    tifffile.imwrite(dst, cap.frames, description=json.dumps(meta), metadata=None)
    return dst


def _nested_json(depth):
    return json.loads("[" * depth + "]" * depth)


@pytest.mark.parametrize("case", ["serial-newline", "nested-metadata", "exposure-1e308"])
def test_capture_metadata_injection_is_refused(tiny, tmp_path, capsys, case):
    """A newline in the capture's serial, metadata nested 100,000 deep, an exposure of 1e308 s (a
    NaN fit after minutes on main)."""
    capture, station = tiny
    bad = tmp_path / "bad.tif"
    if case == "serial-newline":
        _with_metadata(capture, bad, lens_serial="LENS-1\nPASS")
    elif case == "exposure-1e308":
        frames = read_capture(capture).metadata()["frames"]
        frames[0]["exposure_s"] = 1e308
        _with_metadata(capture, bad, frames=frames)
    else:  # 100000 nested arrays: a RecursionError on main
        cap = read_capture(capture)
        text = json.dumps(cap.metadata())[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}"
        tifffile.imwrite(bad, cap.frames, description=text, metadata=None)
    out = tmp_path / "out"
    code, _, err = run_cli(inspect_args(bad, station, out), capsys)
    line = one_line_error(err)
    assert code == 2 and "bad.tif" in line
    assert_nothing_written(out)


@pytest.mark.parametrize("change, needle", [
    (("[calibration]", "validity_days = 30.0", "validity_days = 1e300"), "validity_days"),
    (("[reconstruction]", "upsampling = 4", "upsampling = 100000"), "upsampling"),
    (("[led_array]", "rows = 15", "rows = 1000000000"), "rows"),
    (("", "", "deep = " + "[" * 5000 + "]" * 5000), "nested too deeply"),
])
def test_station_numbers_out_of_bounds_are_refused(tiny, tmp_path, capsys, change, needle):
    capture, station = tiny
    _section, old, new = change
    text = station.read_text()
    text = text.replace(old, new, 1) if old else new + "\n" + text
    bad = tmp_path / "station.toml"
    bad.write_text(text)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code, _, err = run_cli(inspect_args(capture, bad, out), capsys)
    line = one_line_error(err)
    assert code == 2 and "station.toml" in line and needle in line, line
    assert time.perf_counter() - t0 < 5
    assert_nothing_written(out)


@pytest.mark.parametrize("reference", ["random-broadband:seed=-5", "random-broadband:seed=99999999999999999999",
                                       "empty.npy", "flat.npy"])
def test_bad_reference_is_refused(tiny, tmp_path, capsys, reference):
    if reference == "empty.npy":
        np.save(tmp_path / reference, np.zeros((0, 0)))
        reference = tmp_path / reference
    elif reference == "flat.npy":
        np.save(tmp_path / reference, np.zeros(16))
        reference = tmp_path / reference
    out = tmp_path / "out"
    code, _, err = run_cli(inspect_args(*tiny, out, "--reference", reference), capsys)
    line = one_line_error(err)
    assert code == 2 and ("--reference" in line or str(reference) in line), line
    assert_nothing_written(out)


def test_output_probe_never_follows_a_planted_link(tmp_path):
    """The write test in --out followed a planted symbolic link on main and truncated its target."""
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    for name in (f".metrology-write-test-{os.getpid()}", ".metrology-write-test"):
        (out / name).symlink_to(target)
    pipeline.check_output_dir(out)
    assert target.read_text() == "keep me"


def test_capture_is_hashed_from_the_bytes_parsed(tiny, tmp_path, monkeypatch):
    """The capture swapped on disk right after it was parsed: the recorded SHA-256 is still that of
    the bytes parsed (on main it was read and hashed in two reads: the other file's hash)."""
    capture, station = tiny
    mine = tmp_path / "capture.tif"
    mine.write_bytes(capture.read_bytes())
    parsed = hashlib.sha256(mine.read_bytes()).hexdigest()
    read = pipeline.read_capture

    def read_then_swap(path):
        cap = read(path)
        mine.write_bytes(b"II*\x00 another file")
        return cap

    monkeypatch.setattr(pipeline, "read_capture", read_then_swap)
    loaded = pipeline.load_inputs(mine, station, SPEC)
    assert next(i["sha256"] for i in loaded.inputs if i["role"] == "capture") == parsed


# ------------------------------------------------------------------ fits that measure nothing
def test_constant_frames_end_in_an_inconclusive_report_within_the_first_round(tiny, tmp_path, capsys):
    """Constant frames give a non-finite fit: on main it ran its whole budget on NaN and then failed
    the result schema (exit 2, no report). Now: stopped at the first report, INCONCLUSIVE report."""
    capture, station = tiny
    cap = read_capture(capture)
    bad = tmp_path / "constant.tif"
    tifffile.imwrite(bad, np.full_like(cap.frames, 100), description=json.dumps(cap.metadata()), metadata=None)
    out = tmp_path / "out"
    code, stdout, err = run_cli(inspect_args(bad, station, out), capsys)
    assert code == 3 and stdout.startswith("INCONCLUSIVE") and "RMS not measured" in stdout, (stdout, err)
    doc = json.loads(next(out.glob("*.json")).read_text())
    validate_document(doc)
    assert doc["solver"]["iterations"] <= 1 and not doc["solver"]["converged"]
    assert "not a finite number" in doc["solver"]["message"]
    assert doc["figures_of_merit"]["rms_waves"]["value"] is None
    assert all(r["verdict"] == "INCONCLUSIVE" for r in doc["verdict"]["limits"])
    assert len(list(out.glob("*.pdf"))) == 1


def test_limit_on_a_term_the_station_does_not_fit_is_inconclusive(tiny, tmp_path, capsys):
    """docs/spec.md: a limit on a term beyond the station's Zernike terms is INCONCLUSIVE 'not
    measured' (on main: a schema failure after the fit, exit 2, no report)."""
    capture, station = tiny
    assert "zernike_terms = 15" in station.read_text()
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.read_text().replace('"11" = 0.04', '"11" = 0.04\n"22" = 0.05'))
    out = tmp_path / "out"
    code, stdout, err = run_cli(inspect_args(capture, station, out, *FAST, spec=spec), capsys)
    assert code == 3 and stdout.startswith("INCONCLUSIVE"), (stdout, err)
    doc = json.loads(next(out.glob("*.json")).read_text())
    row = next(r for r in doc["verdict"]["limits"] if r["name"].startswith("|Z22|"))
    assert row["verdict"] == "INCONCLUSIVE" and "not measured" in row["reason"]


# ------------------------------------------------------------------ concurrent runs
def test_three_concurrent_inspections_with_one_serial_give_three_reports(tiny, tmp_path):
    """`LENS/1`, `LENS/1` and `LENS 1` (one sanitised name) at once, into one folder and one store:
    on main one report survived. Now three PDFs, three JSONs and three records naming them."""
    capture, station = tiny
    out, db = tmp_path / "out", tmp_path / "audit.sqlite"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "metrology", *map(str, inspect_args(capture, station, out)),
                               "--serial", serial, "--audit-db", str(db), *FAST],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for serial in ("LENS/1", "LENS/1", "LENS 1")]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode in (0, 1, 3) for p in procs), results
    printed = {line.rsplit(" -> ", 1)[1] for stdout, _ in results for line in stdout.splitlines()}
    assert len(printed) == 3
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 6 and not [n for n in names if n.startswith(".")], names
    refs = [r.content["result"] for r in inspection_records(db)]
    assert len({r["id"] for r in refs}) == 3
    for ref in refs:
        for kind, name in ref["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == ref["sha256"][kind]
    serials = sorted(json.loads(p.read_text())["lens"]["serial"] for p in out.glob("*.json"))
    assert serials == ["LENS 1", "LENS/1", "LENS/1"]
