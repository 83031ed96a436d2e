"""Upper bounds on every input size, checked before anything is allocated, and the text rules.

A reader checks a size against its bound *before* it allocates or loops on it, so that a hostile or
broken file (a TIFF of 100,000 pages, a 30000 x 30000 compressed page, ``rows = 1e9``, a Noll index
of 1e21) fails in milliseconds with one line naming the file and the bound, never after minutes or
gigabytes. ``docs/formats.md`` ("Limits") lists them; each is far above any real station.

Free text that ends up on one line of a report, a file name or an export header (a lens serial, an
operator name, a station id) must not hold control characters: :func:`check_text`.
"""

from __future__ import annotations

import unicodedata

from metrology.errors import InputError

# ---------------------------------------------------------------- capture (TIFF)
MAX_CAPTURE_FRAMES = 4096
"""Pages (frames) in a capture: one per LED, 64 x 64 boards at most."""
MAX_FRAME_PX = 4096
"""Side of a capture frame and of ``camera.frame_px`` (px)."""
MAX_CAPTURE_BYTES = 2 * 1024**3
"""Decoded frames of a capture, all pages together (bytes): 2 GiB."""
MAX_CAPTURE_FILE_BYTES = MAX_CAPTURE_BYTES + 64 * 1024**2
"""Size of a capture file (bytes): the decoded limit plus room for the TIFF structure."""
MAX_COMPRESSION_RATIO = 100.0
"""Decoded frame bytes over the file's size. Camera frames hold noise and do not compress by more
than a few times; a file that claims a hundredfold more pixels than it has bytes is a bomb."""
MAX_METADATA_CHARS = 4 * 1024**2
"""Length of the capture's JSON metadata (page 0's ``ImageDescription``)."""
MAX_JSON_DEPTH = 32
"""Nesting of JSON objects and arrays in capture metadata and result documents."""
MAX_EXPOSURE_S = 1.0e4
"""Exposure time of one frame (s)."""

# ---------------------------------------------------------------- station, spec, lens
MAX_LED_SIDE = 256
"""``led_array.rows`` and ``led_array.cols``."""
MAX_UPSAMPLING = 16
"""``reconstruction.upsampling``."""
MAX_OBJECT_PX = 8192
"""Side of the reconstruction grid, ``frame_px * upsampling`` (px)."""
MAX_VALIDITY_DAYS = 3660.0
"""``calibration.validity_days``: ten years."""
MAX_TILES = 1024
"""Tiles of a full-field station (``field.grid`` rows x cols)."""
MAX_SEED = 2**32 - 1
"""Seed of a catalogued reference sample (``--reference ID:seed=N``, ``reference_seed``)."""

# ---------------------------------------------------------------- free text and result files
MAX_SERIAL_CHARS = 64
"""A lens serial (``--serial``, the capture's ``lens_serial``)."""
MAX_NAME_CHARS = 128
"""An operator name, a station id, a lens model."""
MAX_RESULT_BYTES = 64 * 1024**2
"""A result document read back (``zernike-export``)."""

_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
"""Unicode categories refused in one-line text: controls (newline, escape, ...), format characters
(bidirectional overrides that reorder what a reader sees), surrogates, private use, unassigned,
line and paragraph separators."""


def forbidden_character(text: str) -> str | None:
    """The first character of ``text`` that one-line text may not hold, as ``U+XXXX``; None if none."""
    for ch in text:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            return f"U+{ord(ch):04X}"
    return None


def text_problem(value, max_chars: int, allow_empty: bool = True) -> str | None:
    """What is wrong with ``value`` as one line of printable text of at most ``max_chars`` characters
    (a phrase such as ``"holds the control character U+000A ..."``), or None."""
    if not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    if len(value) > max_chars:
        return f"is {len(value)} characters long (at most {max_chars})"
    if not allow_empty and not value.strip():
        return "must not be empty"
    bad = forbidden_character(value)
    if bad:
        return f"holds the control character {bad} (one line of printable text only)"
    return None


def check_text(value, source, what: str, max_chars: int, allow_empty: bool = True) -> str:
    """``value`` if it is one line of printable text of at most ``max_chars`` characters.

    Parameters
    ----------
    value : str
    source : str or path-like
        The file or option named in the error.
    what : str
        The field (``"lens serial"``).
    max_chars : int
    allow_empty : bool

    Raises
    ------
    InputError
        Not a string, too long, empty (unless allowed), or holding a control, format or separator
        character (a newline would split the verdict line and inject lines into exports).
    """
    problem = text_problem(value, max_chars, allow_empty)
    if problem:
        raise InputError(source, f"{what} {problem}")
    return value


def one_line(text) -> str:
    """``text`` with every character :func:`check_text` refuses replaced by ``?``: for writing text
    read from a file that was not checked (an export of a result document) on one line."""
    return "".join("?" if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES else ch for ch in str(text))


def json_depth_exceeds(obj, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True when ``obj`` (parsed JSON) nests objects/arrays more than ``max_depth`` deep (iterative:
    safe on any depth the parser returned)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False
