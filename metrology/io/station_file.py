"""Station description files (TOML): load, validate, write back.

The format is specified in ``docs/formats.md`` (section "Station description"). Every key is in
:data:`metrology.io.station_schema.SCHEMA`; unknown keys, missing required keys, wrong types and
out-of-range values raise :class:`~metrology.errors.InputError` naming the file and the key
(``led_array.pitch_mm``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from dataclasses import replace as dc_replace
from pathlib import Path

from metrology.errors import InputError
from metrology.field_terms import vignetting_at
from metrology.io.field_layout import FieldLayout, parse_field
from metrology.io.station_schema import (
    DEFAULT_DRIFT_LIMITS, DRIFT_PATHS, FORMAT_VERSION, REQUIRED, SCHEMA, SECTIONS, UNCERTAINTY_KEYS, convert,
    default_uncertainty, non_negative, positive,
)
from metrology.limits import MAX_OBJECT_PX, MAX_UPSAMPLING
from metrology.toml_input import parse_toml, read_toml_hashed

PIXEL_QUADRATURE = 2
"""Gauss-Legendre points per axis of the model's pixel integration (``camera.pixel_integration``):
2 x 2 sub-pixel fields reproduce the exact pixel-area average to 1 % of the shot noise on the
fixture stations (``tests/test_physics_closed_forms.py``)."""


@dataclass(frozen=True)
class CameraSettings:
    """Camera of a station (noise model of the simulator, full scale of the solver).

    Attributes: ``pixel_um`` (camera pixel pitch, um), ``frame_px`` (square frame side),
    ``bit_depth``, ``photons_per_count`` (photo-electrons per count, the gain),
    ``read_noise_e`` (read noise, electrons RMS), ``background_counts`` (offset, counts).
    """

    pixel_um: float
    frame_px: int
    bit_depth: int
    photons_per_count: float
    read_noise_e: float
    background_counts: float

    @property
    def full_scale(self) -> int:
        """Largest count value ``2**bit_depth - 1`` (saturation)."""
        return 2**self.bit_depth - 1


@dataclass(frozen=True)
class StationDescription:
    """A validated station description (see ``docs/formats.md``). Units in the names.

    LED ``(row, col)`` indices are board indices, ``0 <= row < led_rows``, ``0 <= col < led_cols``.
    ``drift_limits`` maps station parameter paths (``illumination.shift_mm`` ...) to the largest
    allowed drift from the calibrated state (for 2-vectors: of the Euclidean norm).
    """

    station_id: str
    led_rows: int
    led_cols: int
    led_pitch_mm: float
    led_distance_mm: float
    led_center_row: float
    led_center_col: float
    wavelength_nm: float
    na: float
    magnification: float
    camera_pixel_um: float
    frame_px: int
    upsampling: int
    description: str = ""
    led_size_mm: float = 0.0
    led_order: str = "raster"
    bit_depth: int = 12
    photons_per_count: float = 1.0
    read_noise_e: float = 0.0
    background_counts: float = 0.0
    pixel_integration: bool = True
    spectral_fwhm_nm: float = 0.0
    spectral_points: int = 2  # wavelengths the model samples across the LED spectrum (Gauss-Hermite; docs/solver.md)
    emission_exponent: float = 0.0
    spherical_illumination: bool = False
    vignetting: tuple | None = None
    stray_light: bool = False  # each frame's uniform stray light fitted (illumination.stray_light)
    margin_px: int | None = None
    zernike_terms: int = 36
    tile_center_mm: tuple = (0.0, 0.0)
    radius_refits: bool = True  # blind/prior: the pupil radius's budget term by two re-fits (solver.refit_budget)
    fit_na: bool = True  # blind: the pupil edge's NA fitted (the registry's default); false holds it at the stated value
    slide_thickness_mm: float = 0.0
    slide_index: float = 1.52
    validity_days: float = 30.0
    calibration_required: bool = False  # inspections are INCONCLUSIVE unless the calibration is valid
    drift_limits: dict = field(default_factory=lambda: {DRIFT_PATHS[k]: v for k, v in DEFAULT_DRIFT_LIMITS.items()})
    uncertainty: dict = field(default_factory=dict)
    field_layout: FieldLayout | None = None  # [field]: a full-field station (docs/full-field.md); None: one tile
    format_version: int = FORMAT_VERSION
    source: str = field(default="", compare=False)
    sha256: str = field(default="", compare=False)  # of the file's bytes as read ("" when not from a file)

    # ------------------------------------------------------------------ derived
    @property
    def camera(self) -> CameraSettings:
        """Camera settings (pixel, frame, bit depth, gain, read noise, background)."""
        return CameraSettings(
            self.camera_pixel_um, self.frame_px, self.bit_depth, self.photons_per_count,
            self.read_noise_e, self.background_counts,
        )

    @property
    def fov_um(self) -> float:
        """Field of view of one frame in the sample plane (um)."""
        return self.frame_px * self.camera_pixel_um / self.magnification

    def led_list(self) -> list[tuple[int, int]]:
        """All ``(row, col)`` of the board section, in the configured capture order.

        ``raster``: row by row, columns increasing. ``spiral``: outward from the centre LED, by
        distance from ``(center_row, center_col)``, ties broken by angle from +x towards +y.
        """
        leds = [(r, c) for r in range(self.led_rows) for c in range(self.led_cols)]
        if self.led_order == "spiral":
            def key(rc):
                dy, dx = rc[0] - self.led_center_row, rc[1] - self.led_center_col
                return (round(math.hypot(dx, dy), 9), round(math.atan2(dy, dx) % (2 * math.pi), 9))
            leds.sort(key=key)
        return leds

    def geometry(self, leds=None):
        """The :class:`metrology.physics.StationGeometry` for ``leds`` (default :meth:`led_list`)."""
        # lazy: torch loads only when a model is needed (start-up time)
        from metrology.physics.geometry import StationGeometry

        return StationGeometry(
            wavelength_nm=self.wavelength_nm,
            na=self.na,
            magnification=self.magnification,
            camera_pixel_um=self.camera_pixel_um,
            frame_px=self.frame_px,
            upsampling=self.upsampling,
            led_pitch_mm=self.led_pitch_mm,
            led_distance_mm=self.led_distance_mm,
            led_center_row=self.led_center_row,
            led_center_col=self.led_center_col,
            leds=tuple(self.led_list() if leds is None else leds),
            tile_center_mm=tuple(self.tile_center_mm),
            zernike_terms=self.zernike_terms,
            led_size_mm=self.led_size_mm,
            slide_thickness_mm=self.slide_thickness_mm,
            slide_index=self.slide_index,
            pixel_quadrature=PIXEL_QUADRATURE if self.pixel_integration else 0,
            spectral_fwhm_nm=self.spectral_fwhm_nm,
            spectral_points=self.spectral_points,
            emission_exponent=self.emission_exponent,
            spherical_illumination=self.spherical_illumination,
            vignetting=None if self.vignetting is None else tuple(self.vignetting),
            stray_light=self.stray_light,
            margin_px=self.margin_px or 0,
        )

    def check_capture(self, capture, source="capture") -> None:
        """Raise :class:`InputError` (naming ``source``) if ``capture`` does not fit this station.

        Checks the station ID, the frame size, that every LED is on the board, that integer frames
        can hold the camera's bit depth (8-bit frames need ``camera.bit_depth <= 8``), and the
        wavelength (when the capture states one, to 0.5 nm).
        """
        if capture.station_id != self.station_id:
            raise InputError(source, f"capture is from station {capture.station_id!r}, not {self.station_id!r}")
        shape = tuple(capture.frames.shape[-2:])
        if self.field_layout is not None:
            if shape != tuple(self.field_layout.sensor_px):
                raise InputError(source, f"frames are {shape[0]}x{shape[1]} px, the station's field.sensor_px is "
                                         f"{self.field_layout.sensor_px[0]}x{self.field_layout.sensor_px[1]}")
        elif shape != (self.frame_px, self.frame_px):
            raise InputError(source, f"frames are {shape[0]}x{shape[1]} px, the station's camera.frame_px is {self.frame_px}")
        for j, (r, c) in enumerate(capture.leds):
            if not (0 <= r < self.led_rows and 0 <= c < self.led_cols):
                raise InputError(source, f"frame {j}: LED ({r}, {c}) is not on the {self.led_rows}x{self.led_cols} board")
        itemsize_bits = 8 * capture.frames.dtype.itemsize
        if capture.frames.dtype.kind == "u" and self.bit_depth > itemsize_bits:
            raise InputError(source, f"{capture.frames.dtype} frames hold at most {itemsize_bits} bits, the station's "
                                     f"camera.bit_depth is {self.bit_depth} (saturation would be missed)")
        wl = capture.wavelength_nm
        if wl is not None and abs(wl - self.wavelength_nm) > 0.5:
            raise InputError(source, f"capture wavelength {wl:g} nm differs from the station's {self.wavelength_nm:g} nm")

    def tiles(self) -> list:
        """The :class:`~metrology.io.field_layout.Tile` list of a full-field station (empty without
        ``[field]``)."""
        if self.field_layout is None:
            return []
        return self.field_layout.tile_list(self.camera_pixel_um / self.magnification, self.tile_center_mm)

    def tile_station(self, tile) -> "StationDescription":
        """The single-tile station of one tile of a full-field station: the same station with
        ``tile_center_mm`` at the tile's centre and no ``[field]`` (its frames are the tile's), and
        the field's second aperture at the tile (``field.vignetting``,
        :func:`metrology.field_terms.vignetting_at`) where it reaches the stop."""
        own = vignetting_at(self.field_layout.vignetting, tile.h) if self.field_layout is not None else None
        return self.replace(tile_center_mm=tuple(tile.center_mm), field_layout=None, upsampling=self.upsampling,
                            vignetting=own if own is not None else self.vignetting)

    def replace(self, **changes) -> "StationDescription":
        """A copy with ``changes`` applied and validated again (e.g. ``frame_px=32``)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        values["sha256"] = changes.get("sha256", "")  # a changed description is no longer the file read
        if "frame_px" in changes and "upsampling" not in changes:
            values["upsampling"] = None  # recompute the minimum for the new frame
        return _finish(values, self.source or "<station>")

    # ------------------------------------------------------------------ writing
    def to_toml(self) -> str:
        """TOML text that :func:`load_station` reads back equal to this description."""
        by_section: dict[str, list[str]] = {s: [] for s in ("",) + SECTIONS}  # noqa: C416
        for (section, key), (attr, kind, _default, _check) in SCHEMA.items():
            if getattr(self, attr) is not None:  # optional keys left out stay unset
                by_section[section].append(f"{key} = {_toml_value(getattr(self, attr))}")
        lines = list(by_section[""])
        for section in SECTIONS:
            if section not in ("uncertainty", "field"):  # written below
                lines += ["", f"[{section}]"] + by_section[section]
        if self.field_layout is not None:
            lines += ["", "[field]"] + self.field_layout.to_toml_lines()
        lines += ["", "[uncertainty]"] + [f"{k} = {_toml_value(float(v))}" for k, v in self.uncertainty.items()]
        lines += ["", "[calibration.drift_limits]"]
        inverse = {v: k for k, v in DRIFT_PATHS.items()}
        for path, limit in self.drift_limits.items():
            lines.append(f"{inverse[path]} = {_toml_value(limit)}")
        return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _parse(data: dict, source) -> dict:
    """Validate the TOML tables against :data:`SCHEMA`; returns attribute -> value."""
    known_sections = set(SECTIONS)
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in known_sections:
                raise InputError(source, f"unknown section [{key}]")
            for sub, subval in value.items():
                if key == "calibration" and sub == "drift_limits":
                    if not isinstance(subval, dict):
                        raise InputError(source, "calibration.drift_limits must be a table")
                    for dk in subval:
                        if dk not in DRIFT_PATHS:
                            raise InputError(source, f"unknown key 'calibration.drift_limits.{dk}'")
                elif key == "field":
                    break  # checked by parse_field
                elif key == "uncertainty" and sub not in UNCERTAINTY_KEYS:
                    raise InputError(source, f"unknown key 'uncertainty.{sub}'; known: {', '.join(UNCERTAINTY_KEYS)}")
                elif key != "uncertainty" and (key, sub) not in SCHEMA:
                    raise InputError(source, f"unknown key '{key}.{sub}'")
        elif ("", key) not in SCHEMA:
            raise InputError(source, f"unknown key '{key}'")
    values = {"field_layout": None}
    if "field" in data:
        values["field_layout"] = parse_field(data["field"], source)
        camera = data.setdefault("camera", {})
        if not isinstance(camera, dict):
            raise InputError(source, "[camera] must be a table")
        given = camera.setdefault("frame_px", values["field_layout"].tile_px)
        if given != values["field_layout"].tile_px:
            raise InputError(source, f"camera.frame_px ({given!r}) is the tile the model fits in a full-field station: "
                                     f"leave it out or make it field.tile_px ({values['field_layout'].tile_px})")
    for (section, key), (attr, kind, default, check) in SCHEMA.items():
        name = f"{section}.{key}" if section else key
        table = data if not section else data.get(section, {})
        if key in table:
            value = convert(source, name, kind, table[key])
            if check is not None:
                problem = check(value)
                if problem:
                    raise InputError(source, f"{name} {problem}")
        elif default is REQUIRED:
            raise InputError(source, f"missing required key '{name}'")
        else:
            value = default
        values[attr] = value
    limits = dict(DEFAULT_DRIFT_LIMITS)
    for dk, dv in data.get("calibration", {}).get("drift_limits", {}).items():
        name = f"calibration.drift_limits.{dk}"
        limits[dk] = convert(source, name, "float", dv)
        problem = positive(limits[dk])
        if problem:
            raise InputError(source, f"{name} {problem}")
    values["drift_limits"] = {DRIFT_PATHS[k]: v for k, v in limits.items()}
    given = {}
    for uk, uv in data.get("uncertainty", {}).items():
        name = f"uncertainty.{uk}"
        given[uk] = convert(source, name, "float", uv)
        problem = non_negative(given[uk])
        if problem:
            raise InputError(source, f"{name} {problem}")
    values["uncertainty"] = given  # completed with the defaults in _finish
    return values


