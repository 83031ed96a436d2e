"""The full-field page of the inspection report (only when the document has a ``field`` block,
``docs/full-field.md``): the lens across the field as maps and tables.

Left map: the RMS wavefront of every tile (Noll 5..K) as a coloured square at the tile's field
position, astigmatism as a line segment along its axis (length proportional to its magnitude) and
coma as an arrow (direction of ``(c8, c7)``); +y points down as on every map. Then the distortion
as a grid (the ideal grid and the grid the fitted third-order distortion makes of it, exaggerated by
a printed factor, with each tile's own value), and each tile's
distortion (%) and sample defocus (um) against ``|H|``, with the field model's curves. Right: the
sagittal and tangential MTF at the spec's frequencies against ``|H|`` (``field.mtf``) with the
diffraction limit, the directions convention printed under the figure. Tables: the
Hopkins coefficients with U, the field model's chi-square, distortion and magnification, field
curvature, the verdict per field zone of the specification (``verdict.zones``: zone, figure, the
field point that decides it, value with U, limit, verdict) and every tile. Reads only the result
document.
"""

from __future__ import annotations

import math

import numpy as np

from metrology.analysis.spec import zone_extent
from metrology.analysis.station_agreement import DISAGREEMENT_RATIO
from metrology.parameters import element_label
from metrology.report.layout import TINTS, format_value_u, para, png, spacer, table
from metrology.report.plots import figure, png_bytes

_FONT = 6.5


def _coeff(tile: dict, noll: int) -> float:
    row = next((z for z in tile["zernike"] if z["noll"] == noll), None)
    return 0.0 if row is None or row["value"] is None else float(row["value"])


def _field_map(ax, doc: dict) -> None:
    """RMS squares, astigmatism segments, coma arrows over the field (H units, +y down)."""
    tiles = doc["field"]["tiles"]
    h = np.array([t["h"] for t in tiles], dtype=float)
    rms = np.array([np.nan if t["rms_waves"] is None else t["rms_waves"] for t in tiles])
    step = _grid_step(h)
    sc = ax.scatter(h[:, 0], h[:, 1], c=rms, cmap="viridis", marker="s", s=(step * 160) ** 2 / max(len(tiles), 1) + 60,
                    edgecolors="0.3", linewidths=0.3)
    astig = np.array([math.hypot(_coeff(t, 5), _coeff(t, 6)) for t in tiles])
    coma = np.array([math.hypot(_coeff(t, 7), _coeff(t, 8)) for t in tiles])
    a_scale = 0.45 * step / max(astig.max(initial=0.0), 1e-12)
    c_scale = 0.45 * step / max(coma.max(initial=0.0), 1e-12)
    for t, (hx, hy), mag in zip(tiles, h, astig):
        axis = 0.5 * math.atan2(_coeff(t, 5), _coeff(t, 6))  # angle of the cos(2 theta) maximum
        dx, dy = 0.5 * mag * a_scale * math.cos(axis), 0.5 * mag * a_scale * math.sin(axis)
        ax.plot([hx - dx, hx + dx], [hy - dy, hy + dy], color="crimson", lw=1.2)
        ax.annotate("", xy=(hx + c_scale * _coeff(t, 8), hy + c_scale * _coeff(t, 7)), xytext=(hx, hy),
                    arrowprops={"arrowstyle": "->", "color": "white", "lw": 0.9})
    _field_axes(ax, np.abs(h).max(initial=0.0) + step)
    ax.set_title(f"RMS (colour),\nastigmatism (red, max {astig.max(initial=0):.3f} w),\n"
                 f"coma (arrows, max {coma.max(initial=0):.3f} w)", fontsize=_FONT - 0.5)
    cb = ax.figure.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=_FONT - 1)
    cb.set_label("RMS wavefront (waves)", fontsize=_FONT - 1)


