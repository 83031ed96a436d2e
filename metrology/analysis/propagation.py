"""Uncertainty of derived figures (RMS, PV, Strehl, MTF, family magnitudes) by Monte Carlo.

Method (see ``docs/spec.md``, "Uncertainty of derived figures"): draw ``n_draws`` coefficient
vectors from ``N(c, C)`` (seeded; the alignment terms Noll 1-4 are zeroed in ``c`` and ``C``),
evaluate the figure on every draw, and report

* ``value``: the figure evaluated at the estimate ``c`` (plug-in value);
* ``u = sqrt(s^2 + (mean - value)^2)``: the standard deviation ``s`` of the draws, with the
  offset of their mean from the plug-in value (the bias of a non-linear figure, e.g. RMS near zero)
  added in quadrature so that the interval stays honest where the figure is biased;
* ``U = k u`` with ``k = COVERAGE_FACTOR``.

Single coefficients ``|c_j|`` use ``u_j = sqrt(C_jj)`` directly (the decision on ``|c_j| <= T``
is the two-sided decision on ``c_j``). :func:`delta_method` (numerical gradient) is kept as a
cross-check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from metrology.conventions import COVERAGE_FACTOR
from metrology.analysis.figures import mtf_diffraction_limited, cutoff_cyc_per_mm, _pupil_geometry
from metrology.orderings import family_members, lens_only, nm_to_noll
from metrology.analysis.wavefront import pv_basis, zernike_basis

N_DRAWS = 2000
"""Default Monte Carlo sample size."""
SEED = 0
"""Default seed (results are reproducible)."""
MTF_AZIMUTHS_DEG = (0.0, 45.0, 90.0, 135.0)
"""Azimuths whose smallest MTF is the judged MTF figure."""
PV_GRID = 128
"""Map size for PV in the propagation (pixels across the diameter)."""
STREHL_GRID = 64
"""Pupil sampling for the Strehl ratio in the propagation."""
_CHUNK = 250


@dataclass
class Quantity:
    """A value with its standard and expanded uncertainty (``U = k u``)."""

    value: float
    u: float
    U: float
    unit: str = ""
    method: str = ""

    @classmethod
    def from_u(cls, value: float, u: float, unit: str = "", method: str = "") -> "Quantity":
        return cls(float(value), float(u), float(COVERAGE_FACTOR * u), unit, method)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- sampling


def sample_coefficients(c, cov, n_draws: int = N_DRAWS, seed: int = SEED) -> np.ndarray:
    """Draws from ``N(c, cov)`` (``cov`` symmetrised, negative eigenvalues clipped), shape (D, K)."""
    c = np.asarray(c, dtype=float)
    cv = np.asarray(cov, dtype=float)
    cv = 0.5 * (cv + cv.T)
    w, v = np.linalg.eigh(cv)
    root = v * np.sqrt(np.clip(w, 0.0, None))
    z = np.random.default_rng(seed).standard_normal((int(n_draws), c.size))
    return c + z @ root.T


def monte_carlo(func_batch, c, cov, unit: str = "", n_draws: int = N_DRAWS, seed: int = SEED,
                samples=None) -> Quantity:
    """Propagate through ``func_batch`` (maps (D, K) -> (D,)); see the module docstring."""
    c = np.asarray(c, dtype=float)
    if samples is None:
        samples = sample_coefficients(c, cov, n_draws, seed)
    value = float(func_batch(c[None, :])[0])
    vals = np.concatenate([func_batch(samples[i : i + _CHUNK]) for i in range(0, len(samples), _CHUNK)])
    s = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    bias = float(np.mean(vals)) - value
    return Quantity.from_u(value, math.hypot(s, bias), unit, f"Monte Carlo ({len(vals)} draws)")


def delta_method(func, c, cov, step: float = 1e-6) -> float:
    """First-order ``u = sqrt(g^T C g)`` with a central-difference gradient of scalar ``func(c)``."""
    c = np.asarray(c, dtype=float)
    g = np.zeros(c.size)
    for i in range(c.size):
        e = np.zeros(c.size)
        e[i] = step
        g[i] = (func(c + e) - func(c - e)) / (2 * step)
    return float(np.sqrt(max(g @ np.asarray(cov) @ g, 0.0)))


# ----------------------------------------------------------------------------- batched figures


def _lens_rows(samples) -> np.ndarray:
    """Copy of (D, K) samples with the alignment columns zeroed."""
    return lens_only(np.atleast_2d(samples))


def rms_batch(samples) -> np.ndarray:
    """RMS (waves) of each row, alignment terms excluded, shape (D,)."""
    return np.sqrt(np.sum(_lens_rows(samples) ** 2, axis=1))


def pv_batch(samples, n_px: int = PV_GRID) -> np.ndarray:
    """PV (waves) of each row (grid + rim points, as in :func:`figures.pv_waves`), shape (D,)."""
    s = np.asarray(samples, dtype=float)
    b = pv_basis(n_px, s.shape[1])
    w = _lens_rows(s) @ b.T
    return w.max(axis=1) - w.min(axis=1)


def strehl_batch(samples, n_pupil: int = STREHL_GRID) -> np.ndarray:
    """On-axis Strehl ratio ``|sum A e^{i 2 pi W}|^2 / (sum A)^2`` per row (uniform amplitude)."""
    s = _lens_rows(samples)
    cover, idx, basis = _pupil_geometry(int(n_pupil), s.shape[1])
    a = cover.ravel()[idx]
    field = np.exp(2j * np.pi * (s @ basis.T)) @ a
    return np.abs(field) ** 2 / a.sum() ** 2


@lru_cache(maxsize=64)
def _overlap_difference(nu: float, azimuth_deg: float, n_terms: int, n_grid: int = 48) -> np.ndarray:
    """``B(p) - B(p - s)`` at points ``p`` of the overlap of the pupil and its copy shifted by ``s``.

    ``s = 2 nu`` pupil radii along the azimuth; the overlap lens is sampled on its own
    ``n_grid x n_grid`` bounding-box grid so the point count does not collapse near the cut-off.
    """
    s = 2.0 * nu
    half_h = math.sqrt(max(1.0 - (s / 2.0) ** 2, 0.0))
    a = (np.arange(n_grid) + 0.5) / n_grid
    xp = (s - 1.0) + a * (2.0 - s)  # along the shift
    yp = -half_h + a * 2 * half_h
    xx, yy = np.meshgrid(xp, yp)
    keep = (xx**2 + yy**2 <= 1.0) & ((xx - s) ** 2 + yy**2 <= 1.0)
    xx, yy = xx[keep], yy[keep]
    ca, sa = math.cos(math.radians(azimuth_deg)), math.sin(math.radians(azimuth_deg))
    x, y = xx * ca - yy * sa, xx * sa + yy * ca
    sx, sy = s * ca, s * sa
    d = zernike_basis(n_terms, x, y) - zernike_basis(n_terms, x - sx, y - sy)
    d.setflags(write=False)
    return d


def mtf_batch(samples, nu: float, azimuths_deg=MTF_AZIMUTHS_DEG, keep_defocus: bool = False) -> np.ndarray:
    """Smallest MTF over ``azimuths_deg`` at normalised frequency ``nu`` per row, shape (D,).

    ``MTF = MTF_dl(nu) |<exp(i 2 pi (W(p) - W(p - s)))>_overlap|`` for a uniform-amplitude pupil:
    the analytic overlap area times the mean phasor over the overlap (independent of the FFT route
    of :func:`metrology.analysis.figures.mtf`; the tests compare the two). ``keep_defocus``: Noll 4
    stays in the wavefront (a focus term: the MTF across the field, :mod:`metrology.analysis.field_mtf`).
    """
    s = _lens_rows(samples)
    if keep_defocus and s.shape[1] >= 4:
        s[:, 3] = np.atleast_2d(samples)[:, 3]
    nu = float(nu)
    if nu <= 0.0:
        return np.ones(len(s))
    if nu >= 1.0:
        return np.zeros(len(s))
    dl = float(mtf_diffraction_limited(nu))
    out = np.full(len(s), np.inf)
    for az in azimuths_deg:
        d = _overlap_difference(round(nu, 12), float(az), s.shape[1])
        ph = np.exp(2j * np.pi * (s @ d.T)).mean(axis=1)
        out = np.minimum(out, dl * np.abs(ph))
    return out


def family_batch(samples, family: str) -> np.ndarray:
    """Family magnitude ``sqrt(sum c^2)`` over the family's members present in the vector."""
    s = np.asarray(samples, dtype=float)
    idx = family_indices(family, s.shape[1])
    if not idx:
        return np.full(len(s), np.nan)
    return np.sqrt(np.sum(s[:, idx] ** 2, axis=1))


