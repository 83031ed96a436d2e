"""PostgreSQL database behind :class:`metrology.audit.store.AuditStore`: one store for many hosts.

``--audit-db postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?PARAM=VALUE...]`` (libpq URI; any
libpq parameter works, e.g. ``sslmode=require``, or ``options=-csearch_path%3DSCHEMA`` to keep the
store in its own schema). The store is the pair of tables ``audit_meta`` and ``audit_records`` in
the connection's current schema (``public`` unless the search path says otherwise), with the same
columns, hashes and canonical JSON as the SQLite file; a schema that holds other tables but not
these is refused, as a foreign SQLite file is.

Serialised appends: every write transaction first takes a transaction-scoped advisory lock keyed by
the store's schema (``pg_advisory_xact_lock``), so two stations appending at once queue, exactly as
``BEGIN IMMEDIATE`` makes them queue in SQLite; the lock is released by the commit or rollback, and
a writer that dies mid-transaction leaves the last committed state (the server rolls it back).
Creation takes the same lock, so several processes may create one fresh store at once.
Reads for ``verify`` run in one REPEATABLE READ transaction (one snapshot).

psycopg 3 is imported only when a PostgreSQL store is opened.
"""

from __future__ import annotations

from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from metrology.audit.database import Database
from metrology.errors import InputError

URL_SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S = 60
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('metrology-audit:' || current_schema(), 0))"

SCHEMA = (
    "CREATE TABLE audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # COLLATE "C": utc and station ids sort byte-wise, as in SQLite (fixed-width UTC text sorts as time)
    "CREATE TABLE audit_records ("
    " seq BIGINT PRIMARY KEY, station_id TEXT COLLATE \"C\" NOT NULL, kind TEXT NOT NULL,"
    " utc TEXT COLLATE \"C\" NOT NULL, content TEXT NOT NULL, content_sha256 TEXT NOT NULL,"
    " prev_sha256 TEXT NOT NULL, chain_sha256 TEXT NOT NULL)",
    "CREATE INDEX audit_records_station ON audit_records (station_id, kind, seq)",
)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and reports)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresDatabase(Database):
    """An audit store in PostgreSQL: connected, tables checked (and created when allowed).

    Parameters
    ----------
    url : str
        ``postgresql://...`` libpq URI.
    create : bool
        Create the tables in the current schema if it has none; else a schema without the audit
        tables is an InputError.
    initial_meta : dict
        ``audit_meta`` rows written when the store is created.

    Raises
    ------
    InputError
        Bad URL, server unreachable or login refused, no schema on the search path, a schema with
        other tables, or no store (``create=False``). The message names the URL (password hidden).
    """

    def __init__(self, url: str, create: bool, initial_meta: dict):
        # lazy: psycopg loads only when a PostgreSQL store is opened (start-up time of SQLite users)
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        self.location = redact(url)
        if urlsplit(url).scheme not in URL_SCHEMES:
            raise InputError(self.location, "unsupported audit database URL (postgresql://... or a file path)")
        try:
            given = conninfo_to_dict(url)
            extra = {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT_S}
            conninfo = make_conninfo(url, application_name="metrology", **extra)
        except psycopg.Error as exc:
            raise InputError(self.location, f"invalid PostgreSQL URL ({_first_line(exc)})") from None
        try:
            self._con = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise InputError(self.location, f"cannot connect to the audit database ({_first_line(exc)})") from None
        self._open(create, initial_meta)

    def _configure(self, create: bool, initial_meta: dict):
        # lazy: psycopg loads only when a PostgreSQL store is opened
        import psycopg

        try:
            self._con.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
            self._init_schema(create, initial_meta)
        except psycopg.Error as exc:
            raise InputError(self.location, f"not an audit store ({_first_line(exc)})") from None

    def _tables(self) -> set:
        schema = self._con.execute("SELECT current_schema()").fetchone()[0]
        if schema is None:
            raise InputError(self.location, "no existing schema on the search_path (create it first)")
        rows = self._con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()
        return {r[0] for r in rows}

    def _init_schema(self, create: bool, initial_meta: dict):
        """Check for the audit tables; create them under the store's lock when allowed."""
        tables = self._tables()
        if "audit_meta" in tables:
            if "audit_records" not in tables:
                raise InputError(self.location, "not an audit store (its table audit_records is missing)")
            return
        if not create:
            raise InputError(self.location, "no audit store in this database schema (no audit tables)")
        with self.transaction(write=True):
            tables = self._tables()
            if "audit_meta" in tables:
                return  # another process created it while this one waited for the lock
            if tables:
                raise InputError(self.location, "not an audit store (the schema has other tables and no "
                                                "audit tables; use a dedicated database or schema)")
            for stmt in SCHEMA:
                self._con.execute(stmt)
            with self._con.cursor() as cur:
                cur.executemany("INSERT INTO audit_meta (key, value) VALUES (%s, %s)", list(initial_meta.items()))

    @contextmanager
    def transaction(self, write: bool = False):
        """One transaction: ``write`` takes the store's advisory lock first (writers serialise); a
        read transaction is REPEATABLE READ (one snapshot for every query in it)."""
        with self._con.transaction():
            if write:
                self._con.execute(_LOCK)
            else:
                self._con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    def query(self, sql: str, args=()) -> list:
        """Rows of ``sql`` (written with ``?`` placeholders) as tuples."""
        return self._con.execute(sql.replace("?", "%s"), tuple(args)).fetchall()

    def execute(self, sql: str, args=()) -> None:
        self._con.execute(sql.replace("?", "%s"), tuple(args))