def _field_axes(ax, lim: float) -> None:
    """Square axes over ``|Hx|, |Hy| <= lim``, +y down as on every map."""
    ax.set_xlim(-lim, lim)
    ax.set_ylim(lim, -lim)  # +y down
    ax.set_aspect("equal")
    ax.set_xlabel("Hx", fontsize=_FONT)
    ax.set_ylabel("Hy (+y down)", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)


def _grid_step(h: np.ndarray) -> float:
    """Smallest spacing between tile centres (H units), 0.5 for a single tile."""
    if len(h) < 2:
        return 0.5
    d = np.hypot(*(h[:, None, :] - h[None, :, :]).transpose(2, 0, 1))
    return float(d[d > 1e-9].min())


def _radial_plot(ax, doc: dict) -> None:
    """Distortion (%) and sample defocus (um) of each tile against |H|."""
    f = doc["field"]
    r = np.array([math.hypot(*t["h"]) for t in f["tiles"]])
    dist = [t["distortion_percent"] for t in f["tiles"]]
    ok = [i for i, d in enumerate(dist) if d is not None and d["value"] is not None]
    if ok:
        ax.errorbar(r[ok], [dist[i]["value"] for i in ok], yerr=[dist[i]["U"] or 0 for i in ok], fmt="o", ms=2.5,
                    color="C0", lw=0.6, label="distortion (%)")
        if f["distortion"] is not None:
            rr = np.linspace(0, max(r.max(), 1e-6), 50)
            ax.plot(rr, f["distortion"]["distortion_percent_edge"]["value"] * rr**2, color="C0", lw=0.8)
    ax.set_xlabel("|H|", fontsize=_FONT)
    ax.set_ylabel("distortion (%)", fontsize=_FONT, color="C0")
    ax.tick_params(labelsize=_FONT - 1)
    ax2 = ax.twinx()
    dz = [t["sample_defocus_um"] for t in f["tiles"]]
    keep = [i for i, d in enumerate(dz) if d is not None and d["value"] is not None]
    ax2.errorbar(r[keep], [dz[i]["value"] for i in keep], yerr=[dz[i]["U"] or 0 for i in keep], fmt="s", ms=2.5,
                 color="C3", lw=0.6)
    if f["field_curvature"] is not None:
        fc = f["field_curvature"]
        rr = np.linspace(0, max(r.max(), 1e-6), 50)
        ax2.plot(rr, fc["z0_um"]["value"] + fc["curvature_um"]["value"] * rr**2, color="C3", lw=0.8)
    ax2.set_ylabel("sample defocus (um)", fontsize=_FONT, color="C3")
    ax2.tick_params(labelsize=_FONT - 1)
    ax.set_title("Distortion and focus\nacross the field", fontsize=_FONT - 0.5)


GRID_LINES = 7
"""Lines per direction of the distortion grid."""
GRID_PEAK = 0.08
"""The distortion grid's exaggeration puts its largest displacement at this fraction of the field shown."""


def distortion_exaggeration(edge_fraction: float, u_fraction: float, extent: float) -> float:
    """The factor (1 or more, one significant digit) that makes third-order distortion of the
    larger of ``edge_fraction`` and its expanded uncertainty ``u_fraction`` (relative, at
    ``|H| = 1``) displace the corner of a grid reaching ``extent`` (``|Hx|, |Hy| <= extent``) by
    about :data:`GRID_PEAK` of ``extent``: a distortion of 0.01 % is invisible at scale, and one
    well inside its U stays visibly small instead of being blown up to the same size."""
    peak = max(abs(edge_fraction), abs(u_fraction)) * (math.sqrt(2.0) * extent) ** 3
    if peak <= 0 or not math.isfinite(peak):
        return 1.0
    return max(1.0, float(f"{GRID_PEAK * extent / peak:.1g}"))


