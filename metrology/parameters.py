"""The parameter registry: one record per calibratable parameter of the station model.

Every table that names a station, sample, lens or camera parameter derives from
:data:`PARAMETERS`: the model's parameter list (:data:`metrology.physics.model.CALIBRATABLE`), the
default fit schedule (:func:`metrology.solver.schedule.default_schedule`), the station estimates of
the uncertainty report (labels and units), the simulator's misalignment draws
(:mod:`metrology.misalignment`), the drift limits of the station file
(``[calibration.drift_limits]``), the drift rules of the audit (:mod:`metrology.audit.status`), the
validity limits of the lens specification (``validity.max_station_misalignment``), the verdict, the
result JSON and the PDF tables. Adding a parameter is one :class:`Parameter` here plus its physics
(an ``nn.Parameter`` of the same path in :mod:`metrology.physics`); ``tests/test_parameters.py``
walks the registry and fails when any of those places names it differently.

Names
-----
* ``path``: the model's dotted parameter path, ``"illumination.shift_mm"`` (units in the name).
* element names: ``path`` for a scalar, ``path[i]`` for element ``i`` of a vector
  (:func:`element_names`, :func:`element_name`; parsed back by :func:`parse_element`).
* ``key``: the short key a file uses for the parameter (``shift_mm`` in a station file's
  ``[calibration.drift_limits]`` and a spec's ``validity.max_station_misalignment``; ``zernike_waves``
  and ``apodisation`` in a lens file).
* labels: words for a report, one per element (:func:`element_label`).

This module is plain Python (no torch, no numpy), importable from every layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from metrology.conventions import ALIGNMENT_NOLL
from metrology.orderings import MAX_NOLL, noll_to_nm, zernike_name

ROLES = ("station", "sample", "lens", "nuisance")
"""``station``: the LED board (misalignment and brightness); ``sample``: the reference sample's pose
and map; ``lens``: the lens under test; ``nuisance``: what the fit needs but nobody reports (camera
scale and background)."""

MODES = ("known", "prior", "blind")
"""Reconstruction modes (reference sample known, used as a prior, unknown)."""

SIZES = ("leds", "zernike_terms", "object_px")
"""Symbolic sizes in :attr:`Parameter.shape`: the number of LEDs (frames), of Noll terms, and the
side of the reconstruction grid (see :class:`metrology.physics.StationGeometry`)."""

MAGNITUDES = ("norm", "abs")
"""How :func:`station_magnitudes` reduces a parameter to one number: ``norm``, the Euclidean length
of the vector (``hypot(dx, dy)``); ``abs``, the largest absolute element."""


@dataclass(frozen=True)
class Stage:
    """Elements released together: flat indices ``elements`` (clipped to the parameter's size) free
    from outer iteration ``start`` of the fit."""

    start: int
    elements: tuple


@dataclass(frozen=True)
class Fit:
    """A parameter's entry in the default fit schedule.

    Attributes
    ----------
    step : float
        Natural step in the parameter's unit (preconditioner; Adam learning rate).
    start : int
        Outer iteration at which the parameter is released (when no ``stages``).
    modes : tuple of str
        Modes in which the default schedule frees it.
    stages : tuple of Stage
        Elements released in stages (one schedule entry each); empty: every element at ``start``.
    """

    step: float
    start: int = 0
    modes: tuple = MODES
    stages: tuple = ()


@dataclass(frozen=True)
class Drift:
    """Drift rule: the largest change since the last calibration before the station counts as
    drifted (default of the station file's ``[calibration.drift_limits]``), measured as the
    parameter's :attr:`Parameter.magnitude` of the change."""

    limit: float


@dataclass(frozen=True)
class Parameter:
    """One calibratable parameter of the station model.

    Attributes
    ----------
    path : str
        The model's parameter path (``"illumination.shift_mm"``).
    shape : tuple
        Ints, or names from :data:`SIZES` for sizes set by the station (``("leds",)``).
    unit : str
        Unit of every element (``""`` for a pure number).
    description : str
        What it is, one line (the model's parameter list).
    role : str
        One of :data:`ROLES`.
    key : str
        Short key used in files (empty: none).
    label : str
        Report label of the parameter (``"LED array shift"``; empty: the description is used).
    axes : tuple of str
        Names of a vector's elements in labels (``("x", "y")``), one per element; see :attr:`labels`.
    bounds : (float, float) or None
        Default search bounds of the fit (inclusive), in ``unit``.
    fit : Fit or None
        Default schedule entry (None: held at its start value).
    drift : Drift or None
        Drift rule; the parameter is part of the station state tracked by calibration audits (and
        reported with its uncertainty) when it has one.
    magnitude : str or None
        One of :data:`MAGNITUDES`: how :func:`station_magnitudes` reduces it.
    draw : float or None
        Half-width of the simulator's uniform random misalignment draws (brightness: relative to
        its nominal 1); None: not drawn.
    nominal : float
        Value of every element on an aligned station.
    """

    path: str
    shape: tuple
    unit: str
    description: str
    role: str
    key: str = ""
    label: str = ""
    axes: tuple = ()
    bounds: tuple | None = None
    fit: Fit | None = None
    drift: Drift | None = None
    magnitude: str | None = None
    draw: float | None = None
    nominal: float = 0.0

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"{self.path}: role must be one of {ROLES}, got {self.role!r}")
        if any(isinstance(s, str) and s not in SIZES for s in self.shape):
            raise ValueError(f"{self.path}: unknown size in shape {self.shape}")
        if self.magnitude is not None and self.magnitude not in MAGNITUDES:
            raise ValueError(f"{self.path}: magnitude must be one of {MAGNITUDES}")
        if self.axes and (len(self.shape) != 1 or self.shape[0] != len(self.axes)):
            raise ValueError(f"{self.path}: {len(self.axes)} axes for shape {self.shape}")
        if self.label and not self.scalar and not self.axes and all(isinstance(n, int) for n in self.shape):
            raise ValueError(f"{self.path}: a labelled fixed-shape vector needs the names of its axes")

    @property
    def scalar(self) -> bool:
        return self.shape == ()

    @property
    def labels(self) -> tuple:
        """Report label of each element of a fixed-shape parameter: ``label`` for a scalar,
        ``label + " " + axis`` for each of ``axes`` (``("LED array shift x", "LED array shift y")``);
        empty without a label."""
        if not self.label or not (self.scalar or self.axes):
            return ()
        return (self.label,) if self.scalar else tuple(f"{self.label} {a}" for a in self.axes)

    def size(self, sizes: dict | None = None) -> int:
        """Number of elements, with the symbolic sizes taken from ``sizes`` (e.g. ``{"leds": 225}``)."""
        return math.prod(s if isinstance(s, int) else int((sizes or {})[s]) for s in self.shape)

    def resolve_shape(self, sizes: dict) -> tuple:
        """The concrete shape, symbolic sizes taken from ``sizes``."""
        return tuple(s if isinstance(s, int) else int(sizes[s]) for s in self.shape)


_ZERNIKE_STAGES = (
    # by increasing radial order (n <= 3, then n = 4-5, then the rest): a strong high-order term
    # fitted before the low orders are right invites local minima; Noll 1-4 (alignment) stay at 0
    Stage(1, tuple(range(len(ALIGNMENT_NOLL), 10))),
    Stage(2, tuple(range(10, 21))),
    Stage(3, tuple(range(21, MAX_NOLL))),
)

PARAMETERS = (
    Parameter("illumination.shift_mm", (2,), "mm", "LED board lateral shift (dx, dy), mm", "station",
              key="shift_mm", label="LED array shift", axes=("x", "y"), bounds=(-3.0, 3.0),
              fit=Fit(0.05), drift=Drift(0.05), magnitude="norm", draw=1.0),
    Parameter("illumination.rotation_deg", (), "deg", "LED board rotation about the optical axis, deg", "station",
              key="rotation_deg", label="LED array rotation", bounds=(-10.0, 10.0), fit=Fit(0.05),
              drift=Drift(0.1), magnitude="abs", draw=3.0),
    # fitted in every mode: with an unknown object (blind) the pupil edge anchors the distance too,
    # through the frames at the bright-/dark-field transition (the edge radius is the held NA); off-model
    # blind trials with 1.4-2.7 mm of distance error found it within 0.1-0.6 mm and their lens error
    # fell 0.0062 -> 0.0043 and 0.0054 -> 0.0022 waves; at 0.9 mm it stayed near nominal, the lens
    # unchanged (docs/uncertainty.md). The tilt (a non-uniform scaling) stays held in blind mode and
    # enters the GUM budget with its stated tolerance (metrology.solver.budget.HELD_PARAMETERS).
    Parameter("illumination.distance_error_mm", (), "mm", "LED board distance error, mm", "station",
              key="distance_error_mm", label="LED array distance error", bounds=(-10.0, 10.0),
              fit=Fit(0.2), drift=Drift(0.3), magnitude="abs", draw=3.0),
    Parameter("illumination.tilt_deg", (2,), "deg", "LED board tilt about x and y, deg", "station",
              key="tilt_deg", label="LED array tilt", axes=("about x", "about y"), bounds=(-5.0, 5.0),
              fit=Fit(0.2, modes=("known", "prior")), drift=Drift(0.5), magnitude="abs", draw=1.0),
    Parameter("illumination.brightness", ("leds",), "", "per-LED relative brightness", "station",
              label="LED brightness", bounds=(0.0, 10.0), fit=Fit(0.01), draw=0.05, nominal=1.0),
    # the LEDs' angular emission law cos^p (start: the station's led_array.emission_exponent); held:
    # per-LED brightness carries the rest, with a prior about the law (metrology.solver.priors)
    Parameter("illumination.emission_exponent", (), "", "LED angular emission law exponent p (cos^p)", "station",
              label="LED emission exponent", bounds=(-10.0, 30.0)),
    # each frame's uniform stray light (flare): freed by the station schedule where the station states
    # lens.stray_light (UConn red: a per-frame uniform offset took the mean chi2 per pixel 13.2 -> 5.6,
    # docs/real-data.md); a per-frame nuisance like the brightness (compressed Jacobian columns)
    Parameter("illumination.stray_light", ("leds",), "", "per-LED uniform stray light, clear-pupil intensity",
              "nuisance", label="Stray light", bounds=(-1.0, 10.0)),
    Parameter("pupil.zernike_waves", ("zernike_terms",), "waves", "pupil phase, Noll coefficients, waves", "lens",
              key="zernike_waves", bounds=(-2.0, 2.0), fit=Fit(0.01, stages=_ZERNIKE_STAGES)),
    Parameter("pupil.log_amplitude", ("zernike_terms",), "", "pupil log-amplitude (apodisation), Noll coefficients",
              "lens", key="apodisation", bounds=(-2.0, 2.0),
              fit=Fit(0.01, stages=(Stage(3, (3, 10)),))),  # radial apodisation (Noll 4, 11), last
    # fitted in blind mode (released with Noll 22-36, after the LED geometry has settled): the fit sees the
    # NA, the magnification and the camera pixel through one number, the pupil radius in frequency pixels
    # NA N p / (lambda M); held at its stated value, the radius's tolerance (1.4 % by default) was the
    # largest term of every blind trial's budget. The data measure it: the images' cut-off and the
    # bright-/dark-field transition (docs/uncertainty.md, section 5, "The pupil radius measured").
    # Held in known and prior modes (an early known-mode trial, NA and distance free from the start,
    # converged poorly on small captures: the edge radius traded against the brightness of the LEDs on
    # the edge); there its tolerance enters the GUM budget (metrology.solver.budget).
    Parameter("pupil.na", (), "", "pupil edge NA", "lens", label="Lens NA (pupil edge)", bounds=(0.01, 0.95),
              fit=Fit(0.002, start=3, modes=("blind",))),
    # two-circle vignetting (station lens.vignetting): freed by the pipeline when the station states it
    Parameter("pupil.vignetting_radius", (), "pupil radii", "second aperture radius (two-circle vignetting), pupil radii",
              "lens", label="Vignetting aperture radius", bounds=(0.2, 5.0)),
    Parameter("pupil.vignetting_center", (2,), "pupil radii", "second aperture centre (dx, dy), pupil radii", "lens",
              label="Vignetting aperture centre", axes=("x", "y"), bounds=(-5.0, 5.0)),
    Parameter("sample.defocus_um", (), "um", "sample defocus, um", "sample", key="defocus_um",
              label="Sample defocus", bounds=(-200.0, 200.0),
              fit=Fit(0.5, start=1),  # with the low-order aberrations
              drift=Drift(20.0), magnitude="abs", draw=10.0),
    # blind mode: with an unknown object the sample position is meaningless (a gauge of the object)
    Parameter("sample.position_um", (2,), "um", "sample lateral position (sx, sy), um", "sample",
              key="position_um", label="Sample position", axes=("x", "y"), bounds=(-50.0, 50.0),
              fit=Fit(0.1, modes=("known", "prior")), drift=Drift(50.0), magnitude="norm", draw=2.0),
    Parameter("sample.field_real", ("object_px", "object_px"), "", "sample transmission, real part", "sample",
              bounds=(-3.0, 3.0), fit=Fit(0.01, modes=("prior", "blind"))),
    Parameter("sample.field_imag", ("object_px", "object_px"), "", "sample transmission, imaginary part",
              "sample", bounds=(-3.0, 3.0), fit=Fit(0.01, modes=("prior", "blind"))),
    Parameter("camera.counts_per_unit", (), "counts", "camera counts per unit intensity", "nuisance"),
    Parameter("camera.background_counts", (), "counts", "camera background, counts", "nuisance", fit=Fit(1.0)),
)
"""Every calibratable parameter, in the model's order (the order of every table derived from it)."""

BY_PATH = {p.path: p for p in PARAMETERS}

SCHEDULE_ORDER = (
    "illumination.shift_mm", "illumination.rotation_deg", "illumination.distance_error_mm",
    "illumination.tilt_deg", "illumination.brightness", "sample.position_um", "sample.defocus_um",
    "camera.background_counts", "pupil.zernike_waves", "pupil.log_amplitude", "pupil.na", "sample.field_real",
    "sample.field_imag",
)
"""Order of the default schedule's entries (the order of the Jacobian's columns): geometry and pose
first, then the lens. Every parameter with a :attr:`Parameter.fit` appears once."""


def parameter(path: str) -> Parameter:
    """The record of ``path``; ``KeyError`` naming the known paths otherwise."""
    try:
        return BY_PATH[path]
    except KeyError:
        raise KeyError(f"unknown parameter path {path!r}; known: {', '.join(BY_PATH)}") from None


def paths(**where) -> tuple:
    """Paths of the records whose attributes equal ``where`` (``paths(role="station")``); a value
    ``True`` selects records where the attribute is set (``paths(drift=True)``)."""
    def keep(p):
        return all(bool(getattr(p, k)) if v is True else getattr(p, k) == v for k, v in where.items())
    return tuple(p.path for p in PARAMETERS if keep(p))


TRACKED = paths(drift=True)
"""The station state tracked by calibration audits and reported with its uncertainty: every
parameter with a drift rule (LED board geometry, sample pose)."""

PER_FRAME = paths(shape=("leds",))
"""Per-LED parameters that act on their LED's own frame only (brightness, stray light): one
compressed Jacobian tangent each, and nuisances whose bound hits are warnings."""

GEOMETRY = paths(role="station", magnitude=True)
"""The LED board geometry (station parameters with a magnitude): what the spec's
``validity.max_station_misalignment`` bounds and what a geometry search sets."""


def by_key(key: str) -> Parameter:
    """The record whose file :attr:`Parameter.key` is ``key``; ``KeyError`` otherwise."""
    for p in PARAMETERS:
        if p.key and p.key == key:
            return p
    raise KeyError(f"unknown parameter key {key!r}")


def lookup(name: str) -> tuple:
    """``(Parameter, index)`` named by a path, a file key or an element name (``index`` None for a
    whole parameter); ``KeyError`` when it names none."""
    if name in BY_PATH:
        return BY_PATH[name], None
    try:
        return by_key(name), None
    except KeyError:
        pass
    try:
        return parse_element(name)
    except ValueError:
        raise KeyError(f"{name!r} names no parameter") from None


# ----------------------------------------------------------------------------- element names
_ELEMENT = re.compile(r"^(?P<path>[a-z_]+\.[a-z_]+)(?:\[(?P<index>\d+)\])?$")


def element_name(path: str, index: int | None = None) -> str:
    """``path`` for a scalar (``index`` None), ``path[index]`` for an element of a vector."""
    return path if index is None else f"{path}[{int(index)}]"


def element_names(path: str, sizes: dict | None = None) -> list:
    """Every element's name: ``[path]`` for a scalar, ``[path[0], path[1], ...]`` for a vector (flat
    order; symbolic sizes from ``sizes``)."""
    p = parameter(path)
    if p.scalar:
        return [p.path]
    return [element_name(p.path, i) for i in range(p.size(sizes))]


def parse_element(name: str) -> tuple:
    """``(Parameter, index)`` of an element name; ``index`` is None for a scalar.

    Raises
    ------
    KeyError
        An unknown path.
    ValueError
        Not an element name, an index on a scalar, or a vector without an index.
    """
    m = _ELEMENT.match(str(name))
    if m is None:
        raise ValueError(f"not a parameter element name: {name!r}")
    p = parameter(m.group("path"))
    index = None if m.group("index") is None else int(m.group("index"))
    if (index is None) != p.scalar:
        raise ValueError(f"{name!r}: {'a scalar takes no index' if p.scalar else 'an element index is needed'}")
    if p.axes and index >= len(p.axes):
        raise ValueError(f"{name!r}: index beyond the {len(p.axes)} elements of {p.path}")
    return p, index


def noll_of(name: str) -> int | None:
    """Noll index of a ``pupil.zernike_waves[i]`` element name (flat index ``i`` is Noll ``i + 1``),
    None for any other parameter."""
    try:
        p, index = parse_element(name)
    except (KeyError, ValueError):
        return None
    return index + 1 if p.path == "pupil.zernike_waves" else None


def element_label(name: str) -> str:
    """Report label of an element: the record's :attr:`Parameter.labels`, ``Noll j <name>`` for a
    Zernike coefficient, ``<label> [i]`` for an element of a variable-size vector."""
    p, index = parse_element(name)
    if p.labels:
        return p.labels[0 if index is None else index]
    if p.path in ("pupil.zernike_waves", "pupil.log_amplitude"):
        n, m = noll_to_nm(index + 1)
        return f"Noll {index + 1} {zernike_name(n, m)}" + (" (ln A)" if p.path == "pupil.log_amplitude" else "")
    label = p.label or p.description
    return label if index is None else f"{label} [{index}]"


# ----------------------------------------------------------------------------- magnitudes
def station_magnitudes(values: dict, keys=None) -> dict:
    """One number per parameter with a :attr:`Parameter.magnitude`, from its elements' values.

    Parameters
    ----------
    values : dict
        Element name (``"illumination.shift_mm[0]"``) -> value; elements missing are left out of
        their parameter's magnitude, names of other parameters are ignored.
    keys : iterable of str, optional
        Only these parameters (paths or file keys); default every parameter with a magnitude.

    Returns
    -------
    dict
        File key (``"shift_mm"``) -> magnitude in the parameter's unit: ``hypot`` of the elements
        (``norm``) or the largest ``|element|`` (``abs``); parameters with no element in ``values``
        are absent.
    """
    wanted = None if keys is None else {BY_PATH[k].key if k in BY_PATH else k for k in keys}
    out = {}
    for p in PARAMETERS:
        if p.magnitude is None or (wanted is not None and p.key not in wanted):
            continue
        names = [p.path] if p.scalar else [element_name(p.path, i) for i in range(len(p.axes))]
        found = [abs(float(values[n])) for n in names if n in values]
        if found:
            out[p.key] = math.hypot(*found) if p.magnitude == "norm" else max(found)
    return out
