"""Golden-lens certificates and the calibration closure check.

A golden lens is a lens whose pupil Zernike coefficients were certified by an independent
instrument (an interferometer) with expanded uncertainties ``U`` (k = 2). Calibrating a station
means measuring it and checking that the station reproduces the certificate within the combined
uncertainty: the normalised error (ISO/IEC 17043)

``En = |measured - certified| / sqrt(U_meas^2 + U_cert^2)``

must satisfy ``En <= 1`` for every certified term.

Certificate file (TOML)
-----------------------
::

    id = "golden-4x-010"            # golden lens id (free text, unique per site)
    serial = "GL4X-2024-0010"        # engraved serial number
    wavelength_nm = 530.0            # wavelength the coefficients refer to (waves at this lambda)
    na = 0.10                        # NA of the normalisation disk
    issuer = "Example Optics Lab"    # who certified it
    date = 2024-11-05                # certificate date (TOML date or ISO text)
    station = "4x"                   # optional: station type it serves
    coverage_factor = 2.0            # optional; must be 2 (the project's k)
    note = "..."                     # optional

    [zernike]                        # Noll index -> certified value and U, in waves
    5 = { value = 0.032, U = 0.003 }

Noll indices 1-4 (piston, tilt, defocus) are alignment terms and cannot be certified figures.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metrology.conventions import ALIGNMENT_NOLL, COVERAGE_FACTOR
from metrology.errors import InputError
from metrology.orderings import MAX_NOLL
from metrology.toml_input import read_toml_hashed

_REQUIRED = ("id", "serial", "wavelength_nm", "na", "issuer", "date", "zernike")
_OPTIONAL = ("station", "coverage_factor", "note")


@dataclass
class GoldenCertificate:
    """A golden lens certificate.

    Attributes
    ----------
    id, serial, issuer, date : str
        ``date`` as ISO ``YYYY-MM-DD``.
    wavelength_nm, na : float
    coefficients : dict int -> (float, float)
        Noll index -> (certified value, U) in waves, k = 2.
    """

    id: str
    serial: str
    wavelength_nm: float
    na: float
    issuer: str
    date: str
    coefficients: dict
    station: str = ""
    note: str = ""
    path: str = ""
    sha256: str = ""  # of the file's bytes as read ("" when not from a file)


class TermClosure(NamedTuple):
    """Closure of one Zernike term (waves)."""

    noll: int
    measured: float
    U_meas: float
    certified: float
    U_cert: float
    En: float
    passed: bool


@dataclass
class ClosureResult:
    """Closure of a measurement against a golden certificate.

    ``per_term`` lists :class:`TermClosure` tuples ``(noll, measured, U_meas, certified, U_cert, En,
    pass)`` in Noll order; ``passed`` is True only if every certified term has ``En <= 1``.
    """

    per_term: list
    passed: bool
    golden_lens_id: str = ""
    golden_serial: str = ""
    wavelength_nm: float = float("nan")
    failed_terms: list = field(default_factory=list)

    @property
    def max_En(self) -> float:
        """Largest En over the certified terms."""
        return max((t.En for t in self.per_term), default=0.0)

    def to_dict(self) -> dict:
        """Plain dict for the audit store."""
        return {
            "golden_lens_id": self.golden_lens_id,
            "golden_serial": self.golden_serial,
            "wavelength_nm": self.wavelength_nm,
            "passed": bool(self.passed),
            "max_En": float(self.max_En),
            "per_term": [{"noll": int(t.noll), "measured": float(t.measured), "U_meas": float(t.U_meas),
                          "certified": float(t.certified), "U_cert": float(t.U_cert), "En": float(t.En),
                          "pass": bool(t.passed)} for t in self.per_term],
        }


def _number(source, key, value, positive=False, upper=None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(source, f"{key}: expected a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise InputError(source, f"{key}: must be finite, got {value!r}")
    if positive and x <= 0:
        raise InputError(source, f"{key}: must be > 0, got {value!r}")
    if upper is not None and x >= upper:
        raise InputError(source, f"{key}: must be < {upper}, got {value!r}")
    return x


def _text(source, key, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(source, f"{key}: expected a non-empty string, got {value!r}")
    return value.strip()


def certificate_from_dict(data: dict, source="certificate") -> GoldenCertificate:
    """Validate a parsed certificate mapping (see the module docstring) and build the certificate.

    Raises InputError naming ``source`` and the key on unknown keys, missing keys or bad values.
    """
    if not isinstance(data, dict):
        raise InputError(source, "certificate must be a table of keys")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise InputError(source, f"unknown key(s): {', '.join(unknown)} (allowed: "
                                 f"{', '.join(_REQUIRED + _OPTIONAL)})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise InputError(source, f"missing key(s): {', '.join(missing)}")
    date = data["date"]
    if isinstance(date, (_dt.date, _dt.datetime)):
        date = date.isoformat()[:10]
    else:
        date = _text(source, "date", date)
        try:
            _dt.date.fromisoformat(date[:10])
        except ValueError:
            raise InputError(source, f"date: not an ISO date (YYYY-MM-DD): {date!r}") from None
    if "coverage_factor" in data:
        k = _number(source, "coverage_factor", data["coverage_factor"], positive=True)
        if abs(k - COVERAGE_FACTOR) > 1e-9:
            raise InputError(source, f"coverage_factor: certificates must state U with k = "
                                     f"{COVERAGE_FACTOR:g}, got {k:g}")
    zern = data["zernike"]
    if not isinstance(zern, dict) or not zern:
        raise InputError(source, "zernike: expected a table 'Noll index = { value = ..., U = ... }'")
    coeffs = {}
    for key, entry in zern.items():
        where = f"zernike.{key}"
        try:
            noll = int(str(key))
        except ValueError:
            raise InputError(source, f"{where}: key must be a Noll index (integer >= 5)") from None
        if not 1 <= noll <= MAX_NOLL:
            raise InputError(source, f"{where}: Noll indices run from 1 to {MAX_NOLL}")
        if noll in ALIGNMENT_NOLL:
            raise InputError(source, f"{where}: Noll {noll} is an alignment term (piston/tilt/defocus), "
                                     "not a certifiable lens figure")
        if not isinstance(entry, dict):
            raise InputError(source, f"{where}: expected {{ value = ..., U = ... }}")
        extra = sorted(set(entry) - {"value", "U"})
        if extra:
            raise InputError(source, f"{where}: unknown key(s) {', '.join(extra)} (allowed: value, U)")
        if "value" not in entry or "U" not in entry:
            raise InputError(source, f"{where}: needs both value and U (waves)")
        coeffs[noll] = (_number(source, f"{where}.value", entry["value"]),
                        _number(source, f"{where}.U", entry["U"], positive=True))
    return GoldenCertificate(
        id=_text(source, "id", data["id"]),
        serial=_text(source, "serial", data["serial"]),
        wavelength_nm=_number(source, "wavelength_nm", data["wavelength_nm"], positive=True),
        na=_number(source, "na", data["na"], positive=True, upper=1.0),
        issuer=_text(source, "issuer", data["issuer"]),
        date=date,
        coefficients=dict(sorted(coeffs.items())),
        station=str(data.get("station", "")),
        note=str(data.get("note", "")),
        path=str(source),
    )


def load_certificate(path) -> GoldenCertificate:
    """Read a golden-lens certificate TOML file.

    Raises
    ------
    InputError
        Naming the file and the key: unreadable file, TOML syntax error, unknown key, bad value.
    """
    path = Path(path)
    data, sha256 = read_toml_hashed(path, "certificate")
    cert = certificate_from_dict(data, source=path)
    cert.sha256 = sha256
    return cert


def _pair(source, noll, v):
    if isinstance(v, dict):
        if "value" not in v or "U" not in v:
            raise InputError(source, f"Noll {noll}: needs value and U")
        v = (v["value"], v["U"])
    try:
        value, U = float(v[0]), float(v[1])
    except (TypeError, ValueError, IndexError):
        raise InputError(source, f"Noll {noll}: expected (value, U), got {v!r}") from None
    if not (math.isfinite(value) and math.isfinite(U)) or U < 0:
        raise InputError(source, f"Noll {noll}: value and U must be finite and U >= 0, got {v!r}")
    return value, U


def closure_check(measured: dict, cert: GoldenCertificate, wavelength_nm=None,
                  source="measurement") -> ClosureResult:
    """Compare measured Zernike coefficients with a golden certificate.

    Parameters
    ----------
    measured : dict
        Noll index (int or str) -> ``(value, U)`` or ``{"value", "U"}`` in waves, U expanded (k = 2).
    cert : GoldenCertificate
    wavelength_nm : float, optional
        Wavelength of the measurement; must match the certificate's within 0.5 nm (coefficients in
        waves depend on it).

    Returns
    -------
    ClosureResult
        ``En = |measured - certified| / sqrt(U_meas^2 + U_cert^2)``; a term passes if ``En <= 1``.

    Raises
    ------
    InputError
        A certified term was not measured, or the wavelength differs.
    """
    if wavelength_nm is not None and abs(float(wavelength_nm) - cert.wavelength_nm) > 0.5:
        raise InputError(source, f"wavelength {float(wavelength_nm):g} nm differs from the golden "
                                 f"certificate's {cert.wavelength_nm:g} nm")
    meas = {int(str(k)): v for k, v in measured.items()}
    terms = []
    for noll, (c_val, c_U) in sorted(cert.coefficients.items()):
        if noll not in meas:
            raise InputError(source, f"certified Noll {noll} was not measured (fit more Zernike terms)")
        m_val, m_U = _pair(source, noll, meas[noll])
        en = abs(m_val - c_val) / math.sqrt(m_U ** 2 + c_U ** 2)
        terms.append(TermClosure(noll, m_val, m_U, c_val, c_U, en, bool(en <= 1.0)))
    failed = [t.noll for t in terms if not t.passed]
    return ClosureResult(per_term=terms, passed=not failed, golden_lens_id=cert.id,
                         golden_serial=cert.serial, wavelength_nm=cert.wavelength_nm, failed_terms=failed)


def measured_from_arrays(zernike_waves, zernike_U) -> dict:
    """Noll -> (value, U) from arrays indexed Noll 1..K (e.g. ``Measurement.zernike_waves`` and
    ``COVERAGE_FACTOR * Measurement.zernike_u``)."""
    z = np.asarray(zernike_waves, dtype=float).ravel()
    u = np.asarray(zernike_U, dtype=float).ravel()
    return {j + 1: (float(z[j]), float(u[j])) for j in range(z.size)}


def measured_from_measurement(measurement) -> dict:
    """Noll -> (value, U = k u) from a :class:`metrology.measurement.Measurement`."""
    return measured_from_arrays(measurement.zernike_waves, COVERAGE_FACTOR * measurement.zernike_u)
