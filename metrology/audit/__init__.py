"""Calibration audits: hash-chained audit store (SQLite or PostgreSQL), drift charts, golden-lens closure.

Modules (import them directly; importing this package loads nothing heavy):

* :mod:`metrology.audit.store` -- :class:`~metrology.audit.store.AuditStore` (append-only,
  hash-chained, verify), on the database of :mod:`metrology.audit.database`:
  :mod:`~metrology.audit.sqlite_db` (a file) or :mod:`~metrology.audit.postgres_db` (psycopg 3,
  imported only for a ``postgresql://`` URL).
* :mod:`metrology.audit.golden` -- golden-lens certificates and the En closure check.
* :mod:`metrology.audit.drift` -- Shewhart / EWMA / CUSUM drift alarms.
* :mod:`metrology.audit.status` -- station calibration status for ``inspect``; recording runs.
* :mod:`metrology.audit.report_pdf` -- the audit PDF (reportlab + matplotlib, imported lazily).

The audit layer works on plain dicts and floats: it never imports torch or ``metrology.physics``.
See docs/audit.md.
"""
