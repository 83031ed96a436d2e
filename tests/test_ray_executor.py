"""Batch on Ray (issue 18): a real Ray head on 127.0.0.1, reached as ``ray://`` (Ray Client, recording
into a PostgreSQL audit store) and as ``--executor ray`` ($RAY_ADDRESS), gives the same result
documents as a local run.

Ray is an optional extra (``pip install -e '.[ray]'``); ``.ci/run`` installs it. Without it these
tests fail when ``$CI`` is set and skip otherwise.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

from metrology.audit.store import AuditStore
from metrology.cli import main
from tests.audit_backends import StoreFactory
from tests.sim_cases import FIXTURES, bench_station
from tests.test_batch import write_lens_capture

SPEC = FIXTURES / "specs" / "plan-4x-010.toml"
ITERATIONS = "40"  # a short fit on 5x5 LEDs: the comparison is about the executors, not the optics


def need_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        message = "Ray is not installed (pip install -e '.[ray]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster (2 CPUs, token authentication) started with ``ray start --head``.

    ``RAY_AUTH_MODE=token`` must be in the environment before Ray is imported (its C++ core reads
    it when loaded): this process then sends the token of ``~/.ray/auth_token`` as the head expects.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    need_ray()
    gcs, client = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    # `ray start` no longer creates a missing token (Ray 2.60: create_token_if_missing=False): make
    # the local-development token at ~/.ray/auth_token as Ray's docs say, unless one exists
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"], env=env,
                   check=True, capture_output=True, timeout=120)
    log = open(os.path.join(tmp, "head.log"), "w")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", f"--ray-client-server-port={client}", "--num-cpus=2", f"--temp-dir={tmp}",
         "--include-dashboard=false", "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", client), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail("the Ray head did not start:\n" + open(log.name).read()[-2000:])
                time.sleep(0.5)
        yield {"gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}"}
    finally:
        head.terminate()  # `ray start --block` stops the node's processes on SIGTERM
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = mode


@pytest.fixture(scope="module")
def two_captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-line")
    station = bench_station(32)
    (root / "station.toml").write_text(station.to_toml())
    (root / "captures").mkdir()
    for seed, (serial, rms) in enumerate((("LENS-101", 0.03), ("LENS-102", 0.08)), start=11):
        write_lens_capture(root / "captures" / f"{serial}.tif", station, serial, rms, seed, leds_per_side=5)
    return root


def batch(root, out, capsys, *extra, capture="captures"):
    code = main(["inspect", str(root / capture), "--station", str(root / "station.toml"), "--spec", str(SPEC),
                 "--out", str(out), "--max-iterations", ITERATIONS, *map(str, extra)])
    stdout = capsys.readouterr().out
    docs = {}
    for path in sorted(out.glob("*.json")):
        doc = json.loads(path.read_text())
        doc.pop("timings_s"), doc.pop("created_utc")
        # which store recorded the run and where its record sits in that store's chain, and the
        # report id (time + random token), differ by design between runs: not results
        doc.pop("audit_record", None), doc["report"].pop("id", None)
        docs[doc["lens"]["serial"]] = doc
    return code, stdout, docs


def test_ray_results_equal_a_local_run(ray_head, two_captures, tmp_path, capsys, monkeypatch):
    """The local run uses 2 processes. Every run records into an audit store (so that every document
    carries the same station status): the local and the driver runs into SQLite files, the Ray Client run into PostgreSQL, as in the
    cluster set-up of docs/batch.md."""
    code, _, local = batch(two_captures, tmp_path / "local", capsys, "--audit-db", tmp_path / "local.sqlite",
                           "--jobs", 2)
    assert sorted(local) == ["LENS-101", "LENS-102"]

    pg = StoreFactory("postgresql", tmp_path)
    try:
        # Known intermittent fault, seen twice in ~10 full-suite runs under heavy load and never alone:
        # the Ray Client run returns with its header line only, no capture run and nothing recorded.
        # It is retried once in a fresh store and output folder, and the retry must pass; the first
        # attempt's output is kept in the failure message if both fail.
        attempts = []
        for attempt in range(2):
            store = pg.new()
            code_client, out_client, client = batch(two_captures, tmp_path / f"client{attempt}", capsys, "--executor",
                                                    ray_head["client"], "--audit-db", store)
            with AuditStore(store, create=False) as s:
                serials = sorted(r.content["lens"]["serial"] for r in s.records())
                ok = s.verify().ok
            attempts.append(out_client)
            if serials or attempt:
                break
            warnings.warn(f"Ray Client run recorded nothing; retrying once: {out_client!r}")
        assert ok and serials == sorted(local), attempts
    finally:
        pg.cleanup()
    assert "on Ray (ray://127.0.0.1" in out_client
    monkeypatch.setenv("RAY_ADDRESS", ray_head["gcs"])  # `--executor ray` joins the cluster named there
    code_driver, out_driver, driver = batch(two_captures, tmp_path / "driver", capsys, "--executor", "ray",
                                            "--audit-db", tmp_path / "driver.sqlite", capture="captures/LENS-102.tif")
    assert "1 capture(s) on Ray (local)" in out_driver
    # the exit code is the worst verdict: LENS-102 fails its spec; a short fit of LENS-101 may end
    # INCONCLUSIVE (not converged), in every executor alike
    worst = max(({"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 2}[d["verdict"]["overall"]], d["verdict"]["overall"])
                for d in local.values())[1]
    assert local["LENS-102"]["verdict"]["overall"] == "FAIL"
    assert code == code_client == {"FAIL": 1, "INCONCLUSIVE": 3}[worst] and code_driver == 1
    assert local["LENS-101"]["station"]["calibration"]["status"] == "none"
    assert json.dumps(client, sort_keys=True) == json.dumps(local, sort_keys=True)
    assert json.dumps(driver["LENS-102"], sort_keys=True) == json.dumps(local["LENS-102"], sort_keys=True)
