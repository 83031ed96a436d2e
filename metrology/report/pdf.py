"""The A4 PDF inspection report (reportlab platypus + matplotlib figures).

One function per page, listed in :data:`PAGES` (add a page by adding its function):

1. :func:`~metrology.report.page_summary.page_summary` answers "does the lens pass, and who signs
   it": verdict banner, identification (report ID, specification file and revision, audit record
   seq and hash, software), limits under the decision rule, reasons, pupil map and figures of merit,
   approval block;
2. :func:`~metrology.report.page_lens.page_lens` shows the lens in numbers: Zernike bar chart and
   table with U, magnitude-and-axis (Seidel) table, wavefront profiles, synthetic interferogram;
3. :func:`~metrology.report.page_station.page_station` shows how far to trust it: station
   misalignment, solver, identifiability and data quality, PSF and MTF, reconstructed sample,
   measured vs modelled frames, convergence, timings;
4. :func:`page_budget` shows where the uncertainty comes from: the GUM budget of the RMS wavefront
   and of every lens coefficient, and the learned data uncertainty per LED
   (:mod:`metrology.report.budget_page`);
5. full-field inspections only (a ``field`` block in the document):
   :func:`~metrology.report.page_field.page_field`, the lens across the field.

A page function is ``page(doc, arrays, styles, width_mm, context) -> list of flowables``; ``context``
holds what is not in the document (``report_started``: when the report stage began, for the
timings line). Every page carries a footer with the conventions text, the short hashes of the
inputs, the report ID and "page i of n". Each page's content sits in a shrink-to-fit frame, so the
report has exactly ``len(pages_for(doc))`` pages whatever the number of limits, flags or terms. The file is
written atomically: rendered in memory, then :func:`metrology.io.atomic_write_bytes`.
"""

from __future__ import annotations

import io
from pathlib import Path

from metrology.io.files import atomic_write_bytes
from metrology.report.document import validate_document
from metrology.report.budget_page import budget_page
from metrology.report.layout import MARGIN_MM, VERDICT_COLOURS, format_value_u, para, png, styles, table
from metrology.report.page_field import page_field
from metrology.report.page_lens import page_lens
from metrology.report.page_station import page_station, station_rows
from metrology.report.page_summary import page_summary
from metrology.report.plots import ReportArrays, led_scale_png


def page_budget(doc, arrays, st, width_mm, context) -> list:
    """Page 4: the uncertainty budget and the learned data uncertainty (:func:`budget_page`)."""
    def led_png(arr, w):
        return png(led_scale_png(arr, w, 56), w, 56)

    def small_table(rows, widths):
        return table([[para(str(c), st["small"]) for c in r] for r in rows], widths)

    return budget_page(doc, arrays, st, width_mm, small_table, para, led_png)


PAGES = (page_summary, page_lens, page_station, page_budget)
"""The report's pages, in order."""


def pages_for(doc: dict) -> tuple:
    """The pages of ``doc``'s report: :data:`PAGES`, and the full-field page when it has a ``field`` block."""
    return PAGES + ((page_field,) if doc.get("field") else ())

__all__ = ["PAGES", "pages_for", "VERDICT_COLOURS", "format_value_u", "station_rows", "write_inspection_report"]


def _footer_paragraphs(doc, st):
    inputs = " | ".join(f"{i['role']} {i['sha256'][:12]} ({Path(i['path']).name})" for i in doc["inputs"])
    return [para("Conventions: " + doc["conventions"]["text"], st["foot"]),
            para("Inputs (sha256, first 12 hex): " + (inputs or "none"), st["foot"])]


def _footer(doc, st, n_pages, width, page_w, page_h, foot_h):
    """The ``onPage`` callback drawing the footer of every page."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors
    from reportlab.lib.units import mm

    margin = MARGIN_MM * mm
    report_id = (doc.get("report") or {}).get("id")
    ident = f"{doc['lens']['model']}  {doc['lens']['serial']}  {doc['created_utc']}" + (
        f"  report {report_id}" if report_id else "")

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
        canv.drawString(margin, margin + 1, ident)
        canv.drawRightString(page_w - margin, margin + 1, f"page {canv.getPageNumber()} of {n_pages}")
        canv.restoreState()

    return footer


def _build(doc, arrays: ReportArrays, fh, context: dict) -> None:
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab import rl_config
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import BaseDocTemplate, Frame, KeepInFrame, PageBreak, PageTemplate

    st = styles()
    page_w, page_h = A4
    margin = MARGIN_MM * mm
    width = page_w - 2 * margin
    foot_h = sum(p.wrap(width, page_h)[1] for p in _footer_paragraphs(doc, st)) + 9  # + page-number line
    frame_bottom = margin + foot_h + 2 * mm
    frame_h = page_h - margin - frame_bottom
    pages = [page(doc, arrays, st, width / mm, context) for page in pages_for(doc)]
    title = f"Lens inspection {doc['lens']['serial']} - {doc['verdict']['overall']}"
    frame = Frame(margin, frame_bottom, width, frame_h, leftPadding=0, rightPadding=0, topPadding=0,
                  bottomPadding=0, id="body")
    template = BaseDocTemplate(fh, pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=margin,
                               bottomMargin=margin, title=title, author=doc["software"]["name"],
                               subject="Lens inspection report", creator=f"{doc['software']['name']} "
                               f"{doc['software']['version']}")
    template.addPageTemplates([PageTemplate(id="page", frames=[frame],
                                            onPage=_footer(doc, st, len(pages), width, page_w, page_h, foot_h))])
    story = []
    for i, content in enumerate(pages):
        story.append(KeepInFrame(width, frame_h - 1, content, mode="shrink"))
        if i < len(pages) - 1:
            story.append(PageBreak())
    # binary (Flate-only) streams: no ASCII85 pass over the figures, a file about 20 % smaller
    a85, rl_config.useA85 = rl_config.useA85, 0
    try:
        template.build(story)
    finally:
        rl_config.useA85 = a85


def render_inspection_report(doc: dict, arrays: ReportArrays, report_started: float | None = None) -> bytes:
    """The A4 PDF inspection report (one page per entry of :func:`pages_for`), rendered in memory.

    Parameters
    ----------
    doc : dict
        Result document (validated against the schema first).
    arrays : ReportArrays
        Arrays behind the figures.
    report_started : float, optional
        ``time.perf_counter()`` when the report stage began: the timings line then shows the time
        spent on the report up to its own layout (the document's ``timings_s.report`` is measured
        after the PDF is rendered, so it cannot be in the PDF). Without it the document's value is
        printed.

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
    _build(doc, arrays, buf, {"report_started": report_started})
    return buf.getvalue()


def write_inspection_report(doc: dict, arrays: ReportArrays, out_path, report_started: float | None = None) -> Path:
    """Write the PDF inspection report (:func:`render_inspection_report`), atomically.

    ``out_path`` is the destination ``.pdf``; its folder must exist. On any error nothing is left
    at ``out_path`` (an existing file there is untouched) and no temp file remains. Returns
    ``out_path``.
    """
    # render fully in memory first: a failure there writes nothing
    return atomic_write_bytes(Path(out_path), render_inspection_report(doc, arrays, report_started))
