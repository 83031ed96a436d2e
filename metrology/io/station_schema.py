"""The station file's keys: every key with its type, default and check, the ``[uncertainty]`` keys
and their datasheet defaults, and the conversion of a TOML value to a key's type.

The format is specified in ``docs/formats.md`` (section "Station description");
:mod:`metrology.io.station_file` loads, validates and writes station files with these tables.
"""

from __future__ import annotations

import math

from metrology.errors import InputError
from metrology.limits import MAX_FRAME_PX, MAX_LED_SIDE, MAX_NAME_CHARS, MAX_UPSAMPLING, MAX_VALIDITY_DAYS, text_problem
from metrology.orderings import MAX_NOLL
from metrology.parameters import BY_PATH, TRACKED

FORMAT_VERSION = 1
REQUIRED = object()
"""Sentinel default: the key must be present."""

DRIFT_PATHS = {BY_PATH[path].key: path for path in TRACKED}
"""TOML key in ``[calibration.drift_limits]`` -> station parameter path of the model (every
parameter of the registry with a drift rule, :data:`metrology.parameters.TRACKED`)."""

DEFAULT_DRIFT_LIMITS = {BY_PATH[path].key: BY_PATH[path].drift.limit for path in TRACKED}
"""Default drift limits (units in the key names; 2-vectors: limit on the Euclidean norm)."""


def positive(v):
    return None if v > 0 else f"must be > 0, got {v:g}"


def non_negative(v):
    return None if v >= 0 else f"must be >= 0, got {v:g}"


def _na(v):
    return None if 0 < v < 1 else f"must be in (0, 1), got {v:g}"


def _ge1(v):
    return None if v >= 1 else f"must be >= 1, got {v:g}"


def _vignetting(v):
    r, dx, dy = v
    if not r > 0:
        return f"radius (first value) must be > 0 pupil radii, got {r:g}"
    if math.hypot(dx, dy) >= r + 1.0:
        return "the second aperture misses the pupil (|centre| >= radius + 1)"
    return None


def _margin(v):
    return None if 0 <= v <= 4096 else f"must be in [0, 4096] camera pixels, got {v}"


def _in(lo, hi):
    """Check of an integer in ``lo..hi`` (the upper bounds of :mod:`metrology.limits`)."""
    return lambda v: None if lo <= v <= hi else f"must be in {lo}..{hi}, got {v}"


def _days(v):
    return None if 0 < v <= MAX_VALIDITY_DAYS else f"must be in (0, {MAX_VALIDITY_DAYS:g}] days, got {v:g}"


def _frame(v):
    return None if 8 <= v <= MAX_FRAME_PX and v % 2 == 0 else f"must be even and in 8..{MAX_FRAME_PX}, got {v}"


def _bits(v):
    return None if 1 <= v <= 16 else f"must be in 1..16, got {v}"


def _zterms(v):
    return None if 4 <= v <= MAX_NOLL else f"must be in 4..{MAX_NOLL}, got {v}"


def _order(v):
    return None if v in ("raster", "spiral") else f"must be 'raster' or 'spiral', got {v!r}"


def _station_id(v):
    return text_problem(v, MAX_NAME_CHARS, allow_empty=False)


# (section, key) -> (attribute, kind, default, check). Section "" is the top level.
SCHEMA = {
    ("", "format_version"): ("format_version", "int", FORMAT_VERSION, None),
    ("station", "id"): ("station_id", "str", REQUIRED, _station_id),
    ("station", "description"): ("description", "str", "", None),
    ("led_array", "rows"): ("led_rows", "int", REQUIRED, _in(1, MAX_LED_SIDE)),
    ("led_array", "cols"): ("led_cols", "int", REQUIRED, _in(1, MAX_LED_SIDE)),
    ("led_array", "pitch_mm"): ("led_pitch_mm", "float", REQUIRED, positive),
    ("led_array", "distance_mm"): ("led_distance_mm", "float", REQUIRED, positive),
    ("led_array", "center_row"): ("led_center_row", "float", None, None),
    ("led_array", "center_col"): ("led_center_col", "float", None, None),
    ("led_array", "wavelength_nm"): ("wavelength_nm", "float", REQUIRED, positive),
    ("led_array", "size_mm"): ("led_size_mm", "float", 0.0, non_negative),
    ("led_array", "order"): ("led_order", "str", "raster", _order),
    ("lens", "na"): ("na", "float", REQUIRED, _na),
    ("lens", "magnification"): ("magnification", "float", REQUIRED, positive),
    ("camera", "pixel_um"): ("camera_pixel_um", "float", REQUIRED, positive),
    ("camera", "frame_px"): ("frame_px", "int", REQUIRED, _frame),
    ("camera", "bit_depth"): ("bit_depth", "int", 12, _bits),
    ("camera", "photons_per_count"): ("photons_per_count", "float", 1.0, positive),
    ("camera", "read_noise_e"): ("read_noise_e", "float", 0.0, non_negative),
    ("camera", "background_counts"): ("background_counts", "float", 0.0, non_negative),
    ("camera", "pixel_integration"): ("pixel_integration", "bool", True, None),
    ("led_array", "spectral_fwhm_nm"): ("spectral_fwhm_nm", "float", 0.0, non_negative),
    ("led_array", "spectral_points"): ("spectral_points", "int", 2, _in(1, 7)),
    ("led_array", "emission_exponent"): ("emission_exponent", "float", 0.0, None),
    ("led_array", "spherical_illumination"): ("spherical_illumination", "bool", False, None),
    ("lens", "vignetting"): ("vignetting", "triple", None, _vignetting),
    ("lens", "stray_light"): ("stray_light", "bool", False, None),
    ("reconstruction", "upsampling"): ("upsampling", "int", None, _in(1, MAX_UPSAMPLING)),
    ("reconstruction", "zernike_terms"): ("zernike_terms", "int", 36, _zterms),
    ("reconstruction", "margin_px"): ("margin_px", "int", None, _margin),
    ("reconstruction", "tile_center_mm"): ("tile_center_mm", "pair", (0.0, 0.0), None),
    ("reconstruction", "radius_refits"): ("radius_refits", "bool", True, None),
    ("reconstruction", "fit_na"): ("fit_na", "bool", True, None),
    ("slide", "thickness_mm"): ("slide_thickness_mm", "float", 0.0, non_negative),
    ("slide", "index"): ("slide_index", "float", 1.52, _ge1),
    ("calibration", "validity_days"): ("validity_days", "float", 30.0, _days),
    ("calibration", "required"): ("calibration_required", "bool", False, None),
}
SECTIONS = ("station", "led_array", "lens", "camera", "reconstruction", "slide", "calibration", "uncertainty", "field")

