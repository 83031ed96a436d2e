"""The ``field`` block of the result document: a full-field inspection's tiles, field model,
distortion and field curvature (``docs/full-field.md``; schema
``metrology/schemas/inspection_result.schema.json``). Plain numbers in, JSON out."""

from __future__ import annotations

import copy
import math

import numpy as np

from metrology.analysis.field import w220_from_curvature
from metrology.analysis.figures import rms_waves
from metrology.conventions import COVERAGE_FACTOR, MTF_DIRECTIONS_TEXT
from metrology.field_terms import design_matrix, field_basis
from metrology.report.document import finite_or_none

METHOD = ("per-tile fits (each tile its own geometry and station estimates), station parameters combined "
          "afterwards by inverse-variance weighting; lens field model by generalised least squares over the "
          "tiles with the station constants correlated across tiles")
"""How the field results were obtained (the joint solve over tiles is the next step)."""


def _q(value, u) -> dict:
    """``{"value", "u", "U"}`` (null when not finite)."""
    return {"value": finite_or_none(float(value)), "u": finite_or_none(float(u)),
            "U": finite_or_none(COVERAGE_FACTOR * float(u))}


def _layout(layout) -> dict:
    return {"sensor_px": list(layout.sensor_px), "tile_px": layout.tile_px, "overlap_px": layout.overlap_px,
            "grid": list(layout.grid), "field_radius_mm": layout.field_radius_mm}


_APERTURE_KEYS = {"pupil.vignetting_radius": "radius", "pupil.vignetting_center[0]": "center_x",
                  "pupil.vignetting_center[1]": "center_y"}
"""A tile's fitted second aperture in its JSON row (pupil radii)."""


def _tile_rows(tiles, measurements, distortion) -> list:
    per_tile = {} if distortion is None else {name: (pct, u) for name, _r, pct, u in distortion["tiles"]}
    rows = []
    for tile, m in zip(tiles, measurements):
        est = {s.name: s for s in m.station}
        u = m.zernike_u
        pose = {key: _q(est[key].value, est[key].u) if key in est else None
                for key in ("sample.position_um[0]", "sample.position_um[1]", "sample.defocus_um")}
        pct = per_tile.get(tile.name, (None, None))
        rows.append({
            "name": tile.name, "index": list(tile.index), "origin_px": list(tile.origin_px),
            "center_mm": [float(v) for v in tile.center_mm], "h": [float(v) for v in tile.h],
            "zernike": [{"noll": j + 1, "value": finite_or_none(float(m.zernike_waves[j])),
                         "u": finite_or_none(float(u[j]))} for j in range(4, len(m.zernike_waves))],
            "rms_waves": finite_or_none(float(rms_waves(m.zernike_waves))),
            "sample_position_x_um": pose["sample.position_um[0]"], "sample_position_y_um": pose["sample.position_um[1]"],
            "sample_defocus_um": pose["sample.defocus_um"],
            "distortion_percent": None if pct[0] is None else _q(*pct),
            "converged": bool(m.solver.converged), "reduced_chi2": finite_or_none(float(m.solver.reduced_chi2)),
            "vignetting": {_APERTURE_KEYS[v.name]: _q(v.value, v.u) for v in m.vignetting} or None,
        })
    return rows


def _model(model) -> dict | None:
    if model is None:
        return None
    fit = model.fit
    labels = {c.name: c.label for c in model.columns}
    return {
        "noll_first": model.first, "noll_last": model.last,
        "columns": [{"name": n, "label": labels[n], **_q(v, u)} for n, v, u in zip(fit.names, fit.values, fit.u)],
        "chi2": finite_or_none(model.chi2), "dof": int(model.dof),
        "birge_ratio": finite_or_none(math.sqrt(model.chi2 / model.dof)) if model.dof > 0 else None,
        "scatter_waves": finite_or_none(model.scatter_waves),
        "seidel_waves": {k: _q(v, u) for k, (v, u) in model.seidel.items()},
        "covariance": [[finite_or_none(float(x)) for x in row] for row in np.asarray(fit.cov_scaled)],
    }


def _distortion(distortion, magnification: float) -> dict | None:
    if distortion is None:
        return None
    eps, u_eps = distortion["magnification_error"]
    rot, u_rot = distortion["rotation_rad"]
    fit = distortion["fit"]
    return {
        "magnification_error": _q(eps, u_eps),
        "calibrated_magnification": _q(magnification * (1 + eps), magnification * u_eps),
        "rotation_deg": _q(math.degrees(rot), math.degrees(u_rot)),
        "distortion_percent_edge": _q(*distortion["distortion_percent_edge"]),
        "offset_um": [_q(*fit.value("p0x_um")), _q(*fit.value("p0y_um"))],
        "chi2": finite_or_none(fit.chi2), "dof": int(fit.dof),
    }


