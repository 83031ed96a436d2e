"""Full-field inspection: cut the full frame into tiles, fit each tile with its own geometry, then
the lens across the field (application layer; the method is in ``docs/full-field.md``).

First slice: every tile is fitted on its own (its own station estimates) and the station
parameters are combined afterwards (:func:`combine_station`); the joint solve with the tiles as a
tensor dimension and one set of station parameters is the next step. The tiles' fits are
independent, so they run in parallel processes (:func:`measure_field`'s ``workers``; one per CPU
core by default from :func:`metrology.inspection.inspect`), each with :data:`TILE_THREADS` threads:
the numbers do not depend on how many processes fitted them. The lens across
the field is then fitted by :mod:`metrology.analysis.field` from the tiles' coefficients and their
covariances (the GUM budget's station constants correlated across tiles).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace

import numpy as np

from metrology.analysis.field import (
    TileData, fit_distortion, fit_field_curvature, fit_field_model, fit_field_vignetting,
)
from metrology.analysis.station_agreement import combine_tiles
from metrology.errors import InputError
from metrology.io.capture import Capture
from metrology.io.field_layout import tile_reference
from metrology.pipeline import LoadedInputs, measure
from metrology.progress import reporter
from metrology.solver.device import compute_device, fit_threads

POSE_NAMES = ("sample.position_um[0]", "sample.position_um[1]", "sample.defocus_um")
"""Station estimates that vary across the field (the tile's sample pose): distortion and field
curvature, never combined into one station value."""

TILE_THREADS = 1
"""torch and BLAS threads of each tile's fit when the tile fits are spread over processes (or their
number is chosen automatically): the same count in every process, so a full-field result is
bit-identical whatever the number of processes (torch sums in another order with another count)."""


@dataclass
class FieldMeasurement:
    """Everything a full-field inspection measured.

    ``tiles`` (:class:`~metrology.io.field_layout.Tile`), ``loaded`` (one
    :class:`~metrology.pipeline.LoadedInputs` per tile), ``fits`` and ``measurements`` per tile;
    ``central``: index of the tile nearest the axis (its measurement drives the single-tile report
    and verdict); ``model`` (:class:`~metrology.analysis.field.FieldModel` or None),
    ``distortion`` (dict or None), ``curvature`` (LinearFit or None), ``vignetting`` (LinearFit of
    the second aperture across the field, or None where no tile models one), ``notes`` (why a part is
    missing), ``station`` (combined station estimates and the tiles' agreement: name ->
    :class:`~metrology.analysis.station_agreement.StationAgreement`).
    """

    tiles: list
    loaded: list
    fits: list
    measurements: list
    central: int
    model: object = None
    distortion: dict | None = None
    curvature: object = None
    vignetting: object = None
    station: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def tile_inputs(loaded: LoadedInputs) -> list:
    """One :class:`LoadedInputs` per tile of a full-field capture: the tile's frames (a copy), its
    single-tile station (exact tile centre) and geometry, and the reference map the tile sees."""
    st = loaded.station
    layout = st.field_layout
    if loaded.reference_from_file:
        raise InputError("--reference", "a full-field capture needs a catalogue reference sample (a reference map "
                                        "file covers one tile, not the frame)")
    out = []
    for tile in st.tiles():
        tile_st = st.tile_station(tile)
        cap = loaded.capture
        frames = np.ascontiguousarray(layout.cut(cap.frames, tile))
        tile_cap = Capture(frames=frames, leds=cap.leds, exposure_s=cap.exposure_s, station_id=cap.station_id,
                           lens_serial=cap.lens_serial, lens_model=cap.lens_model,
                           reference_sample=cap.reference_sample, wavelength_nm=cap.wavelength_nm,
                           created_utc=cap.created_utc, extra=dict(cap.extra), sha256=cap.sha256)
        geometry = replace(loaded.geometry, tile_center_mm=tuple(tile.center_mm), vignetting=tile_st.vignetting)
        ref = None if loaded.reference is None else tile_reference(loaded.reference, tile, layout.tile_px)
        out.append(replace(loaded, capture=tile_cap, station=tile_st, geometry=geometry, reference=ref))
    return out


def tile_data(name: str, h, measurement) -> TileData:
    """The numbers :mod:`metrology.analysis.field` needs from one tile's measurement: the fit's own
    covariance (``parts.fit`` when the budget is itemised, else the total) and the budget sources."""
    est = {s.name: s for s in measurement.station}
    pos = [est.get(f"sample.position_um[{i}]") for i in (0, 1)]
    dz = est.get("sample.defocus_um")
    own = measurement.zernike_cov if measurement.parts is None or not measurement.budget else measurement.parts.fit
    budget = np.array([b.zernike for b in measurement.budget]) if measurement.parts is not None and measurement.budget \
        else None
    aperture = measurement.vignetting if len(measurement.vignetting) == 3 else ()  # radius, centre x, y
    return TileData(
        name=name, h=tuple(h), zernike_waves=np.asarray(measurement.zernike_waves), zernike_cov=np.asarray(own),
        position_um=np.array([p.value if p else math.nan for p in pos]),
        position_u=np.array([p.u if p else math.nan for p in pos]),
        defocus_um=dz.value if dz else math.nan, defocus_u=dz.u if dz else math.nan,
        budget=budget, budget_names=tuple(b.name for b in measurement.budget) if budget is not None else (),
        vignetting=np.array([v.value for v in aperture]) if aperture else None,
        vignetting_u=np.array([v.u for v in aperture]) if aperture else None,
    )


def combine_station(measurements: list, names=None) -> dict:
    """Each station estimate combined over the tiles (the sample pose excluded: :data:`POSE_NAMES`):
    name -> :class:`~metrology.analysis.station_agreement.StationAgreement`.

    The mean weighted by the tiles' fit parts of u, with u from their covariance (fit parts
    independent, the station constants' contributions, the GUM budget, common to the tiles),
    Birge-widened, and the chi-square of the tiles' agreement
    (:func:`~metrology.analysis.station_agreement.combine_tiles`).
    A tile without the uncertainty parts counts with its total ``u`` as independent. ``names``: the
    tiles' names (default ``tile 0``, ``tile 1``, ...)."""
    names = names or [f"tile {i}" for i in range(len(measurements))]
    constants = sorted({b.name for m in measurements for b in m.budget})
    out = {}
    for element in [s.name for s in measurements[0].station if s.name not in POSE_NAMES]:
        rows = []
        for tile, m in zip(names, measurements):
            s = next((e for e in m.station if e.name == element), None)
            u_fit = m.parts.station_fit.get(element, math.nan) if m.parts is not None else (s.u if s else math.nan)
            if s is None or not (math.isfinite(s.value) and math.isfinite(u_fit) and u_fit > 0):
                continue
            shares = {b.name: b.station.get(element, 0.0) for b in m.budget} if m.parts is not None else {}
            rows.append((tile, s.value, u_fit, [shares.get(c, 0.0) for c in constants]))
        if rows:
            tiles, values, u_fit, contributions = zip(*rows)
            out[element] = combine_tiles(element, values, u_fit, np.array(contributions).reshape(len(rows), -1),
                                         tiles)
    return out


