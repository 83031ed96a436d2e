"""Audit stores on both databases for the tests: a fresh SQLite file or a fresh PostgreSQL schema.

PostgreSQL tests run against a real server named by ``$METROLOGY_TEST_PG_URL`` (``.ci/run`` starts
one on 127.0.0.1 with ``.ci/start-postgres``). Without it they fail when ``$CI`` is set and skip
otherwise, saying how to start one. Tampering goes through the database's own client (sqlite3 or
psycopg), as an attacker with write access would.
"""

from __future__ import annotations

import os
import sqlite3
import uuid

import pytest

BACKENDS = ("sqlite", "postgresql")
ENV_URL = "METROLOGY_TEST_PG_URL"


def server_url() -> str:
    """The PostgreSQL test server's URL; fails under CI, skips elsewhere, when there is none."""
    url = os.environ.get(ENV_URL)
    if url:
        return url
    message = (f"no PostgreSQL test server: ${ENV_URL} is unset (start one with "
               "`eval \"$(.ci/start-postgres /tmp/pg)\"`)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def with_schema(url: str, schema: str) -> str:
    """``url`` with the libpq option that makes ``schema`` the connection's current schema."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


class StoreFactory:
    """Fresh store locations of one backend (``new()``); ``cleanup()`` drops the PostgreSQL schemas."""

    def __init__(self, backend: str, folder):
        self.backend, self.folder = backend, folder
        self.url = server_url() if backend == "postgresql" else None
        self.schemas = []

    def new(self, name: str = "audit") -> str:
        if self.backend == "sqlite":
            return str(self.folder / f"{name}.sqlite")
        schema = f"t_{uuid.uuid4().hex[:16]}"
        raw_exec(self.url, f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        return with_schema(self.url, schema)

    def cleanup(self):
        for schema in self.schemas:
            raw_exec(self.url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def raw_query(location: str, sql: str, args=()) -> list:
    """Rows of ``sql`` (``?`` placeholders) run directly on the store's database, outside the store."""
    if "://" in location:
        import psycopg

        with psycopg.connect(location, autocommit=True) as con:
            cur = con.execute(sql.replace("?", "%s"), tuple(args))
            return cur.fetchall() if cur.description else []
    con = sqlite3.connect(location)
    try:
        rows = con.execute(sql, tuple(args)).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def raw_exec(location: str, sql: str, args=()) -> None:
    """Run one statement directly on the store's database (a tamperer's edit), committed."""
    raw_query(location, sql, args)
