"""``metrology zernike-export RESULT.json --format {csv,zemax-fringe,zemax-standard} [--out FILE]``.

Exports the measured pupil-phase Zernike coefficients of an inspection result (schema 1.0):

``csv``
    One row per measured term, in Noll order: ``noll, ansi, fringe, n, m, name, value_waves,
    U_waves, value_nm``. Coefficients keep the Noll normalisation; ``fringe`` is the Fringe index of
    the same ``(n, m)`` (for reference only: a Fringe coefficient also needs the normalisation change).
``zemax-standard``
    Zemax "Zernike Standard" coefficients: Noll ordering and Noll normalisation, in waves, one line
    ``Z<j> <value>`` per Noll term 1..K.
``zemax-fringe``
    Zemax "Zernike Fringe" coefficients: Fringe ordering and Fringe (peak) normalisation, in
    waves, Fringe terms 1..37: ``c_fringe = c_noll * N(n, m)`` with ``N = sqrt(n + 1)`` for
    ``m = 0`` and ``sqrt(2 (n + 1))`` otherwise. Fringe terms not measured are written as 0 (and
    listed in the header); measured terms outside Fringe 1..37 are listed in the header, not written.

Zemax files start with ``#`` comment lines giving the wavelength, the normalisation radius and
the frame. Output goes to ``--out`` (written atomically) or to stdout.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys

import numpy as np

from metrology.errors import InputError
from metrology.io.files import atomic_write_text
from metrology.limits import one_line
from metrology.orderings import MAX_NOLL, fringe_to_nm, nm_to_ansi, nm_to_fringe, noll_to_fringe_coefficients, noll_to_nm
from metrology.report.document import read_document

FORMATS = ("csv", "zemax-fringe", "zemax-standard")
N_FRINGE = 37
"""Number of Fringe terms written (the classic University of Arizona set)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``zernike-export`` on the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "zernike-export",
        help="export the measured Zernike coefficients (CSV, Zemax Fringe or Standard)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result", metavar="RESULT.json", help="inspection result (schema 1.0)")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", metavar="FILE", default=None, help="output file (default: stdout)")
    p.set_defaults(func=run)
    return p


def _terms(doc: dict) -> list:
    return sorted(doc["zernike"], key=lambda t: t["noll"])


def _header(doc: dict, title: str) -> list[str]:
    """Comment lines; text from the document goes through :func:`metrology.limits.one_line` (a line
    break in a serial must not start an uncommented line of coefficients)."""
    lens = doc["lens"]
    return [
        f"# {title}",
        f"# lens {one_line(lens['model'])} serial {one_line(lens['serial'])}; result created {doc['created_utc']} by "
        f"{one_line(doc['software']['name'])} {one_line(doc['software']['version'])}",
        f"# coefficients in waves at wavelength {doc['wavelength_nm']:g} nm "
        f"(multiply by {doc['wavelength_nm']:g} for nm of wavefront)",
        f"# normalisation radius: the pupil edge at NA {doc['na']:g} (rho = |f| / (NA / lambda) = 1); in Zemax "
        f"set the Zernike normalization radius to the semi-aperture that corresponds to NA {doc['na']:g}",
        f"# field: tile centre ({doc['tile_center_mm'][0]:g}, {doc['tile_center_mm'][1]:g}) mm; frame: x along "
        "image columns, y along image rows (+y down on our maps), theta from +x towards +y",
        "# Noll 1-4 (piston, tilt, defocus) are alignment terms, not lens figures",
    ]


