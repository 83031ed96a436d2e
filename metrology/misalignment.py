"""Station misalignment as the simulator and the ``simulate`` command state it: the paths, their
shapes, the nominal (aligned) state, random draws and the check of a user-given misalignment.

Paths, ranges and nominal values are the registry's (:mod:`metrology.parameters`; units in the names).
"""

from __future__ import annotations

import numpy as np

from metrology.errors import InputError
from metrology.parameters import BY_PATH, PARAMETERS

DRAWN = tuple(p for p in PARAMETERS if p.draw is not None)
"""The registry's records with a random draw: the station misalignment the simulator takes."""

DEFAULT_RANGES = {p.path: p.draw for p in DRAWN}
"""Half-widths of the uniform ranges of :func:`draw_misalignment` (brightness: relative), from
:attr:`metrology.parameters.Parameter.draw`."""

MISALIGNMENT_SHAPES = {p.path: -1 if p.shape == ("leds",) else 0 if p.scalar else p.size() for p in DRAWN}
"""Station misalignment paths and their shapes (0 scalar, 2 pair, -1 one per LED)."""


def nominal_misalignment(n_leds: int) -> dict:
    """A perfectly aligned station: every drawn parameter at its nominal value (brightness ones)."""
    out = {}
    for path, shape in MISALIGNMENT_SHAPES.items():
        nominal = BY_PATH[path].nominal
        out[path] = nominal if shape == 0 else [nominal] * (n_leds if shape == -1 else shape)
    return out


def draw_misalignment(rng: np.random.Generator, ranges: dict = DEFAULT_RANGES, n_leds: int = 1) -> dict:
    """Random station misalignment, uniform in ``nominal +/- ranges[path]`` for every path.

    Brightness is ``1 + U(-r, r)`` per LED. Returns a dict path -> float or list (JSON-ready).
    """
    out = {}
    for path, shape in MISALIGNMENT_SHAPES.items():
        r = float(ranges.get(path, 0.0))
        nominal = BY_PATH[path].nominal
        if shape == 0:
            out[path] = nominal + float(rng.uniform(-r, r))
        else:
            out[path] = (nominal + rng.uniform(-r, r, n_leds if shape == -1 else shape)).tolist()
    return out


def check_misalignment(truth: dict, n_leds: int, source="misalignment") -> dict:
    """Complete a (partial) misalignment dict with nominal values and check shapes.

    Raises
    ------
    InputError
        Unknown path or wrong shape (names ``source`` and the path).
    """
    full = nominal_misalignment(n_leds)
    for path, value in truth.items():
        if path not in MISALIGNMENT_SHAPES:
            raise InputError(source, f"unknown misalignment parameter '{path}'; known: {', '.join(MISALIGNMENT_SHAPES)}")
        shape = MISALIGNMENT_SHAPES[path]
        arr = np.asarray(value, dtype=float) if not isinstance(value, (str, bool, dict)) else None
        if arr is None or not np.all(np.isfinite(arr)):
            raise InputError(source, f"{path} must be finite numbers, got {value!r}")
        want = () if shape == 0 else (n_leds,) if shape == -1 else (shape,)
        if shape == -1 and arr.ndim == 0:
            arr = np.full(n_leds, float(arr))
        if arr.shape != want:
            raise InputError(source, f"{path} must have shape {want}, got {arr.shape}")
        if shape == -1 and np.any(arr < 0):
            raise InputError(source, f"{path} must be >= 0")
        full[path] = float(arr) if shape == 0 else arr.tolist()
    return full
