"""The calibration audit PDF of one station (reportlab, with matplotlib charts as PNG images).

Contents: title, station, date range; the integrity check in words; calibration history; summary of
inspections by verdict; recorded alarms; a trend chart per station parameter and golden-lens term
(centre line, +/-3 sigma limits, EWMA and its limits, alarms marked); a footer on every page with
:data:`metrology.conventions.CONVENTIONS_TEXT` and "page i of n".

matplotlib and reportlab are imported inside :func:`write_audit_report`, so importing this module is
cheap and has no side effects.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from xml.sax.saxutils import escape

from metrology import __version__
from metrology.audit.drift import DEFAULT_RULES, station_charts
from metrology.audit.canonical import format_utc, parse_utc, utc_now
from metrology.audit.store import AuditStore
from metrology.conventions import CONVENTIONS_TEXT
from metrology.errors import InputError
from metrology.io.files import atomic_write_bytes, safe_file_name
from metrology.report.layout import numbered_canvas

VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")


def _short(utc) -> str:
    return "-" if not utc else str(utc)[:19].replace("T", " ")


def _chart_png(name, unit, series, chart, since_text, rules, n_baseline) -> tuple:
    """PNG bytes of one trend chart and the alarms shown on it."""
    fig, alarms = chart_figure(name, unit, series, chart, since_text, rules, n_baseline)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue(), alarms


def chart_figure(name, unit, series, chart, since_text, rules, n_baseline) -> tuple:
    """The matplotlib ``Figure`` of one trend chart (records on an integer seq axis) and its alarms."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    seqs, utcs = series.seqs, series.utcs
    shown = [i for i, u in enumerate(utcs) if since_text is None or u >= since_text]
    fig = Figure(figsize=(7.0, 2.3), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    x = [seqs[i] for i in shown]
    y = [chart.values[i] for i in shown]
    ax.plot(x, y, "o-", ms=2.5, lw=0.8, color="#1f4e9a", label="value")
    alarms = [a for a in chart.alarms if a.index in set(shown)]
    if chart.centre is not None and x:
        c, s = chart.centre, chart.sigma
        ax.axhline(c, color="green", lw=0.9, label="centre")
        ax.axhline(c + 3 * s, color="red", lw=0.8, ls="--", label="+/-3 sigma")
        ax.axhline(c - 3 * s, color="red", lw=0.8, ls="--")
        if chart.ewma is not None and "ewma" in rules:
            idx = [i - chart.start for i in shown if i >= chart.start]
            xe = [seqs[i + chart.start] for i in idx]
            ax.plot(xe, [chart.ewma[i] for i in idx], "-", lw=0.9, color="orange", label="EWMA")
            ax.plot(xe, [chart.ewma_upper[i] for i in idx], ":", lw=0.8, color="orange")
            ax.plot(xe, [chart.ewma_lower[i] for i in idx], ":", lw=0.8, color="orange")
        if series.centre is None:
            b0, b1 = chart.start, min(chart.start + n_baseline - 1, len(seqs) - 1)
            if seqs[b1] >= x[0]:
                ax.axvspan(max(seqs[b0], x[0]) - 0.5, seqs[b1] + 0.5, color="0.92", zorder=0)
    for a in alarms:
        ax.plot([seqs[a.index]], [a.observation], "x", color="red", ms=8, mew=2)
    if alarms:
        ax.plot([], [], "x", color="red", ms=6, mew=2, label="alarm")
    ax.set_title(name + (f"  [{unit}]" if unit else ""), fontsize=8)
    ax.set_xlabel("audit record seq", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5.5, loc="upper left", ncol=6, frameon=False)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if x:
        ax.set_xlim(min(x) - 1, max(x) + 1)  # one record: seq - 1 .. seq + 1, never 0.96 .. 1.04
    fig.tight_layout()
    return fig, alarms


class _Kit:
    """The audit PDF's styles and its paragraph and table makers (reportlab loaded)."""

    def __init__(self):
        # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

        styles = getSampleStyleSheet()
        self.colors = colors
        self.body = ParagraphStyle("body", parent=styles["BodyText"], fontSize=8.5, leading=11)
        self.small = ParagraphStyle("small", parent=self.body, fontSize=7, leading=8.5)
        self.foot = ParagraphStyle("foot", parent=self.body, fontSize=5.5, leading=6.6, textColor=colors.grey)
        self.h1, self.h2 = styles["Title"], ParagraphStyle("h2", parent=styles["Heading2"], fontSize=12)

    def p(self, text, style=None):
        # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
        from reportlab.platypus import Paragraph

        return Paragraph(escape(str(text)), style or self.body)

    def table(self, rows, widths):
        # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
        from reportlab.platypus import Table, TableStyle

        t = Table(rows, colWidths=widths, repeatRows=1)
        t.setStyle(TableStyle([
            ("FONT", (0, 0), (-1, -1), "Helvetica", 7),
            ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 7),
            ("BACKGROUND", (0, 0), (-1, 0), self.colors.HexColor("#dde5f0")),
            ("GRID", (0, 0), (-1, -1), 0.3, self.colors.grey),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]))
        return t


