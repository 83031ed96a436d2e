"""``metrology zernike-export``: the measured Zernike coefficients of a result for other tools.

Formats (docs/report.md): csv (metadata lines, then noll, ansi, fringe, n, m, name, status, value,
u and U per term; alignment terms are marked, not written as 0 +/- 0); opticstudio-standard and
opticstudio-fringe (the extra data of an OpticStudio Zernike Standard / Fringe Phase surface: term
count, normalisation radius in mm, coefficients in radians, y axis converted to OpticStudio's +y up
unless --y-axis down; a notes file <name>.txt beside it states every convention). Output goes to
--out (written atomically) or to stdout (the OpticStudio notes then go to stderr).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from metrology.errors import InputError
from metrology.io.files import atomic_write_text
from metrology.orderings import MAX_NOLL, noll_to_nm
from metrology.report.document import read_document
from metrology.report.field_result import field_point_document
from metrology.report.zernike_files import ALIASES, FORMATS, Y_AXES, export_zernike, opticstudio_notes


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``zernike-export`` on the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "zernike-export",
        help="export the measured Zernike coefficients (CSV, OpticStudio Standard or Fringe phase)",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "),
    )
    p.add_argument("result", metavar="RESULT.json", help="inspection result (schema 1.0)")
    p.add_argument("--format", required=True, choices=FORMATS + tuple(ALIASES), help="output format")
    p.add_argument("--out", metavar="FILE", default=None, help="output file (default: stdout)")
    p.add_argument("--norm-radius-mm", type=float, default=None, metavar="R",
                   help="OpticStudio normalisation radius in lens units (mm): the beam's semi-diameter at the "
                        "phase surface (required for the opticstudio formats)")
    p.add_argument("--field", default=None, metavar="HX,HY",
                   help="full-field results: export the field model's coefficients at the normalised field point "
                        "H = (HX, HY) instead of the central tile's (docs/full-field.md)")
    p.add_argument("--y-axis", choices=Y_AXES, default="up",
                   help="OpticStudio formats: 'up' converts to OpticStudio's +y up (sine terms negated, "
                        "default), 'down' keeps this report's frame")
    p.set_defaults(func=run)
    return p


def check_terms(doc: dict, source) -> None:
    """The document's Zernike rows must be distinct Noll indices 1..MAX_NOLL with their own ``(n, m)``
    (the schema checks the types, this the meaning), or InputError naming ``source``."""
    seen = set()
    for t in doc["zernike"]:
        j = t["noll"]
        if not 1 <= j <= MAX_NOLL:
            raise InputError(source, f"zernike: Noll index {j} outside 1..{MAX_NOLL}")
        if j in seen:
            raise InputError(source, f"zernike: Noll {j} listed twice")
        if (t["n"], t["m"]) != noll_to_nm(j):
            raise InputError(source, f"zernike: Noll {j} is (n, m) = {noll_to_nm(j)}, the file says ({t['n']}, {t['m']})")
        seen.add(j)


def run(args) -> int:
    """Read, validate and export a result; return 0 (``InputError`` on a bad file -> exit 2)."""
    fmt = ALIASES.get(args.format, args.format)
    optic = fmt.startswith("opticstudio")
    if optic and (args.norm_radius_mm is None or not args.norm_radius_mm > 0):
        raise InputError("--norm-radius-mm", "the OpticStudio formats need the normalisation radius in mm (> 0): "
                                             "the semi-diameter of the beam at the Zernike phase surface")
    doc = read_document(args.result)
    check_terms(doc, args.result)
    if args.field is not None:
        doc = _at_field_point(doc, args.field, args.result)
    text = export_zernike(doc, fmt, args.norm_radius_mm, args.y_axis)
    notes = opticstudio_notes(doc, fmt.split("-")[1], args.norm_radius_mm, args.y_axis) if optic else None
    if args.out is None:
        sys.stdout.write(text)
        if notes:
            sys.stderr.write(notes)
        return 0
    out = Path(args.out)
    try:
        atomic_write_text(out, text)
        if notes:
            atomic_write_text(notes_path(out), notes)
    except OSError as exc:
        raise InputError(out, f"cannot write: {exc.strerror or exc}") from None
    return 0


def _at_field_point(doc: dict, text: str, source) -> dict:
    """The document at field point ``text`` ("HX,HY"): :func:`field_point_document`, or InputError."""
    parts = text.split(",")
    try:
        h = [float(v) for v in parts]
    except ValueError:
        h = []
    if len(h) != 2 or not all(math.isfinite(v) for v in h):
        raise InputError("--field", f"expected two numbers HX,HY (normalised field), got {text!r}")
    try:
        return field_point_document(doc, h)
    except ValueError as exc:
        raise InputError(source if "no full-field" in str(exc) else "--field", str(exc)) from None


def notes_path(out: Path) -> Path:
    """``name.txt`` beside ``name.dat`` (``name.dat.txt`` if the output itself ends in .txt)."""
    side = out.with_suffix(".txt")
    return side if side != out else out.with_name(out.name + ".notes.txt")