def _curvature(fit, model, na: float, wavelength_nm: float) -> dict | None:
    if fit is None:
        return None
    w220 = w220_from_curvature(fit.value("curvature_um"), None if model is None else model.seidel.get("W222"), na,
                               wavelength_nm)
    return {**{name: _q(*fit.value(name)) for name in fit.names}, "W220_waves": _q(*w220),
            "chi2": finite_or_none(fit.chi2), "dof": int(fit.dof)}


def _vignetting(fit) -> dict | None:
    if fit is None:
        return None
    return {"radius": _q(*fit.value("radius")), "shift_per_h": _q(*fit.value("shift_per_h")),
            "tiles": len(fit.residuals) // 3, "chi2": finite_or_none(fit.chi2), "dof": int(fit.dof)}


def _mtf(mtf: dict | None) -> dict | None:
    """The MTF across the field (:func:`metrology.analysis.zones.mtf_vs_field`) with JSON numbers."""
    if mtf is None:
        return None
    points = [{**p, **{d: [_q(q.value, q.u) for q in p[d]] for d in ("sagittal", "tangential")}}
              for p in mtf["points"]]
    return {**mtf, "directions": MTF_DIRECTIONS_TEXT, "points": points}


def field_block(layout, station, field_measurement, mtf: dict | None = None) -> dict:
    """The ``field`` block from a full-field measurement (``tiles``, ``measurements``, ``model``,
    ``distortion``, ``curvature``, ``station``, ``notes``, ``central``: see
    :class:`metrology.pipeline_field.FieldMeasurement`), the station (nominal magnification, NA,
    wavelength) and the MTF across the field (:func:`metrology.analysis.zones.mtf_vs_field`; ``None``:
    no field model)."""
    fm = field_measurement
    return {
        "layout": _layout(layout),
        "method": METHOD,
        "central_tile": fm.tiles[fm.central].name,
        "tiles": _tile_rows(fm.tiles, fm.measurements, fm.distortion),
        "model": _model(fm.model),
        "distortion": _distortion(fm.distortion, station.magnification),
        "field_curvature": _curvature(fm.curvature, fm.model, station.na, station.wavelength_nm),
        "station": [{"name": k, "value": finite_or_none(v.value), "u": finite_or_none(v.u),
                     "chi2": finite_or_none(v.chi2), "dof": v.dof, "birge_ratio": finite_or_none(v.birge_ratio),
                     "tiles": v.tiles, "worst_tile": v.worst_tile, "worst_sigma": finite_or_none(v.worst_sigma),
                     "disagrees": v.disagrees} for k, v in fm.station.items()],
        "vignetting": _vignetting(fm.vignetting),
        "mtf": _mtf(mtf),
        "notes": list(fm.notes),
    }


def field_point_document(doc: dict, h) -> dict:
    """A copy of the result ``doc`` whose lens terms are the field model's at field point ``h``
    ``(Hx, Hy)`` (value and u from the model's Birge-scaled covariance), ``tile_center_mm`` the
    point's field position, and no per-term budget (the model's u replaces it): what
    ``zernike-export --field`` writes.

    Raises
    ------
    ValueError
        ``doc`` has no full-field model, or ``h`` lies beyond the measured tiles (|H| more than 10 %
        past the outermost tile's).
    """
    f = doc.get("field") or {}
    model = f.get("model")
    if not model:
        raise ValueError("the result has no full-field model (inspect a full-field capture: docs/full-field.md)")
    h = np.asarray(h, dtype=np.float64)
    reach = max(math.hypot(*t["h"]) for t in f["tiles"])
    if math.hypot(*h) > 1.1 * reach + 1e-9:
        raise ValueError(f"|H| = {math.hypot(*h):.3g} extrapolates beyond the measured tiles (outermost |H| {reach:.3g})")
    by_name = {c.name: c for c in field_basis(model["noll_last"], fifth_order=True)}
    columns = [by_name[c["name"]] for c in model["columns"]]
    theta = np.array([c["value"] for c in model["columns"]], dtype=np.float64)
    cov = np.array(model["covariance"], dtype=np.float64)
    a = design_matrix(columns, h[None, :], model["noll_last"], model["noll_first"])[0]
    values, u = a @ theta, np.sqrt(np.clip(np.diag(a @ cov @ a.T), 0, None))
    out = copy.deepcopy(doc)
    radius = f["layout"]["field_radius_mm"]
    out["tile_center_mm"] = [float(h[0] * radius), float(h[1] * radius)]
    out["uncertainty_budget"] = {}
    for row in out["zernike"]:
        i = row["noll"] - model["noll_first"]
        if not row["alignment"] and 0 <= i < len(values):
            row["value_waves"], row["u_waves"] = float(values[i]), float(u[i])
            row["U_waves"] = float(COVERAGE_FACTOR * u[i])
    return out
