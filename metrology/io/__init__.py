"""File formats: captures (multi-page TIFF + JSON), station and lens descriptions (TOML).

The formats are specified in ``docs/formats.md``. Every reader raises
:class:`metrology.errors.InputError` naming the file and the problem; every writer is atomic
(:func:`atomic_write_bytes`: temporary file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
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
    import hashlib

    from metrology.errors import InputError

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


from metrology.io.capture import Capture, capture_sha256, read_capture, relative_exposure, write_capture  # noqa: E402
from metrology.io.lens_file import LensDescription, load_lens  # noqa: E402
from metrology.io.station_file import StationDescription, load_station  # noqa: E402

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "Capture",
    "read_capture",
    "write_capture",
    "capture_sha256",
    "relative_exposure",
    "StationDescription",
    "load_station",
    "LensDescription",
    "load_lens",
]