def _distortion_grid(ax, doc: dict) -> None:
    """The distortion as a grid over the tiles' extent (``H`` units, +y down): the ideal square
    grid (grey) and the same grid moved by the fitted third-order distortion, a point at ``H``
    to ``H (1 + k D |H|^2)`` (``D`` the distortion at ``|H| = 1``, ``k`` the exaggeration printed
    in the title; blue), and each tile's own radial distortion on the same scale (red dots)."""
    f = doc["field"]
    d = f["distortion"]
    edge = None if d is None else d["distortion_percent_edge"]
    if edge is None or edge["value"] is None:
        ax.text(0.5, 0.5, "Distortion grid: no distortion fit\n(known reference and 2+ off-axis tiles needed)",
                ha="center", va="center", fontsize=_FONT, transform=ax.transAxes)
        ax.set_axis_off()
        return
    h = np.array([t["h"] for t in f["tiles"]], dtype=float)
    extent = max(float(np.abs(h).max(initial=0.0)), 0.05)
    frac = edge["value"] / 100.0
    k = distortion_exaggeration(frac, (edge["U"] or 0.0) / 100.0, extent)
    s = np.linspace(-extent, extent, 41)
    for c in np.linspace(-extent, extent, GRID_LINES):
        for x, y in ((np.full_like(s, c), s), (s, np.full_like(s, c))):
            ax.plot(x, y, color="0.75", lw=0.5)
            grow = 1.0 + k * frac * (x**2 + y**2)
            ax.plot(x * grow, y * grow, color="C0", lw=0.7)
    dots = [(t["h"], t["distortion_percent"]["value"]) for t in f["tiles"]
            if t["distortion_percent"] is not None and t["distortion_percent"]["value"] is not None]
    if dots:
        hh = np.array([p for p, _ in dots], dtype=float)
        grow = 1.0 + k * np.array([v for _, v in dots]) / 100.0
        ax.plot(hh[:, 0] * grow, hh[:, 1] * grow, "o", color="C3", ms=2.5)
    _field_axes(ax, extent * (1.0 + GRID_PEAK) * 1.08)
    ax.set_title(f"Distortion grid (x{k:g}; grey ideal,\nred tiles): {format_value_u(edge['value'], edge['U'])} %"
                 "\nat |H| = 1", fontsize=_FONT - 0.5)