def format_csv(doc: dict) -> str:
    """CSV text: one row per measured term (Noll order, Noll normalisation).

    Columns ``noll, ansi, fringe, n, m, name, value_waves, U_waves, value_nm``.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["noll", "ansi", "fringe", "n", "m", "name", "value_waves", "U_waves", "value_nm"])
    lam = doc["wavelength_nm"]
    for t in _terms(doc):
        n, m = t["n"], t["m"]
        w.writerow([t["noll"], nm_to_ansi(n, m), nm_to_fringe(n, m), n, m, t["name"],
                    repr(_number(t["value_waves"])), repr(_number(t["U_waves"])),
                    f"{_number(t['value_waves']) * lam:.6g}"])
    return buf.getvalue()


def format_zemax_standard(doc: dict) -> str:
    """Zemax "Zernike Standard" text: Noll order and normalisation, waves, ``Z<j> <value>`` per line."""
    terms = {t["noll"]: t for t in _terms(doc)}
    k = max(terms)
    lines = _header(doc, "Zernike Standard coefficients (Noll ordering, Noll normalisation: unit RMS on the "
                         "unit disk), waves")
    missing = [j for j in range(1, k + 1) if j not in terms]
    if missing:
        lines.append("# not measured (written as 0): Noll " + ", ".join(map(str, missing)))
    lines.append(f"# {k} terms")
    for j in range(1, k + 1):
        value = _number(terms[j]["value_waves"]) if j in terms else 0.0
        lines.append(f"Z{j} {value:.9g}")
    return "\n".join(lines) + "\n"


def fringe_coefficients(doc: dict) -> tuple[list, list, list]:
    """Fringe 1..37 coefficients (waves, peak-normalised) of a result document.

    Returns
    -------
    values : list of float, length 37
        ``c_fringe[i]`` of Fringe index ``i + 1``: ``c_noll * N(n, m)``; 0 where not measured.
    not_measured : list of int
        Fringe indices with no measured term.
    dropped : list of int
        Noll indices of measured terms outside Fringe 1..37.
    """
    measured = {(t["n"], t["m"]) for t in doc["zernike"]}
    dropped = sorted(t["noll"] for t in doc["zernike"] if nm_to_fringe(t["n"], t["m"]) > N_FRINGE)
    c_noll = np.zeros(max(t["noll"] for t in doc["zernike"]))
    for t in doc["zernike"]:
        if t["noll"] not in dropped:
            c_noll[t["noll"] - 1] = _number(t["value_waves"])
    values = noll_to_fringe_coefficients(c_noll, N_FRINGE).tolist()
    not_measured = [f for f in range(1, N_FRINGE + 1) if fringe_to_nm(f) not in measured]
    return values, not_measured, dropped


def _number(x) -> float:
    """A document number; its ``null`` (no measured value) as NaN."""
    return math.nan if x is None else float(x)


def format_zemax_fringe(doc: dict) -> str:
    """Zemax "Zernike Fringe" text: Fringe order 1..37, peak normalisation, waves."""
    values, not_measured, dropped = fringe_coefficients(doc)
    lines = _header(doc, "Zernike Fringe coefficients (Fringe ordering, Fringe/peak normalisation), waves; "
                         "c_fringe = c_noll * N(n, m), N = sqrt(n + 1) for m = 0, sqrt(2 (n + 1)) otherwise")
    if not_measured:
        lines.append("# not measured (written as 0): Fringe " + ", ".join(map(str, not_measured)))
    if dropped:
        lines.append("# measured but outside Fringe 1-37 (not written): Noll " + ", ".join(map(str, dropped)))
    lines.append(f"# {N_FRINGE} terms")
    lines += [f"Z{f} {v:.9g}" for f, v in enumerate(values, start=1)]
    return "\n".join(lines) + "\n"


_WRITERS = {"csv": format_csv, "zemax-standard": format_zemax_standard, "zemax-fringe": format_zemax_fringe}


def export_zernike(doc: dict, fmt: str) -> str:
    """Text of ``doc``'s Zernike coefficients in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in _WRITERS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return _WRITERS[fmt](doc)


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
    doc = read_document(args.result)
    check_terms(doc, args.result)
    text = export_zernike(doc, args.format)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write_text(args.out, text)
    except OSError as exc:
        raise InputError(args.out, f"cannot write: {exc.strerror or exc}") from None
    return 0
