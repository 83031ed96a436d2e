"""Page 3 of the inspection report: how far to trust the measurement.

Station misalignment and sample pose with U; the solver (rounds and polish steps as plotted),
identifiability and data quality; the PSF and MTF against the diffraction limit (with the
specification's MTF minima); the reconstructed reference sample and per-LED maps; measured vs
modelled frames; the convergence curve; the timings, the report's own included.
"""

from __future__ import annotations

import re
import time

from metrology.report.layout import format_value_u, late_para, layout_table, para, png, spacer, table
from metrology.report.plots import convergence_png, frames_png, psf_mtf_png, sample_led_png


def station_rows(doc) -> list:
    """The station table's rows ``(parameter, value ± U, unit)``, in the document's order, then the
    lens's fitted second aperture (``vignetting``) where the station models one and the lens's fitted
    scalars (``lens_parameters``: the pupil edge's NA in blind mode)."""
    return [(m["label"] or m["name"], format_value_u(m["value"], m["U"]), m["unit"])
            for m in doc["station_misalignment"] + doc.get("vignetting", []) + doc.get("lens_parameters", [])]


def _station_table(doc, st):
    rows = [[para(h, st["cellb"]) for h in ("Station / sample parameter", "Value ± U (k = 2)", "Unit")]]
    rows += [[para(text, st["cell"]) for text in row] for row in station_rows(doc)]
    if len(rows) == 1:
        rows.append([para("not estimated", st["cell"]), "", ""])
    return table(rows, [48, 32, 12])


def _g3(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def polish_steps(doc) -> int:
    """Gauss-Newton polish steps: the iterations beyond the outer rounds of the loss history."""
    s = doc["solver"]
    return max(int(s["iterations"]) - len(s["history"]), 0)


def solver_text(doc) -> str:
    """The solver line: rounds (as plotted) and polish steps add up to the iterations."""
    s = doc["solver"]
    rounds = len(s["history"])
    return (f"mode {s['mode']}, loss {s['loss']}: {rounds} outer rounds (plotted) + {polish_steps(doc)} "
            f"Gauss-Newton polish steps = {s['iterations']} iterations, "
            f"{'converged' if s['converged'] else 'NOT converged'}, final loss {format_value_u(s['final_loss'], 0)}, "
            f"reduced chi-square {_g3(s['reduced_chi2'])}. {s['message']}")


def timings_text(doc, report_s: float) -> str:
    """The timings line; ``report_s`` is the report's drawing time when the document has none yet."""
    t = doc["timings_s"]
    report = t["report"] if t["report"] > 0 else report_s
    return (f"Timings: load {t['load']:.1f} s, reconstruct {t['reconstruct']:.1f} s, analyse {t['analyse']:.1f} s, "
            f"report {report:.1f} s.")


def _quality_block(doc, st, context):
    idf, dq = doc["identifiability"], doc["data_quality"]
    out = [para("Solver", st["h"]), para(solver_text(doc), st["small"]),
           para("Identifiability", st["h"]),
           para(f"condition number {idf['condition_number']:.4g}, max |correlation| "
                f"{idf['max_abs_correlation']:.2f}.", st["small"])]
    for pair in idf["strong_pairs"][:6]:
        out.append(para(f"- strongly correlated: {pair['a']} / {pair['b']} ({pair['correlation']:+.2f})", st["small"]))
    if len(idf["strong_pairs"]) > 6:
        out.append(para(f"- ... and {len(idf['strong_pairs']) - 6} more pairs", st["small"]))
    if idf["unidentifiable"]:
        out.append(para("- not identifiable from these data: " + ", ".join(idf["unidentifiable"]), st["small"]))
    blank = ", ".join(str(b) for b in dq["blank_frames"]) or "none"
    out += [para("Data quality", st["h"]),
            para(f"saturated fraction {dq['saturated_fraction']:.2%}, hot pixels {dq['hot_pixels']}, "
                 f"blank frames: {blank}.", st["small"])]
    flags = dq["flags"]
    for f in flags[:8]:
        out.append(para(f"- {f['severity'].upper()} {f['code']}: {f['message']}", st["small"]))
    if len(flags) > 8:
        out.append(para(f"- ... and {len(flags) - 8} more flags (see the JSON result)", st["small"]))
    if not flags:
        out.append(para("- no flags", st["small"]))
    started = context.get("report_started")
    out.append(late_para(lambda: timings_text(doc, 0.0 if started is None else time.perf_counter() - started),
                         st["small"]))
    return out


_MTF_NAME = re.compile(r"MTF at ([0-9.eE+-]+) cycles/mm")


def mtf_limits(doc) -> list:
    """``(frequency cycles/mm, minimum)`` of every MTF limit: the frequency from the matching
    ``figures_of_merit.mtf`` entry (key ``limits.mtf[i].min``), else from the limit's name."""
    fom = doc["figures_of_merit"]["mtf"]
    out = []
    for lim in doc["verdict"]["limits"]:
        key = lim.get("key", "")
        m = re.match(r"limits\.mtf\[(\d+)\]", key)
        if m and int(m.group(1)) < len(fom):
            out.append((fom[int(m.group(1))]["frequency_cyc_per_mm"], lim["limit"]))
            continue
        m = _MTF_NAME.match(lim["name"])
        if m:
            out.append((float(m.group(1)), lim["limit"]))
    return out


def page_station(doc, arrays, st, width_mm, context) -> list:
    """Page 3's flowables (see the module docstring)."""
    head = layout_table([[para("Station misalignment and sample pose", st["h"]), _station_table(doc, st)],
                         _quality_block(doc, st, context)], [96, width_mm - 96])
    fw, cw, fh = 130, width_mm - 132, 74
    frames = png(frames_png(arrays.frames, fw, fh), fw, fh)
    conv = png(convergence_png(arrays.loss_history, cw, fh, polish_steps(doc)), cw, fh)
    return [
        head, spacer(),
        para("PSF and MTF against the diffraction limit", st["h"]),
        png(psf_mtf_png(arrays, doc["figures_of_merit"]["mtf"], width_mm, 52, mtf_limits(doc)), width_mm, 52),
        para("Reconstructed reference sample and per-LED maps", st["h"]),
        png(sample_led_png(arrays, width_mm, 50), width_mm, 50),
        para("Measured vs modelled frames (bright-field and dark-field LED) and convergence", st["h"]),
        layout_table([frames, conv], [fw + 2, cw]),
    ]
