"""The lens specification (TOML), see ``docs/spec.md``.

Every problem is raised as :class:`metrology.errors.InputError` naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path

from metrology.conventions import ALIGNMENT_NOLL
from metrology.errors import InputError
from metrology.limits import MAX_NAME_CHARS, check_text
from metrology.toml_input import read_toml_hashed
from metrology.analysis.figures import cutoff_cyc_per_mm
from metrology.orderings import MAX_NOLL, lens_families
from metrology.parameters import BY_PATH, GEOMETRY

FORMAT_VERSION = 1
KNOWN_FAMILIES = tuple(f for f in lens_families(12) if not f.startswith("Z("))
"""Family names accepted in ``[limits.family]`` (see :func:`orderings.zernike_family`)."""


@dataclass
class MtfLimit:
    """Minimum MTF at an object-side spatial frequency (cycles/mm)."""

    frequency_cyc_per_mm: float
    min: float


MisalignmentLimits = make_dataclass(
    "MisalignmentLimits", [(BY_PATH[p].key, float, field(default=math.inf)) for p in GEOMETRY],
    namespace={"keys": staticmethod(lambda: tuple(BY_PATH[p].key for p in GEOMETRY))})
MisalignmentLimits.__module__ = __name__  # picklable (a spec travels to the processes fitting a field's tiles)
MisalignmentLimits.__doc__ = """Largest station misalignment for which a measurement is valid (``inf``: not checked).

One field per LED board geometry parameter of the registry (:data:`metrology.parameters.GEOMETRY`:
``shift_mm``, ``rotation_deg``, ``distance_error_mm``, ``tilt_deg``), bounding its magnitude
(:func:`metrology.parameters.station_magnitudes`: ``shift_mm`` bounds ``hypot(dx, dy)``,
``tilt_deg`` each tilt component). ``MisalignmentLimits.keys()`` lists them.
"""


@dataclass
class Zone:
    """A field zone ``h_min <= |H| <= h_max`` (``H`` the normalised field vector of a full-field
    station, ``docs/full-field.md``; ``h_min = 0``: a disc, else an annulus) with its own limits;
    limits left out are ``None`` / empty.

    ``rms_waves_max``, ``pv_waves_max``, ``strehl_min``, ``family_max`` and ``term_max`` as the
    spec's ``[limits]`` (waves, alignment removed; the Strehl ratio by the Monte Carlo of
    :mod:`metrology.analysis.propagation`); ``distortion_percent_max``: ``|distortion|`` (%);
    ``field_curvature_um_max``: the focus departure of the field curvature, ``|c| |H|^2`` (um of
    sample defocus); ``mtf``: :class:`MtfLimit` rows, the smaller of the sagittal and tangential MTF
    at every field point of the zone (:mod:`metrology.analysis.field_mtf`).
    """

    name: str
    h_max: float
    rms_waves_max: float | None = None
    family_max: dict = field(default_factory=dict)  # family name -> waves
    term_max: dict = field(default_factory=dict)  # Noll index -> waves
    distortion_percent_max: float | None = None
    field_curvature_um_max: float | None = None
    mtf: list = field(default_factory=list)  # MtfLimit: sagittal and tangential, at every point
    h_min: float = 0.0
    pv_waves_max: float | None = None
    strehl_min: float | None = None

    def has_limits(self) -> bool:
        return bool(self.rms_waves_max is not None or self.family_max or self.term_max or self.mtf
                    or self.pv_waves_max is not None or self.strehl_min is not None
                    or self.distortion_percent_max is not None or self.field_curvature_um_max is not None)

    def describe(self) -> str:
        """The zone's extent as printed in rows and reports (:func:`zone_extent`)."""
        return zone_extent(self.h_min, self.h_max)


def zone_extent(h_min: float, h_max: float) -> str:
    """A zone's extent as printed everywhere: ``|H| <= 0.7``, or ``0.7 <= |H| <= 1`` for an annulus."""
    return f"{h_min:g} <= |H| <= {h_max:g}" if h_min > 0 else f"|H| <= {h_max:g}"


