"""The database behind an audit store: what :class:`metrology.audit.store.AuditStore` needs of it.

Two implementations: :class:`metrology.audit.sqlite_db.SQLiteDatabase` (a file, the default) and
:class:`metrology.audit.postgres_db.PostgresDatabase` (a ``postgresql://`` URL), chosen by
:func:`metrology.audit.store.open_database`. Each opens the
store (creating its tables when allowed, race-free), and offers ``transaction(write)``: a write
transaction holds the store's write lock from its start, so that writers serialise; a read
transaction sees one snapshot. SQL is written once with ``?`` placeholders.
"""

from __future__ import annotations


def is_database_url(location) -> bool:
    """True when ``location`` is a ``scheme://`` URL rather than a file path."""
    return isinstance(location, str) and "://" in location


class Database:
    """Common part of the implementations: ``_con`` (the connection), ``location`` (the file or the
    URL without password, for messages), ``path`` (the file, or None)."""

    location = ""
    path = None

    def _open(self, create: bool, initial_meta: dict):
        """Configure the new connection and check (or create) the tables; close it on failure."""
        try:
            self._configure(create, initial_meta)
        except BaseException:
            self._con.close()
            raise

    def _configure(self, create: bool, initial_meta: dict):
        raise NotImplementedError

    def close(self):
        self._con.close()
