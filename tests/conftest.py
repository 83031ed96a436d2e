"""Shared fixtures: audit stores on both databases (``tests/audit_backends.py``)."""

import pytest

from tests.audit_backends import BACKENDS, StoreFactory


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
