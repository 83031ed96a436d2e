"""SQLite database behind :class:`metrology.audit.store.AuditStore`: the embedded default.

One file, shared by the processes of one host (SQLite's WAL mode is not safe on a network
filesystem: stations on several hosts share a PostgreSQL store instead, see
:mod:`metrology.audit.postgres_db`).

Concurrency: WAL journal, ``synchronous = FULL``, a 60 s busy timeout, and every write in one
``BEGIN IMMEDIATE`` transaction (one writer at a time). Creating a fresh store is race-free: the
check "is this file empty, or already an audit store?" and the creation run in one
``BEGIN IMMEDIATE`` transaction, so a second process opening the same new file waits for the
first and then finds the finished tables (several processes may create one store at once).
"""

from __future__ import annotations

import random
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from metrology.audit.database import Database
from metrology.errors import InputError

BUSY_TIMEOUT_S = 60.0

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_records ("
    " seq INTEGER PRIMARY KEY, station_id TEXT NOT NULL, kind TEXT NOT NULL, utc TEXT NOT NULL,"
    " content TEXT NOT NULL, content_sha256 TEXT NOT NULL, prev_sha256 TEXT NOT NULL,"
    " chain_sha256 TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_records_station ON audit_records (station_id, kind, seq)",
)


class SQLiteDatabase(Database):
    """An audit store file: opened (and created when allowed) with its tables checked.

    Parameters
    ----------
    path : str or Path
        The SQLite file.
    create : bool
        Create the file, its folder and the tables if missing; else a missing file or a file
        without the audit tables is an InputError.
    initial_meta : dict
        ``audit_meta`` rows written when the store is created.

    Raises
    ------
    InputError
        Not an SQLite file, an SQLite file with other tables, missing (``create=False``), or it
        cannot be created or opened. The message names the file.
    """

    def __init__(self, path, create: bool, initial_meta: dict):
        self.path = Path(path)
        self.location = str(self.path)
        exists = self.path.exists()
        if not exists and not create:
            raise InputError(self.path, "no audit store at this path")
        if exists:
            self._check_header()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(self.path, f"cannot create the audit store folder: {exc}") from exc
        try:
            self._con = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise InputError(self.path, f"cannot open the audit store: {exc}") from exc
        self._open(create, initial_meta)

    def _configure(self, create: bool, initial_meta: dict):
        try:
            self._con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if self._retry_busy(lambda: self._init_schema(create, initial_meta)):
                # WAL cannot be switched on inside a transaction; the creator does it once
                self._retry_busy(lambda: self._con.execute("PRAGMA journal_mode = WAL"))
            self._con.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise InputError(self.path, f"not an audit store ({exc})") from exc

    def _check_header(self):
        try:
            with open(self.path, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            raise InputError(self.path, f"cannot read the audit store: {exc.strerror or exc}") from exc
        if head and head != b"SQLite format 3\x00":
            raise InputError(self.path, "not an audit store (not an SQLite database)")

    def _has_meta(self) -> bool:
        return bool(self._con.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='audit_meta'").fetchone()[0])

    def _retry_busy(self, step):
        """``step()``, again after a short random pause while SQLite answers "database is locked"
        (up to :data:`BUSY_TIMEOUT_S`). SQLite returns that error without waiting in a few cases
        (a lock upgrade that could deadlock, a journal-mode change meeting another connection);
        seen once in 160 fresh-store openings by four processes on a loaded machine."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK")
                time.sleep(0.005 + 0.05 * random.random())

    def _init_schema(self, create: bool, initial_meta: dict) -> bool:
        """Check for the audit tables; create them (race-free) when the file is new and allowed.
        True when this connection created them.

        The first look needs no lock. When the tables are missing, the second look and the
        creation run in one ``BEGIN IMMEDIATE`` transaction: a concurrent creator either has
        committed (the tables are found) or waits for this one.
        """
        if self._has_meta():
            if not self._con.execute("SELECT count(*) FROM sqlite_master WHERE type='table' "
                                     "AND name='audit_records'").fetchone()[0]:
                raise InputError(self.path, "not an audit store (its table audit_records is missing)")
            return False
        if not create:
            raise InputError(self.path, "not an audit store (SQLite file without the audit tables)")
        with self.transaction(write=True):
            if self._has_meta():
                return False  # another process created it between the two looks
            if self._con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise InputError(self.path, "not an audit store (SQLite file without the audit tables)")
            for stmt in SCHEMA:
                self._con.execute(stmt)
            self._con.executemany("INSERT INTO audit_meta (key, value) VALUES (?, ?)", initial_meta.items())
        return True

    @contextmanager
    def transaction(self, write: bool = False):
        """One transaction: ``write`` takes the store's write lock first (``BEGIN IMMEDIATE``),
        so that writers serialise; a read transaction sees one consistent snapshot."""
        self._con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def query(self, sql: str, args=()) -> list:
        """Rows of ``sql`` (``?`` placeholders) as tuples."""
        return self._con.execute(sql, tuple(args)).fetchall()

    def execute(self, sql: str, args=()) -> None:
        self._con.execute(sql, tuple(args))
