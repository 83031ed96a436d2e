"""Page 1 of the inspection report: does the lens pass, and who signs it.

Verdict banner; identification (lens, operator, date, station and calibration, report ID, the
specification file and revision, the audit record's seq and chain hash, software); the limits under
the decision rule (per-limit verdicts in colour, or grey and "not trusted" when the measurement is
not valid); the reasons; the pupil phase map beside the figures of merit; the approval block.
"""

from __future__ import annotations

from pathlib import Path

from metrology.report.layout import (GAP_MM, TINTS, VERDICT_COLOURS, format_value_u, layout_table, para, png,
                                     spacer, table)
from metrology.report.plots import pupil_phase_png

NOT_TRUSTED = "NOT TRUSTED"


def _software(doc) -> str:
    sw = doc["software"]
    device = f" on {sw['compute_device']}" if sw.get("compute_device") else ""
    return f"{sw['name']} {sw['version']}{device}"


def spec_text(doc) -> str:
    """``file rev R (sha256 first 12 hex)`` of the specification judged against."""
    spec = (doc.get("report") or {}).get("spec")
    if spec is None:
        entry = next((i for i in doc["inputs"] if i["role"] == "spec"), None)
        return f"{Path(entry['path']).name} (sha256 {entry['sha256'][:12]})" if entry else "none"
    rev = spec["revision"] or "not stated"
    band = spec.get("wavelength_band_nm")
    band_txt = f", valid {band[0]:g}-{band[1]:g} nm" if band else ""
    return f"{spec['file']} rev {rev}{band_txt} (sha256 {spec['sha256'][:12]})"


def audit_text(doc) -> str:
    """``seq N after chain <16 hex>... (store file)`` or why there is none: the record committing the
    report (its own hash covers the report's SHA-256) and the chain hash it extends."""
    rec = doc.get("audit_record")
    if not rec:
        return "not recorded" if "audit_record" in doc else "n/a (document without audit record)"
    return f"seq {rec['seq']} after chain {rec['previous_chain_sha256'][:16]}... ({Path(rec['store']).name})"


SPANNED_ROWS = (3, 4)
"""Rows of :func:`identification_rows` whose value spans the three value columns (the report ID
and the specification do not fit one column and must not be interleaved with another cell)."""


def identification_rows(doc) -> list:
    """The identification table, four columns ``(label, value, label, value)`` per row; the rows
    :data:`SPANNED_ROWS` hold one value spanning the row."""
    cal = doc["station"]["calibration"]
    report_id = (doc.get("report") or {}).get("id", "n/a")
    return [
        ["Lens model", doc["lens"]["model"], "Serial", doc["lens"]["serial"]],
        ["Operator", doc["operator"] or "-", "Date (UTC)", doc["created_utc"]],
        ["Station", doc["station"]["id"], "Calibration", f"{cal['status']} - {cal['reason']}"],
        ["Report ID", report_id, "", ""],
        ["Specification", spec_text(doc), "", ""],
        ["Audit record", audit_text(doc), "Software", _software(doc)],
        ["Wavelength / NA", f"{doc['wavelength_nm']:g} nm / {doc['na']:g}", "Tile centre",
         f"({doc['tile_center_mm'][0]:g}, {doc['tile_center_mm'][1]:g}) mm"],
    ]


def _banner(doc, st, width_mm):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.pdfbase.pdfmetrics import stringWidth

    v = doc["verdict"]["overall"]
    cal = doc["station"]["calibration"]
    right_w = 140
    left_w = width_mm - right_w
    size = min(30.0, 30.0 * (left_w - 5) * mm / stringWidth(v, "Helvetica-Bold", 30.0))
    big = ParagraphStyle("bannerfit", parent=st["banner"], fontSize=size, leading=size * 1.15)
    verdict_cell = [para(v, big), para("overall verdict (ISO 14253-1, k = 2)", st["bannersub"])]
    cells = [[para(a, st["cellb"]), para(b, st["cell"]), para(c, st["cellb"]), para(d, st["cell"])]
             for a, b, c, d in identification_rows(doc)]
    grey = colors.HexColor("#f2f2f2")
    right = table(cells, [21, 47, 21, 51], header=False, style_cmds=[
        ("BACKGROUND", (0, 0), (0, -1), grey), ("BACKGROUND", (2, 0), (2, -1), grey),
        *[("SPAN", (1, r), (3, r)) for r in SPANNED_ROWS],
        *[("BACKGROUND", (1, r), (3, r), colors.white) for r in SPANNED_ROWS]]
        + ([("BACKGROUND", (3, 2), (3, 2), colors.HexColor(TINTS["INCONCLUSIVE"]))]
           if cal["status"] != "valid" else []))
    return table([[verdict_cell, right]], [left_w, right_w], header=False, style_cmds=[
        ("BACKGROUND", (0, 0), (0, 0), colors.HexColor(VERDICT_COLOURS[v])),
        ("GRID", (0, 0), (-1, -1), 0, colors.white),
        ("LEFTPADDING", (1, 0), (1, 0), 2), ("RIGHTPADDING", (1, 0), (1, 0), 0),
        ("TOPPADDING", (0, 0), (-1, -1), 0), ("BOTTOMPADDING", (0, 0), (-1, -1), 0)])