UNCERTAINTY_KEYS = ("wavelength_nm", "spectral_fwhm_nm", "na", "magnification", "camera_pixel_um", "led_pitch_mm",
                    "led_distance_mm", "led_size_mm", "slide_thickness_mm", "slide_index", "led_tilt_deg",
                    "pupil_edge_model")
"""Station constants with a standard uncertainty in ``[uncertainty]`` (their units; the GUM budget
of every fit the station makes, :mod:`metrology.solver.budget`), and ``pupil_edge_model``, the
model-form term of the pupil edge (:func:`metrology.solver.refit_budget.edge_model_sensitivity`)."""


def default_uncertainty(values: dict) -> dict:
    """Typical datasheet tolerances of the station constants, as standard uncertainties (their units).

    * ``wavelength_nm`` 2.0: LED dominant-wavelength bins of +/-2.5 nm (rectangular, 1.4 nm) with a
      temperature drift of ~0.1 nm/K over +/-5 K;
    * ``spectral_fwhm_nm``: 20 % of the stated width (datasheets give typical widths);
    * ``na`` and ``magnification``: 1 % (objective markings; tube length and mounting);
    * ``camera_pixel_um``: 0.1 % (sensor lithography; kept small but not zero);
    * ``led_pitch_mm``: 0.2 % (PCB placement, accumulated over the board);
    * ``led_distance_mm``: 0.5 mm (used only where a fit holds the distance);
    * ``led_size_mm``: 25 % of the stated emitter size (die and encapsulation);
    * ``slide_thickness_mm`` 0.03 and ``slide_index`` 0.005 (cover and slide glass specifications);
    * ``led_tilt_deg`` 0.5 per axis (board mounting; used only where a fit holds the tilt: blind mode);
    * ``pupil_edge_model`` 0 (off): the change of the fit when re-run with the other pupil-edge
      discretisation counts as this many standard uncertainties (1 is calibrated off-model,
      docs/uncertainty.md section 6; it costs one warm re-fit, about the fit's own time). A fit
      that measures the NA (blind mode) carries it at 1 whatever this says (section 5).
    """
    return {
        "wavelength_nm": 2.0,
        "spectral_fwhm_nm": 0.2 * values["spectral_fwhm_nm"],
        "na": 0.01 * values["na"],
        "magnification": 0.01 * values["magnification"],
        "camera_pixel_um": 0.001 * values["camera_pixel_um"],
        "led_pitch_mm": 0.002 * values["led_pitch_mm"],
        "led_distance_mm": 0.5,
        "led_size_mm": 0.25 * values["led_size_mm"],
        "slide_thickness_mm": 0.03 if values["slide_thickness_mm"] > 0 else 0.0,
        "slide_index": 0.005 if values["slide_thickness_mm"] > 0 else 0.0,
        "led_tilt_deg": 0.5,
        "pupil_edge_model": 0.0,
    }


def convert(source, name: str, kind: str, value):
    """``value`` of TOML key ``name`` as ``kind`` (``bool``, ``str``, ``int``, ``float``, ``pair``,
    ``triple``: the kinds of :data:`SCHEMA`); :class:`~metrology.errors.InputError` naming
    ``source`` and the key when it is not one."""
    if kind == "bool":
        if not isinstance(value, bool):
            raise InputError(source, f"{name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise InputError(source, f"{name} must be a string, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, f"{name} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(source, f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise InputError(source, f"{name} must be finite, got {value!r}")
        return value
    if kind in ("pair", "triple"):
        size = 2 if kind == "pair" else 3
        if not isinstance(value, list) or len(value) != size:
            raise InputError(source, f"{name} must be a list of {size} numbers, got {value!r}")
        return tuple(convert(source, name, "float", v) for v in value)
    raise AssertionError(kind)
