"""Files: atomic writes, the SHA-256 of a file, safe file names.

Every writer of the project is atomic (:func:`atomic_write_bytes`: temporary file in the same folder,
fsync, ``os.replace``); every file hash is :func:`file_sha256`; every file name made from free text
(a serial, a station id) is :func:`safe_file_name`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from metrology.errors import InputError


def current_umask() -> int:
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, replace).

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path, role: str = "input") -> str:
    """SHA-256 hex digest of a file's bytes (audit trails, report inputs).

    Raises :class:`~metrology.errors.InputError` naming the file if it cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise InputError(path, f"{role} file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read {role} file: {exc.strerror or exc}") from None
    return h.hexdigest()


def read_bounded(path, role: str, max_bytes: int) -> bytes:
    """A file's bytes, read once, refusing files larger than ``max_bytes``.

    What is parsed and what is hashed are then the same bytes (a file swapped on disk between a
    read and a hash cannot be recorded under the other file's SHA-256).

    Raises
    ------
    InputError
        Naming the file: missing, a folder, unreadable, or too large.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{role} file not found")
    if path.is_dir():
        raise InputError(path, f"is a folder, not a {role} file")
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise InputError(path, f"{role} file is {size} bytes (at most {max_bytes})")
            data = fh.read(size + 1)  # (read(n) reserves n bytes first: never the limit itself)
    except OSError as exc:
        raise InputError(path, f"cannot read {role} file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputError(path, f"{role} file is larger than {max_bytes} bytes")
    return data


def safe_file_name(text: str, default: str = "unnamed") -> str:
    """``text`` as a file-name part: runs of characters other than ``A-Z a-z 0-9 . _ -`` become one
    ``_``, leading and trailing ``_`` are dropped; ``default`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or default
