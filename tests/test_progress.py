"""Progress of a long command (issue 17): stage lines on a piped stderr, never silent for 10 s.

The fit is slowed down (a silent start longer than 10 s, then two seconds per iteration) so that the
heartbeat and the iteration lines (with their ETA) are both exercised in a real ``metrology inspect`` run whose
stderr is a pipe, as in a log file or a CI job.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest

from metrology.progress import Progress
from tests.sim_cases import FIXTURES, bench_station, centre_leds, lens_coefficients, simulate_to

SLOWED_INSPECT = """
import sys, time
import metrology.pipeline as pipeline
fit = pipeline.reconstruct

def slowed(*args, progress=None, **kw):
    time.sleep(11.0)  # a start that reports nothing for longer than 10 s

    def slow_progress(i, total, loss):
        time.sleep(2.0)
        progress(i, total, loss)

    return fit(*args, progress=slow_progress, **kw)

pipeline.reconstruct = slowed
from metrology.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return simulate_to(tmp_path_factory.mktemp("progress"), bench_station(32), lens_coefficients(0.03, 1), seed=1,
                       leds=centre_leds(5))


def test_piped_inspect_prints_stage_lines_at_least_every_10_s(capture, tmp_path):
    cap, station, _ = capture
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("METROLOGY_PROGRESS", None)
    env.pop("METROLOGY_PROGRESS_INTERVAL", None)
    cmd = [sys.executable, "-c", SLOWED_INSPECT, "inspect", str(cap), "--station", str(station), "--spec",
           str(FIXTURES / "specs" / "plan-4x-010.toml"), "--out", str(tmp_path / "out"), "--audit-db",
           str(tmp_path / "audit.sqlite"), "--max-iterations", "6"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    arrivals = []
    for line in proc.stderr:  # as the lines arrive: the pipe is read while the command runs
        arrivals.append((time.monotonic(), line.rstrip("\n")))
    end = time.monotonic()
    stdout = proc.stdout.read()
    assert proc.wait() in (0, 1, 3), (stdout, arrivals)
    lines = [text for _, text in arrivals]
    assert lines and all(re.match(r"inspect \d\d:\d\d:\d\d \+\d:\d\d:\d\d ", text) for text in lines), lines
    times = [t for t, _ in arrivals] + [end]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 10.0, list(zip(gaps, lines))
    text = "\n".join(lines)
    assert "fit: start" in text and "(still running)" in text  # the silent start is reported
    assert re.search(r"fit: iterations .*: \d+/\d+, loss [\d.e+-]+, ETA <= \d:\d\d:\d\d", text), text
    assert "record and write the report" in text
    assert lines[-1].endswith(" done")
    assert len(stdout.strip().splitlines()) == 1  # the verdict line alone on stdout


def test_terminal_stream_gets_a_bar_and_a_quick_stage_prints_nothing():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    with Progress("inspect", stream=tty) as p:
        p.stage("fit: iterations", 4)
        for i in range(1, 5):
            p(i, 4, 0.5)
    assert "inspect: fit: iterations" in tty.getvalue() and "4/4" in tty.getvalue()

    piped = io.StringIO()
    with Progress("inspect", stream=piped) as p:
        p.stage("load inputs")  # ends before QUIET_S: an input error stays the one line on stderr
    assert piped.getvalue() == ""


def test_plain_lines_say_still_running_only_when_nothing_arrived(monkeypatch):
    import metrology.progress as progress_module

    monkeypatch.setattr(progress_module, "QUIET_S", 0.05)
    piped = io.StringIO()
    with Progress("simulate", stream=piped, interval_s=0.2) as p:
        p.stage("simulating frames", 20)
        for i in range(1, 11):  # iterations keep arriving: lines carry them, never "still running"
            time.sleep(0.06)
            p(i, 20)
        busy = piped.getvalue()
        time.sleep(0.7)  # then a silent stretch: the heartbeat says so
    lines = busy.splitlines()
    assert lines and not any("still running" in line for line in lines), lines
    assert any(re.search(r"simulating frames: \d+/20, ETA \d:\d\d:\d\d$", line) for line in lines), lines
    assert "stops early" not in busy  # only a converging solver's stage has an upper-bound ETA
    assert "(still running)" in piped.getvalue()[len(busy):]
