"""The report's uncertainty page: the GUM budget of the RMS wavefront and of every lens coefficient,
and the learned data uncertainty per LED (``docs/uncertainty.md``, ``docs/report.md``).

Reads only the result document and the report arrays (like :mod:`metrology.report.pdf`).
"""

from __future__ import annotations

from metrology.orderings import noll_to_nm, zernike_name
from metrology.parameters import PARAMETERS, parse_element


def _fmt(x: float, unit: str = "") -> str:
    if x == 0:
        return "0"
    return (f"{x:.2g}" if abs(x) < 1e-3 or abs(x) >= 1e3 else f"{x:.3g}") + (f" {unit}" if unit else "")


def rms_rows(budget: dict) -> list:
    """Table rows (header first) of one figure's budget: source, u(x_i), sensitivity, contribution, share."""
    unit = budget["unit"]
    rows = [["Source", "u(x_i)", f"Sensitivity ({unit} per unit)", f"Contribution ({unit})", "Share"]]
    for r in sorted(budget["rows"], key=lambda r: -r["contribution"]):
        sens = "1" if r["source"] in ("noise", "model_mismatch") else _fmt(r["sensitivity"])
        rows.append([r["label"], _fmt(r["u_x"], r["unit"]), sens, _fmt(r["contribution"]), f"{100 * r['share']:.0f} %"])
    rows.append(["Combined standard uncertainty u (U = 2u)", "", "", _fmt(budget["u"]), "100 %"])
    return rows


def coefficient_rows(doc: dict) -> list:
    """Per Noll coefficient: value, U, the three parts (noise, mismatch, constants) and the largest source."""
    values = {z["noll"]: z for z in doc["zernike"]}
    labels = {r["source"]: r["label"] for b in doc["uncertainty_budget"].get("zernike", []) for r in b["rows"]}
    rows = [["Noll", "Term", "Value (waves)", "U (waves)", "Noise", "Mismatch", "Constants", "Largest source"]]
    for b in doc["uncertainty_budget"].get("zernike", []):
        j = b["noll"]
        c = {r["source"]: r["contribution"] for r in b["rows"]}
        const = sum(v**2 for k, v in c.items() if k not in ("noise", "model_mismatch")) ** 0.5
        v = values.get(j, {}).get("value_waves")
        rows.append([str(j), zernike_name(*noll_to_nm(j)), "n/a" if v is None else f"{v:+.4f}", _fmt(2 * b["u"]),
                     _fmt(c.get("noise", 0.0)), _fmt(c.get("model_mismatch", 0.0)), _fmt(const),
                     labels.get(b["largest"], b["largest"])])
    return rows


def data_uncertainty_text(doc: dict) -> str:
    """One paragraph on the learned data uncertainty and the fit residual."""
    s = doc["solver"]
    d = s.get("data_uncertainty") or {}
    if not d:
        return "Data uncertainty: the camera noise model alone (no learned variances)."
    eff = d.get("effective_data_fraction")
    scales = [x for x in d.get("frame_scale", []) if x is not None]
    worst = max(scales) if scales else float("nan")
    return (f"Learned data uncertainty: the frames carry {100 * (eff or 0):.0f} % of the information the camera noise "
            f"model alone would give; {d.get('frames_scaled_above_2', 0)} of {len(scales)} frames have s_j > 2 "
            f"(largest {worst:.3g}); frame-border bands from the edge inwards: median s "
            + ", ".join(f"{x:.2f}" for x in d.get("band_scale_median", []) if x is not None)
            + f". Reduced chi-square {s['reduced_chi2']:.3g} with the learned variances, "
            f"{(s.get('reduced_chi2_noise') or float('nan')):.3g} against the camera noise alone.")


def unmeasured_station_terms(doc: dict) -> list:
    """Labels of the station's misalignment terms (those with a drift rule) this fit did not measure
    (blind mode holds the LED tilt at nominal)."""
    measured = {parse_element(r["name"])[0].path for r in doc.get("station_misalignment", [])}
    return [p.label for p in PARAMETERS if p.drift is not None and p.path not in measured]