def _output_path(out_dir, station_id: str, now_t) -> Path:
    """``out_dir/audit_<station>_<UTC>.pdf``, the folder created and proven writable."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out_dir, f"cannot create the output folder: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK):
        raise InputError(out_dir, "output folder is not writable")
    return out_dir / f"audit_{safe_file_name(station_id, 'station')}_{now_t.strftime('%Y%m%dT%H%M%SZ')}.pdf"


def _head(kit, store, station_id, recs, all_recs, since_text, now_t) -> list:
    """Title, period and the integrity check in words."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.platypus import Spacer

    verify = store.verify()
    first = recs[0].utc if recs else None
    last = recs[-1].utc if recs else None
    out = [
        kit.p(f"Calibration audit: station {station_id}", kit.h1),
        kit.p(f"Station: {station_id}. Period: {_short(since_text or first)} to {_short(last)} UTC "
              f"({len(recs)} records shown of {len(all_recs)} for this station). Generated "
              f"{_short(format_utc(now_t))} UTC by metrology {__version__}. Audit store: {store.location}."),
        Spacer(1, 6),
        kit.p("Integrity check", kit.h2),
        kit.p(("PASSED. " if verify.ok else "FAILED. ") + verify.summary()
              + (" Every record's content hash and chain link were recomputed and match." if verify.ok else
                 " The records named above were edited, deleted or moved after they were written; the "
                 "history below cannot be trusted until this is explained.")),
    ]
    return out + [kit.p("- " + p, kit.small) for p in verify.problems[:50]]


