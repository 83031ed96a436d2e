"""The verdict across the field: the spec's field zones (``[[zone]]``, ``docs/spec.md`` section 7)
judged on a full-field measurement (``docs/full-field.md``).

A zone ``h_min <= |H| <= h_max`` (a disc when ``h_min = 0``, else an annulus) is judged at its
**worst case** over field points inside it: the centres of the tiles in the zone, the axis (a disc
only), and a polar grid (:data:`GRID_RADII` radii up to ``h_max``, from ``h_min`` in an annulus, times
:data:`GRID_ANGLES` azimuths). At each point the field model
(:class:`~metrology.analysis.field.FieldModel`) gives the lens terms and their covariance (the
generalised least-squares covariance of the fitted columns propagated to the point, plus the
per-field scatter ``tau^2`` on every term: the lens between tiles departs from the smooth model by
that much, so a prediction there is that uncertain); the judged figures follow as on one tile
(:func:`metrology.analysis.propagation.derived_figures`). Distortion (``100 d3 |H|^2 / R`` %) and
field curvature (``|c| |H|^2`` um) come from their own fits. Each point is decided by ISO 14253-1
(:func:`metrology.analysis.verdict.decide_upper`); a figure PASSes only when every point does, FAILs
when any point does, and is otherwise INCONCLUSIVE; the row reports the deciding point (the most
clearly failing one, else the one nearest the limit: largest ``value + U``). A zone is the worst
of its figures; the overall verdict the worst over the on-axis limits (``[limits]``, judged on the
tile nearest the axis as before) and the zones, with the validity of **every** tile checked.

Nothing here imports the physics, the solver or the pipeline: the full-field measurement is read
through its attributes (``tiles``, ``measurements``, ``central``, ``model``, ``distortion``,
``curvature``, ``station``, ``notes``; :class:`metrology.pipeline_field.FieldMeasurement`).

The tiles share one station: where their station estimates disagree far beyond their uncertainty
(:func:`station_finding`), some tile's model misses a field-dependent effect (an undeclared second
aperture above all) and its lens terms are biased while its own fit looks good, so the zones'
verdict is INCONCLUSIVE (a finding that blocks); a spec without zones judges the tile nearest the
axis only, and gets it as a warning.
"""

from __future__ import annotations

import math

import numpy as np

from metrology.analysis.propagation import N_DRAWS, SEED, Quantity, derived_figures, family_indices
from metrology.analysis.spec import LensSpec, Zone
from metrology.analysis.station_agreement import disagreement_finding
from metrology.analysis.field_mtf import DRAWS as MTF_DRAWS
from metrology.analysis.field_mtf import DIRECTIONS, FieldMtf, aperture_of
from metrology.analysis.verdict import (FAIL, INCONCLUSIVE, PASS, LimitResult, Verdict, decide_upper, judge,
                                        limit_row, overall_verdict, validity_findings)
from metrology.orderings import noll_to_nm, zernike_name

GRID_RADII = 4
"""Radii of the polar grid in a zone (``h_max / GRID_RADII`` ... ``h_max``)."""
GRID_ANGLES = 16
"""Azimuths of the polar grid (every 22.5 deg: the grid's diagonals and axes are among them)."""
REACH = 1.1
"""A zone may reach this factor beyond the outermost tile's ``|H|`` (as ``zernike-export --field``)."""


def zone_points(h_max: float, tile_h, h_min: float = 0.0) -> np.ndarray:
    """Field points judged in a zone ``h_min <= |H| <= h_max``, shape (P, 2) (``H`` units): the
    tile centres inside it and the polar grid; a disc (``h_min = 0``) also the axis and the grid's
    radii ``h_max / GRID_RADII ... h_max``; an annulus the radii ``h_min ... h_max`` (both edges)."""
    tile_h = np.asarray(tile_h, dtype=np.float64).reshape(-1, 2)
    r_tile = np.hypot(tile_h[:, 0], tile_h[:, 1])
    inside = tile_h[(r_tile <= h_max + 1e-9) & (r_tile >= h_min - 1e-9)]
    if h_min > 0:
        r = h_min + (h_max - h_min) * np.arange(GRID_RADII + 1) / GRID_RADII
    else:
        r = h_max * np.arange(1, GRID_RADII + 1) / GRID_RADII
    a = np.radians(np.arange(GRID_ANGLES) * 360.0 / GRID_ANGLES)
    grid = np.stack([np.outer(r, np.cos(a)).ravel(), np.outer(r, np.sin(a)).ravel()], axis=1)
    return np.concatenate(([] if h_min > 0 else [np.zeros((1, 2))]) + [inside, grid])