def limit_cell(doc, lim) -> tuple[str, str]:
    """``(text, tint key)`` of a limit's verdict cell: the limit's own verdict on a valid
    measurement; ``"PASS - not trusted"`` in grey when the measurement is not valid (its limits are
    not evidence either way, docs/spec.md 6.3)."""
    if doc["verdict"].get("valid", True):
        return lim["verdict"], lim["verdict"]
    return f"{lim['verdict']} - not trusted", NOT_TRUSTED


def _limits_table(doc, st, width_mm):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from reportlab.lib import colors

    rows = [[para(h, st["cellb"]) for h in ("Characteristic", "Limit", "Measured ± U (k = 2)", "Verdict",
                                             "Decision")]]
    cmds = []
    for i, lim in enumerate(doc["verdict"]["limits"], start=1):
        unit = f" {lim['unit']}" if lim["unit"] else ""
        text, tint = limit_cell(doc, lim)
        rows.append([
            para(lim["name"], st["cell"]),
            para(f"{lim['kind']} {lim['limit']:.4g}{unit}", st["cell"]),
            para(format_value_u(lim["value"], lim["U"]) + unit, st["cell"]),
            para(text, st["cellb"] if tint != NOT_TRUSTED else st["small"]),
            para(lim["reason"], st["small"]),
        ])
        cmds.append(("BACKGROUND", (3, i), (3, i), colors.HexColor(TINTS[tint])))
    if len(rows) == 1:
        rows.append([para("no limits in the specification", st["cell"]), "", "", "", ""])
    return table(rows, [58, 30, 40, 24, width_mm - 152], cmds)


def merit_rows(doc) -> list:
    """The figures-of-merit table: ``(label, value ± U with unit)`` rows, every row labelled."""
    fom = doc["figures_of_merit"]
    q = lambda key: format_value_u(fom[key]["value"], fom[key]["U"])  # noqa: E731
    residual = fom["fit_residual_waves"]
    rows = [
        ("RMS wavefront error (waves)", q("rms_waves") + " waves"),
        ("RMS wavefront error (nm)", q("rms_nm") + " nm"),
        ("Peak-to-valley", q("pv_waves") + " waves"),
        ("PVr (Evans: PV of Noll <= 36 + 3 x residual)", q("pvr_waves") + " waves"),
        ("Residual beyond Noll 36 (RMS)", f"{residual:.3g} waves" if residual else
         "0 (no terms beyond Noll 36: PVr = PV)"),
        ("Strehl ratio, on-axis (pupil integral)", q("strehl")),
        ("Strehl ratio, PSF peak", q("strehl_psf")),
    ]
    for m in doc["station_misalignment"]:
        if m["name"].startswith("sample.defocus"):
            rows.append(("Sample defocus (Noll 4, alignment)", format_value_u(m["value"], m["U"]) + f" {m['unit']}"))
    for p in fom["mtf"][:4]:
        rows.append((f"MTF at {p['frequency_cyc_per_mm']:g} cycles/mm (worst azimuth)",
                     format_value_u(p["value"], p["U"])))
    return rows


def _merit_table(doc, st, width_mm):
    cells = [[para("Figure of merit", st["cellb"]), para("Value ± U (k = 2)", st["cellb"])]]
    cells += [[para(a, st["cell"]), para(b, st["cell"])] for a, b in merit_rows(doc)]
    return table(cells, [width_mm * 0.56, width_mm * 0.44])


APPROVAL_ROLES = ("Measured by (operator)", "Reviewed by (QA engineer)", "Approved for release")


def _approval_block(doc, st, width_mm):
    rows = [[para(h, st["cellb"]) for h in ("Role", "Name", "Date", "Signature")]]
    for i, role in enumerate(APPROVAL_ROLES):
        name = doc["operator"] if i == 0 and doc["operator"] else ""
        date = doc["created_utc"][:10] if i == 0 else ""
        rows.append([para(role, st["cell"]), para(name, st["cell"]), para(date, st["cell"]), ""])
    t = table(rows, [46, 50, 28, width_mm - 124], style_cmds=[("TOPPADDING", (0, 1), (-1, -1), 4.5),
                                                               ("BOTTOMPADDING", (0, 1), (-1, -1), 4.5)])
    decision = para("Release decision:  [ ] accept   [ ] reject   [ ] re-measure      Remarks: "
                    "______________________________________________", st["body"])
    return [para("Approval", st["h"]), t, spacer(1.2), decision]


def page_summary(doc, arrays, st, width_mm, context) -> list:
    """Page 1's flowables (see the module docstring)."""
    v = doc["verdict"]
    out = [_banner(doc, st, width_mm), spacer(),
           para("Limits (decision rule: " + doc["conventions"]["decision_rule"] + ")", st["h"]),
           _limits_table(doc, st, width_mm)]
    if v["overall"] != "PASS":
        out.append(spacer(1.5))
        out.append(para(f"Why {v['overall']}:", st["h"]))
        out.extend(para("- " + r, st["body"]) for r in (v["reasons"] or ["(no reason given)"]))
    out.append(spacer())
    pupil = png(pupil_phase_png(arrays.pupil_phase_waves, doc["wavelength_nm"], 92, 78), 92, 78)
    out += [layout_table([pupil, _merit_table(doc, st, width_mm - 96)], [96, width_mm - 96]),
            spacer(GAP_MM)]
    out += _approval_block(doc, st, width_mm)
    return out