def _finish(values: dict, source) -> StationDescription:
    """Fill computed defaults, cross-check, and build the description."""
    if values["format_version"] != FORMAT_VERSION:
        raise InputError(source, f"format_version {values['format_version']} is not supported (expected {FORMAT_VERSION})")
    values["uncertainty"] = {**default_uncertainty(values), **values.get("uncertainty", {})}
    if values["led_center_row"] is None:
        values["led_center_row"] = (values["led_rows"] - 1) / 2
    if values["led_center_col"] is None:
        values["led_center_col"] = (values["led_cols"] - 1) / 2
    values["source"] = str(source)
    if values["slide_thickness_mm"] >= values["led_distance_mm"]:
        raise InputError(source, "slide.thickness_mm must be smaller than led_array.distance_mm")
    auto = values["upsampling"] is None
    if auto:
        values["upsampling"] = 1
    elif values["frame_px"] * values["upsampling"] > MAX_OBJECT_PX:
        raise InputError(source, f"reconstruction.upsampling: the reconstruction grid camera.frame_px x upsampling = "
                                 f"{values['frame_px'] * values['upsampling']} px exceeds {MAX_OBJECT_PX} px")
    desc = StationDescription(**values)
    # sampling: the pupil must fit in a frame, the widest illumination in the reconstruction grid
    # lazy: torch loads only when a model is needed (start-up time)
    from metrology.physics.illumination import max_nominal_illumination_na

    try:
        geometry = desc.geometry()
        na_ill = max_nominal_illumination_na(geometry)
        if auto:
            for ups in range(1, min(MAX_UPSAMPLING, MAX_OBJECT_PX // values["frame_px"]) + 1):
                try:
                    dc_replace(geometry, upsampling=ups).check_sampling(na_ill)
                    break
                except ValueError as exc:
                    if "upsampling" not in str(exc):
                        raise
            desc = StationDescription(**{**values, "upsampling": ups})
            geometry = desc.geometry()
        geometry.check_sampling(na_ill)
    except ValueError as exc:
        field_name = "reconstruction.upsampling" if "upsampling" in str(exc) else "camera.frame_px / lens.na"
        raise InputError(source, f"{field_name}: {exc}") from None
    return desc


def load_station(path) -> StationDescription:
    """Read and validate a station description TOML file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    StationDescription

    Raises
    ------
    InputError
        Missing file, TOML syntax error, unknown key, missing key, wrong type or bad value; the
        message names the file and the key.
    """
    path = Path(path)
    data, sha256 = read_toml_hashed(path, "station file")
    return dc_replace(_finish(_parse(data, path), path), sha256=sha256)


def parse_station(text: str, source="<station>") -> StationDescription:
    """Like :func:`load_station` for TOML ``text`` (``source`` names it in errors)."""
    return _finish(_parse(parse_toml(text, source), source), source)
