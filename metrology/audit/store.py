"""Append-only, hash-chained store of every ``inspect`` and ``calibrate`` run.

Two databases hold the same tables, hashes and guarantees: an SQLite file (the embedded default,
:mod:`metrology.audit.sqlite_db`, shared by the processes of one host) and PostgreSQL (a
``postgresql://`` URL, :mod:`metrology.audit.postgres_db`, shared by stations on many hosts).
This module holds what does not depend on the database: the canonical form, the hashes, the
records and the integrity check.

Layout (schema version 1)
-------------------------
``audit_meta(key, value)``
    ``format = "metrology-audit"``, ``schema_version = "1"``, ``head_seq`` and ``head_chain_sha256``
    (the last record's sequence number and chain hash, updated in the same transaction as every
    append, so that deleting the newest record is detected too).
``audit_records(seq, station_id, kind, utc, content, content_sha256, prev_sha256, chain_sha256)``
    ``content`` is the canonical JSON (:func:`canonical_json`) of the envelope
    ``{"kind", "station_id", "utc", "data"}``; ``station_id``, ``kind`` and ``utc`` are copies kept
    as columns for queries and checked against the envelope by :meth:`AuditStore.verify`.

Hash chain
----------
``content_sha256 = SHA-256(content)`` (UTF-8), ``chain_sha256 = SHA-256(prev_sha256 + content_sha256)``
(the two lowercase hex strings concatenated, ASCII); the genesis ``prev_sha256`` is 64 zeros. Editing
any stored field, deleting or reordering records breaks the chain at a named record. Rewriting the
whole chain from some record onwards (recomputing every hash and the head) cannot be detected from
inside the store: anchor the head hash printed by ``metrology audit verify`` elsewhere (a signed log,
a ticket) if that threat matters.

Concurrency and crashes
-----------------------
Every append is one write transaction that reads the head and inserts the record, and write
transactions serialise (SQLite: ``BEGIN IMMEDIATE`` under WAL with ``synchronous = FULL``;
PostgreSQL: a transaction-scoped advisory lock): processes appending at once queue, and a crash
mid-write leaves the last committed state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from metrology.audit.database import is_database_url
from metrology.audit.postgres_db import PostgresDatabase
from metrology.audit.sqlite_db import SQLiteDatabase
from metrology.errors import InputError

SCHEMA_VERSION = 1
STORE_FORMAT = "metrology-audit"
GENESIS_SHA256 = "0" * 64
KINDS = ("inspection", "calibration", "alarm")
ENV_DB = "METROLOGY_AUDIT_DB"
ENV_SITE = "METROLOGY_SITE_DIR"
_UTC_FMT = "%Y-%m-%dT%H:%M:%S.%fZ"


# --------------------------------------------------------------------------- canonical form
def _plain(obj, where="content"):
    """Convert ``obj`` to JSON-ready builtins (numpy scalars/arrays, tuples, non-str keys)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist(), where)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return "NaN"  # float("NaN") reads it back
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return x
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, datetime):
        return format_utc(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise InputError(where, f"cannot store a value of type {type(obj).__name__} in the audit store")


def canonical_json(obj) -> str:
    """Canonical JSON text of ``obj``: sorted keys, compact separators, floats as ``repr``.

    Numpy values become builtins, dict keys become strings and non-finite floats become the
    strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (so the text is strict JSON and ``float()``
    reads them back). The same content always gives the same text, hence the same hash.
    """
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def sha256_hex(text: str) -> str:
    """SHA-256 of ``text`` (UTF-8) as 64 lowercase hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chain_hash(prev_sha256: str, content_sha256: str) -> str:
    """``SHA-256(prev_sha256 + content_sha256)`` of the two hex strings."""
    return hashlib.sha256((prev_sha256 + content_sha256).encode("ascii")).hexdigest()


# --------------------------------------------------------------------------- time
def format_utc(t: datetime) -> str:
    """Fixed-width ISO 8601 UTC text ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (sorts as time does).

    Naive datetimes are taken as UTC.
    """
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).strftime(_UTC_FMT)


def parse_utc(value, source="time") -> datetime:
    """Parse a date (``YYYY-MM-DD``, midnight UTC), ISO datetime text or datetime to aware UTC.

    Raises InputError naming ``source`` on bad text.
    """
    if isinstance(value, datetime):
        t = value
    else:
        text = str(value).strip()
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            raise InputError(source, f"not a date or ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


def default_db_path():
    """Where the audit store lives unless ``--audit-db`` says otherwise.

    ``$METROLOGY_AUDIT_DB`` if set (a file path, or a ``postgresql://`` URL returned as text), else
    ``$METROLOGY_SITE_DIR/audit.sqlite``, else ``~/.metrology/audit.sqlite``.
    """
    if os.environ.get(ENV_DB):
        value = os.environ[ENV_DB]
        return value if is_database_url(value) else Path(value)
    site = os.environ.get(ENV_SITE)
    return (Path(site) if site else Path.home() / ".metrology") / "audit.sqlite"


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """One stored record. ``content`` is the caller's dict as read back from the canonical JSON."""

    seq: int
    kind: str
    station_id: str
    utc: str
    content: dict
    content_sha256: str
    prev_sha256: str
    chain_sha256: str

    @property
    def time(self) -> datetime:
        """``utc`` as an aware datetime."""
        return parse_utc(self.utc)


@dataclass
class VerifyResult:
    """Outcome of :meth:`AuditStore.verify`: ``problems`` each name the record seq and the fault."""

    ok: bool
    problems: list = field(default_factory=list)
    n_records: int = 0
    head_seq: int = 0
    head_chain_sha256: str = GENESIS_SHA256

    def summary(self) -> str:
        """One paragraph in words (CLI and PDF)."""
        if self.ok:
            return (f"Integrity check passed: {self.n_records} records, hash chain intact, "
                    f"head seq {self.head_seq} chain SHA-256 {self.head_chain_sha256}.")
        return (f"Integrity check FAILED: {len(self.problems)} problem(s) in {self.n_records} records: "
                + "; ".join(self.problems))


_COLS = "seq, station_id, kind, utc, content, content_sha256, prev_sha256, chain_sha256"
_INITIAL_META = {"format": STORE_FORMAT, "schema_version": str(SCHEMA_VERSION), "head_seq": "0",
                 "head_chain_sha256": GENESIS_SHA256}


class AuditStore:
    """The audit store at ``path`` (see the module docstring for layout and guarantees).

    Parameters
    ----------
    path : str or Path, optional
        SQLite file, or a ``postgresql://`` URL (:mod:`metrology.audit.postgres_db`); default
        :func:`default_db_path`.
    create : bool
        Create the store (the file and its folder, or the tables) if missing. With ``False`` a
        missing store is an InputError.

    Attributes
    ----------
    location : str
        The file path or the URL with its password hidden (for messages and reports).
    path : Path or None
        The SQLite file; None for PostgreSQL.

    Raises
    ------
    InputError
        Not an audit store (not SQLite, SQLite or a PostgreSQL schema without the audit tables),
        a newer schema version, an unreachable server, or the store cannot be created.
    """

    def __init__(self, path=None, create: bool = True):
        self._db = open_database(path if path is not None else default_db_path(), bool(create), _INITIAL_META)
        self.path, self.location = self._db.path, self._db.location
        try:
            self._check_meta()
        except BaseException:
            self._db.close()
            raise

    def _check_meta(self):
        meta = dict(self._db.query("SELECT key, value FROM audit_meta"))
        if meta.get("format") != STORE_FORMAT:
            raise InputError(self.location, "not an audit store (format marker missing)")
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            version = -1
        if version != SCHEMA_VERSION:
            raise InputError(self.location, f"unsupported audit store schema version {meta.get('schema_version')!r} "
                                            f"(this software reads version {SCHEMA_VERSION})")

    def close(self):
        """Close the connection."""
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ writing
    def append(self, kind: str, station_id: str, content: dict, utc=None) -> Record:
        """Append one record atomically and return it.

        Parameters
        ----------
        kind : {"inspection", "calibration", "alarm"}
        station_id : str
        content : dict
            Plain data (see docs/audit.md for each kind's fields); stored as canonical JSON.
        utc : datetime or str, optional
            Time of the run; default now.
        """
        if kind not in KINDS:
            raise InputError("audit record kind", f"{kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(station_id, str) or not station_id.strip():
            raise InputError("station id", "must be a non-empty string")
        if not isinstance(content, dict):
            raise InputError("audit record content", "must be a dict")
        utc_text = format_utc(parse_utc(utc, "utc") if utc is not None else utc_now())
        text = canonical_json({"kind": kind, "station_id": station_id, "utc": utc_text, "data": content})
        c_sha = sha256_hex(text)
        db = self._db
        with db.transaction(write=True):  # writers serialise: the head read here stays the head
            meta = dict(db.query(
                "SELECT key, value FROM audit_meta WHERE key IN ('head_seq', 'head_chain_sha256')"))
            seq = int(meta["head_seq"]) + 1
            prev = meta["head_chain_sha256"]
            chain = chain_hash(prev, c_sha)
            db.execute(f"INSERT INTO audit_records ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (seq, station_id, kind, utc_text, text, c_sha, prev, chain))
            db.execute("UPDATE audit_meta SET value = ? WHERE key = 'head_seq'", (str(seq),))
            db.execute("UPDATE audit_meta SET value = ? WHERE key = 'head_chain_sha256'", (chain,))
        return Record(seq, kind, station_id, utc_text, json.loads(text)["data"], c_sha, prev, chain)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _row_to_record(row) -> Record:
        seq, station_id, kind, utc, text, c_sha, prev, chain = row
        try:
            data = json.loads(text).get("data", {})
        except (ValueError, AttributeError):
            data = {}
        return Record(seq, kind, station_id, utc, data, c_sha, prev, chain)

    def records(self, station_id=None, kind=None, since=None, until=None) -> list:
        """Records in seq order, optionally filtered by station, kind and time (``since <= utc``).

        ``since``/``until`` accept datetimes or ISO text (a date means midnight UTC).
        """
        where, args = [], []
        if station_id is not None:
            where.append("station_id = ?")
            args.append(station_id)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if since is not None:
            where.append("utc >= ?")
            args.append(format_utc(parse_utc(since, "since")))
        if until is not None:
            where.append("utc <= ?")
            args.append(format_utc(parse_utc(until, "until")))
        sql = f"SELECT {_COLS} FROM audit_records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._row_to_record(r) for r in self._db.query(sql + " ORDER BY seq", args)]

    def last_calibration(self, station_id: str):
        """The newest calibration record of ``station_id`` (passed or failed), or None."""
        rows = self._db.query(
            f"SELECT {_COLS} FROM audit_records WHERE station_id = ? AND kind = 'calibration' "
            "ORDER BY seq DESC LIMIT 1", (station_id,))
        return self._row_to_record(rows[0]) if rows else None

    def stations(self) -> list:
        """Station ids present in the store, sorted."""
        return [r[0] for r in self._db.query("SELECT DISTINCT station_id FROM audit_records ORDER BY station_id")]

    def __len__(self) -> int:
        return self._db.query("SELECT count(*) FROM audit_records")[0][0]

    # ------------------------------------------------------------------ integrity
    def verify(self) -> VerifyResult:
        """Recompute every hash and link; name each record that was edited, deleted or moved.

        Detected: a stored field edited (content hash mismatch, or a column that disagrees with the
        hashed envelope), a hash column edited (chain mismatch), a deleted record (gap in seq and a
        broken ``prev`` link; the newest record deleted: head mismatch), records swapped or reordered
        (broken links / chain mismatch at each moved record).
        """
        with self._db.transaction():  # one consistent snapshot
            meta = dict(self._db.query("SELECT key, value FROM audit_meta"))
            rows = self._db.query(f"SELECT {_COLS} FROM audit_records ORDER BY seq")
        problems, running = _chain_problems(rows)
        last_seq = rows[-1][0] if rows else 0
        head_seq = int(meta.get("head_seq", "-1")) if str(meta.get("head_seq", "")).isdigit() else -1
        head_chain = meta.get("head_chain_sha256", "")
        if head_seq != last_seq or head_chain != running:
            if head_seq > last_seq:
                problems.append(f"record seq {head_seq}: missing at the end (the store head says seq "
                                f"{head_seq}, the last record is seq {last_seq}; newest record(s) deleted)")
            else:
                problems.append(f"record seq {last_seq}: does not match the store head (head seq "
                                f"{head_seq}); records were appended or rewritten outside the store")
        return VerifyResult(ok=not problems, problems=problems, n_records=len(rows),
                            head_seq=last_seq, head_chain_sha256=running)


def _chain_problems(rows) -> tuple:
    """Problems of the stored rows (seq order), each naming its record; and the recomputed head."""
    problems = []
    running = GENESIS_SHA256
    expected_seq = 1
    for seq, station_id, kind, utc, text, c_sha, prev, chain in rows:
        where = f"record seq {seq}"
        if seq != expected_seq:
            if seq > expected_seq:
                missing = (f"seq {expected_seq}" if seq == expected_seq + 1
                           else f"seqs {expected_seq}-{seq - 1}")
                problems.append(f"{where}: gap before it, {missing} missing (deleted record)")
            else:
                problems.append(f"{where}: out of order (expected seq {expected_seq})")
        expected_seq = seq + 1
        actual = sha256_hex(text) if isinstance(text, str) else None
        if actual != c_sha:
            problems.append(f"{where}: content hash mismatch (a stored field was edited)")
        else:
            try:
                env = json.loads(text)
                bad = [name for name, col in (("station_id", station_id), ("kind", kind), ("utc", utc))
                       if env.get(name) != col]
            except (ValueError, AttributeError):
                bad = ["content (not JSON)"]
            if bad:
                problems.append(f"{where}: column(s) {', '.join(bad)} differ from the hashed content "
                                "(edited)")
        if prev != running:
            problems.append(f"{where}: previous-hash link broken (a record before it was deleted, "
                            "moved or rewritten, or its prev_sha256 was edited)")
        if chain_hash(prev, c_sha) != chain:
            problems.append(f"{where}: chain hash mismatch (its hashes were edited or the record "
                            "was moved)")
        running = chain  # resynchronise so that one fault is reported once
    return problems, running


def open_database(location, create: bool, initial_meta: dict):
    """The database at ``location``: PostgreSQL for a URL, else an SQLite file."""
    if is_database_url(location):
        return PostgresDatabase(location, create, initial_meta)
    return SQLiteDatabase(location, create, initial_meta)


def plus_days(t, days: float) -> str:
    """``t + days`` as fixed-width UTC text."""
    return format_utc(parse_utc(t) + timedelta(days=float(days)))