def _history(kit, recs) -> list:
    """Calibration history, inspections by verdict and the recorded alarms."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.units import cm

    out = [kit.p("Calibration history", kit.h2)]
    cals = [r for r in recs if r.kind == "calibration"]
    if cals:
        rows = [["seq", "time (UTC)", "operator", "golden lens", "closure", "max En", "valid until (UTC)"]]
        for r in cals:
            c = r.content
            cl = c.get("closure") or {}
            rows.append([r.seq, _short(r.utc), kit.p(c.get("operator", ""), kit.small),
                         kit.p(cl.get("golden_lens_id", ""), kit.small), "PASS" if c.get("passed") else "FAIL",
                         f"{float(cl.get('max_En', float('nan'))):.2f}", _short(c.get("valid_until"))])
        out.append(kit.table(rows, [1.1 * cm, 3.0 * cm, 3.0 * cm, 3.2 * cm, 1.5 * cm, 1.5 * cm, 3.2 * cm]))
    else:
        out.append(kit.p("No calibration in this period."))

    out += [kit.p("Inspections", kit.h2)]
    insp = [r for r in recs if r.kind == "inspection"]
    counts = {v: 0 for v in VERDICTS}
    for r in insp:
        v = r.content.get("verdict") or (r.content.get("lens") or {}).get("verdict")
        counts[v if v in counts else "INCONCLUSIVE"] += 1
    rows = [["verdict", "count"]] + [[v, counts[v]] for v in VERDICTS] + [["total", len(insp)]]
    out.append(kit.table(rows, [4 * cm, 2.5 * cm]))

    out += [kit.p("Recorded alarms", kit.h2)]
    alarms = [r for r in recs if r.kind == "alarm"]
    if alarms:
        rows = [["seq", "time (UTC)", "parameter", "rule", "on record", "message"]]
        for r in alarms:
            c = r.content
            rows.append([r.seq, _short(r.utc), kit.p(c.get("parameter", ""), kit.small),
                         str(c.get("rule", "")).upper(), c.get("record_seq", ""), kit.p(c.get("message", ""), kit.small)])
        out.append(kit.table(rows, [1.0 * cm, 2.8 * cm, 3.6 * cm, 1.6 * cm, 1.4 * cm, 7.1 * cm]))
    else:
        out.append(kit.p("No alarm recorded in this period."))
    return out


def _trends(kit, charts, since_text, rules, n_baseline) -> list:
    """One trend chart per series, with its alarms."""
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.units import cm
    from reportlab.platypus import Image, KeepTogether, Spacer

    out = [kit.p("Trend charts", kit.h2),
           kit.p(f"Shewhart individuals chart (centre and sigma from the first {n_baseline} records, "
                 "sigma = mean moving range / 1.128, limits +/-3 sigma) and EWMA (lambda 0.2, L 3, exact "
                 "time-varying limits). Golden-lens terms: centre = certified value, sigma = combined "
                 "standard uncertainty. Grey band: baseline. Red crosses: alarms.", kit.small)]
    if not charts:
        out.append(kit.p("No inspection or calibration record with station parameters."))
    for name, (series, chart) in charts.items():
        png, shown_alarms = _chart_png(name, series.unit, series, chart, since_text, rules, n_baseline)
        limits = (f"centre {chart.centre:.6g}, sigma {chart.sigma:.3g} {series.unit}" if chart.centre is not None
                  else "no control limits yet")
        n_shown = sum(1 for u in series.utcs if since_text is None or u >= since_text)
        out.append(KeepTogether([
            kit.p(f"{name} [{series.unit or '-'}]: {n_shown} of {len(series.values)} points shown, {limits}, "
                  f"{len(shown_alarms)} alarm(s) shown.", kit.small),
            Image(io.BytesIO(png), width=17.5 * cm, height=17.5 * cm * 2.3 / 7.0)]))
        if chart.note:
            out.append(kit.p(chart.note, kit.small))
        if shown_alarms:
            rows = [["ALARM on record seq", "rule", "side", "statistic", "limit", "observation"]]
            rows += [[series.seqs[a.index], a.rule.upper(), a.side, f"{a.value:.6g}", f"{a.limit:.6g}",
                      f"{a.observation:.6g}"] for a in shown_alarms[:30]]
            out.append(kit.table(rows, [3.2 * cm, 2.0 * cm, 1.4 * cm, 2.6 * cm, 2.6 * cm, 2.6 * cm]))
            if len(shown_alarms) > 30:
                out.append(kit.p(f"... and {len(shown_alarms) - 30} more alarms on {name}", kit.small))
        out.append(Spacer(1, 4))
    return out


def write_audit_report(store: AuditStore, station_id: str, since=None, out_dir=".", now=None,
                       n_baseline: int = 20, rules=DEFAULT_RULES) -> Path:
    """Write ``audit_<station>_<UTC>.pdf`` into ``out_dir`` atomically and return its path.

    Parameters
    ----------
    store : AuditStore
    station_id : str
    since : datetime or str, optional
        First time shown (date = midnight UTC); control limits still come from the full history.
    out_dir : str or Path
        Created if missing; InputError if it cannot be written.
    now : datetime, optional
        Report time (default now), used in the file name.
    """
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import cm
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    now_t = parse_utc(now, "now") if now is not None else utc_now()
    since_t = parse_utc(since, "--since") if since is not None else None
    since_text = format_utc(since_t) if since_t else None
    path = _output_path(out_dir, station_id, now_t)
    all_recs = store.records(station_id=station_id)
    recs = [r for r in all_recs if since_text is None or r.utc >= since_text]
    charts = station_charts(store, station_id, n_baseline=n_baseline, rules=rules)
    kit = _Kit()
    story = (_head(kit, store, station_id, recs, all_recs, since_text, now_t) + _history(kit, recs)
             + _trends(kit, charts, since_text, rules, n_baseline))

    def on_page(canvas, doc):
        canvas.saveState()
        para = Paragraph(escape(CONVENTIONS_TEXT), kit.foot)
        w, h = para.wrap(doc.width - 2.0 * cm, 3 * cm)
        para.drawOn(canvas, doc.leftMargin, 0.9 * cm)
        canvas.drawString(doc.leftMargin, A4[1] - 1.0 * cm, f"Calibration audit - station {station_id}")
        canvas.restoreState()

    def page_number(canvas, page, n_pages):
        canvas.setFont("Helvetica", 7)
        canvas.drawRightString(A4[0] - 1.5 * cm, 0.9 * cm, f"page {page} of {n_pages}")

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=1.5 * cm, rightMargin=1.5 * cm,
                            topMargin=1.5 * cm, bottomMargin=2.6 * cm,
                            title=f"Calibration audit {station_id}", author=f"metrology {__version__}")
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page, canvasmaker=numbered_canvas(page_number))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise InputError(path, f"cannot write the report: {exc.strerror or exc}") from exc
    return path