def _wavefront_figures(zone: Zone, model, h: np.ndarray, wavelength_nm: float, na: float, n_draws, seed) -> dict:
    """``figure key -> (label, unit, [Quantity per point] or None)`` of the zone's wavefront limits
    (``None``: the term or family is beyond the model's Noll ``last``)."""
    c, cov = model.lens_at(h)
    k = model.last
    fams = [f for f in zone.family_max if family_indices(f, k)]
    terms = [j for j in zone.term_max if j <= k]
    figs = [derived_figures(ci, vi, wavelength_nm, na, pv=zone.pv_waves_max is not None,
                            strehl=zone.strehl_min is not None, families=fams, terms=terms,
                            n_draws=n_draws, seed=seed) for ci, vi in zip(c, cov)]
    out = {}
    if zone.rms_waves_max is not None:
        out["rms_waves_max"] = ("RMS wavefront error", "waves", zone.rms_waves_max, [f["rms_waves"] for f in figs])
    if zone.pv_waves_max is not None:
        out["pv_waves_max"] = ("PV wavefront error", "waves", zone.pv_waves_max, [f["pv_waves"] for f in figs])
    if zone.strehl_min is not None:
        out["strehl_min"] = ("Strehl ratio", "", zone.strehl_min, [f["strehl"] for f in figs])
    for name, lim in zone.family_max.items():
        out[f"family.{name}"] = (f"{name} magnitude", "waves", lim,
                                 [f[f"family:{name}"] for f in figs] if name in fams else None)
    for j, lim in zone.term_max.items():
        out[f"term.{j}"] = (f"|Z{j}| {zernike_name(*noll_to_nm(j))}", "waves", lim,
                            [f[f"term:{j}"] for f in figs] if j in terms else None)
    return out


def _radial(value_u: tuple, h: np.ndarray) -> list:
    """``|v| |H|^2`` with ``u |H|^2`` at each point: a quantity growing as the square of the field."""
    v, u = value_u
    r2 = (h**2).sum(axis=1)
    return [Quantity.from_u(abs(v) * s, u * s) for s in r2]


def _worst(points: list, limit: float, kind: str = "max") -> tuple:
    """Decide every point (``kind`` ``"max"``: upper limit; ``"min"``: lower limit, decided as the
    upper limit ``-limit`` on ``-value``) and pick the deciding one: ``(verdict, index)``."""
    sign = 1.0 if kind == "max" else -1.0
    limit = sign * limit
    v = sign * np.array([q.value for q in points])
    big_u = np.array([q.U for q in points])
    dec = [decide_upper(a, b, limit) for a, b in zip(v, big_u)]
    if FAIL in dec:
        idx = [i for i, d in enumerate(dec) if d == FAIL]
        return FAIL, idx[int(np.argmax(v[idx] - big_u[idx]))]
    if any(not (math.isfinite(a) and math.isfinite(b)) for a, b in zip(v, big_u)):
        return INCONCLUSIVE, int(next(i for i, (a, b) in enumerate(zip(v, big_u))
                                      if not (math.isfinite(a) and math.isfinite(b))))
    return (INCONCLUSIVE if INCONCLUSIVE in dec else PASS), int(np.argmax(v + big_u))


def _figure(zone: Zone, key: str, limit: tuple, judged, missing: str) -> tuple:
    """One judged zone figure: ``(LimitResult, figure dict)``. ``limit``: ``(label, unit, value, kind)``;
    ``judged``: ``(quantities, h (N, 2), directions (N) or None)``, or None: not measured (``missing``)."""
    label, unit, lim, kind = limit
    name = f"zone '{zone.name}' ({zone.describe()}): {label}"
    spec_key = f"zone.{zone.name}.{key}"
    if judged is None:
        row = LimitResult(name, kind, float(lim), unit, math.nan, math.nan, math.nan, INCONCLUSIVE,
                          f"not measured: {missing}", spec_key)
        return row, {"figure": label, "key": key, "h": None, "points": 0, **_fields(row)}
    points, h, directions = judged
    _, i = _worst(points, lim, kind)  # the deciding point carries the figure's verdict
    row = limit_row(name, spec_key, kind, lim, unit, points[i])
    n = len(points) if directions is None else len(points) // len(DIRECTIONS)
    where = f"worst of {n} field points at H = ({h[i, 0]:+.2f}, {h[i, 1]:+.2f})"
    where += "" if directions is None else f", {directions[i]}"
    row.reason = f"{where}: {row.reason}"
    fig = {"figure": label, "key": key, "h": [float(h[i, 0]), float(h[i, 1])], "points": n, **_fields(row)}
    if directions is not None:
        fig["direction"] = directions[i]
    return row, fig