def _mtf_plot(ax, doc: dict) -> None:
    """Tangential (filled) and sagittal (open) MTF at each spec frequency against ``|H|`` (every
    point of ``field.mtf``, bars U), with the diffraction limit (dashed)."""
    m = doc["field"].get("mtf")
    if not m:
        ax.text(0.5, 0.5, "MTF across the field: no field model", ha="center", va="center", fontsize=_FONT,
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    r = np.array([p["abs_h"] for p in m["points"]])
    values = [q["value"] for p in m["points"] for d in ("sagittal", "tangential") for q in p[d] if q["value"] is not None]
    lo = max(0.0, min(values + list(m["diffraction_limited"])) - 0.05)
    for k, (f, dl) in enumerate(zip(m["frequencies_cyc_per_mm"], m["diffraction_limited"])):
        colour = f"C{k}"
        for d, face in (("tangential", colour), ("sagittal", "none")):
            q = [p[d][k] for p in m["points"]]
            ok = [i for i, x in enumerate(q) if x["value"] is not None]
            ax.errorbar(r[ok], [q[i]["value"] for i in ok], yerr=[q[i]["U"] or 0 for i in ok], fmt="o", ms=2.2,
                        mfc=face, mec=colour, ecolor=colour, lw=0.5,
                        label=f"{d[0].upper()} {f:g} c/mm")
        ax.axhline(dl, color=colour, ls="--", lw=0.7)
    ax.set_ylim(lo, min(1.02, max(m["diffraction_limited"]) + 0.04))
    ax.set_xlabel("|H|", fontsize=_FONT)
    ax.set_ylabel("MTF", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    ax.legend(fontsize=_FONT - 1.5, loc="lower left", frameon=False)
    ax.set_title("MTF vs field\n(T filled, S open,\ndiffraction limit dashed)", fontsize=_FONT - 0.5)


def field_png(doc: dict, width_mm=186.0, height_mm=78.0) -> bytes:
    """The page's figure: the field map, the distortion grid, the radial plot and the MTF across
    the field, side by side."""
    fig = figure(width_mm, height_mm)
    grid = fig.add_gridspec(1, 4, width_ratios=(1.25, 1.0, 1.05, 0.95))
    _field_map(fig.add_subplot(grid[0]), doc)
    _distortion_grid(fig.add_subplot(grid[1]), doc)
    _radial_plot(fig.add_subplot(grid[2]), doc)
    _mtf_plot(fig.add_subplot(grid[3]), doc)
    fig.tight_layout(pad=0.6)
    return png_bytes(fig)


def _q(q: dict | None) -> str:
    return "n/a" if q is None else format_value_u(q["value"], q["U"])


def summary_rows(doc: dict) -> list:
    """``(quantity, value ± U, unit)`` rows of the field results."""
    f = doc["field"]
    rows = [("Quantity", "Value ± U (k = 2)", "Unit")]
    model = f["model"]
    for key in ("W040", "W131", "W222"):
        rows.append((f"Hopkins {key}", _q(None if model is None else model["seidel_waves"].get(key)), "waves"))
    fc = f["field_curvature"]
    rows.append(("Hopkins W220 (from field curvature)", _q(None if fc is None else fc["W220_waves"]), "waves"))
    rows.append(("Field curvature (sample defocus at |H| = 1)", _q(None if fc is None else fc["curvature_um"]), "um"))
    d = f["distortion"]
    rows.append(("Distortion at |H| = 1", _q(None if d is None else d["distortion_percent_edge"]), "%"))
    rows.append(("Calibrated magnification", _q(None if d is None else d["calibrated_magnification"]), ""))
    rows.append(("Image rotation", _q(None if d is None else d["rotation_deg"]), "deg"))
    v = f.get("vignetting")
    if v is not None:
        rows.append(("Vignetting: second aperture radius", _q(v["radius"]), "pupil radii"))
        rows.append(("Vignetting: aperture centre shift per unit H", _q(v["shift_per_h"]), "pupil radii"))
    agreement = station_agreement_row(f.get("station") or [])
    if agreement:
        rows.append(agreement)
    if model is not None:
        rows.append(("Field model chi-square / dof (tiles' own u)", f"{model['chi2']:.1f} / {model['dof']}", ""))
        rows.append(("Per-field scatter not explained by the model", f"{model['scatter_waves']:.4f}", "waves"))
    return rows


def station_agreement_row(station: list) -> tuple | None:
    """``(quantity, text, unit)``: the largest Birge ratio of the station over the tiles, its element,
    and whether the tiles agree (docs/full-field.md); None with one tile."""
    judged = [s for s in station if s.get("dof") and s.get("birge_ratio") is not None]
    if not judged:
        return None
    worst = max(judged, key=lambda s: s["birge_ratio"])
    state = (f"DISAGREE (tile {worst['worst_tile']} furthest)" if any(s["disagrees"] for s in judged)
             else "agree")
    return (f"Station across the tiles: largest scatter / uncertainty (Birge ratio; > {DISAGREEMENT_RATIO:g} disagrees)",
            f"{worst['birge_ratio']:.1f} ({element_label(worst['name'])}): {state}", "")


def tile_rows(doc: dict) -> list:
    """Per tile: name, H, RMS, astigmatism and coma magnitudes, distortion, defocus."""
    rows = [("Tile", "H", "RMS (w)", "Astig. (w)", "Coma (w)", "Distortion (%)", "Defocus (um)")]
    for t in doc["field"]["tiles"]:
        rows.append((t["name"], f"({t['h'][0]:+.2f}, {t['h'][1]:+.2f})",
                     "n/a" if t["rms_waves"] is None else f"{t['rms_waves']:.4f}",
                     f"{math.hypot(_coeff(t, 5), _coeff(t, 6)):.4f}", f"{math.hypot(_coeff(t, 7), _coeff(t, 8)):.4f}",
                     _q(t["distortion_percent"]), _q(t["sample_defocus_um"])))
    return rows


def zone_rows(doc: dict) -> list:
    """Per judged zone figure: zone (its verdict), figure, the deciding ``H``, value ± U, limit, verdict."""
    rows = [("Zone", "Figure", "Worst at H", "Value ± U (k = 2)", "Limit", "Verdict")]
    trusted = doc["verdict"].get("valid", True)
    for z in doc["verdict"].get("zones") or []:
        for i, f in enumerate(z["figures"]):
            extent = zone_extent(z.get("h_min", 0.0), z["h_max"])
            zone = f"{z['name']} ({extent}): {z['verdict']}" if i == 0 else ""
            unit = f" {f['unit']}" if f["unit"] else ""
            where = "n/a" if f["h"] is None else f"({f['h'][0]:+.2f}, {f['h'][1]:+.2f})"
            where += f", {f['direction']}" if f.get("direction") else ""
            op = ">=" if f.get("kind") == "min" else "<="
            rows.append((zone, f["figure"], where, format_value_u(f["value"], f["U"]) + unit,
                         f"{op} {f['limit']:g}{unit}", f["verdict"] if trusted else f"{f['verdict']} - not trusted"))
    return rows


def _zone_table(doc: dict, st: dict) -> list:
    """The zone verdict table, or the sentence saying only the axial tile was judged."""
    f = doc["field"]
    if not doc["verdict"].get("zones"):
        return [para(f"Verdict: the specification has no field zones ([[zone]]): only tile {f['central_tile']} "
                     "(nearest the axis) was judged; the other tiles are reported, not judged.", st["small"])]
    head = para(f"Verdict per field zone (overall {doc['verdict']['overall']}): worst case over the tile centres and "
                "a polar grid of field points inside each zone, field model with its covariance (docs/full-field.md)",
                st["small"])
    # lazy: reportlab loads only when a report is drawn (start-up time)
    from reportlab.lib import colors

    rows = zone_rows(doc)
    tint = [("BACKGROUND", (5, i), (5, i), colors.HexColor(TINTS.get(row[5], TINTS["NOT TRUSTED"])))
            for i, row in enumerate(rows) if i > 0]
    return [head, table([[para(c, st["cellb" if i == 0 else "small"]) for c in row] for i, row in enumerate(rows)],
                        [44, 40, 24, 34, 22, 22], tint)]


def _mtf_note(f: dict, st: dict):
    """The MTF directions convention and the focus of the MTF across the field, under the figure."""
    m = f.get("mtf")
    if not m:
        return spacer()
    pupil = ("Uniform pupil amplitude (no vignetting modelled)" if f.get("vignetting") is None else
             "Uniform amplitude on the stop cut by the fitted second aperture (its u included)")
    return para(f"{m['directions']} Focus: {m['focus']}. {pupil}; bars U (k = 2).", st["small"])


def page_field(doc, arrays, st, width_mm, context) -> list:
    """Page 5 (full-field inspections only): the lens across the field."""
    f = doc["field"]
    lay = f["layout"]
    head = (f"Full field: {len(f['tiles'])} tiles of {lay['tile_px']} px on a {lay['sensor_px'][0]} x "
            f"{lay['sensor_px'][1]} frame, field radius {lay['field_radius_mm']:g} mm (|H| = 1). The pages before "
            f"show tile {f['central_tile']} (nearest the axis).")
    out = [para("Lens across the field", st["h"]), para(head, st["body"]), para("Method: " + f["method"], st["small"]),
           spacer(), png(field_png(doc, width_mm, 70.0), width_mm, 70.0), _mtf_note(f, st), spacer()]
    out += _zone_table(doc, st) + [spacer()]
    out.append(table([[para(c, st["cellb" if i == 0 else "cell"]) for c in row] for i, row in enumerate(summary_rows(doc))],
                     [90, 60, 20]))
    out += [spacer(), table([[para(c, st["cellb" if i == 0 else "small"]) for c in row]
                             for i, row in enumerate(tile_rows(doc))], [18, 28, 20, 20, 20, 40, 40])]
    if f["notes"]:
        out += [spacer(), para("Notes: " + " ".join(f["notes"]), st["small"])]
    return out
