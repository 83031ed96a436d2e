"""Page 2 of the inspection report: the lens in numbers, as an interferometer report prints it.

The Zernike bar chart; the numeric Zernike table (Noll, (n, m), name, value, U, nm); the
magnitude-and-axis table of every cos/sin pair and radial term with the Seidel equivalents of the
primary aberrations (:func:`metrology.analysis.lens_detail.magnitude_axis_table`); wavefront
profiles along the two astigmatism axes with their U band; a synthetic interferogram with the tilt
that was added for readability stated on it.

Everything is computed from the result document (its coefficients and, when present, their
covariance ``zernike_covariance``; otherwise the diagonal from each term's u).
"""

from __future__ import annotations

import math

import numpy as np

from metrology.analysis.lens_detail import (astigmatism_axes_deg, magnitude_axis_table, readable_tilt_fringes,
                                            synthetic_interferogram, wavefront_profile)
from metrology.report.layout import format_value_u, layout_table, para, png, spacer, table
from metrology.report.plots import zernike_bars_png
from metrology.report.plots_lens import profiles_interferogram_png

ROWS_PER_COLUMN = 24
"""Rows of one column of the numeric Zernike table (more terms spread over more columns)."""
MAX_TABLE_TERMS = 96
"""Terms printed in the numeric table; the rest are in the JSON and CSV export (and said so)."""


def coefficients(doc) -> tuple[np.ndarray, np.ndarray]:
    """Noll 1..K values (waves; null -> 0) and their covariance (waves^2) from a result document."""
    k = max(t["noll"] for t in doc["zernike"])
    c = np.zeros(k)
    u = np.zeros(k)
    for t in doc["zernike"]:
        c[t["noll"] - 1] = 0.0 if t["value_waves"] is None else t["value_waves"]
        u[t["noll"] - 1] = 0.0 if t["u_waves"] is None else t["u_waves"]
    block = doc.get("zernike_covariance")
    if block and len(block["noll"]) == k:
        cov = np.nan_to_num(np.array([[np.nan if x is None else x for x in row] for row in block["matrix"]],
                                     dtype=float))
    else:
        cov = np.diag(u**2)
    return c, cov


def zernike_rows(doc) -> list:
    """Rows ``(Noll, "n, m", name, value, U, value nm)`` of the numeric table, Noll order."""
    lam = doc["wavelength_nm"]
    rows = []
    for t in sorted(doc["zernike"], key=lambda t: t["noll"]):
        if t["alignment"]:
            rows.append((str(t["noll"]), f"{t['n']}, {t['m']}", t["name"], "alignment", "-", "-"))
            continue
        v, U = t["value_waves"], t["U_waves"]
        text = format_value_u(v, U).split(" ± ")
        rows.append((str(t["noll"]), f"{t['n']}, {t['m']}", t["name"], f"{text[0]}",
                     text[1] if len(text) > 1 else "n/a", "n/a" if v is None else f"{v * lam:+.2f}"))
    return rows


def _zernike_table(doc, st, width_mm):
    rows = zernike_rows(doc)
    shown = rows[:MAX_TABLE_TERMS]
    n_cols = max(1, math.ceil(len(shown) / ROWS_PER_COLUMN))
    per = math.ceil(len(shown) / n_cols)
    col_w = (width_mm - 2 * (n_cols - 1)) / n_cols
    widths = [w * col_w for w in (0.09, 0.10, 0.37, 0.16, 0.13, 0.15)]
    head = [para(h, st["cellb"]) for h in ("Noll", "n, m", "Name", "waves", "U", "nm")]
    tables = []
    for i in range(n_cols):
        part = [[para(x, st["tiny"]) for x in r] for r in shown[i * per:(i + 1) * per]]
        tables.append(table([head] + part, widths, style_cmds=[("TOPPADDING", (0, 0), (-1, -1), 0.6),
                                                               ("BOTTOMPADDING", (0, 0), (-1, -1), 0.6)]))
    cells, widths_mm = [], []
    for i, t in enumerate(tables):
        cells.append(t)
        widths_mm.append(col_w + (2 if i < n_cols - 1 else 0))
    out = [layout_table(cells, widths_mm)]
    if len(rows) > len(shown):
        out.append(para(f"... and {len(rows) - len(shown)} more terms in the JSON result and the CSV export",
                        st["small"]))
    return out


