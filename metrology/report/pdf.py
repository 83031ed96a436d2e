"""The two-page A4 PDF inspection report (reportlab platypus + matplotlib figures).

Page 1 answers "does the lens pass?": verdict banner, identification, the limits table under the
decision rule, the reasons for a non-PASS, the pupil phase map and the Zernike bar chart. Page 2
shows how far to trust it: station misalignment, PSF and MTF against the diffraction limit, the
reconstructed reference sample, measured vs modelled frames, per-LED maps, convergence, data
quality and identifiability. Every page carries a footer with the conventions text, the short
hashes of the inputs and "page i of n".

Each page's content sits in a shrink-to-fit frame, so the report is always exactly two pages and
nothing runs off a page whatever the number of limits, flags or terms. The file is written
atomically: rendered in memory, then :func:`metrology.io.atomic_write_bytes` (temp file in the same
folder, fsync, rename).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from xml.sax.saxutils import escape

from metrology.io.files import atomic_write_bytes
from metrology.report.budget_page import budget_page
from metrology.report.document import validate_document
from metrology.report.plots import (
    ReportArrays,
    convergence_png,
    frames_png,
    led_scale_png,
    psf_mtf_png,
    pupil_phase_png,
    sample_led_png,
    zernike_bars_png,
)

VERDICT_COLOURS = {"PASS": "#1e8e3e", "FAIL": "#c62828", "INCONCLUSIVE": "#e69500"}
"""Banner colour of each overall verdict (green, red, amber)."""

_TINTS = {"PASS": "#d7f0dc", "FAIL": "#f8d4d4", "INCONCLUSIVE": "#fdebc8"}
_MARGIN_MM = 11.0
_GAP_MM = 2.5


def format_value_u(value: float, U: float, digits: int = 2) -> str:
    """Format ``value ± U`` with ``U`` to ``digits`` significant figures and ``value`` to match.

    Parameters
    ----------
    value, U : float
        Value and expanded uncertainty (same unit).
    digits : int
        Significant figures of ``U``.

    Returns
    -------
    str
        E.g. ``"0.0351 ± 0.0031"``; ``"1.25"`` when ``U`` is 0 or unknown; ``"n/a"`` when ``value``
        is (a result document's ``null``).
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    if not U or not math.isfinite(U):
        return f"{value:.4g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(U)))))
    return f"{value:.{decimals}f} ± {U:.{decimals}f}"


def _styles():
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

    base = getSampleStyleSheet()["Normal"]
    mk = lambda name, **kw: ParagraphStyle(name, parent=base, **kw)  # noqa: E731
    return {
        "body": mk("body", fontSize=7.5, leading=9),
        "small": mk("small", fontSize=6.5, leading=7.8),
        "cell": mk("cell", fontSize=7.2, leading=8.6),
        "cellb": mk("cellb", fontSize=7.2, leading=8.6, fontName="Helvetica-Bold"),
        "h": mk("h", fontSize=9.5, leading=11.5, fontName="Helvetica-Bold", spaceBefore=1, spaceAfter=1),
        "foot": mk("foot", fontSize=5.6, leading=6.7, textColor="#333333"),
        "banner": mk("banner", fontSize=30, leading=34, fontName="Helvetica-Bold", textColor="white",
                     alignment=1),
        "bannersub": mk("bannersub", fontSize=7.5, leading=9, textColor="white", alignment=1),
    }


class _Png:
    """Factory of a platypus flowable drawing PNG bytes at a fixed size (mm) via ``ImageReader``."""

    @staticmethod
    def make(png: bytes, width_mm: float, height_mm: float):
        # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
        from reportlab.lib.units import mm
        from reportlab.lib.utils import ImageReader
        from reportlab.platypus import Flowable

        class PngFlowable(Flowable):
            def __init__(self):
                super().__init__()
                self.reader = ImageReader(io.BytesIO(png))
                self.width, self.height = width_mm * mm, height_mm * mm

            def wrap(self, availWidth, availHeight):  # noqa: N803 (reportlab API)
                return self.width, self.height

            def draw(self):
                self.canv.drawImage(self.reader, 0, 0, self.width, self.height)

        return PngFlowable()


def _table(rows, col_widths_mm, style_cmds=(), header=True):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Table, TableStyle

    t = Table(rows, colWidths=[w * mm for w in col_widths_mm], hAlign="LEFT")
    cmds = [
        ("GRID", (0, 0), (-1, -1), 0.3, colors.HexColor("#9e9e9e")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 1.2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 1.2),
        ("LEFTPADDING", (0, 0), (-1, -1), 2.5),
        ("RIGHTPADDING", (0, 0), (-1, -1), 2.5),
    ]
    if header:
        cmds.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")))
    t.setStyle(TableStyle(cmds + list(style_cmds)))
    return t


def _p(text, style):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.platypus import Paragraph

    return Paragraph(escape(str(text)), style)


# ------------------------------------------------------------------ page 1
def _banner(doc, st, width_mm):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors

    v = doc["verdict"]["overall"]
    lens = doc["lens"]
    cal = doc["station"]["calibration"]
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.pdfbase.pdfmetrics import stringWidth

    left_w = width_mm - 134
    size = min(30.0, 30.0 * (left_w - 5) * mm / stringWidth(v, "Helvetica-Bold", 30.0))
    big = ParagraphStyle("bannerfit", parent=st["banner"], fontSize=size, leading=size * 1.15)
    verdict_cell = [_p(v, big), _p("overall verdict (ISO 14253-1, k = 2)", st["bannersub"])]
    info = [
        ["Lens model", doc["lens"]["model"], "Serial", lens["serial"]],
        ["Operator", doc["operator"] or "-", "Date (UTC)", doc["created_utc"]],
        ["Station", doc["station"]["id"], "Calibration", f"{cal['status']} - {cal['reason']}"],
        ["Software", f"{doc['software']['name']} {doc['software']['version']}"
                     f"{' on ' + doc['software']['compute_device'] if doc['software'].get('compute_device') else ''}",
         "Wavelength / NA / tile",
         f"{doc['wavelength_nm']:g} nm / {doc['na']:g} / ({doc['tile_center_mm'][0]:g}, "
         f"{doc['tile_center_mm'][1]:g}) mm"],
    ]
    cells = [[_p(a, st["cellb"]), _p(b, st["cell"]), _p(c, st["cellb"]), _p(d, st["cell"])] for a, b, c, d in info]
    right = _table(cells, [19, 44, 24, 45], header=False, style_cmds=[
        ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f2f2f2")),
        ("BACKGROUND", (2, 0), (2, -1), colors.HexColor("#f2f2f2"))]
        + ([("BACKGROUND", (3, 2), (3, 2), colors.HexColor(_TINTS["INCONCLUSIVE"]))]
           if cal["status"] != "valid" else []))
    outer = _table([[verdict_cell, right]], [left_w, 134], header=False, style_cmds=[
        ("BACKGROUND", (0, 0), (0, 0), colors.HexColor(VERDICT_COLOURS[v])),
        ("GRID", (0, 0), (-1, -1), 0, colors.white),
        ("LEFTPADDING", (1, 0), (1, 0), 2), ("RIGHTPADDING", (1, 0), (1, 0), 0),
        ("TOPPADDING", (0, 0), (-1, -1), 0), ("BOTTOMPADDING", (0, 0), (-1, -1), 0)])
    return outer


def _limits_table(doc, st, width_mm):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors

    rows = [[_p(h, st["cellb"]) for h in ("Characteristic", "Limit", "Measured ± U (k = 2)", "Verdict",
                                          "Decision")]]
    cmds = []
    for i, lim in enumerate(doc["verdict"]["limits"], start=1):
        unit = f" {lim['unit']}" if lim["unit"] else ""
        rows.append([
            _p(lim["name"], st["cell"]),
            _p(f"{lim['kind']} {lim['limit']:.4g}{unit}", st["cell"]),
            _p(format_value_u(lim["value"], lim["U"]) + unit, st["cell"]),
            _p(lim["verdict"], st["cellb"]),
            _p(lim["reason"], st["small"]),
        ])
        cmds.append(("BACKGROUND", (3, i), (3, i), colors.HexColor(_TINTS[lim["verdict"]])))
    if len(rows) == 1:
        rows.append([_p("no limits in the specification", st["cell"]), "", "", "", ""])
    return _table(rows, [58, 30, 40, 24, width_mm - 152], cmds)


def _merit_table(doc, st):
    fom = doc["figures_of_merit"]
    q = lambda key: format_value_u(fom[key]["value"], fom[key]["U"])  # noqa: E731
    rows = [
        ("RMS wavefront error", q("rms_waves") + " waves"),
        ("", q("rms_nm") + " nm"),
        ("Peak-to-valley", q("pv_waves") + " waves"),
        ("PV robust (PVr)", q("pvr_waves") + " waves"),
        ("Strehl (from Zernike RMS)", q("strehl")),
        ("Strehl (from PSF)", q("strehl_psf")),
        ("Fit residual (RMS)", f"{fom['fit_residual_waves']:.4g} waves"),
    ]
    for m in doc["station_misalignment"]:
        if m["name"].startswith("sample.defocus"):
            rows.append(("Sample defocus (Noll 4)", format_value_u(m["value"], m["U"]) + f" {m['unit']}"))
    for p in fom["mtf"][:4]:
        rows.append((f"MTF at {p['frequency_cyc_per_mm']:g} cycles/mm", format_value_u(p["value"], p["U"])))
    cells = [[_p("Figure of merit", st["cellb"]), _p("Value ± U (k = 2)", st["cellb"])]]
    cells += [[_p(a, st["cell"]), _p(b, st["cell"])] for a, b in rows]
    return _table(cells, [44, 44])


def _page1(doc, arrays, st, width_mm):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.units import mm
    from reportlab.platypus import Spacer, Table

    v = doc["verdict"]
    out = [_banner(doc, st, width_mm), Spacer(1, _GAP_MM * mm),
           _p("Limits (decision rule: " + doc["conventions"]["decision_rule"] + ")", st["h"]),
           _limits_table(doc, st, width_mm)]
    if v["overall"] != "PASS":
        out.append(Spacer(1, 1.5 * mm))
        out.append(_p(f"Why {v['overall']}:", st["h"]))
        reasons = v["reasons"] or ["(no reason given)"]
        out.extend(_p("- " + r, st["body"]) for r in reasons)
    out.append(Spacer(1, _GAP_MM * mm))
    pupil = _Png.make(pupil_phase_png(arrays.pupil_phase_waves, doc["wavelength_nm"], 92, 80), 92, 80)
    side = Table([[pupil, _merit_table(doc, st)]], colWidths=[96 * mm, (width_mm - 96) * mm])
    side.setStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                   ("RIGHTPADDING", (0, 0), (-1, -1), 0)])
    out += [side, Spacer(1, _GAP_MM * mm),
            _Png.make(zernike_bars_png(doc["zernike"], doc["wavelength_nm"], width_mm, 80), width_mm, 80)]
    return out


