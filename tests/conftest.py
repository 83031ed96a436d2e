"""Shared fixtures: audit stores on both databases (``tests/audit_backends.py``), and the session's
own default audit store.

Every command records into an audit store, by default ``~/.metrology/audit.sqlite``: the tests must
never touch the user's store, so the whole session points ``METROLOGY_AUDIT_DB`` at a store of its
own (tests that check the defaults set their own environment with ``monkeypatch``).

Under pytest-xdist (``-n auto``, the default in ``pyproject.toml``) each worker gets its share of the
cores: torch's intra-op threads and ``OMP_NUM_THREADS`` (inherited by the commands the tests start)
are set to cores // workers, so two workers on two cores do not oversubscribe them.
"""

import os

import pytest
import torch

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _THREADS = max(1, _CORES // _WORKERS)  # the cores this process may use, as tile_processes() counts them
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from tests.audit_backends import BACKENDS, StoreFactory


@pytest.fixture(scope="session", autouse=True)
def session_audit_store(tmp_path_factory):
    """``METROLOGY_AUDIT_DB`` -> a store in the session's temporary folder (no site folder)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METROLOGY_AUDIT_DB", str(tmp_path_factory.mktemp("audit-session") / "audit.sqlite"))
        mp.delenv("METROLOGY_SITE_DIR", raising=False)
        yield


@pytest.fixture(params=BACKENDS)
def new_store(request, tmp_path):
    """A function returning a fresh, not yet created store location (SQLite file or PostgreSQL schema)."""
    factory = StoreFactory(request.param, tmp_path)
    yield factory.new
    factory.cleanup()


@pytest.fixture(scope="module", params=BACKENDS)
def module_store(request, tmp_path_factory):
    """As ``new_store``, shared by the tests of a module."""
    factory = StoreFactory(request.param, tmp_path_factory.mktemp("store"))
    yield factory.new
    factory.cleanup()