ZONE_KEYS = ("name", "h_min", "h_max", "rms_waves_max", "pv_waves_max", "strehl_min", "family", "term",
             "distortion_percent_max", "field_curvature_um_max", "mtf")


@dataclass
class Validity:
    """Conditions on the measurement itself."""

    max_reduced_chi2: float = 4.0
    min_effective_data_fraction: float = 0.2
    max_saturated_fraction: float = 0.05
    max_border_bounded_fraction: float = 0.001
    """Sample values on their search bounds in the outer eighth of the reconstructed field, up to this
    fraction of the sample's values, are a warning; more, or any inside, make the measurement invalid
    (0: any blocks). The border is where a periodic model meets a real, non-periodic field and where
    the margin lies outside the camera frame, so a few values pinned there say the sample is not
    measured there, not that the lens is not."""
    max_condition_number: float = 1e8
    max_station_misalignment: MisalignmentLimits = field(default_factory=MisalignmentLimits)
    wavelength_tolerance_nm: float = 1.0
    na_tolerance: float = 0.005
    require_calibration: bool = False


@dataclass
class LensSpec:
    """A parsed lens specification. Limits left out of the file are ``None`` / empty."""

    path: str
    model: str
    wavelength_nm: float
    na: float
    rms_waves_max: float | None = None
    strehl_min: float | None = None
    pv_waves_max: float | None = None
    family_max: dict = field(default_factory=dict)  # family name -> waves
    term_max: dict = field(default_factory=dict)  # Noll index -> waves
    mtf: list = field(default_factory=list)  # MtfLimit
    zones: list = field(default_factory=list)  # Zone ([[zone]]): judged across the field
    validity: Validity = field(default_factory=Validity)
    format_version: int = FORMAT_VERSION
    description: str = ""
    revision: str = ""
    wavelength_band_nm: tuple | None = None  # (min, max): the spec holds for measurements in this band

    def wavelength_ok(self, wavelength_nm: float) -> bool:
        """Whether a measurement at ``wavelength_nm`` may be judged by this spec: inside
        ``wavelength_band_nm`` when the spec states one, else within ``validity.wavelength_tolerance_nm``
        of ``wavelength_nm``."""
        if self.wavelength_band_nm is not None:
            lo, hi = self.wavelength_band_nm
            return lo <= wavelength_nm <= hi
        return abs(wavelength_nm - self.wavelength_nm) <= self.validity.wavelength_tolerance_nm
    sha256: str = ""  # of the file's bytes as read ("" when not from a file)

    @property
    def cutoff_cyc_per_mm(self) -> float:
        return cutoff_cyc_per_mm(self.wavelength_nm, self.na)

    def mtf_frequencies(self) -> list:
        """The spec's MTF frequencies (cycles/mm, ``[[limits.mtf]]`` and every zone's ``mtf``), sorted,
        each once; half the cut-off when the spec states none (the MTF across the field is reported
        at these)."""
        f = {m.frequency_cyc_per_mm for m in self.mtf} | {m.frequency_cyc_per_mm for z in self.zones for m in z.mtf}
        return sorted(f) or [round(0.5 * self.cutoff_cyc_per_mm, 1)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["term_max"] = {str(k): v for k, v in self.term_max.items()}
        for z, zd in zip(self.zones, d["zones"]):
            zd["term_max"] = {str(k): v for k, v in z.term_max.items()}
        return d


# ----------------------------------------------------------------------------- parsing helpers


def _keys(src, table: dict, where: str, allowed) -> None:
    for k in table:
        if k not in allowed:
            raise InputError(src, f"unknown key '{where}{k}' (allowed: {', '.join(sorted(allowed))})")


def _number(src, table: dict, key: str, where: str, *, required=False, default=None):
    if key not in table:
        if required:
            raise InputError(src, f"missing key '{where}{key}'")
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(src, f"'{where}{key}' must be a finite number, got {v!r}")
    return float(v)


def _table(src, parent: dict, key: str, where: str) -> dict:
    v = parent.get(key, {})
    if not isinstance(v, dict):
        raise InputError(src, f"'{where}{key}' must be a table")
    return v


def _check(src, ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise InputError(src, f"'{key}' {problem}")


# ----------------------------------------------------------------------------- loader


def parse_spec(data: dict, src="<spec>") -> LensSpec:
    """Build a :class:`LensSpec` from a parsed TOML dict (``src`` names the source in errors)."""
    _keys(src, data, "", {"format_version", "revision", "lens", "limits", "validity", "zone"})
    fv = data.get("format_version")
    if fv != FORMAT_VERSION:
        raise InputError(src, f"'format_version' must be {FORMAT_VERSION}, got {fv!r}")
    revision = data.get("revision", "")
    if not isinstance(revision, str):
        raise InputError(src, f"'revision' must be a string, got {revision!r}")

    spec = _parse_lens(data, src)
    spec.revision = revision.strip()
    lim = _table(src, data, "limits", "")
    _parse_limits(lim, spec, src)
    _parse_terms(lim, spec, src)
    spec.mtf = _parse_mtf(lim, spec.cutoff_cyc_per_mm, src)
    spec.zones = _parse_zones(data, src, spec.cutoff_cyc_per_mm)
    if (spec.rms_waves_max is None and spec.strehl_min is None and spec.pv_waves_max is None
            and not spec.family_max and not spec.term_max and not spec.mtf and not spec.zones):
        raise InputError(src, "'limits' holds no limit: a specification must state at least one")

    _parse_validity(data, spec.validity, src)
    return spec


def _parse_lens(data: dict, src) -> LensSpec:
    """``[lens]``: the spec with its model, wavelength, NA and description."""
    lens = _table(src, data, "lens", "")
    if "lens" not in data:
        raise InputError(src, "missing table [lens]")
    _keys(src, lens, "lens.", {"model", "wavelength_nm", "wavelength_band_nm", "na", "description"})
    model = lens.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InputError(src, "'lens.model' must be a non-empty string")
    check_text(model, src, "'lens.model'", MAX_NAME_CHARS)
    wl = _number(src, lens, "wavelength_nm", "lens.", required=True)
    _check(src, wl > 0, "lens.wavelength_nm", f"must be > 0, got {wl}")
    na = _number(src, lens, "na", "lens.", required=True)
    _check(src, 0 < na < 1, "lens.na", f"must be in (0, 1), got {na}")
    desc = lens.get("description", "")
    if not isinstance(desc, str):
        raise InputError(src, "'lens.description' must be a string")
    return LensSpec(path=str(src), model=model, wavelength_nm=wl, na=na, description=desc,
                    wavelength_band_nm=_band(src, lens, wl))


def _band(src, lens: dict, wl: float):
    """``lens.wavelength_band_nm = [min, max]``: the band the spec holds for; it contains ``wavelength_nm``."""
    band = lens.get("wavelength_band_nm")
    if band is None:
        return None
    key = "lens.wavelength_band_nm"
    ok = (isinstance(band, list) and len(band) == 2
          and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in band))
    _check(src, ok, key, f"must be [min, max] in nm, got {band!r}")
    lo, hi = float(band[0]), float(band[1])
    _check(src, 0 < lo < hi, key, f"must satisfy 0 < min < max, got [{lo:g}, {hi:g}]")
    _check(src, lo <= wl <= hi, key, f"[{lo:g}, {hi:g}] must contain lens.wavelength_nm = {wl:g}")
    return (lo, hi)


def _parse_limits(lim: dict, spec: LensSpec, src) -> None:
    """``[limits]``: the keys and the scalar limits (RMS, PV, Strehl)."""
    _keys(src, lim, "limits.", {"rms_waves_max", "strehl_min", "pv_waves_max", "family", "term", "mtf"})
    spec.rms_waves_max = _number(src, lim, "rms_waves_max", "limits.")
    if spec.rms_waves_max is not None:
        _check(src, spec.rms_waves_max > 0, "limits.rms_waves_max", f"must be > 0, got {spec.rms_waves_max}")
    spec.pv_waves_max = _number(src, lim, "pv_waves_max", "limits.")
    if spec.pv_waves_max is not None:
        _check(src, spec.pv_waves_max > 0, "limits.pv_waves_max", f"must be > 0, got {spec.pv_waves_max}")
    spec.strehl_min = _strehl_min(src, lim, "limits.")


def _strehl_min(src, table: dict, where: str) -> float | None:
    """The ``strehl_min`` key of ``table`` (keys under ``where``), checked to lie in (0, 1]; ``None`` if absent."""
    v = _number(src, table, "strehl_min", where)
    if v is not None:
        _check(src, 0 < v <= 1, where + "strehl_min", f"must be in (0, 1], got {v:g}")
    return v


def _parse_terms(lim: dict, spec, src, where: str = "limits.") -> None:
    """``[limits.family]`` and ``[limits.term]`` (or a zone's ``family`` and ``term``, keys under
    ``where``) into ``spec.family_max`` and ``spec.term_max``."""
    fam = _table(src, lim, "family", where)
    for name in fam:
        key = f"{where}family.{name}"
        if name not in KNOWN_FAMILIES:
            raise InputError(src, f"unknown key '{key}' (families: {', '.join(KNOWN_FAMILIES[:12])}, ...)")
        v = _number(src, fam, name, f"{where}family.")
        _check(src, v > 0, key, f"must be > 0 waves, got {v}")
        spec.family_max[name] = v

    term = _table(src, lim, "term", where)
    for name in term:
        key = f"{where}term.{name}"
        try:
            j = int(name)
        except ValueError:
            raise InputError(src, f"unknown key '{key}' (term keys are Noll indices, e.g. \"11\")") from None
        if j < 1 or str(j) != name.strip():
            raise InputError(src, f"unknown key '{key}' (term keys are Noll indices >= 5)")
        _check(src, j <= MAX_NOLL, key, f"is beyond the largest Noll index {MAX_NOLL} a station can fit")
        _check(src, j not in ALIGNMENT_NOLL, key, "is an alignment term (Noll 1-4), never a lens limit")
        v = _number(src, term, name, f"{where}term.")
        _check(src, v > 0, key, f"must be > 0 waves, got {v}")
        spec.term_max[j] = v


def _parse_zones(data: dict, src, cutoff: float) -> list:
    """``[[zone]]``: field zones ``h_min <= |H| <= h_max`` with their own limits (``docs/spec.md``, section 7)."""
    rows = data.get("zone", [])
    if not isinstance(rows, list):
        raise InputError(src, "'zone' must be an array of tables ([[zone]])")
    zones = []
    for i, row in enumerate(rows):
        where = f"zone[{i}]."
        if not isinstance(row, dict):
            raise InputError(src, f"'zone[{i}]' must be a table")
        _keys(src, row, where, set(ZONE_KEYS))
        name = row.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(src, f"'{where}name' must be a non-empty string")
        check_text(name, src, f"'{where}name'", MAX_NAME_CHARS)
        if any(z.name == name.strip() for z in zones):
            raise InputError(src, f"'{where}name' repeats the zone name {name.strip()!r}: zone names must be unique")
        h_max = _number(src, row, "h_max", where, required=True)
        _check(src, 0 < h_max <= 1, where + "h_max", f"must be in (0, 1] (|H| = 1 is the station's field radius), "
                                                     f"got {h_max:g}")
        zone = Zone(name.strip(), h_max)
        h_min = _number(src, row, "h_min", where)
        if h_min is not None:
            _check(src, 0 <= h_min < h_max, where + "h_min", f"must satisfy 0 <= h_min < h_max = {h_max:g}, "
                                                              f"got {h_min:g}")
            zone.h_min = h_min
        for key in ("rms_waves_max", "pv_waves_max", "distortion_percent_max", "field_curvature_um_max"):
            v = _number(src, row, key, where)
            if v is not None:
                _check(src, v > 0, where + key, f"must be > 0, got {v:g}")
            setattr(zone, key, v)
        zone.strehl_min = _strehl_min(src, row, where)
        _parse_terms(row, zone, src, where)
        zone.mtf = _parse_mtf(row, cutoff, src, where)
        if not zone.has_limits():
            raise InputError(src, f"'zone[{i}]' ({zone.name}) holds no limit: a zone must state at least one")
        zones.append(zone)
    return zones


def _parse_mtf(lim: dict, cut: float, src, parent: str = "limits.") -> list:
    """``[[limits.mtf]]`` (or a zone's ``mtf``, keys under ``parent``): minimum MTF at object-side
    frequencies below the cut-off ``cut`` (cycles/mm), as :class:`MtfLimit` rows."""
    mtf = lim.get("mtf", [])
    if not isinstance(mtf, list):
        raise InputError(src, f"'{parent}mtf' must be an array of tables ([[{parent}mtf]])")
    rows = []
    for i, row in enumerate(mtf):
        where = f"{parent}mtf[{i}]."
        if not isinstance(row, dict):
            raise InputError(src, f"'{parent}mtf[{i}]' must be a table")
        _keys(src, row, where, {"frequency_cyc_per_mm", "min"})
        f = _number(src, row, "frequency_cyc_per_mm", where, required=True)
        _check(src, 0 < f < cut, where + "frequency_cyc_per_mm",
               f"must be in (0, {cut:.1f}) cycles/mm (the cut-off 2 NA / lambda), got {f}")
        mn = _number(src, row, "min", where, required=True)
        _check(src, 0 <= mn <= 1, where + "min", f"must be in [0, 1], got {mn}")
        rows.append(MtfLimit(f, mn))
    return rows


def _parse_validity(data: dict, v: Validity, src) -> None:
    """``[validity]`` and its ``max_station_misalignment`` (keys: the registry's LED geometry)."""
    val = _table(src, data, "validity", "")
    _keys(src, val, "validity.", {"max_reduced_chi2", "max_saturated_fraction", "max_condition_number",
                                  "max_border_bounded_fraction",
                                  "max_station_misalignment", "wavelength_tolerance_nm", "na_tolerance",
                                  "min_effective_data_fraction", "require_calibration"})
    if "require_calibration" in val:
        if not isinstance(val["require_calibration"], bool):
            raise InputError(src, f"'validity.require_calibration' must be true or false, got "
                                  f"{val['require_calibration']!r}")
        v.require_calibration = val["require_calibration"]
    for key, lo_ok, text in (
        ("max_reduced_chi2", lambda x: x > 0, "must be > 0"),
        ("max_saturated_fraction", lambda x: 0 <= x <= 1, "must be in [0, 1]"),
        ("max_border_bounded_fraction", lambda x: 0 <= x <= 1, "must be in [0, 1]"),
        ("min_effective_data_fraction", lambda x: 0 <= x <= 1, "must be in [0, 1]"),
        ("max_condition_number", lambda x: x >= 1, "must be >= 1"),
        ("wavelength_tolerance_nm", lambda x: x >= 0, "must be >= 0"),
        ("na_tolerance", lambda x: x >= 0, "must be >= 0"),
    ):
        x = _number(src, val, key, "validity.")
        if x is not None:
            _check(src, lo_ok(x), "validity." + key, f"{text}, got {x}")
            setattr(v, key, x)
    mis = _table(src, val, "max_station_misalignment", "validity.")
    where = "validity.max_station_misalignment."
    _keys(src, mis, where, set(MisalignmentLimits.keys()))
    for key in mis:
        x = _number(src, mis, key, where)
        _check(src, x > 0, where + key, f"must be > 0, got {x}")
        setattr(v.max_station_misalignment, key, x)


def load_spec(path) -> LensSpec:
    """Read and validate a lens specification TOML file.

    Raises
    ------
    InputError
        Missing/unreadable file, TOML syntax error, unknown key, impossible limit (naming the key).
    """
    p = Path(path)
    data, sha256 = read_toml_hashed(p, "specification")
    spec = parse_spec(data, p)
    spec.sha256 = sha256
    return spec