# ------------------------------------------------------------------ page 2
def station_rows(doc) -> list:
    """The station table's rows ``(parameter, value ± U, unit)``, in the document's order."""
    return [(m["label"] or m["name"], format_value_u(m["value"], m["U"]), m["unit"])
            for m in doc["station_misalignment"]]


def _station_table(doc, st):
    rows = [[_p(h, st["cellb"]) for h in ("Station / sample parameter", "Value ± U (k = 2)", "Unit")]]
    rows += [[_p(text, st["cell"]) for text in row] for row in station_rows(doc)]
    if len(rows) == 1:
        rows.append([_p("not estimated", st["cell"]), "", ""])
    return _table(rows, [48, 32, 12])


def _g3(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _quality_block(doc, st):
    s, idf, dq = doc["solver"], doc["identifiability"], doc["data_quality"]
    out = [_p("Solver", st["h"]),
           _p(f"mode {s['mode']}, loss {s['loss']}, {s['iterations']} iterations, "
              f"{'converged' if s['converged'] else 'NOT converged'}, "
              f"final loss {format_value_u(s['final_loss'], 0)}, "
              f"reduced chi-square {_g3(s['reduced_chi2'])}. {s['message']}", st["small"]),
           _p("Identifiability", st["h"]),
           _p(f"condition number {idf['condition_number']:.4g}, max |correlation| "
              f"{idf['max_abs_correlation']:.2f}.", st["small"])]
    for pair in idf["strong_pairs"][:6]:
        out.append(_p(f"- strongly correlated: {pair['a']} / {pair['b']} ({pair['correlation']:+.2f})", st["small"]))
    if len(idf["strong_pairs"]) > 6:
        out.append(_p(f"- ... and {len(idf['strong_pairs']) - 6} more pairs", st["small"]))
    if idf["unidentifiable"]:
        out.append(_p("- not identifiable from these data: " + ", ".join(idf["unidentifiable"]), st["small"]))
    blank = ", ".join(str(b) for b in dq["blank_frames"]) or "none"
    out += [_p("Data quality", st["h"]),
            _p(f"saturated fraction {dq['saturated_fraction']:.2%}, hot pixels {dq['hot_pixels']}, "
               f"blank frames: {blank}.", st["small"])]
    flags = dq["flags"]
    for f in flags[:8]:
        out.append(_p(f"- {f['severity'].upper()} {f['code']}: {f['message']}", st["small"]))
    if len(flags) > 8:
        out.append(_p(f"- ... and {len(flags) - 8} more flags (see the JSON result)", st["small"]))
    if not flags:
        out.append(_p("- no flags", st["small"]))
    t = doc["timings_s"]
    out.append(_p(f"Timings: load {t['load']:.1f} s, reconstruct {t['reconstruct']:.1f} s, analyse "
                  f"{t['analyse']:.1f} s, report {t['report']:.1f} s.", st["small"]))
    return out


def _page2(doc, arrays, st, width_mm):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.units import mm
    from reportlab.platypus import Spacer, Table

    nopad = [("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
             ("RIGHTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 0),
             ("BOTTOMPADDING", (0, 0), (-1, -1), 0)]
    head = Table([[[_p("Station misalignment and sample pose", st["h"]), _station_table(doc, st)],
                   _quality_block(doc, st)]], colWidths=[96 * mm, (width_mm - 96) * mm])
    head.setStyle(nopad)
    fw, cw, fh = 130, width_mm - 132, 74
    frames = _Png.make(frames_png(arrays.frames, fw, fh), fw, fh)
    conv = _Png.make(convergence_png(arrays.loss_history, cw, fh), cw, fh)
    row = Table([[frames, conv]], colWidths=[(fw + 2) * mm, cw * mm])
    row.setStyle(nopad)
    return [
        head, Spacer(1, _GAP_MM * mm),
        _p("PSF and MTF against the diffraction limit", st["h"]),
        _Png.make(psf_mtf_png(arrays, doc["figures_of_merit"]["mtf"], width_mm, 52), width_mm, 52),
        _p("Reconstructed reference sample and per-LED maps", st["h"]),
        _Png.make(sample_led_png(arrays, width_mm, 50), width_mm, 50),
        _p("Measured vs modelled frames (bright-field and dark-field LED) and convergence", st["h"]),
        row,
    ]


def _page3(doc, arrays, st, width_mm):
    """The uncertainty budget and the learned data uncertainty (:mod:`metrology.report.budget_page`)."""
    def png(arr, w):
        return _Png.make(led_scale_png(arr, w, 56), w, 56)

    def table(rows, widths):
        return _table([[_p(str(c), st["small"]) for c in r] for r in rows], widths)

    return budget_page(doc, arrays, st, width_mm, table, _p, png)


# ------------------------------------------------------------------ footer and assembly
def _footer_paragraphs(doc, st):
    inputs = " | ".join(f"{i['role']} {i['sha256'][:12]} ({Path(i['path']).name})" for i in doc["inputs"])
    return [_p("Conventions: " + doc["conventions"]["text"], st["foot"]),
            _p("Inputs (sha256, first 12 hex): " + (inputs or "none"), st["foot"])]


def _build(doc, arrays: ReportArrays, fh) -> None:
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import BaseDocTemplate, Frame, KeepInFrame, PageBreak, PageTemplate

    st = _styles()
    page_w, page_h = A4
    margin = _MARGIN_MM * mm
    width = page_w - 2 * margin
    width_mm = width / mm
    foot = _footer_paragraphs(doc, st)
    foot_h = sum(p.wrap(width, page_h)[1] for p in foot) + 9  # + page-number line
    frame_bottom = margin + foot_h + 2 * mm
    frame_h = page_h - margin - frame_bottom
    pages = [_page1(doc, arrays, st, width_mm), _page2(doc, arrays, st, width_mm), _page3(doc, arrays, st, width_mm)]
    n_pages = len(pages)
    title = f"Lens inspection {doc['lens']['serial']} - {doc['verdict']['overall']}"

    def footer(canv, _doc):
        canv.saveState()
        canv.setStrokeColor(colors.HexColor("#9e9e9e"))
        canv.setLineWidth(0.4)
        canv.line(margin, margin + foot_h + 1 * mm, page_w - margin, margin + foot_h + 1 * mm)
        y = margin + foot_h
        for p in _footer_paragraphs(doc, st):
            _, h = p.wrap(width, page_h)
            p.drawOn(canv, margin, y - h)
            y -= h
        canv.setFont("Helvetica", 6.5)
        canv.drawString(margin, margin + 1, f"{doc['lens']['model']}  {doc['lens']['serial']}  "
                                            f"{doc['created_utc']}")
        canv.drawRightString(page_w - margin, margin + 1, f"page {canv.getPageNumber()} of {n_pages}")
        canv.restoreState()

    frame = Frame(margin, frame_bottom, width, frame_h, leftPadding=0, rightPadding=0, topPadding=0,
                  bottomPadding=0, id="body")
    template = BaseDocTemplate(fh, pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=margin,
                               bottomMargin=margin, title=title, author=doc["software"]["name"],
                               subject="Lens inspection report", creator=f"{doc['software']['name']} "
                               f"{doc['software']['version']}")
    template.addPageTemplates([PageTemplate(id="page", frames=[frame], onPage=footer)])
    story = []
    for i, content in enumerate(pages):
        story.append(KeepInFrame(width, frame_h - 1, content, mode="shrink"))
        if i < n_pages - 1:
            story.append(PageBreak())
    template.build(story)


def render_inspection_report(doc: dict, arrays: ReportArrays) -> bytes:
    """The three-page A4 PDF inspection report (verdict and lens; station and data; uncertainty
    budget), rendered in memory.

    Parameters
    ----------
    doc : dict
        Result document (validated against the schema first).
    arrays : ReportArrays
        Arrays behind the figures.

    Returns
    -------
    bytes
        The PDF.

    Raises
    ------
    InputError
        If ``doc`` fails the result schema.
    """
    validate_document(doc)
    if not isinstance(arrays, ReportArrays):
        raise TypeError(f"arrays must be a ReportArrays, got {type(arrays).__name__}")
    buf = io.BytesIO()
    _build(doc, arrays, buf)
    return buf.getvalue()


def write_inspection_report(doc: dict, arrays: ReportArrays, out_path) -> Path:
    """Write the three-page A4 PDF inspection report (:func:`render_inspection_report`), atomically.

    ``out_path`` is the destination ``.pdf``; its folder must exist. On any error nothing is left
    at ``out_path`` (an existing file there is untouched) and no temp file remains. Returns
    ``out_path``.
    """
    # render fully in memory first: a failure there writes nothing
    return atomic_write_bytes(Path(out_path), render_inspection_report(doc, arrays))
