"""Building blocks of the PDF pages (reportlab): styles, tables, paragraphs, embedded figures.

Shared by every page module (:mod:`~metrology.report.page_summary`, :mod:`~metrology.report.page_lens`,
:mod:`~metrology.report.page_station`) and by the audit PDF. reportlab is imported only when a report
is drawn (start-up time of the command line).
"""

from __future__ import annotations

import io
import math
from xml.sax.saxutils import escape

VERDICT_COLOURS = {"PASS": "#1e8e3e", "FAIL": "#c62828", "INCONCLUSIVE": "#e69500"}
"""Banner colour of each overall verdict (green, red, amber)."""

TINTS = {"PASS": "#d7f0dc", "FAIL": "#f8d4d4", "INCONCLUSIVE": "#fdebc8", "NOT TRUSTED": "#e6e6e6"}
"""Cell tint of a per-limit verdict; ``NOT TRUSTED``: any limit of a measurement that is not valid."""

MARGIN_MM = 11.0
GAP_MM = 2.5
NOPAD = [("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
         ("RIGHTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 0),
         ("BOTTOMPADDING", (0, 0), (-1, -1), 0)]
"""Table style of a layout table (no padding, top-aligned)."""


HUGE_U = 1e4
"""From this expanded uncertainty on, ``value ± U`` is written with significant figures only."""


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
        is (a result document's ``null``); ``"0.7117 ± 5.6e+133"`` when ``U`` is at least
        :data:`HUGE_U` (a fit that did not determine the figure: its digits would fill the cell).
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    if not U or not math.isfinite(U):
        return f"{value:.4g}"
    if abs(U) >= HUGE_U:
        return f"{value:.4g} ± {U:.{digits}g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(U)))))
    return f"{value:.{decimals}f} ± {U:.{decimals}f}"


def styles() -> dict:
    """Paragraph styles of the report (7-7.5 pt body, 9.5 pt headings, white banner text)."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

    base = getSampleStyleSheet()["Normal"]
    mk = lambda name, **kw: ParagraphStyle(name, parent=base, **kw)  # noqa: E731
    return {
        "body": mk("body", fontSize=7.5, leading=9),
        "small": mk("small", fontSize=6.5, leading=7.8),
        "tiny": mk("tiny", fontSize=5.8, leading=6.8),
        "cell": mk("cell", fontSize=7.2, leading=8.6),
        "cellb": mk("cellb", fontSize=7.2, leading=8.6, fontName="Helvetica-Bold"),
        "h": mk("h", fontSize=9.5, leading=11.5, fontName="Helvetica-Bold", spaceBefore=1, spaceAfter=1),
        "foot": mk("foot", fontSize=5.6, leading=6.7, textColor="#333333"),
        "banner": mk("banner", fontSize=30, leading=34, fontName="Helvetica-Bold", textColor="white",
                     alignment=1),
        "bannersub": mk("bannersub", fontSize=7.5, leading=9, textColor="white", alignment=1),
    }


def png(data: bytes, width_mm: float, height_mm: float):
    """A flowable drawing PNG bytes at a fixed size (mm) via reportlab's ``ImageReader``."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.units import mm
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Flowable

    class PngFlowable(Flowable):
        def __init__(self):
            super().__init__()
            self.reader = ImageReader(io.BytesIO(data))
            self.width, self.height = width_mm * mm, height_mm * mm

        def wrap(self, availWidth, availHeight):  # noqa: N803 (reportlab API)
            return self.width, self.height

        def draw(self):
            self.canv.drawImage(self.reader, 0, 0, self.width, self.height)

    return PngFlowable()


def table(rows, col_widths_mm, style_cmds=(), header=True, repeat=0):
    """A gridded table (grey header row when ``header``) with the given column widths (mm)."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Table, TableStyle

    t = Table(rows, colWidths=[w * mm for w in col_widths_mm], hAlign="LEFT", repeatRows=repeat)
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


def layout_table(cells, col_widths_mm):
    """An invisible table placing flowables side by side (no padding, top-aligned)."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.units import mm
    from reportlab.platypus import Table

    t = Table([cells], colWidths=[w * mm for w in col_widths_mm])
    t.setStyle(NOPAD)
    return t


def para(text, style):
    """A paragraph of plain ``text`` (escaped: no markup)."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.platypus import Paragraph

    return Paragraph(escape(str(text)), style)


def late_para(text_fn, style):
    """A paragraph whose text ``text_fn()`` is computed when the page is laid out, after every
    figure of the report has been drawn (the report's own drawing time, for the timings line)."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.platypus import Flowable, Paragraph

    class LateParagraph(Flowable):
        def wrap(self, availWidth, availHeight):  # noqa: N803 (reportlab API)
            self.para = Paragraph(escape(str(text_fn())), style)
            return self.para.wrap(availWidth, availHeight)

        def draw(self):
            self.para.drawOn(self.canv, 0, 0)

    return LateParagraph()


def spacer(height_mm: float = GAP_MM):
    """Vertical space (mm)."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.units import mm
    from reportlab.platypus import Spacer

    return Spacer(1, height_mm * mm)


def numbered_canvas(draw_number):
    """A reportlab canvas class that knows the page count: every page is held until the document is
    saved, then ``draw_number(canvas, page, n_pages)`` draws on each (the usual way to print "page i
    of n" when the number of pages is only known at the end)."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.pdfgen.canvas import Canvas

    class NumberedCanvas(Canvas):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._held = []

        def showPage(self):  # noqa: N802 (reportlab API)
            self._held.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            n_pages = len(self._held)
            for i, state in enumerate(self._held, start=1):
                self.__dict__.update(state)
                draw_number(self, i, n_pages)
                super().showPage()
            super().save()

    return NumberedCanvas
