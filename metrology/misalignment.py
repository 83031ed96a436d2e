"""Station misalignment as the simulator and the ``simulate`` command state it: the paths, their
shapes, the nominal (aligned) state, random draws and the check of a user-given misalignment.

Paths are the calibratable parameter names of :mod:`metrology.physics` (units in the names).
"""

from __future__ import annotations

import numpy as np

DEFAULT_RANGES = {
    "illumination.shift_mm": 1.0,
    "illumination.rotation_deg": 3.0,
    "illumination.distance_error_mm": 3.0,
    "illumination.tilt_deg": 1.0,
    "illumination.brightness": 0.05,
    "sample.defocus_um": 10.0,
    "sample.position_um": 2.0,
}
"""Half-widths of the uniform ranges of :func:`draw_misalignment` (brightness: relative)."""

MISALIGNMENT_SHAPES = {
    "illumination.shift_mm": 2,
    "illumination.rotation_deg": 0,
    "illumination.distance_error_mm": 0,
    "illumination.tilt_deg": 2,
    "illumination.brightness": -1,  # one per LED
    "sample.defocus_um": 0,
    "sample.position_um": 2,
}
"""Station misalignment paths and their shapes (0 scalar, 2 pair, -1 one per LED)."""


def nominal_misalignment(n_leds: int) -> dict:
    """A perfectly aligned station: zeros, brightness ones."""
    out = {}
    for path, shape in MISALIGNMENT_SHAPES.items():
        out[path] = 0.0 if shape == 0 else [0.0, 0.0] if shape == 2 else [1.0] * n_leds
    return out


def draw_misalignment(rng: np.random.Generator, ranges: dict = DEFAULT_RANGES, n_leds: int = 1) -> dict:
    """Random station misalignment, uniform in ``+/- ranges[path]`` for every path.

    Brightness is ``1 + U(-r, r)`` per LED. Returns a dict path -> float or list (JSON-ready).
    """
    out = {}
    for path, shape in MISALIGNMENT_SHAPES.items():
        r = float(ranges.get(path, 0.0))
        if shape == 0:
            out[path] = float(rng.uniform(-r, r))
        elif shape == 2:
            out[path] = rng.uniform(-r, r, 2).tolist()
        else:
            out[path] = (1.0 + rng.uniform(-r, r, n_leds)).tolist()
    return out


def check_misalignment(truth: dict, n_leds: int, source="misalignment") -> dict:
    """Complete a (partial) misalignment dict with nominal values and check shapes.

    Raises
    ------
    InputError
        Unknown path or wrong shape (names ``source`` and the path).
    """
    from metrology.errors import InputError

    full = nominal_misalignment(n_leds)
    for path, value in truth.items():
        if path not in MISALIGNMENT_SHAPES:
            raise InputError(source, f"unknown misalignment parameter '{path}'; known: {', '.join(MISALIGNMENT_SHAPES)}")
        shape = MISALIGNMENT_SHAPES[path]
        arr = np.asarray(value, dtype=float) if not isinstance(value, (str, bool, dict)) else None
        if arr is None or not np.all(np.isfinite(arr)):
            raise InputError(source, f"{path} must be finite numbers, got {value!r}")
        want = () if shape == 0 else (2,) if shape == 2 else (n_leds,)
        if shape == -1 and arr.ndim == 0:
            arr = np.full(n_leds, float(arr))
        if arr.shape != want:
            raise InputError(source, f"{path} must have shape {want}, got {arr.shape}")
        if shape == -1 and np.any(arr < 0):
            raise InputError(source, f"{path} must be >= 0")
        full[path] = float(arr) if shape == 0 else arr.tolist()
    return full
