"""Zernike coefficient files made from a result document (``metrology zernike-export``).

``csv``
    ``#`` metadata lines (lens, serial, station, report ID, time, wavelength, NA, normalisation,
    frame, the uncertainty: the combined u of the GUM budget), then one row per term in Noll order:
    ``noll, ansi, fringe, n, m, name, status, value_waves, u_waves, U_waves, value_nm, U_nm,
    largest_source`` (the largest contribution of the term's budget). Lens terms have ``status = measured``;
    the alignment terms (Noll 1-4) have ``status = alignment`` and empty values: they are removed
    from the pupil and reported as the sample's position and defocus, never measured as 0 +/- 0.

``opticstudio-standard`` / ``opticstudio-fringe``
    A DAT file for the Extra Data of an OpticStudio **Zernike Standard Phase** / **Zernike Fringe
    Phase** surface: one number per line, in the order of the surface's extra data -- the maximum
    term number ``N``, the normalisation radius (lens units, mm), then the coefficients ``Z1..ZN``.
    OpticStudio's conventions, applied here:

    * Zernike Standard = Noll ordering and normalisation (OpticStudio's own listing of its Standard
      terms: ``Z4 = 3^(1/2) (2p^2 - 1)``, ``Z5 = 6^(1/2) (p^2) * SIN (2A)``, ...); Zernike Fringe =
      the University of Arizona order, unnormalised (``Z4 = 2p^2 - 1``, ``Z9 = 6p^4 - 6p^2 + 1``):
      ``c_fringe = c_noll * sqrt(n + 1)`` for ``m = 0``, ``* sqrt(2 (n + 1))`` otherwise;
    * a phase surface adds ``Phi = M sum A_i Z_i`` **radians**: coefficients are written in radians
      (``2 pi`` x waves) at the measurement wavelength, for diffraction order ``M = 1``;
    * the normalisation radius is in lens units at the surface that carries the phase (set it to
      the semi-diameter of the beam there, e.g. the stop of a paraxial model): ``--norm-radius-mm``;
    * OpticStudio draws its pupil maps with +y up, ``A`` from +x towards +y; our maps have +y down.
      ``y_axis="up"`` (default) converts: ``y -> -y`` flips the sign of every sine term (``m < 0``), so
      OpticStudio shows the picture of this report's pupil map. ``y_axis="down"`` keeps our frame.
    * only measured terms are written: Standard ``Z1..ZK`` (Noll 1-4 are the removed alignment terms,
      0 by definition); Fringe ``Z1..ZN`` with ``N`` the longest run of Fringe terms that were all
      measured; measured terms beyond it are listed in the notes, never replaced by zeros.

    :func:`opticstudio_notes` is the statement of all of this for the file at hand (written next to
    the DAT as ``<name>.txt``).
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from metrology.limits import one_line
from metrology.orderings import fringe_to_nm, nm_to_ansi, nm_to_fringe, nm_to_noll, noll_norm, noll_to_nm

FORMATS = ("csv", "opticstudio-standard", "opticstudio-fringe")
"""Formats of :func:`export_zernike`."""
ALIASES = {"zemax-standard": "opticstudio-standard", "zemax-fringe": "opticstudio-fringe"}
"""Older format names, still accepted."""
Y_AXES = ("up", "down")


def _number(x) -> float:
    return math.nan if x is None else float(x)


def metadata_lines(doc: dict) -> list[str]:
    """``# key: value`` lines describing the result a file was made from."""
    report = doc.get("report") or {}
    return [
        f"# lens: {one_line(doc['lens']['model'])}; serial: {one_line(doc['lens']['serial'])}",
        f"# station: {one_line(doc['station']['id'])}; report ID: {one_line(report.get('id', 'n/a'))}; "
        f"created (UTC): {one_line(doc['created_utc'])}",
        f"# software: {one_line(doc['software']['name'])} {one_line(doc['software']['version'])}",
        f"# wavelength_nm: {doc['wavelength_nm']:g}; na: {doc['na']:g}; "
        f"tile_center_mm: ({doc['tile_center_mm'][0]:g}, {doc['tile_center_mm'][1]:g})",
        "# normalisation: Noll (unit RMS on the unit disk), radius = the pupil edge at the NA (|f| = NA / lambda)",
        "# frame: x along image columns, y along image rows (+y down), theta from +x towards +y",
        f"# uncertainty: u = combined standard uncertainty of the GUM budget (noise and learned data uncertainty, "
        f"model mismatch, station constants: uncertainty_budget in the result JSON), U = k u with k = "
        f"{doc['conventions']['coverage_factor']}",
    ]


def format_csv(doc: dict) -> str:
    """CSV text with metadata, value, u and U per term (see the module docstring)."""
    buf = io.StringIO()
    buf.write("\n".join(metadata_lines(doc)) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["noll", "ansi", "fringe", "n", "m", "name", "status", "value_waves", "u_waves", "U_waves",
                "value_nm", "U_nm", "largest_source"])
    lam = doc["wavelength_nm"]
    largest = _largest_sources(doc)
    for t in sorted(doc["zernike"], key=lambda t: t["noll"]):
        n, m = t["n"], t["m"]
        ids = [t["noll"], nm_to_ansi(n, m), nm_to_fringe(n, m), n, m, t["name"]]
        if t["alignment"]:
            w.writerow(ids + ["alignment"] + [""] * 6)
            continue
        v, u, U = _number(t["value_waves"]), _number(t["u_waves"]), _number(t["U_waves"])
        w.writerow(ids + ["measured", repr(v), repr(u), repr(U), f"{v * lam:.6g}", f"{U * lam:.6g}",
                          largest.get(t["noll"], "")])
    return buf.getvalue()


