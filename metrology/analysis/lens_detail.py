"""What an interferometer report prints besides the limits: the magnitude-and-axis (Seidel) table,
wavefront profiles along the astigmatism axes, a synthetic interferogram, and the report-only
figures of merit (Evans' PVr with its fit residual, the PSF-peak Strehl ratio) with their
uncertainties.

Conventions: :mod:`metrology.conventions` (Noll, waves, ``theta`` from +x towards +y, +y down on
maps); alignment terms Noll 1-4 are removed everywhere here.

Seidel equivalents
------------------
The primary Seidel aberrations follow from the primary Zernike terms as in Wyant & Creath (Applied
Optics and Optical Engineering XI, 1992, table 13), written for Noll-normalised coefficients
(Fringe ``Z = c_noll * sqrt(2 (n + 1))`` for ``m != 0``, ``sqrt(n + 1)`` for ``m = 0``):

* astigmatism ``W222 = 2 * sqrt(6) * A`` with ``A = hypot(c5, c6)``, axis ``theta0`` of the pair;
* coma ``W131 = 3 * sqrt(8) * A`` with ``A = hypot(c7, c8)``, axis ``theta0``;
* spherical ``W040 = 6 * sqrt(5) * c11`` (signed).

These are peak (edge-of-pupil) coefficients of the Seidel forms ``W222 rho^2 cos^2(theta - theta0)``,
``W131 rho^3 cos(theta - theta0)`` and ``W040 rho^4``; the balancing tilt and focus the Zernike terms
carry are alignment terms and are not reported. Higher-order pairs get their magnitude and axis only.
"""

from __future__ import annotations

import math

import numpy as np

from metrology.analysis.propagation import monte_carlo, pv_batch, sample_coefficients
from metrology.analysis.wavefront import pair_table, remove_terms, wavefront_map, zernike_basis
from metrology.analysis.figures import PVR_NOLL_TERMS, psf
from metrology.conventions import ALIGNMENT_NOLL
from metrology.orderings import lens_only, noll_to_nm, zernike_family

SEIDEL_FACTORS = {(2, 2): ("W222 astigmatism", 2.0 * math.sqrt(6.0)),
                  (3, 1): ("W131 coma", 3.0 * math.sqrt(8.0)),
                  (4, 0): ("W040 spherical", 6.0 * math.sqrt(5.0))}
"""``(n, |m|)`` -> (Seidel name, factor from the Noll magnitude to the Seidel peak coefficient)."""

STREHL_PSF_DRAWS = 200
"""Monte Carlo draws for the uncertainty of the PSF-peak Strehl ratio (one FFT per draw)."""


# ----------------------------------------------------------------------------- magnitude and axis
def magnitude_axis_table(coeffs, cov=None) -> list[dict]:
    """Every lens family present in Noll 5..K: magnitude, axis and, for the primary aberrations,
    the Seidel coefficient, each with its standard uncertainty.

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll 1..K, waves.
    cov : ndarray, shape (K, K), optional
        Covariance (waves^2).

    Returns
    -------
    list of dict
        In Noll order of the family's first member: ``family, n, m (|m|), noll (list),
        magnitude_waves, u_magnitude_waves, axis_deg, u_axis_deg`` (axis None for ``m = 0``),
        ``seidel`` (name or None), ``seidel_waves``, ``u_seidel_waves``.
    """
    c = np.asarray(coeffs, dtype=float)
    cv = None if cov is None else np.asarray(cov, dtype=float)
    rows = []
    for r in pair_table(c, cv):
        rows.append({"family": r["family"], "n": r["n"], "m": r["m"], "noll": [r["noll_cos"], r["noll_sin"]],
                     "magnitude_waves": r["magnitude_waves"], "u_magnitude_waves": r["u_magnitude_waves"],
                     "axis_deg": r["axis_deg"], "u_axis_deg": r["u_axis_deg"], "signed": False})
    for j in range(1, c.size + 1):
        n, m = noll_to_nm(j)
        if m == 0 and j not in ALIGNMENT_NOLL:
            u = math.sqrt(max(cv[j - 1, j - 1], 0.0)) if cv is not None else math.nan
            rows.append({"family": zernike_family(n, m), "n": n, "m": 0, "noll": [j],
                         "magnitude_waves": float(c[j - 1]), "u_magnitude_waves": u,
                         "axis_deg": None, "u_axis_deg": None, "signed": True})
    for r in rows:
        name, factor = SEIDEL_FACTORS.get((r["n"], r["m"]), (None, math.nan))
        r["seidel"] = name
        r["seidel_waves"] = r["magnitude_waves"] * factor if name else None
        r["u_seidel_waves"] = r["u_magnitude_waves"] * factor if name else None
    rows.sort(key=lambda r: min(r["noll"]))
    return rows


# ----------------------------------------------------------------------------- profiles
def astigmatism_axes_deg(coeffs) -> tuple[float, float]:
    """The two principal axes of primary astigmatism (degrees from +x towards +y): the direction of
    its maximum ``theta0`` in [0, 180) and ``theta0 + 90``; ``(0, 90)`` without Noll 5 and 6."""
    c = np.asarray(coeffs, dtype=float)
    if c.size < 6:
        return 0.0, 90.0
    theta0 = (math.degrees(math.atan2(c[4], c[5])) / 2.0) % 180.0
    return theta0, theta0 + 90.0


