"""Lens description files (TOML) for the simulator: the lens "truth".

Format (``docs/formats.md``, section "Lens description")::

    format_version = 1
    model = "Plan 4x/0.10"
    serial = "SN-0001"
    na = 0.1
    wavelength_nm = 520.0          # optional: wavelength at which the coefficients are given
    [zernike_waves]                # Noll index -> coefficient (waves); or a list, Noll 1..n
    "5" = 0.03
    [apodisation]                  # optional: Noll coefficients of ln(amplitude)
    "4" = -0.1
    [field]                        # optional: field-dependent terms (waves; metrology.field_terms)
    W040 = 0.05                    # Hopkins coefficients W040, W131, W222, W220, W311
    coma_constant = [0.01, 0.0]    # nodal terms: [cos, sin] Zernike pairs
    vignetting = [1.3, 0.5]        # second aperture: radius, centre shift per unit H (pupil radii)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metrology.errors import InputError
from metrology.field_terms import NODAL_KEYS, SEIDEL_KEYS, field_zernike
from metrology.orderings import MAX_NOLL
from metrology.toml_input import read_toml

FORMAT_VERSION = 1
_TOP_KEYS = {"format_version", "model", "serial", "na", "wavelength_nm", "zernike_waves", "apodisation", "field"}


@dataclass(frozen=True)
class LensDescription:
    """A lens under test as the simulator sees it.

    Attributes
    ----------
    model, serial : str
    na : float
        True numerical aperture (pupil edge).
    wavelength_nm : float or None
        Wavelength at which ``zernike_waves`` are stated (None: the station's wavelength).
    zernike_waves : dict int -> float
        Noll index -> pupil phase coefficient (waves).
    apodisation : dict int -> float
        Noll index -> coefficient of ``ln A`` (pupil amplitude); empty = uniform.
    field_terms : dict
        Field-dependent terms (waves at ``wavelength_nm``): Hopkins ``W040 ... W311`` (floats) and the
        nodal ``[cos, sin]`` pairs (:mod:`metrology.field_terms`); empty = the same pupil everywhere.
    field_vignetting : (float, float) or None
        The second aperture across the field ``(r, s)``: radius and centre shift per unit ``H``
        (pupil radii; module docstring of :mod:`metrology.field_terms`); None: the stop alone.
    """

    model: str
    serial: str
    na: float
    wavelength_nm: float | None = None
    zernike_waves: dict = field(default_factory=dict)
    apodisation: dict = field(default_factory=dict)
    field_terms: dict = field(default_factory=dict)
    field_vignetting: tuple | None = None
    source: str = field(default="", compare=False)

    @property
    def max_noll(self) -> int:
        """Largest Noll index with a coefficient (4 at least)."""
        return max([4, *self.zernike_waves, *self.apodisation])

    def coefficients(self, n_terms: int | None = None, wavelength_nm: float | None = None) -> np.ndarray:
        """Phase coefficients Noll 1..n_terms (waves), shape (n_terms,).

        Parameters
        ----------
        n_terms : int, optional
            Length (default :attr:`max_noll`). Must cover every non-zero coefficient.
        wavelength_nm : float, optional
            Convert to waves at this wavelength (same optical path; ``c * lambda_lens / lambda``).
        """
        return self._vector(self.zernike_waves, n_terms, wavelength_nm)

    def field_coefficients(self, h, n_terms: int, wavelength_nm: float | None = None) -> np.ndarray:
        """Pupil phase Noll 1..n_terms (waves) at normalised field points ``h`` (T, 2): the constant
        :meth:`coefficients` plus the field terms (:func:`metrology.field_terms.field_zernike`),
        shape (T, n_terms)."""
        base = self.coefficients(n_terms)
        seidel = {k: v for k, v in self.field_terms.items() if k in SEIDEL_KEYS}
        nodal = {k: v for k, v in self.field_terms.items() if k in NODAL_KEYS}
        out = base[None, :] + field_zernike(np.atleast_2d(h), n_terms, seidel, nodal)
        if wavelength_nm is not None and self.wavelength_nm is not None:
            out = out * (self.wavelength_nm / wavelength_nm)
        return out

    def apodisation_coefficients(self, n_terms: int | None = None) -> np.ndarray:
        """``ln A`` coefficients Noll 1..n_terms, shape (n_terms,)."""
        return self._vector(self.apodisation, n_terms, None)

    def rms_waves(self, first: int = 5, last: int | None = None) -> float:
        """RMS wavefront error ``sqrt(sum c_j^2)`` over Noll ``first..last`` (waves)."""
        c = self.coefficients()
        last = len(c) if last is None else last
        return float(np.sqrt(np.sum(c[first - 1 : last] ** 2)))

    def _vector(self, table, n_terms, wavelength_nm):
        n = self.max_noll if n_terms is None else int(n_terms)
        out = np.zeros(n)
        for j, v in table.items():
            if j > n:
                if v != 0.0:
                    raise ValueError(f"lens has Noll {j} but only {n} terms were requested")
                continue
            out[j - 1] = v
        if wavelength_nm is not None and self.wavelength_nm is not None and table is self.zernike_waves:
            out = out * (self.wavelength_nm / wavelength_nm)
        return out


def _number(source, name, value, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(source, f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise InputError(source, f"{name} must be > 0, got {value!r}")
    return float(value)


def _coefficient_table(source, name, value) -> dict:
    out = {}
    if isinstance(value, list):
        items = [(str(i + 1), v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise InputError(source, f"{name} must be a table (Noll index -> waves) or a list (Noll 1..n)")
    for key, v in items:
        try:
            j = int(key)
        except ValueError:
            raise InputError(source, f"unknown key '{name}.{key}' (keys are Noll indices 1..{MAX_NOLL})") from None
        if not 1 <= j <= MAX_NOLL or str(j) != key.strip():
            raise InputError(source, f"{name}.{key}: Noll index must be an integer in 1..{MAX_NOLL}")
        out[j] = _number(source, f"{name}.{key}", v)
        if abs(out[j]) > 10:
            raise InputError(source, f"{name}.{key} = {out[j]:g} is implausibly large (|c| > 10)")
    return out


def load_lens(path) -> LensDescription:
    """Read and validate a lens description TOML file.

    Raises
    ------
    InputError
        Missing file, TOML syntax error, unknown key, wrong type or bad value (names the key).
    """
    path = Path(path)
    data = read_toml(path, "lens file")
    for key in data:
        if key not in _TOP_KEYS:
            raise InputError(path, f"unknown key '{key}'")
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise InputError(path, f"format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("model", "serial"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InputError(path, f"'{key}' must be a non-empty string" if key in data else f"missing required key '{key}'")
    if "na" not in data:
        raise InputError(path, "missing required key 'na'")
    na = _number(path, "na", data["na"])
    if not 0 < na < 1:
        raise InputError(path, f"na must be in (0, 1), got {na:g}")
    wl = data.get("wavelength_nm")
    wl = None if wl is None else _number(path, "wavelength_nm", wl, positive=True)
    zw = _coefficient_table(path, "zernike_waves", data.get("zernike_waves", {}))
    ap = _coefficient_table(path, "apodisation", data.get("apodisation", {}))
    table = data.get("field", {})
    vignetting = None
    if isinstance(table, dict) and "vignetting" in table:
        table = dict(table)
        vignetting = field_vignetting(path, table.pop("vignetting"))
    terms = _field_terms(path, table)
    return LensDescription(model=data["model"], serial=data["serial"], na=na, wavelength_nm=wl,
                           zernike_waves=zw, apodisation=ap, field_terms=terms, field_vignetting=vignetting,
                           source=str(path))


def field_vignetting(source, value) -> tuple:
    """``field.vignetting = [radius, shift]`` (pupil radii; radius in (0, 5], |shift| <= 5) of a lens or
    station file, validated (``source`` names the file in errors)."""
    if not isinstance(value, list) or len(value) != 2:
        raise InputError(source, f"field.vignetting must be a list [radius, shift] of 2 numbers (pupil radii), "
                                 f"got {value!r}")
    r, s = (_number(source, "field.vignetting", v) for v in value)
    if not 0 < r <= 5 or abs(s) > 5:
        raise InputError(source, f"field.vignetting: radius must be in (0, 5] and |shift| <= 5 pupil radii, "
                                 f"got [{r:g}, {s:g}]")
    return (r, s)


def _field_terms(source, table) -> dict:
    """The lens file's ``[field]`` table: Hopkins coefficients (numbers) and nodal pairs (waves)."""
    if not isinstance(table, dict):
        raise InputError(source, "[field] must be a table of field-dependent terms")
    out = {}
    for key, value in table.items():
        name = f"field.{key}"
        if key in SEIDEL_KEYS:
            out[key] = _number(source, name, value)
        elif key in NODAL_KEYS:
            if not isinstance(value, list) or len(value) != 2:
                raise InputError(source, f"{name} must be a list [cos, sin] of 2 numbers (waves), got {value!r}")
            out[key] = tuple(_number(source, name, v) for v in value)
        else:
            raise InputError(source, f"unknown key '{name}'; known: {', '.join(SEIDEL_KEYS + NODAL_KEYS)}, vignetting")
        if max(abs(v) for v in np.atleast_1d(out[key])) > 10:
            raise InputError(source, f"{name} is implausibly large (|w| > 10 waves)")
    return out