def measure_field(loaded: LoadedInputs, mode: str = "known", max_iterations=None, progress=None,
                  device: str = "cpu", frozen=(), workers: int | None = 1) -> FieldMeasurement:
    """Fit every tile of a full-field capture, then the lens across the field.

    ``frozen``: parameter paths held at nominal in every tile (:func:`metrology.pipeline.measure`).

    ``workers``: processes that fit the tiles. 1 (default) fits them one after the other in this
    process, with its threads as they are (a batch worker's ``--threads``). ``None`` takes one
    process per CPU core available, at most one per tile (1 when the fit runs on a GPU); N > 1
    spawns N. With ``None`` or N > 1 every tile is fitted with :data:`TILE_THREADS` threads, so
    the result is the same to the last bit for any number of processes. A tile executor instead
    of a number (an object with ``slots``, ``threads``, ``description`` and ``map(fn, args)``, e.g.
    :class:`metrology.batch.ray_tiles.RayTiles`) fits groups of tiles where it runs them (one Ray
    task per group), each tile with the executor's ``threads``.

    The field model needs the tiles to separate its terms (a 3 x 3 grid does); distortion needs
    the reference layout (known and prior modes). A part that cannot be fitted is left ``None``
    with the reason in ``notes``.
    """
    rep = reporter(progress)
    tiles = loaded.station.tiles()
    per_tile = tile_inputs(loaded)
    fitted = _fit_tiles(tiles, per_tile, (mode, max_iterations, tuple(frozen), device), rep, workers)
    fits, measurements = [f for f, _ in fitted], [m for _, m in fitted]
    central = int(np.argmin([math.hypot(*t.h) for t in tiles]))
    result = FieldMeasurement(tiles, per_tile, fits, measurements, central,
                              station=combine_station(measurements, [t.name for t in tiles]))
    data = [tile_data(t.name, t.h, m) for t, m in zip(tiles, measurements)]
    rep.stage("field model (generalised least squares over the tiles)")
    _fit_parts(result, data, loaded, mode)
    return result


