"""Reading TOML input files (station, lens, specification, golden certificate, foreign
description) with one set of errors, each naming the file."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

from metrology.errors import InputError

MAX_TEXT_FILE_BYTES = 4 * 1024**2
"""Size of a TOML input file (station, spec, lens, certificate): far above any real one."""


def parse_toml(text: str, source) -> dict:
    """Parse TOML ``text``; a syntax error raises :class:`InputError` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(source, f"not valid TOML (TOML syntax error: {exc})") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise InputError(source, "not valid input: arrays or tables nested too deeply") from None


def read_toml_hashed(path, what: str) -> tuple[dict, str]:
    """Read and parse the TOML file ``path`` once; also return the SHA-256 of the bytes parsed.

    Parameters
    ----------
    path : str or path-like
    what : str
        What the file is, for the messages ("station file", "lens file", ...).

    Returns
    -------
    data : dict
    sha256 : str
        Hex digest of the file's bytes as read (what the report and the audit record name).

    Raises
    ------
    InputError
        Missing or unreadable file, larger than :data:`MAX_TEXT_FILE_BYTES`, not UTF-8 text, TOML
        syntax error, nested too deeply (naming ``path``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TEXT_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(path, f"cannot read {what}: file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TEXT_FILE_BYTES:
        raise InputError(path, f"{what} is larger than {MAX_TEXT_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(path, f"{what} is not a text (UTF-8) file") from None
    return parse_toml(text, path), hashlib.sha256(raw).hexdigest()


def read_toml(path, what: str) -> dict:
    """Read and parse the TOML file ``path`` (:func:`read_toml_hashed` without the hash)."""
    return read_toml_hashed(path, what)[0]