def _fields(row: LimitResult) -> dict:
    return {"limit": row.limit, "kind": row.kind, "unit": row.unit, "value": row.value, "u": row.u, "U": row.U,
            "verdict": row.verdict, "reason": row.reason}


def judge_zone(zone: Zone, field, wavelength_nm: float, na: float, n_draws: int = N_DRAWS,
               seed: int = SEED, mtf: FieldMtf | None = None) -> tuple:
    """Judge one zone on a full-field measurement (``None``: a single-tile capture).

    ``mtf``: the sagittal and tangential MTF of the field (:class:`FieldMtf`, at least at the zone's
    MTF frequencies; made here when not given) for the zone's ``mtf`` limits.

    Returns
    -------
    rows : list of LimitResult
        One per limit of the zone (its ``name`` names the zone, its ``reason`` the deciding ``H``).
    summary : dict
        ``name``, ``h_min``, ``h_max``, ``verdict``, ``figures`` (per limit: ``figure``, ``key``, ``h`` of the
        deciding point, ``points``, ``limit``, ``kind``, ``unit``, ``value``, ``u``, ``U``, ``verdict``,
        ``reason``; an MTF limit also its ``direction``, sagittal or tangential).
    """
    points, why = _zone_quantities(zone, field, wavelength_nm, na, n_draws, seed, mtf)
    rows, figures = [], []
    for key, limit in _zone_limits(zone).items():
        row, fig = _figure(zone, key, limit, points.get(key), why.get(key, ""))
        rows.append(row)
        figures.append(fig)
    verdicts = [r.verdict for r in rows]
    overall = FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS
    return rows, {"name": zone.name, "h_min": zone.h_min, "h_max": zone.h_max, "verdict": overall,
                  "figures": figures}


def _zone_limits(zone: Zone) -> dict:
    """``spec key -> (label, unit, limit, kind)`` of every limit of the zone, in the report's order."""
    limits = {}
    if zone.rms_waves_max is not None:
        limits["rms_waves_max"] = ("RMS wavefront error", "waves", zone.rms_waves_max, "max")
    if zone.pv_waves_max is not None:
        limits["pv_waves_max"] = ("PV wavefront error", "waves", zone.pv_waves_max, "max")
    if zone.strehl_min is not None:
        limits["strehl_min"] = ("Strehl ratio", "", zone.strehl_min, "min")
    limits.update({f"family.{n}": (f"{n} magnitude", "waves", v, "max") for n, v in zone.family_max.items()})
    limits.update({f"term.{j}": (f"|Z{j}| {zernike_name(*noll_to_nm(j))}", "waves", v, "max")
                   for j, v in zone.term_max.items()})
    if zone.distortion_percent_max is not None:
        limits["distortion_percent_max"] = ("distortion", "%", zone.distortion_percent_max, "max")
    if zone.field_curvature_um_max is not None:
        limits["field_curvature_um_max"] = ("field curvature (focus departure)", "um", zone.field_curvature_um_max,
                                            "max")
    limits.update({f"mtf[{i}]": (f"MTF at {m.frequency_cyc_per_mm:g} cycles/mm (sagittal and tangential)", "",
                                 m.min, "min") for i, m in enumerate(zone.mtf)})
    return limits


