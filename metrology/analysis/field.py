"""The lens across its field: the field model of the pupil, distortion and field curvature, fitted
to the tiles of a full-field measurement by generalised least squares.

Inputs are plain numbers per tile (a :class:`TileData` each, from the tile's
:class:`~metrology.measurement.Measurement`): its field vector ``H``, Noll coefficients with their
covariance, the GUM budget's contributions of the station constants (the same constants for every
tile: their errors are fully correlated across the field), and the sample pose the tile's fit
found (lateral position, defocus). Nothing here imports the physics or the solver.

* :func:`fit_field_model`: Zernike coefficients as functions of ``H`` in the basis of
  :func:`metrology.field_terms.field_basis` (Hopkins' terms of a rotationally symmetric lens plus
  the nodal terms of a misaligned element); covariance of the fitted columns, chi-square of the
  field model, and the per-field scatter the model does not explain (:func:`per_field_scatter`,
  added to every tile's variance when the chi-square exceeds its degrees of freedom). The tiles'
  own coefficients are the "free per-tile" result beside it.
* :func:`fit_distortion`: the tiles' sample positions (known reference layout) against ``H``:
  common offset, magnification error, image rotation and third-order distortion (% vs field).
* :func:`fit_field_curvature`: the tiles' sample defocus against ``H``: common focus, image-plane
  tilt and field curvature (um at the edge of the field).
* :func:`fit_field_vignetting`: the tiles' fitted second aperture against ``H``: its radius and the
  shift of its centre per unit ``H`` (:mod:`metrology.field_terms`, "Vignetting across the field").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from metrology.field_terms import design_matrix, field_basis, seidel_from_columns


@dataclass
class TileData:
    """One tile's measured numbers (units in the names; arrays numpy).

    ``zernike_waves`` (K,) and ``zernike_cov`` (K, K) the fit's own part (independent between
    tiles); ``budget`` (S, K): each station constant's contribution ``sensitivity x u`` (waves,
    signed; shared by all tiles, in the order of ``budget_names``); ``position_um`` (2,) with
    ``position_u`` (2,), ``defocus_um`` with ``defocus_u``; ``vignetting`` (3,) the fitted second
    aperture ``(r, cx, cy)`` (pupil radii) with ``vignetting_u`` (3,), None where not modelled.
    """

    name: str
    h: tuple
    zernike_waves: np.ndarray
    zernike_cov: np.ndarray
    position_um: np.ndarray
    position_u: np.ndarray
    defocus_um: float
    defocus_u: float
    budget: np.ndarray | None = None
    budget_names: tuple = ()
    vignetting: np.ndarray | None = None
    vignetting_u: np.ndarray | None = None


@dataclass
class LinearFit:
    """A generalised least-squares fit ``y = A theta``: ``names``, ``values`` (P,), ``cov`` (P, P),
    ``chi2``, ``dof`` and ``cov_scaled`` (``cov`` times the Birge ratio ``chi2 / dof`` when it
    exceeds 1: the spread of the tiles about the model, seen as a Type A part)."""

    names: list
    values: np.ndarray
    cov: np.ndarray
    chi2: float
    dof: int
    residuals: np.ndarray
    cov_scaled: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.cov_scaled is None:
            ratio = self.chi2 / self.dof if self.dof > 0 else 1.0
            self.cov_scaled = self.cov * max(1.0, ratio)

    @property
    def u(self) -> np.ndarray:
        """Standard uncertainties (the Birge-scaled covariance's)."""
        return np.sqrt(np.clip(np.diag(self.cov_scaled), 0, None))

    def value(self, name: str) -> tuple:
        """``(value, u)`` of the column ``name``."""
        i = self.names.index(name)
        return float(self.values[i]), float(self.u[i])


def gls(a: np.ndarray, y: np.ndarray, v: np.ndarray, names) -> LinearFit:
    """Generalised least squares of ``y`` (n,) on ``a`` (n, P) with data covariance ``v`` (n, n).

    Raises
    ------
    ValueError
        The columns are not separable by the data (rank-deficient design): names them.
    """
    v = 0.5 * (v + v.T)
    scale = np.sqrt(np.clip(np.diag(v), 1e-300, None))
    chol = np.linalg.cholesky(v / np.outer(scale, scale) + 1e-12 * np.eye(len(y)))
    wa = np.linalg.solve(chol, a / scale[:, None])
    wy = np.linalg.solve(chol, y / scale)
    _, s, vt = np.linalg.svd(wa, full_matrices=False)
    if s.size == 0 or s[-1] <= 1e-9 * s[0]:
        null = vt[s <= 1e-9 * s[0]]
        weak = [names[i] for i in np.flatnonzero(np.abs(null).max(axis=0) > 0.1)]
        raise ValueError(f"the tiles do not separate the field terms {', '.join(weak)}: "
                         "use more tiles or tiles at more field radii (the centre tile among them)")
    cov = (vt.T / s**2) @ vt
    theta = cov @ (wa.T @ wy)
    r = wy - wa @ theta
    return LinearFit(list(names), theta, cov, float(r @ r), len(y) - a.shape[1], y - a @ theta)


def _data_covariance(tiles: list, first: int, last: int) -> np.ndarray:
    """Covariance of the stacked lens terms of all tiles: each tile's own block plus the station
    constants' contributions, fully correlated across tiles (one constant, one error)."""
    n_lens = last - first + 1
    blocks = [np.asarray(t.zernike_cov, dtype=np.float64)[first - 1 : last, first - 1 : last] for t in tiles]
    v = np.zeros((len(tiles) * n_lens,) * 2)
    for i, b in enumerate(blocks):
        v[i * n_lens : (i + 1) * n_lens, i * n_lens : (i + 1) * n_lens] = b
    names = tiles[0].budget_names
    if names and all(t.budget is not None and tuple(t.budget_names) == tuple(names) for t in tiles):
        g = np.concatenate([np.asarray(t.budget, dtype=np.float64)[:, first - 1 : last] for t in tiles], axis=1)
        v += g.T @ g
    return v


@dataclass
class FieldModel:
    """The fitted field model: ``fit`` (the columns of ``columns``, weighted with the per-field
    scatter), the lens terms it covers (Noll ``first..last``), the Hopkins coefficients derived from
    it (``seidel``: name -> ``(value, u)`` waves), ``chi2`` and ``dof`` of the field model against
    the tiles' own uncertainties, and ``scatter_waves``: the per-field scatter ``tau`` (waves per
    term and tile) the model does not explain (:func:`per_field_scatter`)."""

    columns: list
    fit: LinearFit
    first: int
    last: int
    seidel: dict
    chi2: float = math.nan
    dof: int = 0
    scatter_waves: float = 0.0

    def evaluate(self, h) -> tuple:
        """Noll ``first..last`` coefficients and their covariance at field point ``h`` (2,):
        ``(c (L,), cov (L, L))`` (waves, waves^2; from the Birge-scaled covariance)."""
        a = design_matrix(self.columns, np.asarray(h, dtype=np.float64)[None, :], self.last, self.first)[0]
        return a @ self.fit.values, a @ self.fit.cov_scaled @ a.T

    def lens_at(self, h) -> tuple:
        """Noll 1..``last`` coefficients (alignment terms zero) and covariance at each point ``h``
        (P, 2): ``(c (P, K), cov (P, K, K))``, the covariance the fit's (Birge-scaled) propagated to
        the point plus the per-field scatter ``scatter_waves^2`` on every lens term (the lens between
        tiles departs from the smooth model by that much)."""
        h = np.asarray(h, dtype=np.float64).reshape(-1, 2)
        a = design_matrix(self.columns, h, self.last, self.first)  # (P, L, C)
        k = self.last
        c = np.zeros((len(h), k))
        cov = np.zeros((len(h), k, k))
        lens = slice(self.first - 1, self.last)
        c[:, lens] = a @ self.fit.values
        cov[:, lens, lens] = a @ self.fit.cov_scaled @ a.transpose(0, 2, 1)
        cov[:, lens, lens] += self.scatter_waves**2 * np.eye(k - self.first + 1)
        return c, cov


def fit_field_model(tiles: list, n_terms: int, columns=None, first: int = 5) -> FieldModel:
    """Fit the field model to the tiles' Noll ``first..n_terms`` coefficients (see the module text).

    Parameters
    ----------
    tiles : list of TileData
    n_terms : int
        Last Noll term of the model (<= every tile's K).
    columns : list of FieldColumn, optional
        Default :func:`metrology.field_terms.field_basis`.

    Raises
    ------
    ValueError
        Too few tiles, or tiles that cannot separate the columns.
    """
    columns = field_basis(n_terms) if columns is None else columns
    h = np.array([t.h for t in tiles], dtype=np.float64)
    a = design_matrix(columns, h, n_terms, first).reshape(-1, len(columns))
    y = np.concatenate([np.asarray(t.zernike_waves, dtype=np.float64)[first - 1 : n_terms] for t in tiles])
    if len(y) <= len(columns):
        raise ValueError(f"{len(tiles)} tiles give {len(y)} coefficients for {len(columns)} field terms: use more tiles")
    names = [c.name for c in columns]
    v = _data_covariance(tiles, first, n_terms)
    plain = gls(a, y, v, names)
    tau = per_field_scatter(a, y, v, names, plain)
    fit = plain if tau == 0 else gls(a, y, v + tau**2 * np.eye(len(y)), names)
    vals = dict(zip(fit.names, fit.values))
    us = dict(zip(fit.names, fit.u))
    seidel = {k: (v, abs(seidel_from_columns({key: us[key]})[k]))
              for key in ("const.Z11", "W131", "W222") if key in vals
              for k, v in seidel_from_columns({key: vals[key]}).items()}
    return FieldModel(columns, fit, first, n_terms, seidel, plain.chi2, plain.dof, tau)


def per_field_scatter(a, y, v, names, plain: LinearFit) -> float:
    """The per-field scatter ``tau`` (waves): the standard deviation of an independent term added
    to every tile's every coefficient so that the field model's chi-square equals its degrees of
    freedom (Paule-Mandel's random-effects estimator); 0 when the tiles' own uncertainties already
    explain the residuals. A real lens is not exactly a low-order function of H (per-field Zernike
    noise, manufacturing scatter): without ``tau`` the weights would follow the tiles' own tiny
    uncertainties and the estimates would jump with them; with it, every tile counts by its own
    uncertainty plus the scatter, and ``u`` includes the scatter.
    """
    if plain.dof <= 0 or plain.chi2 <= plain.dof:
        return 0.0
    hi = float(np.mean(plain.residuals**2)) * 4.0 + 1e-30

    def excess(tau2):
        return gls(a, y, v + tau2 * np.eye(len(y)), names).chi2 - plain.dof

    while excess(hi) > 0:
        hi *= 4.0
    return math.sqrt(brentq(excess, 0.0, hi, xtol=1e-16, rtol=1e-6))


def fit_distortion(tiles: list, field_radius_mm: float) -> dict:
    """Distortion and magnification from the tiles' sample positions (known reference layout).

    A tile sees the reference displaced by ``d(H) = p0 + m H + w (-Hy, Hx) + d3 |H|^2 H`` (um,
    sample plane): ``p0`` the sample's own offset, ``m / R`` the magnification error (``R`` the
    field radius in um; ``+``: the lens magnifies more than nominal, the calibrated magnification
    is ``nominal (1 + m / R)``), ``w / R`` the image rotation (rad, from +x towards +y) and
    ``d3`` third-order distortion. Distortion (%) at ``H`` is ``100 d3 |H|^2 / R`` (positive:
    pincushion, image points farther from the axis than the calibrated magnification puts them);
    each tile's own value is its radial displacement less ``p0`` and ``m |H|``, over ``R |H|``.

    Returns
    -------
    dict
        ``fit`` (LinearFit of ``p0x, p0y, m, w, d3``, um), ``magnification_error`` and
        ``rotation_rad`` as ``(value, u)``, ``distortion_percent_edge`` ``(value, u)`` at ``|H| = 1``,
        ``tiles``: per tile ``(name, |H|, distortion %, u %)`` (``None`` for the tile on the axis).
    """
    radius_um = field_radius_mm * 1e3
    h = np.array([t.h for t in tiles], dtype=np.float64)
    hx, hy = h[:, 0], h[:, 1]
    h2 = hx**2 + hy**2
    one, zero = np.ones_like(hx), np.zeros_like(hx)
    ax = np.stack([one, zero, hx, -hy, h2 * hx], axis=1)
    ay = np.stack([zero, one, hy, hx, h2 * hy], axis=1)
    a = np.stack([ax, ay], axis=1).reshape(-1, 5)
    y = np.concatenate([np.asarray(t.position_um, dtype=np.float64) for t in tiles])
    u = np.concatenate([np.asarray(t.position_u, dtype=np.float64) for t in tiles])
    fit = gls(a, y, np.diag(np.maximum(u, 1e-9) ** 2), ["p0x_um", "p0y_um", "m_um", "rotation_um", "d3_um"])
    m, um_ = fit.value("m_um")
    w, uw = fit.value("rotation_um")
    d3, ud3 = fit.value("d3_um")
    per_tile = []
    for t, (x, yv), hh in zip(tiles, (y.reshape(-1, 2) - fit.values[:2]), h):
        r = math.hypot(*hh)
        if r < 1e-9:
            per_tile.append((t.name, 0.0, None, None))
            continue
        radial = (x * hh[0] + yv * hh[1]) / r
        u_rad = math.hypot(t.position_u[0] * hh[0], t.position_u[1] * hh[1]) / r
        per_tile.append((t.name, r, 100.0 * (radial - m * r) / (radius_um * r), 100.0 * u_rad / (radius_um * r)))
    return {"fit": fit, "magnification_error": (m / radius_um, um_ / radius_um),
            "rotation_rad": (w / radius_um, uw / radius_um),
            "distortion_percent_edge": (100.0 * d3 / radius_um, 100.0 * ud3 / radius_um), "tiles": per_tile}


def fit_field_curvature(tiles: list) -> LinearFit:
    """The tiles' sample defocus against ``H``: ``z(H) = z0 + tx Hx + ty Hy + c |H|^2`` (um):
    ``z0`` the focus on the axis, ``(tx, ty)`` the tilt of the image plane against the sample
    (um at the edge of the field), ``c`` the field curvature (um of sample defocus at ``|H| = 1``,
    the sign of ``sample.defocus_um``: :mod:`metrology.conventions`)."""
    h = np.array([t.h for t in tiles], dtype=np.float64)
    a = np.stack([np.ones(len(tiles)), h[:, 0], h[:, 1], (h**2).sum(axis=1)], axis=1)
    y = np.array([t.defocus_um for t in tiles], dtype=np.float64)
    u = np.array([max(t.defocus_u, 1e-9) for t in tiles])
    return gls(a, y, np.diag(u**2), ["z0_um", "tilt_x_um", "tilt_y_um", "curvature_um"])


def w220_from_curvature(curvature: tuple, w222: tuple | None, na: float, wavelength_nm: float) -> tuple:
    """Hopkins' ``W220`` (waves, ``(value, u)``) from the field curvature of the tiles' sample defocus.

    A sample defocus ``z`` (um) is a pupil phase of ``-z (1 - sqrt(1 - NA^2)) / lambda`` waves at the
    pupil edge (the sign of ``sample.defocus_um``, :mod:`metrology.conventions`): the tiles' best
    focus follows the medial surface, ``W220 + W222 / 2`` of ``|H|^2 rho^2``, so
    ``W220 = -c (1 - sqrt(1 - NA^2)) / lambda - W222 / 2`` with ``c`` the curvature (um at ``|H| = 1``)
    and ``W222`` from the field model (``None``: taken as 0 with no uncertainty).
    """
    per_um = (1.0 - math.sqrt(1.0 - na * na)) / (wavelength_nm * 1e-3)
    c, uc = curvature
    w, uw = (0.0, 0.0) if w222 is None else w222
    return -c * per_um - w / 2.0, math.hypot(uc * per_um, uw / 2.0)


def fit_field_vignetting(tiles: list) -> LinearFit:
    """The tiles' second aperture against ``H``: radius ``r`` and centre ``s H`` (pupil radii; the
    form of ``field.vignetting``, :mod:`metrology.field_terms`), weighted by each tile's ``u`` and
    Birge-scaled when the tiles disagree. Only tiles that model the aperture (``vignetting`` set)
    take part.

    Raises
    ------
    ValueError
        Fewer than two such tiles, or none off the axis.
    """
    used = [t for t in tiles if t.vignetting is not None and np.all(np.isfinite(t.vignetting))]
    if len(used) < 2 or max(math.hypot(*t.h) for t in used) < 1e-9:
        raise ValueError("fewer than two tiles model the second aperture (field.vignetting), "
                         "or none is off the axis")
    rows, y, u = [], [], []
    for t in used:
        rows += [(1.0, 0.0), (0.0, float(t.h[0])), (0.0, float(t.h[1]))]
        y += [float(v) for v in t.vignetting]
        u += [max(float(v), 1e-9) for v in t.vignetting_u]
    return gls(np.array(rows), np.array(y), np.diag(np.square(u)), ["radius", "shift_per_h"])
