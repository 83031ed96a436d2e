"""Full-field captures: the station file's ``[field]`` section, the tiles cut from a full frame, and
each tile's own station geometry and reference map.

A full-field station images the whole sensor frame (``field.sensor_px = [rows, cols]``) and the
tool cuts it into square tiles of ``field.tile_px`` camera pixels, ``field.overlap_px`` shared
between neighbours, on a ``field.grid = [rows, cols]`` centred on the sensor (``field.tiles``
optionally picks some of them by ``[row, col]`` grid index). Each tile is fitted as a frame of its
own: its station geometry is the station's with ``tile_center_mm`` at the tile's centre, so its
illumination angles are exact for that centre (:class:`metrology.physics.StationGeometry`), and its
reference map is the part of the reference sample the tile sees. ``H = tile_center_mm /
field_radius_mm`` is the tile's normalised field vector (:mod:`metrology.field_terms`).

The sensor centre (pixel coordinate ``rows / 2, cols / 2``, pixel ``i`` spanning ``[i, i + 1)``)
sits at the station's ``reconstruction.tile_center_mm`` (normally ``(0, 0)``, the optical axis).
The format is in ``docs/formats.md`` ("Full-field stations"); ``docs/full-field.md`` has the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metrology.errors import InputError
from metrology.io.lens_file import field_vignetting
from metrology.limits import MAX_FRAME_PX, MAX_TILES

FIELD_KEYS = ("sensor_px", "tile_px", "overlap_px", "grid", "tiles", "field_radius_mm", "vignetting")
"""Keys of the station file's ``[field]`` section."""


@dataclass(frozen=True)
class Tile:
    """One tile of a full frame.

    Attributes
    ----------
    index : (int, int)
        ``(row, col)`` on the tile grid.
    origin_px : (int, int)
        Sensor ``(row, col)`` of the tile's first pixel.
    center_mm : (float, float)
        Field position ``(X0, Y0)`` of the tile's centre (mm, sample plane).
    h : (float, float)
        Normalised field vector ``center_mm / field_radius_mm``.
    """

    index: tuple
    origin_px: tuple
    center_mm: tuple
    h: tuple

    @property
    def name(self) -> str:
        """Stable label ``r<row>c<col>``."""
        return f"r{self.index[0]}c{self.index[1]}"