def _zone_quantities(zone: Zone, field, wavelength_nm, na, n_draws, seed, mtf) -> tuple:
    """``(judged: key -> (quantities, h (N, 2), directions or None), why: key -> reason a figure is missing)``."""
    if field is None:
        why = "a single-tile capture sees one field point; a zone needs a full-field station (docs/full-field.md)"
        return {}, _all_keys(zone, why)
    tile_h = np.array([t.h for t in field.tiles], dtype=np.float64)
    reach = float(np.hypot(tile_h[:, 0], tile_h[:, 1]).max())
    if zone.h_max > REACH * reach + 1e-9:
        why = (f"the zone reaches |H| = {zone.h_max:g}, beyond the measured tiles (outermost |H| = {reach:.2f}; "
               "the field model is not extrapolated)")
        return {}, _all_keys(zone, why)
    h = zone_points(zone.h_max, tile_h, zone.h_min)
    points, why = {}, {}
    notes = "; ".join(field.notes) or "not fitted"
    if field.model is None:
        why.update(_all_keys(zone, f"no field model ({notes})"))
    else:
        for key, (_label, _unit, _lim, q) in _wavefront_figures(zone, field.model, h, wavelength_nm, na,
                                                                n_draws, seed).items():
            if q is None:
                why[key] = f"beyond the field model's Noll 5..{field.model.last}"
            else:
                points[key] = (q, h, None)
        points.update(_mtf_points(zone, field, h, wavelength_nm, na, n_draws, seed, mtf))
    if field.distortion is None:
        why["distortion_percent_max"] = f"no distortion fit ({notes})"
    else:
        points["distortion_percent_max"] = (_radial(field.distortion["distortion_percent_edge"], h), h, None)
    if field.curvature is None:
        why["field_curvature_um_max"] = f"no field-curvature fit ({notes})"
    else:
        points["field_curvature_um_max"] = (_radial(field.curvature.value("curvature_um"), h), h, None)
    return points, why


def _mtf_points(zone: Zone, field, h, wavelength_nm, na, n_draws, seed, mtf) -> dict:
    """``mtf[i] -> (quantities (2P), h (2P, 2), directions (2P))``: every point's sagittal and
    tangential MTF at each of the zone's MTF frequencies."""
    if not zone.mtf:
        return {}
    if mtf is None:
        mtf = FieldMtf(field.model, field.curvature, [m.frequency_cyc_per_mm for m in zone.mtf], wavelength_nm, na,
                       min(n_draws, MTF_DRAWS), seed, aperture_of(field))
    at = [mtf.at(p) for p in h]
    out = {}
    for i, m in enumerate(zone.mtf):
        k = mtf.index(m.frequency_cyc_per_mm)
        q = [r[d][k] for r in at for d in DIRECTIONS]
        out[f"mtf[{i}]"] = (q, np.repeat(h, len(DIRECTIONS), axis=0), list(DIRECTIONS) * len(h))
    return out


def _all_keys(zone: Zone, why: str) -> dict:
    return dict.fromkeys(_zone_limits(zone), why)


def tile_findings(field, spec: LensSpec, seen=()) -> tuple:
    """Validity findings of every tile but the central one (whose own, with the station's
    calibration status, :func:`judge_field` takes from :func:`validity_findings`), prefixed with
    the tile's name: ``(blocking, warnings)``. A finding worded as one in ``seen`` (the central
    tile's: e.g. a wavelength that does not match the spec) is not repeated per tile."""
    blocking, warnings = [], []
    for i, (tile, m) in enumerate(zip(field.tiles, field.measurements)):
        if i == field.central:
            continue
        b, w = validity_findings(m, spec, None)
        blocking += [f"tile {tile.name}: {x}" for x in b if x not in seen]
        warnings += [f"tile {tile.name}: {x}" for x in w if x not in seen]
    return blocking, warnings


def station_finding(field) -> str | None:
    """The tiles' disagreement on their shared station as one sentence
    (:func:`~metrology.analysis.station_agreement.disagreement_finding`), or None where they agree
    (or the capture has one tile: ``field`` None)."""
    if field is None or not getattr(field, "station", None):
        return None
    labels = {s.name: s.label for s in field.measurements[field.central].station}
    return disagreement_finding(field.station.values(), labels)