def wavefront_profile(coeffs, angle_deg: float, cov=None, n_points: int = 201) -> dict:
    """The wavefront along the pupil diameter at ``angle_deg`` (alignment terms removed).

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll 1..K, waves.
    angle_deg : float
        Direction of the diameter, from +x towards +y.
    cov : ndarray, shape (K, K), optional
        Covariance; gives the pointwise standard uncertainty ``u(r) = sqrt(b(r)^T C b(r))``.
    n_points : int

    Returns
    -------
    dict
        ``r`` (n_points,) normalised pupil coordinate -1..1 along the direction, ``waves`` (n_points,),
        ``u_waves`` (n_points,) or None, ``angle_deg``.
    """
    c = remove_terms(coeffs)
    r = np.linspace(-1.0, 1.0, int(n_points))
    a = math.radians(angle_deg)
    b = zernike_basis(c.size, r * math.cos(a), r * math.sin(a))
    out = {"r": r, "waves": b @ c, "u_waves": None, "angle_deg": float(angle_deg)}
    if cov is not None:
        _, cv = lens_only(c, np.asarray(cov, dtype=float))
        out["u_waves"] = np.sqrt(np.clip(np.einsum("pi,ij,pj->p", b, cv, b), 0.0, None))
    return out


# ----------------------------------------------------------------------------- interferogram
READABLE_TILT_FRINGES = 6.0
"""Fringes of tilt across the pupil diameter added to the synthetic interferogram by default."""


def readable_tilt_fringes(coeffs) -> float:
    """Tilt (fringes across the diameter, along x) that keeps a synthetic interferogram readable:
    6, or enough to outnumber the wavefront's own peak-to-valley twice when that is larger."""
    w = wavefront_map(coeffs, 64)
    pv = float(np.nanmax(w) - np.nanmin(w)) if np.isfinite(w).any() else 0.0
    return float(max(READABLE_TILT_FRINGES, math.ceil(2.0 * pv)))


def synthetic_interferogram(coeffs, tilt_fringes: float, n_px: int = 256) -> np.ndarray:
    """Fringes ``I = (1 + cos(2 pi (W + t x))) / 2`` of the lens wavefront with a tilt ``t`` along x.

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll 1..K, waves (alignment terms removed).
    tilt_fringes : float
        Fringes of tilt across the pupil diameter (``t = tilt_fringes / 2`` waves per pupil radius).
    n_px : int
        Map size (standard grid of :mod:`metrology.analysis.wavefront`: +y down).

    Returns
    -------
    ndarray, shape (n_px, n_px)
        Intensity 0..1, NaN outside the pupil. One fringe = one wave of wavefront (single pass).
    """
    w = wavefront_map(coeffs, int(n_px))
    x = (np.arange(n_px) - (n_px - 1) / 2.0) / (n_px / 2.0)
    return 0.5 * (1.0 + np.cos(2.0 * np.pi * (w + 0.5 * float(tilt_fringes) * x[None, :])))


# ----------------------------------------------------------------------------- report-only figures
def residual_rms_waves(coeffs) -> float:
    """RMS (waves) of the wavefront beyond Noll 36: what a 36-term Zernike fit of the measured
    wavefront leaves as its residual (0 when the pupil model has at most 36 terms)."""
    c = np.asarray(coeffs, dtype=float)
    return float(np.sqrt(np.sum(c[PVR_NOLL_TERMS:] ** 2)))


def _pvr_batch(samples) -> np.ndarray:
    s = np.atleast_2d(np.asarray(samples, dtype=float))
    return pv_batch(s[:, :PVR_NOLL_TERMS]) + 3.0 * np.sqrt(np.sum(s[:, PVR_NOLL_TERMS:] ** 2, axis=1))


def _strehl_psf_batch(samples) -> np.ndarray:
    return np.array([psf(row, n_pupil=64, pad=4)[0].max() for row in np.atleast_2d(samples)])


def report_figures(c, cov, pv=None, seed: int = 0) -> dict:
    """PVr (Evans) and the PSF-peak Strehl ratio, each with its own Monte Carlo uncertainty, and the
    fit residual that PVr adds.

    ``PVr = PV(Noll <= 36) + 3 RMS(Noll > 36)``: the pupil is a Zernike model, so the residual of
    a 36-term fit is exactly the part beyond Noll 36 (zero, and PVr = PV, when at most 36 terms were
    fitted). The PSF-peak Strehl ratio is the peak of the sampled PSF (64 pupil pixels, 4x padding),
    which coma moves off-axis; its u comes from :data:`STREHL_PSF_DRAWS` draws of the coefficients.

    Parameters
    ----------
    c : array_like, shape (K,)
        Noll 1..K, waves.
    cov : ndarray, shape (K, K)
        Covariance, waves^2.
    pv : Quantity, optional
        The PV already propagated: PVr is that very quantity when K <= 36 (no residual).
    seed : int

    Returns
    -------
    dict
        ``pvr_waves``, ``strehl_psf`` (:class:`~metrology.analysis.propagation.Quantity`),
        ``fit_residual_waves`` (float).
    """
    c, cv = lens_only(np.nan_to_num(np.asarray(c, dtype=float)), np.nan_to_num(np.asarray(cov, dtype=float)))
    samples = sample_coefficients(c, cv, STREHL_PSF_DRAWS, seed)
    residual = residual_rms_waves(c)
    if pv is not None and c.size <= PVR_NOLL_TERMS:
        pvr = pv
    else:
        pvr = monte_carlo(_pvr_batch, c, cv, "waves", seed=seed)
    return {
        "pvr_waves": pvr,
        "strehl_psf": monte_carlo(_strehl_psf_batch, c, cv, "", samples=samples),
        "fit_residual_waves": residual,
    }

