"""Reading TOML input files (station, lens, specification, golden certificate, foreign
description) with one set of errors, each naming the file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from metrology.errors import InputError


def parse_toml(text: str, source) -> dict:
    """Parse TOML ``text``; a syntax error raises :class:`InputError` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(source, f"not valid TOML (TOML syntax error: {exc})") from None


def read_toml(path, what: str) -> dict:
    """Read and parse the TOML file ``path``.

    Parameters
    ----------
    path : str or path-like
    what : str
        What the file is, for the messages ("station file", "lens file", ...).

    Raises
    ------
    InputError
        Missing or unreadable file, not UTF-8 text, TOML syntax error (naming ``path``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, f"cannot read {what}: file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(path, f"{what} is not a text (UTF-8) file") from None
    return parse_toml(text, path)
