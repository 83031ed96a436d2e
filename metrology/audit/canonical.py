"""The audit store's canonical form, hashes and time stamps: what a record's bytes and its
hash chain are made of, independent of any database (:mod:`metrology.audit.store`).

* :func:`canonical_json`: sorted keys, compact separators, floats as ``repr``, numpy values as
  builtins, non-finite floats as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
* :func:`sha256_hex`, :func:`chain_hash`: ``chain_sha256 = SHA-256(prev_sha256 + content_sha256)``
  of the two lowercase hex strings (the genesis ``prev_sha256`` is :data:`GENESIS_SHA256`);
* UTC time stamps as fixed-width ISO 8601 text (they sort as time does).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from metrology.errors import InputError

GENESIS_SHA256 = "0" * 64
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


def plus_days(t, days: float) -> str:
    """``t + days`` as fixed-width UTC text."""
    return format_utc(parse_utc(t) + timedelta(days=float(days)))
