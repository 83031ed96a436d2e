"""Append-only, hash-chained store of every ``inspect`` and ``calibrate`` run.

Two databases hold the same tables, hashes and guarantees: an SQLite file (the embedded default,
:mod:`metrology.audit.sqlite_db`, shared by the processes of one host) and PostgreSQL (a
``postgresql://`` URL, :mod:`metrology.audit.postgres_db`, shared by stations on many hosts).
This module holds what does not depend on the database: the records and the integrity check;
their canonical form, hashes and time stamps are :mod:`metrology.audit.canonical`.

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

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from metrology.audit.canonical import (
    GENESIS_SHA256, canonical_json, chain_hash, format_utc, parse_utc, sha256_hex, utc_now,
)
from metrology.audit.database import is_database_url
from metrology.audit.postgres_db import PostgresDatabase
from metrology.audit.sqlite_db import SQLiteDatabase
from metrology.errors import InputError

SCHEMA_VERSION = 1
STORE_FORMAT = "metrology-audit"
KINDS = ("inspection", "calibration", "alarm")
ENV_DB = "METROLOGY_AUDIT_DB"
ENV_SITE = "METROLOGY_SITE_DIR"


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


def resolve_db_path(option=None):
    """The audit store every command uses: ``option`` (``--audit-db``: a file path, or a
    ``postgresql://`` URL returned as text) if given, else :func:`default_db_path`."""
    if not option:
        return default_db_path()
    return str(option) if is_database_url(str(option)) else Path(option)


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


class _RolledBack(Exception):
    """Raised inside a write transaction to roll it back (:meth:`AuditStore.check_writable`)."""


_COLS = "seq, station_id, kind, utc, content, content_sha256, prev_sha256, chain_sha256"
_INITIAL_META = {"format": STORE_FORMAT, "schema_version": str(SCHEMA_VERSION), "head_seq": "0",
                 "head_chain_sha256": GENESIS_SHA256}


class HeadMoved(RuntimeError):
    """Another writer appended to the store after the caller read its head (``append(expect_head=)``)."""


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
    def check_writable(self) -> None:
        """Fail now, naming the store, when it cannot be written (a read-only file, folder or
        database): a run that must append a record finds out before it measures anything.

        Raises
        ------
        InputError
            The store is read-only.
        Exception
            Anything else, as the database raised it (locked beyond the busy or lock timeout, disk
            failure, a lost server): not bad input.
        """
        try:
            with self._db.transaction(write=True):  # a real write, rolled back: a read-only store refuses it
                self._db.execute("UPDATE audit_meta SET value = value WHERE key = 'format'")
                raise _RolledBack
        except _RolledBack:
            return
        except Exception as exc:
            text = str(exc).lower()
            if any(w in text for w in ("readonly", "read-only", "permission denied")):
                raise InputError(self.location, f"the audit store is read-only ({str(exc).splitlines()[0]})") from None
            raise

    def head(self) -> tuple:
        """``(seq, chain SHA-256)`` of the last record (``(0, genesis)`` for an empty store)."""
        meta = dict(self._db.query(
            "SELECT key, value FROM audit_meta WHERE key IN ('head_seq', 'head_chain_sha256')"))
        return int(meta["head_seq"]), str(meta["head_chain_sha256"])

    def append(self, kind: str, station_id: str, content: dict, utc=None, expect_head=None) -> Record:
        """Append one record atomically and return it.

        Parameters
        ----------
        kind : {"inspection", "calibration", "alarm"}
        station_id : str
        content : dict
            Plain data (see docs/audit.md for each kind's fields); stored as canonical JSON.
        utc : datetime or str, optional
            Time of the run; default now.
        expect_head : (int, str), optional
            Append only if the store's head is still this ``(seq, chain SHA-256)`` (checked in the
            same transaction), else raise :class:`HeadMoved` and append nothing: for result files
            that state the record's seq and the chain it extends before the record exists.
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
            if expect_head is not None and (seq - 1, prev) != (int(expect_head[0]), str(expect_head[1])):
                raise HeadMoved(f"the audit store's head moved from seq {expect_head[0]} to seq {seq - 1}")
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
    def verify(self, incremental: bool = False) -> VerifyResult:
        """Recompute every hash and link; name each record that was edited, deleted or moved.

        Detected: a stored field edited (content hash mismatch, or a column that disagrees with the
        hashed envelope), a hash column edited (chain mismatch), a deleted record (gap in seq and a
        broken ``prev`` link; the newest record deleted: head mismatch), records swapped or reordered
        (broken links / chain mismatch at each moved record).

        Parameters
        ----------
        incremental : bool
            Start from the stored checkpoint (:meth:`checkpoint`, the head of the last successful
            check saved by :meth:`save_checkpoint`): the checkpoint record must still carry the chain
            hash verified then, and only the records after it are read and checked. The result's
            ``n_records`` counts the records checked.
        """
        with self._db.transaction():  # one consistent snapshot
            return self._verify_snapshot(incremental)

    def _query(self, sql: str, args=()) -> list:
        return self._db.query(sql, args)

    def _verify_snapshot(self, incremental: bool) -> VerifyResult:
        """:meth:`verify` inside an open snapshot."""
        meta = dict(self._query("SELECT key, value FROM audit_meta"))
        start_seq, start_chain = _checkpoint_of(meta) if incremental else (0, GENESIS_SHA256)
        problems = []
        if start_seq:
            anchor = self._query(f"SELECT {_COLS} FROM audit_records WHERE seq = ?", (start_seq,))
            problems += _checkpoint_problems(anchor, start_seq, start_chain)
        rows = self._query(f"SELECT {_COLS} FROM audit_records WHERE seq > ? ORDER BY seq", (start_seq,))
        more, running = _chain_problems(rows, start_seq, start_chain)
        problems += more
        last_seq = rows[-1][0] if rows else start_seq
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

    def checkpoint(self) -> tuple:
        """``(seq, chain_sha256)`` of the head at the last successful check saved with
        :meth:`save_checkpoint`; ``(0, GENESIS_SHA256)`` when none was saved."""
        return _checkpoint_of(dict(self._query("SELECT key, value FROM audit_meta")))

    def save_checkpoint(self, result: VerifyResult) -> None:
        """Keep the head of a successful :meth:`verify` as the start of the next incremental one.

        The checkpoint only moves forward, and only to a record that still carries the chain hash
        verified (a record appended or rewritten since is checked next time). It lives in
        ``audit_meta`` (``verified_seq``, ``verified_chain_sha256``): whoever can rewrite it can
        rewrite the head too, the limit the module docstring states.
        """
        if not result.ok or result.head_seq <= 0:
            return
        with self._db.transaction(write=True):
            seq, _ = _checkpoint_of(dict(self._query("SELECT key, value FROM audit_meta")))
            row = self._query("SELECT chain_sha256 FROM audit_records WHERE seq = ?", (result.head_seq,))
            if result.head_seq > seq and row and row[0][0] == result.head_chain_sha256:
                for key, value in (("verified_seq", str(result.head_seq)),
                                   ("verified_chain_sha256", result.head_chain_sha256)):
                    self._db.execute("INSERT INTO audit_meta (key, value) VALUES (?, ?) "
                                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def verified_last_calibration(self, station_id: str) -> tuple:
        """The newest calibration record of ``station_id``, read only after the store was verified.

        In one snapshot: :meth:`verify` from the checkpoint, then the record (among those verified)
        with its own hashes and its links to the records before and after it checked (it may lie
        before the checkpoint; an edit with recomputed hashes breaks the next link).

        Returns
        -------
        record : Record or None
        result : VerifyResult
            ``ok`` False, with the problems, when the chain or the record itself is broken: the
            record must then not be trusted.
        """
        with self._db.transaction():  # one snapshot: the check and the record read
            result = self._verify_snapshot(incremental=True)
            rows = self._query(
                f"SELECT {_COLS} FROM audit_records WHERE station_id = ? AND kind = 'calibration' AND seq <= ? "
                "ORDER BY seq DESC LIMIT 1", (station_id, result.head_seq))
            if not rows:
                return None, result
            seq = rows[0][0]
            near = self._query(f"SELECT {_COLS} FROM audit_records WHERE seq IN (?, ?) ORDER BY seq",
                               (seq - 1, seq + 1))
        before = [r for r in near if r[0] == seq - 1]
        after = [r for r in near if r[0] == seq + 1]
        problems = _record_problems(rows[0], before[0] if before else None, after[0] if after else None,
                                    result.head_seq, result.head_chain_sha256)
        if problems:
            result = VerifyResult(ok=False, problems=result.problems + problems, n_records=result.n_records,
                                  head_seq=result.head_seq, head_chain_sha256=result.head_chain_sha256)
        return self._row_to_record(rows[0]), result


def _checkpoint_of(meta: dict) -> tuple:
    """``(seq, chain)`` of the saved checkpoint in the ``audit_meta`` values; genesis if none."""
    seq, chain = meta.get("verified_seq", "0"), meta.get("verified_chain_sha256", GENESIS_SHA256)
    return (int(seq), str(chain)) if str(seq).isdigit() else (-1, str(chain))


def _checkpoint_problems(anchor: list, seq: int, chain: str) -> list:
    """Problems of the checkpoint record (``anchor``: its row, or none) against the chain hash that
    was verified there."""
    if seq < 0:
        return ["audit_meta: the verified checkpoint was edited (not a sequence number)"]
    if not anchor:
        return [f"record seq {seq}: missing (it was verified as the checkpoint; records deleted)"]
    _seq, _st, _kind, _utc, text, c_sha, prev, stored_chain = anchor[0]
    if stored_chain != chain or chain_hash(prev, c_sha) != chain or sha256_hex(text) != c_sha:
        return [f"record seq {seq}: differs from the verified checkpoint (records up to it were edited "
                "or rewritten)"]
    return []


def _record_problems(row, before, after, head_seq: int, head_chain: str) -> list:
    """Problems of one record (``row``) with its neighbours' links (``before``/``after``: their
    rows, None when absent)."""
    seq = row[0]
    problems, _ = _chain_problems([row], seq - 1, before[7] if before else GENESIS_SHA256)
    if seq > 1 and before is None:
        problems.append(f"record seq {seq}: the record before it is missing (deleted record)")
    if after is not None and after[6] != row[7]:
        problems.append(f"record seq {after[0]}: previous-hash link broken (record seq {seq} before it "
                        "was edited or rewritten)")
    if after is None and seq == head_seq and head_chain != row[7]:
        problems.append(f"record seq {seq}: does not match the store head")
    return problems


def _chain_problems(rows, start_seq: int = 0, start_chain: str = GENESIS_SHA256) -> tuple:
    """Problems of the stored rows (seq order, following record ``start_seq`` whose chain hash is
    ``start_chain``), each naming its record; and the recomputed head."""
    problems = []
    running = start_chain
    expected_seq = start_seq + 1
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