@dataclass(frozen=True)
class FieldLayout:
    """The ``[field]`` section of a station file (validated by :func:`parse_field`).

    ``sensor_px`` (rows, cols) and ``tile_px``, ``overlap_px`` in camera pixels; ``grid`` (rows,
    cols) of tiles; ``tiles``: the grid indices used (all, in raster order, when the file leaves it
    out); ``field_radius_mm``: the field radius that normalises ``H`` (mm, sample plane);
    ``vignetting``: the second aperture across the field ``(r, s)`` (pupil radii; the start of each
    tile's ``pupil.vignetting_*``, :func:`metrology.field_terms.vignetting_at`) or None.
    """

    sensor_px: tuple
    tile_px: int
    overlap_px: int
    grid: tuple
    field_radius_mm: float
    tiles: tuple | None = None
    vignetting: tuple | None = None

    @property
    def pitch_px(self) -> int:
        """Distance between neighbouring tiles' origins (camera pixels)."""
        return self.tile_px - self.overlap_px

    def indices(self) -> list:
        """The grid indices used, raster order unless the file lists them."""
        if self.tiles is not None:
            return [tuple(t) for t in self.tiles]
        return [(i, j) for i in range(self.grid[0]) for j in range(self.grid[1])]

    def origin(self, index) -> tuple:
        """Sensor ``(row, col)`` of the first pixel of grid tile ``index`` (the grid centred on the
        sensor, rounded down to whole pixels)."""
        out = []
        for axis in (0, 1):
            extent = self.tile_px + (self.grid[axis] - 1) * self.pitch_px
            out.append((self.sensor_px[axis] - extent) // 2 + index[axis] * self.pitch_px)
        return tuple(out)

    def tile_at(self, index, origin_px, pixel_um: float, sensor_center_mm=(0.0, 0.0)) -> Tile:
        """The :class:`Tile` of ``tile_px`` whose first pixel is sensor ``origin_px`` (row, col); its
        centre from the object-side pixel ``pixel_um`` (um) and the sensor centre's field position."""
        r0, c0 = (int(v) for v in origin_px)
        x = sensor_center_mm[0] + (c0 + self.tile_px / 2 - self.sensor_px[1] / 2) * pixel_um * 1e-3
        y = sensor_center_mm[1] + (r0 + self.tile_px / 2 - self.sensor_px[0] / 2) * pixel_um * 1e-3
        return Tile(tuple(index), (r0, c0), (x, y), (x / self.field_radius_mm, y / self.field_radius_mm))

    def tile_list(self, pixel_um: float, sensor_center_mm=(0.0, 0.0)) -> list:
        """Every :class:`Tile` used (see :meth:`tile_at`)."""
        return [self.tile_at(index, self.origin(index), pixel_um, sensor_center_mm) for index in self.indices()]

    def blocks(self, pixel_um: float, sensor_center_mm=(0.0, 0.0)) -> list:
        """Tiles of ``tile_px`` without overlap, aligned with the grid, that cover the whole sensor
        (those on its edges partly outside it): the pieces a renderer draws one pupil each."""
        starts = []
        for axis in (0, 1):
            first = self.origin((0, 0))[axis] % self.tile_px
            first = first - self.tile_px if first else 0
            starts.append(range(first, self.sensor_px[axis], self.tile_px))
        return [self.tile_at((i, j), (r0, c0), pixel_um, sensor_center_mm)
                for i, r0 in enumerate(starts[0]) for j, c0 in enumerate(starts[1])]

    def cut(self, frames: np.ndarray, tile: Tile) -> np.ndarray:
        """The tile's frames ``(J, tile_px, tile_px)`` cut from full frames ``(J, rows, cols)`` (a view)."""
        r0, c0 = tile.origin_px
        return frames[:, r0 : r0 + self.tile_px, c0 : c0 + self.tile_px]

    def to_toml_lines(self) -> list:
        """The ``[field]`` section's key lines, read back equal by :func:`parse_field`."""
        lines = [f"sensor_px = [{self.sensor_px[0]}, {self.sensor_px[1]}]", f"tile_px = {self.tile_px}",
                 f"overlap_px = {self.overlap_px}", f"grid = [{self.grid[0]}, {self.grid[1]}]",
                 f"field_radius_mm = {float(self.field_radius_mm)!r}"]
        if self.tiles is not None:
            lines.append("tiles = [" + ", ".join(f"[{i}, {j}]" for i, j in self.tiles) + "]")
        if self.vignetting is not None:
            lines.append(f"vignetting = [{float(self.vignetting[0])!r}, {float(self.vignetting[1])!r}]")
        return lines


def _int(source, name, value, lo, hi) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(source, f"field.{name} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _int_pair(source, name, value, lo, hi) -> tuple:
    if not isinstance(value, list) or len(value) != 2:
        raise InputError(source, f"field.{name} must be a list of 2 integers [rows, cols], got {value!r}")
    return tuple(_int(source, name, v, lo, hi) for v in value)


def parse_field(table, source) -> FieldLayout:
    """Validate the ``[field]`` table of a station file (``source`` names it in errors).

    Raises
    ------
    InputError
        An unknown or missing key, a wrong type or value, tiles that do not fit on the sensor, a
        tile index off the grid or listed twice, a field radius that is not a positive number.
    """
    if not isinstance(table, dict):
        raise InputError(source, "[field] must be a table")
    for key in table:
        if key not in FIELD_KEYS:
            raise InputError(source, f"unknown key 'field.{key}'; known: {', '.join(FIELD_KEYS)}")
    for key in ("sensor_px", "tile_px", "grid", "field_radius_mm"):
        if key not in table:
            raise InputError(source, f"missing required key 'field.{key}'")
    sensor = _int_pair(source, "sensor_px", table["sensor_px"], 8, MAX_FRAME_PX)
    tile_px = _int(source, "tile_px", table["tile_px"], 8, MAX_FRAME_PX)
    if tile_px % 2:
        raise InputError(source, f"field.tile_px must be even, got {tile_px}")
    overlap = _int(source, "overlap_px", table.get("overlap_px", 0), 0, tile_px - 1)
    grid = _int_pair(source, "grid", table["grid"], 1, MAX_TILES)
    if grid[0] * grid[1] > MAX_TILES:
        raise InputError(source, f"field.grid has {grid[0] * grid[1]} tiles (at most {MAX_TILES})")
    radius = table["field_radius_mm"]
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (math.isfinite(radius) and radius > 0):
        raise InputError(source, f"field.field_radius_mm must be a number > 0, got {radius!r}")
    for axis, what in ((0, "rows"), (1, "cols")):
        extent = tile_px + (grid[axis] - 1) * (tile_px - overlap)
        if extent > sensor[axis]:
            raise InputError(source, f"field.grid: {grid[axis]} tiles of {tile_px} px (overlap {overlap}) span "
                                     f"{extent} px, more than the sensor's {sensor[axis]} {what} (field.sensor_px)")
    tiles = None
    if "tiles" in table:
        listed = table["tiles"]
        if not isinstance(listed, list) or not listed:
            raise InputError(source, "field.tiles must be a non-empty list of [row, col] grid indices")
        tiles = tuple(_int_pair(source, "tiles", t, 0, MAX_TILES) for t in listed)
        for i, j in tiles:
            if i >= grid[0] or j >= grid[1]:
                raise InputError(source, f"field.tiles: [{i}, {j}] is off the {grid[0]}x{grid[1]} grid (field.grid)")
        if len(set(tiles)) != len(tiles):
            raise InputError(source, "field.tiles lists a tile twice")
    vignetting = None if "vignetting" not in table else field_vignetting(source, table["vignetting"])
    return FieldLayout(sensor, tile_px, overlap, grid, float(radius), tiles, vignetting)


def tile_reference(transmission: np.ndarray, tile: Tile, tile_px: int) -> np.ndarray:
    """The reference map a tile sees: ``transmission`` (a square map over one tile's field of view,
    periodic with it, as every catalogue sample is: :mod:`metrology.references`) moved by the tile's
    origin, so that the tile's pixel (0, 0) sees the sample at the sensor pixel ``origin_px``.

    The map's side must be a multiple of ``tile_px`` (the shift is whole grid pixels: exact).
    """
    n = transmission.shape[-1]
    if n % tile_px:
        raise ValueError(f"a reference map of {n} px cannot be moved by whole pixels of a {tile_px}-px tile")
    per_px = n // tile_px
    r0, c0 = tile.origin_px
    return np.roll(transmission, (-r0 * per_px, -c0 * per_px), axis=(-2, -1))