def _largest_sources(doc: dict) -> dict:
    """Noll -> label of the largest contribution in the coefficient's GUM budget (empty without one)."""
    out = {}
    for b in (doc.get("uncertainty_budget") or {}).get("zernike", []):
        labels = {r["source"]: r["label"] for r in b["rows"]}
        out[b["noll"]] = labels.get(b["largest"], b["largest"])
    return out


def noll_vector(doc: dict) -> np.ndarray:
    """Noll 1..K coefficients (waves) of the document, alignment terms 0, null as NaN."""
    k = max(t["noll"] for t in doc["zernike"])
    c = np.zeros(k)
    for t in doc["zernike"]:
        c[t["noll"] - 1] = 0.0 if t["alignment"] else _number(t["value_waves"])
    return c


def _flip_sign(n: int, m: int, y_axis: str) -> float:
    return -1.0 if (y_axis == "up" and m < 0) else 1.0


def opticstudio_terms(doc: dict, kind: str, y_axis: str = "up") -> tuple[list, list]:
    """OpticStudio coefficients in waves and the measured terms left out.

    Returns
    -------
    values : list of float
        ``Z1..ZN`` in waves (OpticStudio ordering and normalisation, y axis converted as asked).
    dropped : list of int
        Noll indices of measured terms beyond ``ZN`` (Fringe only).
    """
    if y_axis not in Y_AXES:
        raise ValueError(f"y_axis must be 'up' or 'down', got {y_axis!r}")
    c = noll_vector(doc)
    k = c.size
    if kind == "standard":
        return [float(c[j - 1]) * _flip_sign(*noll_to_nm(j), y_axis) for j in range(1, k + 1)], []
    values, j = [], 1
    while True:
        n, m = fringe_to_nm(j)
        noll = nm_to_noll(n, m)
        if noll > k:
            break
        values.append(float(c[noll - 1]) * noll_norm(n, m) * _flip_sign(n, m, y_axis))
        j += 1
    written = {nm_to_noll(*fringe_to_nm(i)) for i in range(1, len(values) + 1)}
    dropped = [j for j in range(5, k + 1) if j not in written]
    return values, dropped


def format_opticstudio(doc: dict, kind: str, norm_radius_mm: float, y_axis: str = "up") -> str:
    """The DAT text: ``N``, the normalisation radius (mm), ``Z1..ZN`` in radians, one per line."""
    if not (norm_radius_mm > 0 and math.isfinite(norm_radius_mm)):
        raise ValueError(f"norm_radius_mm must be > 0, got {norm_radius_mm!r}")
    values, _ = opticstudio_terms(doc, kind, y_axis)
    lines = [str(len(values)), repr(float(norm_radius_mm))]
    lines += [repr(2.0 * math.pi * v) for v in values]
    return "\n".join(lines) + "\n"


def opticstudio_notes(doc: dict, kind: str, norm_radius_mm: float, y_axis: str = "up") -> str:
    """The statement of the DAT file's conventions (written next to it)."""
    values, dropped = opticstudio_terms(doc, kind, y_axis)
    surface = "Zernike Standard Phase" if kind == "standard" else "Zernike Fringe Phase"
    order = ("Zernike Standard (Noll ordering and normalisation)" if kind == "standard" else
             "Zernike Fringe (University of Arizona order, unnormalised: c_fringe = c_noll * sqrt(n + 1) "
             "for m = 0, * sqrt(2 (n + 1)) otherwise)")
    flip = ("converted to OpticStudio's +y up: y -> -y, every sine term (m < 0) negated, so OpticStudio's "
            "wavefront map shows the picture of this report's pupil map" if y_axis == "up" else
            "not converted: y along image rows (+y down), as in this report")
    lines = [f"# OpticStudio {surface} extra data for {one_line(doc['lens']['model'])} "
             f"serial {one_line(doc['lens']['serial'])}"]
    lines += metadata_lines(doc)[1:4]
    lines += [
        f"# surface: {surface}; set Diffract Order = 1; import the DAT into the surface's extra data",
        f"# DAT layout: one number per line: maximum term N = {len(values)}, Norm Radius = {norm_radius_mm:g} mm "
        "(lens units; the semi-diameter of the beam at this surface), then Z1..ZN",
        f"# terms: {order}",
        f"# units: radians of phase (2 pi x waves) at {doc['wavelength_nm']:g} nm; OpticStudio adds "
        "Phi = M sum A_i Z_i (M = diffraction order)",
        f"# y axis: {flip}",
        "# Z1-Z4 (Fringe: piston, tilt, defocus) are the alignment terms: removed from the lens wavefront, 0 by "
        "definition (the sample's position and defocus are in the report)",
    ]
    if dropped:
        lines.append("# measured terms not representable in Z1..ZN (not written, never replaced by 0): Noll "
                     + ", ".join(map(str, dropped)))
    return "\n".join(lines) + "\n"


def export_zernike(doc: dict, fmt: str, norm_radius_mm: float | None = None, y_axis: str = "up") -> str:
    """Text of ``doc``'s Zernike coefficients in format ``fmt`` (:data:`FORMATS` or an alias)."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt == "csv":
        return format_csv(doc)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return format_opticstudio(doc, fmt.split("-")[1], norm_radius_mm, y_axis)