BLIND_CAUTION_NA = (
    "Caution: blind-mode U with the pupil edge's NA fitted was calibrated off-model on 30 simulated 48-px captures "
    "(lens coefficients: RMS(error/u) 0.94, coverage 94 %; RMS wavefront: 1.16, coverage 93 %), before the "
    "wavelength's unit term, which on the 7 trials re-run with it took the RMS wavefront's RMS(error/u) from 2.54 "
    "to 1.42 (docs/uncertainty.md, section 5).")
BLIND_CAUTION_REFITS = (
    "Caution: blind-mode U with the pupil radius's re-fits was calibrated off-model on simulated 32-px captures only "
    "(14 converged fits: RMS(error/u) 1.05, per coefficient 0.69-1.34, coverage 95 %, none beyond 4 u; "
    "docs/uncertainty.md, Known limits).")
BLIND_CAUTION_HELD = (
    "Caution: blind-mode U without the pupil radius's re-fits (radius_refits = false) under-covers single "
    "high-order coefficients (up to 7 u in simulated 32-px captures; RMS(error/u) 1.43 over the same 14 fits "
    "that read 1.05 with them; docs/uncertainty.md, Known limits).")


def budget_page(doc, arrays, st, width_mm, table, para, png):
    """Flowables of the uncertainty page (``table``, ``para``, ``png``: the PDF module's builders)."""
    budget = doc.get("uncertainty_budget") or {}
    out = [para("Uncertainty budget (GUM, first-order law; k = 2)", st["h"])]
    if not budget:
        return out + [para("No budget: the fit produced no covariance.", st["body"])]
    rms = budget["rms_waves"]
    largest = next((r["label"] for r in rms["rows"] if r["source"] == rms["largest"]), rms["largest"])
    out.append(para(f"RMS wavefront error: largest contribution {largest} "
                    f"({100 * max(r['share'] for r in rms['rows']):.0f} % of the variance).", st["body"]))
    out.append(table(rms_rows(rms), [70, 26, 36, 34, 20]))
    out.append(para("Lens coefficients (waves): expanded uncertainty and its parts (standard uncertainties)", st["h"]))
    out.append(table(coefficient_rows(doc), [10, 34, 22, 18, 18, 18, 18, 48]))
    consts = ", ".join(f"{c['label']} {_fmt(c['u'], c['unit'])}" for c in budget.get("constants", []))
    out.append(para("Station constants held at their stated values, with the standard uncertainties of the station "
                    f"file's [uncertainty] table: {consts or 'none'}.", st["small"]))
    refits = budget.get("pupil_radius_refits")
    if refits:
        state = ("both converged" if all(refits["converged"]) else
                 "NOT both converged: the held NA, magnification and camera-pixel terms are kept beside it")
        out.append(para(f"Pupil radius term: two re-fits at +/- {100 * refits['u_relative']:.2g} % of the radius, the "
                        f"sample free ({state}; {refits['wall_time_s']:.0f} s).", st["small"]))
    edge = budget.get("pupil_edge_refit")
    if edge:
        state = "converged" if edge["converged"] else "NOT converged: this term of U is not established"
        out.append(para(f"Pupil edge term: the fit re-run with the {edge['edges'][1]} edge against the {edge['edges'][0]} "
                        f"edge, the difference taken as one standard uncertainty ({state}; {edge['wall_time_s']:.0f} s).",
                        st["small"]))
    if doc["solver"]["mode"] == "blind":
        na_fitted = any(r["name"] == "pupil.na" for r in doc.get("lens_parameters", []))
        out.append(para(BLIND_CAUTION_NA if na_fitted else BLIND_CAUTION_REFITS if refits else BLIND_CAUTION_HELD,
                        st["small"]))
    missing = unmeasured_station_terms(doc)
    if missing:
        out.append(para(f"Not measured by this {doc['solver']['mode']}-mode fit (held at nominal; the LED distance and "
                        f"tilt, where held, enter the budget above with their stated tolerances): {', '.join(missing)}.", st["small"]))
    out.append(para("Data uncertainty per LED", st["h"]))
    out.append(para(data_uncertainty_text(doc), st["small"]))
    out.append(png(arrays, width_mm))
    return out
