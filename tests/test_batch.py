"""Batch inspection (issue 18): a folder, a manifest, parallel processes, resume, worker deaths."""

import contextlib
import dataclasses
import io
import json
import os
import re

import numpy as np
import pytest

from metrology.audit.store import AuditStore
from metrology.batch import Job, collect_jobs, run_batch
from metrology.batch.executors import ProcessPool, make_executor
from metrology.batch.run import JobOutcome, worst_exit_code
from metrology.cli import main
from metrology.errors import InputError
from metrology.io import write_capture
from metrology.simulate import draw_misalignment, simulate_capture
from tests.sim_cases import FIXTURES, bench_station, centre_leds, lens_coefficients

SPEC = FIXTURES / "specs" / "plan-4x-010.toml"
GOOD = ("LENS-001", 0.03), ("LENS-002", 0.03), ("LENS-003", 0.15), ("LENS-004", 0.03)


def write_lens_capture(path, station, serial, rms_waves, seed, leds_per_side=5):
    leds = centre_leds(leds_per_side)
    truth = draw_misalignment(np.random.default_rng([seed, 1]), n_leds=len(leds))
    capture, _ = simulate_capture(station, lens_coefficients(rms_waves, seed), truth, seed=seed, leds=leds)
    write_capture(path, dataclasses.replace(capture, lens_serial=serial))


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A folder of 6 captures of station bench-4x-15x15 (32-px frames, the centre 5x5 LEDs: the
    batch's logistics are under test, not the optics): four lenses (one far out of spec), one
    truncated file and one capture from another station."""
    root = tmp_path_factory.mktemp("line")
    station = bench_station(32)
    (root / "station.toml").write_text(station.to_toml())
    folder = root / "captures"
    folder.mkdir()
    for seed, (serial, rms) in enumerate(GOOD, start=1):
        write_lens_capture(folder / f"{serial.lower()}.tif", station, serial, rms, seed)
    data = (folder / "lens-001.tif").read_bytes()
    (folder / "lens-005-truncated.tif").write_bytes(data[: len(data) // 2])
    other = station.replace(station_id="st-10x-02")
    write_lens_capture(folder / "lens-006-other-station.tif", other, "LENS-006", 0.03, 6)
    return root


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def first_run(line, tmp_path_factory):
    """The folder batch in 2 processes, once for the module: (argv, exit code, stdout, out, db)."""
    tmp = tmp_path_factory.mktemp("first-run")
    out, db = tmp / "reports", tmp / "audit.sqlite"
    argv = ["inspect", line / "captures", "--station", line / "station.toml", "--spec", SPEC, "--out", out,
            "--audit-db", db, "--jobs", 2]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([str(a) for a in argv])
    return argv, code, buffer.getvalue(), out, db


def test_folder_batch_in_two_processes_then_resume(first_run, capsys):
    argv, code, stdout, out, db = first_run
    lines = stdout.splitlines()
    progress = [x for x in lines if re.match(r"\[\d/6\] ", x)]
    assert len(progress) == 6, stdout  # one line per capture
    verdicts = [x for x in progress if " ERROR " not in x]
    errors = [x for x in progress if " ERROR " in x]
    assert len(verdicts) == 4 and len(errors) == 2
    assert any("lens-005-truncated.tif" in e for e in errors)
    assert any("lens-006-other-station.tif" in e and "st-10x-02" in e for e in errors)
    assert any(v.split()[1] == "FAIL" and "LENS-003" in v for v in verdicts), verdicts
    assert code == 2  # an input error outranks every verdict (documented order)
    assert "6 capture(s)" in lines[-1] and "2 not inspected" in lines[-1] and lines[-1].endswith("exit code 2")
    table = stdout[stdout.index("#  capture"):]
    for name in ("lens-001.tif", "lens-004.tif", "lens-005-truncated.tif", "lens-006-other-station.tif"):
        assert name in table
    # nothing half-written: 4 PDF + 4 JSON named <station>_<serial>_<UTC>_<token>, no temporary files
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 8 and all(re.fullmatch(r"bench-4x-15x15_LENS-00[1-4]_\d{8}T\d{6}Z_[0-9a-f]{8}\.(pdf|json)", f)
                                   for f in files), files
    with AuditStore(db, create=False) as store:
        recs = store.records(kind="inspection")
        assert store.verify().ok
    assert sorted(r.content["lens"]["serial"] for r in recs) == [s for s, _ in GOOD]

    code2, stdout2, _ = run_cli(argv, capsys)  # re-run: the 4 done are skipped, the 2 errors again
    assert code2 == 2
    skipped = [x for x in stdout2.splitlines() if "skipped" in x and x.startswith("[")]
    assert len(skipped) == 4 and "4 skipped as done before" in stdout2
    assert sorted(p.name for p in out.iterdir()) == files
    with AuditStore(db, create=False) as store:
        assert len(store.records(kind="inspection")) == 4


def test_manifest_rows_resume_and_row_errors(line, first_run, capsys):
    out = first_run[3]
    manifest = line / "manifest.csv"
    manifest.write_text("# lenses of the morning shift\n"
                        "capture,station,spec,mode\n"
                        f"captures/lens-002.tif,station.toml,{SPEC},\n"
                        "captures/lens-004.tif,,,sideways\n"
                        ",station.toml,,\n")
    code, stdout, _ = run_cli(["inspect", "--manifest", manifest, "--out", out], capsys)
    rows = [x for x in stdout.splitlines() if x.startswith("[")]
    assert len(rows) == 3
    assert "skipped" in rows[0] and "LENS-002" in rows[0]  # same inputs as in the folder batch
    assert "manifest.csv: line 4: mode 'sideways'" in rows[1] and "line 5: no capture named" in rows[2]
    assert code == 2 and len(list(out.glob("*.json"))) == 4


@pytest.mark.parametrize("text,needle", [
    ("capture,station,colour\na.tif,s.toml,blue\n", "unknown column 'colour'"),
    ("station,spec\ns.toml,p.toml\n", "no 'capture' column"),
    ("", "empty manifest"),
])
def test_bad_manifest_is_one_line_and_runs_nothing(tmp_path, capsys, text, needle):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    code, stdout, err = run_cli(["inspect", "--manifest", manifest, "--out", tmp_path / "out"], capsys)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and "m.csv" in err and needle in err
    assert not any((tmp_path / "out").glob("*.json"))


def test_batch_usage_errors(line, tmp_path, capsys):
    station = line / "station.toml"
    for argv, needle in (
        ([line / "captures", "--station", station, "--serial", "X"], "--serial"),
        ([line / "captures", "--station", station, "--jobs", 0], "--jobs"),
        ([line / "captures", "--station", station, "--tile-jobs", 2], "--tile-jobs"),
        ([line / "captures" / "lens-001.tif", "--station", station, "--tile-jobs", 0], "--tile-jobs"),
        ([line / "captures", "--station", station, "--executor", "dask"], "--executor"),
        ([tmp_path, "--station", station], "no capture files"),
        ([line / "captures"], "--station"),
    ):
        code, _, err = run_cli(["inspect", *argv, "--out", tmp_path / "o"], capsys)
        assert code == 2 and needle in err, (argv, err)


def test_exit_code_is_the_worst_outcome():
    def outcomes(*statuses):
        return [JobOutcome(i, f"c{i}.tif", s, "") for i, s in enumerate(statuses)]

    assert worst_exit_code(outcomes("PASS", "PASS")) == 0
    assert worst_exit_code(outcomes("PASS", "FAIL")) == 1
    assert worst_exit_code(outcomes("FAIL", "INCONCLUSIVE", "PASS")) == 3
    assert worst_exit_code(outcomes("INCONCLUSIVE", "ERROR", "FAIL")) == 2


def dies_on_second(job):
    """A worker's work that kills its process on job 1 (as the kernel's OOM killer would)."""
    if job.index == 1:
        os._exit(9)
    return JobOutcome(job.index, job.capture, "PASS", f"PASS {job.capture}", peak_rss_mb=1.0, worker=str(os.getpid()))


def test_a_dying_worker_fails_only_its_capture(tmp_path):
    base = Job(index=0, capture="", station="s.toml", spec=None, out_dir=str(tmp_path))
    jobs = [dataclasses.replace(base, index=i, capture=f"c{i}.tif") for i in range(5)]
    lines = []
    outcomes = run_batch(jobs, ProcessPool(2), resume=False, report=lines.append, fn=dies_on_second)
    assert [o.index for o in outcomes] == list(range(5)) and len(lines) == 5
    assert [o.status for o in outcomes] == ["PASS", "ERROR", "PASS", "PASS", "PASS"]
    assert "c1.tif: the worker process died" in outcomes[1].message


def test_collect_jobs_expands_folders_and_rejects_empty_ones(line, tmp_path):
    base = Job(index=0, capture="", station="s.toml", spec=None, out_dir=str(tmp_path))
    jobs = collect_jobs([str(line / "captures"), str(line / "station.toml")], None, base=base)
    assert [j.index for j in jobs] == list(range(7))
    assert [os.path.basename(j.capture) for j in jobs[:2]] == ["lens-001.tif", "lens-002.tif"]
    with pytest.raises(InputError, match="no capture files"):
        collect_jobs([str(tmp_path)], None, base=base)
    assert make_executor("local", None).workers == 1


def test_python_api_writes_only_when_asked(line, tmp_path, monkeypatch):
    import metrology
    from metrology.solver.device import compute_device, device_label

    capture = tmp_path / "in" / "api.tif"
    capture.parent.mkdir()
    write_lens_capture(capture, bench_station(32), "LENS-004", 0.03, 21)
    monkeypatch.chdir(tmp_path)  # a default "reports/" would land here
    result = metrology.inspect(capture, line / "station.toml", SPEC, max_iterations=3)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["in", "in/api.tif"]
    out = tmp_path / "out"
    assert result.document["software"]["compute_device"] == device_label(compute_device("auto"))  # as the CLI
    pdf, js = metrology.write_report(result, out)
    assert pdf.name.startswith("bench-4x-15x15_LENS-004_") and js.with_suffix(".pdf") == pdf
    assert json.loads(js.read_text())["verdict"]["overall"] == result.verdict == "INCONCLUSIVE"