def judge_field(measurement, spec: LensSpec, station_status: dict | None = None, field=None,
                n_draws: int = N_DRAWS, seed: int = SEED, mtf: FieldMtf | None = None) -> Verdict:
    """The verdict of an inspection, across the field when the spec has zones.

    Parameters
    ----------
    measurement : Measurement
        The single tile's, or the tile nearest the axis of a full-field capture: the spec's
        ``[limits]`` are judged on it (:func:`metrology.analysis.verdict.judge`).
    spec : LensSpec
    station_status : dict, optional
        The station's calibration status (:func:`judge`).
    field : FieldMeasurement, optional
        A full-field measurement (``None``: a single-tile capture).
    mtf : FieldMtf, optional
        Its MTF across the field at the spec's frequencies (:func:`field_mtf`; made here when a zone
        has an MTF limit and none is given).

    Returns
    -------
    Verdict
        Without zones: :func:`judge`'s, with a warning on a full-field capture that only the tile
        nearest the axis was judged. With zones: the on-axis rows and every zone's rows, the
        validity of every tile, the tiles' agreement on the station (:func:`station_finding`),
        ``zones`` (:func:`judge_zone` summaries).
    """
    base = judge(measurement, spec, station_status, n_draws=n_draws, seed=seed)
    disagreement = station_finding(field)
    if not spec.zones:
        if disagreement:
            base.warnings.append(disagreement)
        if field is not None:
            tile = field.tiles[field.central]
            base.warnings.append(
                f"the specification has no field zones ([[zone]]): only tile {tile.name} nearest the axis "
                f"(|H| = {math.hypot(*tile.h):.2f}) was judged; the other tiles are reported, not judged")
        return base
    blocking, warnings = validity_findings(measurement, spec, station_status)
    blocking += [disagreement] if disagreement else []
    if field is not None:
        b, w = tile_findings(field, spec, seen=set(blocking + warnings))
        blocking += b
        warnings += w
    rows, zones = list(base.limits), []
    if mtf is None and field is not None and any(z.mtf for z in spec.zones):
        mtf = field_mtf(field, spec, measurement.wavelength_nm, measurement.na, min(n_draws, MTF_DRAWS), seed)
    for zone in spec.zones:
        zone_rows, summary = judge_zone(zone, field, measurement.wavelength_nm, measurement.na, n_draws, seed,
                                        mtf)
        rows += zone_rows
        zones.append(summary)
    verdict = overall_verdict(rows, blocking, warnings)
    verdict.zones = zones
    return verdict


def field_mtf(field, spec: LensSpec, wavelength_nm: float, na: float, n_draws: int = MTF_DRAWS,
              seed: int = SEED) -> FieldMtf | None:
    """The MTF across the field at the spec's frequencies (:meth:`LensSpec.mtf_frequencies`), shared by
    the zone verdicts and the result document; ``None`` without a field model."""
    if field is None or field.model is None:
        return None
    return FieldMtf(field.model, field.curvature, spec.mtf_frequencies(), wavelength_nm, na, n_draws, seed,
                    aperture_of(field))


def mtf_vs_field(field, spec: LensSpec, mtf: FieldMtf | None) -> dict | None:
    """Sagittal and tangential MTF at every tile centre and at the points the zones are judged at (the
    axis and each zone's polar grid; without zones the grid reaching the outermost tile), for the
    result document. ``None`` without a field model.

    Returns
    -------
    dict
        ``frequencies_cyc_per_mm`` (F), ``diffraction_limited`` (F), ``focus`` (which focus),
        ``points``: per point ``h``, ``abs_h``, ``source`` (``"tile <name>"``, ``"axis"`` or
        ``"zone grid"``), ``tangential_azimuth_deg``, ``sagittal`` and ``tangential`` (F Quantities each).
    """
    if mtf is None:
        return None
    tile_h = np.array([t.h for t in field.tiles], dtype=np.float64)
    reach = float(np.hypot(tile_h[:, 0], tile_h[:, 1]).max())
    radii = [(z.h_max, z.h_min) for z in spec.zones if z.h_max <= REACH * reach + 1e-9] or [(reach, 0.0)]
    rows = [(f"tile {t.name}", np.asarray(t.h, dtype=np.float64)) for t in field.tiles]
    seen = {(round(h[0], 9), round(h[1], 9)) for _, h in rows}
    for r, r_min in radii:
        for h in zone_points(r, np.zeros((0, 2)), r_min):
            key = (round(h[0], 9), round(h[1], 9))
            if key not in seen:
                seen.add(key)
                rows.append(("axis" if not h.any() else "zone grid", h))
    points = []
    for source, h in rows:
        at = mtf.at(h)
        points.append({"h": [float(h[0]), float(h[1])], "abs_h": float(math.hypot(*h)), "source": source,
                       "tangential_azimuth_deg": at["tangential_azimuth_deg"],
                       **{d: at[d] for d in DIRECTIONS}})
    first = mtf.at(rows[0][1])
    return {"frequencies_cyc_per_mm": list(mtf.frequencies), "diffraction_limited": first["diffraction_limited"],
            "focus": mtf.focus, "points": points}