def family_indices(family: str, n_terms: int) -> list[int]:
    """0-based indices of the family's members among Noll 1..n_terms."""
    out = []
    for n, m in family_members(family):
        j = nm_to_noll(n, m)
        if j <= n_terms:
            out.append(j - 1)
    return sorted(out)


# ----------------------------------------------------------------------------- public helpers


def term_quantity(c, cov, noll: int) -> Quantity:
    """``|c_j|`` with ``u = sqrt(C_jj)`` (waves)."""
    c = np.asarray(c, dtype=float)
    return Quantity.from_u(abs(c[noll - 1]), math.sqrt(max(float(np.asarray(cov)[noll - 1, noll - 1]), 0.0)),
                           "waves", "direct")


def derived_figures(c, cov, wavelength_nm: float, na: float, *, pv: bool = True, strehl: bool = True,
                    mtf_frequencies_cyc_per_mm=(), families=(), terms=(), n_draws: int = N_DRAWS,
                    seed: int = SEED) -> dict:
    """Every judged figure from one shared set of draws.

    Returns
    -------
    dict of str -> Quantity
        ``"rms_waves"``, ``"rms_nm"``, ``"pv_waves"`` (if ``pv``), ``"strehl"`` (if ``strehl``),
        ``"mtf@<f>"`` per frequency (cycles/mm, as given), ``"family:<name>"``, ``"term:<noll>"``.
    """
    c, cv = lens_only(c, cov)
    samples = sample_coefficients(c, cv, n_draws, seed)
    out = {}
    rms = monte_carlo(rms_batch, c, cv, "waves", samples=samples)
    out["rms_waves"] = rms
    out["rms_nm"] = Quantity.from_u(rms.value * wavelength_nm, rms.u * wavelength_nm, "nm", rms.method)
    if pv:
        out["pv_waves"] = monte_carlo(pv_batch, c, cv, "waves", samples=samples)
    if strehl:
        out["strehl"] = monte_carlo(strehl_batch, c, cv, "", samples=samples)
    cut = cutoff_cyc_per_mm(wavelength_nm, na)
    for f in mtf_frequencies_cyc_per_mm:
        nu = float(f) / cut
        out[f"mtf@{f:g}"] = monte_carlo(lambda s, nu=nu: mtf_batch(s, nu), c, cv, "", samples=samples)
    for fam in families:
        out[f"family:{fam}"] = monte_carlo(lambda s, fam=fam: family_batch(s, fam), c, cv, "waves",
                                           samples=samples)
    for j in terms:
        j = int(j)
        if j <= c.size:
            out[f"term:{j}"] = term_quantity(c, cv, j)
    return out
