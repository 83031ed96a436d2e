"""The PDF, the JSON and the audit record as one unit (issue 15): a writer killed at any step, a full
disk, or concurrent writers with the same serial leave complete units or nothing."""

import hashlib
import json
import signal
import subprocess
import sys
import textwrap

import pytest

from metrology.audit.store import AuditStore
from metrology.inspection import recover_results
from metrology.io.results import ResultsNotWritten, new_unit, write_unit

STATION = "bench-4x-15x15"

# A writer in its own process: the unit of a PDF and a JSON, committed by appending an inspection
# record that names them (as metrology.inspection does), killed with SIGKILL at the chosen step.
WRITER = textwrap.dedent(
    """
    import hashlib, os, signal, sys
    from metrology.audit.store import AuditStore
    from metrology.io import results

    out, store_path, step = sys.argv[1], sys.argv[2], sys.argv[3]
    contents = {".pdf": b"%PDF-1.4 report of LENS/1", ".json": b'{"verdict": "PASS"}'}
    unit = results.new_unit(out, "LENS_1_20261130T120000Z", contents,
                            info={"store": store_path, "station_id": "STATION_ID"})

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    create, place = results._create, results._place
    created, placed = [], []

    def create_then_maybe_die(path, data):
        create(path, data)
        created.append(path)
        if step == "files-written" and len(created) == len(contents):
            die()  # both files under their temporary names, no record yet

    def place_then_maybe_die(part, final):
        place(part, final)
        placed.append(final)
        if step == "first-renamed":
            die()  # the record appended, one file under its final name, the other not

    results._create, results._place = create_then_maybe_die, place_then_maybe_die

    def commit():
        ref = {"id": unit.token, "files": {s.lstrip("."): p.name for s, p in unit.files.items()},
               "sha256": {s.lstrip("."): hashlib.sha256(d).hexdigest() for s, d in contents.items()}}
        with AuditStore(store_path) as store:
            store.append("inspection", "STATION_ID", {"verdict": "PASS", "result": ref})
        if step == "recorded":
            die()  # the record appended, no file renamed yet

    results.write_unit(unit, contents, commit)
    """.replace("STATION_ID", STATION)
)


def _records(store_path):
    with AuditStore(store_path) as store:
        assert store.verify().ok
        return [r.content["result"] for r in store.records(kind="inspection")]


def _visible(out):
    return sorted(p.name for p in out.iterdir())


def assert_complete_or_nothing(out, store_path):
    """Every unit in ``out`` is whole: each record's files exist with the recorded SHA-256, every
    file belongs to a record, nothing temporary is left."""
    records = _records(store_path)
    names = _visible(out)
    assert not [n for n in names if n.startswith(".")], names  # no journal, no temporary
    expected = []
    for ref in records:
        for kind, name in ref["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == ref["sha256"][kind]
            expected.append(name)
    assert sorted(expected) == names
    return records


@pytest.mark.parametrize("step, survives", [("files-written", False), ("recorded", True), ("first-renamed", True)])
def test_writer_killed_at_each_step_leaves_a_complete_unit_or_nothing(tmp_path, step, survives):
    out, store_path = tmp_path / "out", tmp_path / "audit.sqlite"
    out.mkdir()
    AuditStore(store_path).close()
    proc = subprocess.run([sys.executable, "-c", WRITER, str(out), str(store_path), step], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert any(n.endswith(".unit") for n in _visible(out))  # the dead writer's journal is there

    notes = recover_results(out, store_path)  # what the next inspection into the folder runs first
    records = assert_complete_or_nothing(out, store_path)
    assert len(records) == (1 if survives else 0)
    if survives:
        assert len(_visible(out)) == 2 and notes and "completed" in notes[0]
    else:
        assert _visible(out) == [] and notes and "removed" in notes[0]
    assert recover_results(out, store_path) == []  # settled once


def test_recover_leaves_a_live_writer_alone(tmp_path):
    """A unit whose writer still holds its journal lock is not touched by another run's sweep."""
    out, store_path = tmp_path / "out", tmp_path / "audit.sqlite"
    out.mkdir()
    AuditStore(store_path).close()
    unit = new_unit(out, "LENS", (".pdf", ".json"), info={"store": str(store_path), "station_id": STATION})
    seen = {}

    def commit():  # runs while the writer holds the lock: a concurrent sweep must leave the parts alone
        seen["notes"] = recover_results(out, store_path)
        seen["parts"] = sorted(n for n in _visible(out) if n.endswith(".part"))

    write_unit(unit, {".pdf": b"a", ".json": b"b"}, commit)
    assert seen["notes"] == [] and len(seen["parts"]) == 2
    assert sorted(_visible(out)) == sorted(p.name for p in unit.files.values())


def test_full_disk_keeps_nothing(tmp_path):
    """A write that fails for lack of space (the file-size limit makes write() fail with EFBIG, as a
    full disk fails with ENOSPC) removes every file of the unit and appends no record."""
    out, store_path = tmp_path / "out", tmp_path / "audit.sqlite"
    out.mkdir()
    AuditStore(store_path).close()
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from metrology.audit.store import AuditStore
        from metrology.io.results import ResultsNotWritten, new_unit, write_unit
        out, store_path = sys.argv[1], sys.argv[2]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        unit = new_unit(out, "LENS", (".pdf", ".json"), info={"store": store_path, "station_id": "S"})
        def commit():
            with AuditStore(store_path) as store:
                store.append("inspection", "S", {"result": {"id": unit.token}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            write_unit(unit, {".pdf": b"x" * 50_000, ".json": b"y" * 200_000}, commit)
        except ResultsNotWritten as exc:
            print(exc)
            sys.exit(7)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(store_path)], capture_output=True, text=True)
    assert proc.returncode == 7, proc.stderr
    assert "nothing was kept" in proc.stdout
    assert _visible(out) == []
    with AuditStore(store_path) as store:
        assert len(store) == 0


def test_same_serial_same_second_gives_distinct_names(tmp_path):
    """Three units with one base name (same sanitised serial, same UTC second) never collide."""
    units = [new_unit(tmp_path, "LENS_1_20261130T120000Z", (".pdf", ".json")) for _ in range(3)]
    for i, unit in enumerate(units):
        write_unit(unit, {".pdf": b"%d" % i, ".json": json.dumps({"i": i}).encode()})
    assert len(_visible(tmp_path)) == 6
    for i, unit in enumerate(units):
        assert unit.files[".pdf"].read_bytes() == b"%d" % i


def test_a_failed_commit_keeps_nothing(tmp_path):
    unit = new_unit(tmp_path, "LENS", (".pdf", ".json"))

    def commit():
        raise OSError(28, "No space left on device")

    with pytest.raises(ResultsNotWritten, match="nothing was kept"):
        write_unit(unit, {".pdf": b"a", ".json": b"b"}, commit)
    assert _visible(tmp_path) == []


def test_recover_removes_stale_temporaries_only(tmp_path):
    """An atomic write killed mid-way leaves ``.<name>.<random>.tmp``: removed once it is an hour
    old (no live write takes that long), a fresh one left to its writer."""
    import os
    import time

    from metrology.io.results import STALE_TEMP_S, recover

    stale, fresh = tmp_path / ".LENS.pdf.k2j3.tmp", tmp_path / ".LENS.json.x9q1.tmp"
    stale.write_bytes(b"half a PDF")
    fresh.write_bytes(b"half a JSON")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    notes = recover(tmp_path)
    assert not stale.exists() and fresh.exists()
    assert len(notes) == 1 and stale.name in notes[0]