def tile_processes(workers: int | None, n_tiles: int, device: str = "cpu") -> int:
    """How many processes fit ``n_tiles`` tiles: ``workers`` (at most one per tile), or for
    ``None`` one per CPU core this process may use, at most one per tile, and 1 on a GPU."""
    if workers is not None:
        return max(1, min(int(workers), n_tiles))
    if compute_device(device).type == "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, n_tiles))


def _fit_tile(tile_loaded: LoadedInputs, options: tuple, threads: int | None, progress=None):
    """One tile's ``(fit, measurement)`` with ``threads`` threads; ``options``: (mode,
    max_iterations, frozen, device). Module level: a spawned worker process runs it."""
    mode, max_iterations, frozen, device = options
    with fit_threads(threads):
        return measure(tile_loaded, mode, max_iterations, progress, frozen=frozen, device=device)


def _fit_tile_group(group: list, options: tuple, threads: int | None) -> list:
    """``(fit, measurement)`` of each tile of ``group`` (their inputs), one after the other: what one
    task of a tile executor runs. Module level: a Ray worker imports it."""
    return [_fit_tile(tile_loaded, options, threads) for tile_loaded in group]


def tile_groups(n_tiles: int, slots: int) -> list:
    """Tile indices in ``min(n_tiles, slots)`` contiguous groups of near-equal size."""
    count = max(1, min(int(slots), n_tiles))
    edges = [round(i * n_tiles / count) for i in range(count + 1)]
    return [list(range(edges[i], edges[i + 1])) for i in range(count)]


def _fit_tiles_on(executor, tiles: list, per_tile: list, options: tuple, rep) -> list:
    """``(fit, measurement)`` per tile, in tile order, from groups of tiles run by a tile executor."""
    groups = tile_groups(len(tiles), executor.slots)
    rep.stage(f"tile fits ({len(tiles)} tiles in {len(groups)} groups on {executor.description})")
    results = executor.map(_fit_tile_group, [([per_tile[i] for i in g], options, executor.threads) for g in groups])
    out = [None] * len(tiles)
    for group, fitted in zip(groups, results):
        for i, result in zip(group, fitted):
            out[i] = result
    return out


def _fit_tiles(tiles: list, per_tile: list, options: tuple, rep, workers) -> list:
    """``(fit, measurement)`` per tile, in tile order: here one after the other, in spawned
    processes (:func:`tile_processes`), reporting each tile as it finishes, or by a tile executor
    (:func:`measure_field`)."""
    if workers is not None and not isinstance(workers, int):
        return _fit_tiles_on(workers, tiles, per_tile, options, rep)
    count = tile_processes(workers, len(tiles), options[3])
    threads = None if workers == 1 else TILE_THREADS
    if count == 1:
        out = []
        for i, (tile, tile_loaded) in enumerate(zip(tiles, per_tile)):
            rep.stage(f"tile {i + 1}/{len(tiles)} ({tile.name}, H = ({tile.h[0]:+.2f}, {tile.h[1]:+.2f}))")
            out.append(_fit_tile(tile_loaded, options, threads, rep))
        return out
    rep.stage(f"tile fits ({len(tiles)} tiles in {count} processes)", len(tiles))
    out = [None] * len(tiles)
    pool = ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_fit_tile, t, options, threads): i for i, t in enumerate(per_tile)}
        for done, future in enumerate(as_completed(futures), start=1):
            out[futures[future]] = future.result()
            rep(done, len(tiles))
    except BrokenProcessPool:
        raise RuntimeError(f"a process fitting the tiles died ({count} processes; killed for memory, or a crash in "
                           "a native library): run with fewer tile processes") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _fit_parts(result: FieldMeasurement, data: list, loaded: LoadedInputs, mode: str) -> None:
    """The field model, distortion and field curvature; a part that cannot be fitted leaves a note."""
    if not all(np.all(np.isfinite(d.zernike_waves)) for d in data):
        result.notes.append("field model: a tile measured nothing (see its solver message)")
        return
    n_terms = loaded.geometry.zernike_terms
    try:
        result.model = fit_field_model(data, n_terms)
    except ValueError as exc:
        result.notes.append(f"field model: {exc}")
    try:
        result.curvature = fit_field_curvature(data)
    except ValueError as exc:
        result.notes.append(f"field curvature: {exc}")
    if any(d.vignetting is not None for d in data):
        try:
            result.vignetting = fit_field_vignetting(data)
        except ValueError as exc:
            result.notes.append(f"vignetting: {exc}")
    if mode == "blind":
        result.notes.append("distortion: needs the reference sample's known layout (known or prior mode)")
        return
    try:
        result.distortion = fit_distortion(data, loaded.station.field_layout.field_radius_mm)
    except ValueError as exc:
        result.notes.append(f"distortion: {exc}")