def axis_rows(doc) -> list:
    """Rows of the magnitude-and-axis table: family, Noll, magnitude ± U, axis ± U, Seidel ± U."""
    c, cov = coefficients(doc)
    rows = []
    for r in magnitude_axis_table(c, cov):
        noll = ", ".join(str(j) for j in r["noll"])
        mag = format_value_u(r["magnitude_waves"], 2 * r["u_magnitude_waves"])
        axis = "-" if r["axis_deg"] is None else format_value_u(r["axis_deg"], 2 * r["u_axis_deg"], 2) + " deg"
        seidel = "-" if r["seidel"] is None else (
            f"{r['seidel']}: " + format_value_u(r["seidel_waves"], 2 * r["u_seidel_waves"]))
        rows.append((r["family"], noll, mag + (" (signed)" if r["signed"] else ""), axis, seidel))
    return rows


def _axis_table(doc, st, width_mm):
    head = [para(h, st["cellb"]) for h in ("Family", "Noll", "Magnitude ± U (waves)", "Axis ± U",
                                           "Seidel peak coefficient ± U (waves)")]
    rows = axis_rows(doc)[:16]
    body = [[para(x, st["tiny"]) for x in r] for r in rows]
    widths = [w * width_mm for w in (0.24, 0.10, 0.22, 0.18, 0.26)]
    return table([head] + body, widths, style_cmds=[("TOPPADDING", (0, 0), (-1, -1), 0.6),
                                                    ("BOTTOMPADDING", (0, 0), (-1, -1), 0.6)])


def lens_figure(doc, width_mm: float, height_mm: float) -> tuple[bytes, str]:
    """PNG of the profiles along the astigmatism axes (U band) and the synthetic interferogram, and
    its caption (the axes and the tilt that was added, in words)."""
    c, cov = coefficients(doc)
    a0, a1 = astigmatism_axes_deg(c)
    profiles = [wavefront_profile(c, a, cov) for a in (a0, a1)]
    tilt = readable_tilt_fringes(c)
    fringes = synthetic_interferogram(c, tilt, 256)
    caption = (f"Profiles along the astigmatism axes at {a0:.1f} and {a1:.1f} deg (from +x towards +y) through "
               f"the pupil centre, band U (k = 2). Synthetic interferogram of the lens wavefront (Noll 1-4 "
               f"removed) with a tilt of {tilt:g} fringes across the pupil diameter, along x, added for "
               "readability; one fringe = one wave (single pass); +y down.")
    return profiles_interferogram_png(profiles, fringes, tilt, doc["wavelength_nm"], width_mm, height_mm), caption


def page_lens(doc, arrays, st, width_mm, context) -> list:
    """Page 2's flowables (see the module docstring)."""
    half = (width_mm - 4) / 2
    notes = para("Magnitude of a pair = hypot(cos, sin) coefficient (its RMS contribution); axis = direction of "
                 "one maximum, from +x towards +y (+y down); radial terms are signed. Seidel peak coefficients "
                 "from the primary Zernike terms (Wyant & Creath): W222 = 2 sqrt(6) A, W131 = 3 sqrt(8) A, "
                 "W040 = 6 sqrt(5) c11; their balancing tilt and focus are alignment terms.", st["tiny"])
    figure, caption = lens_figure(doc, half, 74)
    return [
        para("Lens Zernike coefficients", st["h"]),
        png(zernike_bars_png(doc["zernike"], doc["wavelength_nm"], width_mm, 56), width_mm, 56),
        spacer(1.5),
        *_zernike_table(doc, st, width_mm),
        spacer(),
        layout_table([[para("Magnitude and axis (Seidel)", st["h"]), _axis_table(doc, st, half), notes],
                      [para("Wavefront profiles and synthetic interferogram", st["h"]), png(figure, half, 74),
                       para(caption, st["tiny"])]], [half + 4, half]),
    ]
