"""Wavefront maps, Zernike fits and coefficient tables (numpy, via the ``zernike`` package).

Grid convention (every map in this module): a square ``(N, N)`` array covers the unit disk with
pixel centres at ``u_i = (i - (N - 1) / 2) / (N / 2)``; ``x = u[column]``, ``y = u[row]`` (row 0 is
the most negative ``y``; displayed with row 0 at the top, +y points down), ``theta`` from +x
towards +y. ``RZern`` evaluates Noll-normalised Noll-ordered polynomials (its column ``k`` is Noll
``k + 1``) with exactly this angle convention once it is handed ``x = columns``, ``y = rows``
(``tests/test_wavefront.py`` pins it against a map built by hand).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from zernike import RZern

from metrology.conventions import ALIGNMENT_NOLL, COVERAGE_FACTOR
from metrology.orderings import noll_to_nm, nm_to_noll, zernike_family, zernike_name

# ----------------------------------------------------------------------------- basis


def _radial_order_for(n_terms: int) -> int:
    n = 0
    while (n + 1) * (n + 2) // 2 < n_terms:
        n += 1
    return n


def grid_coordinates(n_px: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of an ``(n_px, n_px)`` map in pupil radii: ``x[r, c] = u[c]``, ``y[r, c] = u[r]``."""
    u = (np.arange(n_px) - (n_px - 1) / 2.0) / (n_px / 2.0)
    x, y = np.meshgrid(u, u)  # 'xy' indexing: x varies along columns
    return x, y


def zernike_basis(n_terms: int, x, y) -> np.ndarray:
    """Noll 1..n_terms evaluated at points ``(x, y)`` (pupil radii), no disk clipping.

    Parameters
    ----------
    n_terms : int
    x, y : array_like, same shape (S...)

    Returns
    -------
    ndarray, shape (S_flat, n_terms)
        Rows follow ``np.ravel(x)`` (C order).
    """
    x = np.asarray(x, float).ravel()
    y = np.asarray(y, float).ravel()
    rz = RZern(_radial_order_for(n_terms))
    rz.make_cart_grid(x, y, unit_circle=False)  # 1-D input: Fortran and C order coincide
    return np.asarray(rz.ZZ[:, :n_terms])


@lru_cache(maxsize=16)
def _grid_basis(n_px: int, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside-disk flat index (C order), basis (P, n_terms)) of the standard grid."""
    x, y = grid_coordinates(n_px)
    inside = np.flatnonzero((x**2 + y**2).ravel() <= 1.0)
    basis = zernike_basis(n_terms, x.ravel()[inside], y.ravel()[inside])
    basis.setflags(write=False)
    inside.setflags(write=False)
    return inside, basis


@lru_cache(maxsize=16)
def _pv_basis(n_px: int, n_terms: int) -> np.ndarray:
    t = 2 * np.pi * (np.arange(4 * n_px) + 0.5) / (4 * n_px)
    rim = zernike_basis(n_terms, np.cos(t), np.sin(t))
    out = np.vstack([_grid_basis(n_px, n_terms)[1], rim])
    out.setflags(write=False)
    return out


def pv_basis(n_px: int, n_terms: int) -> np.ndarray:
    """Basis at the grid's pixel centres inside the disk plus ``4 n_px`` points on the rim.

    Used for peak-to-valley: the extremes of high-order terms sit on the edge, which pixel
    centres never reach. Shape (P + 4 n_px, n_terms).
    """
    return _pv_basis(int(n_px), int(n_terms))


def remove_terms(coeffs, remove=ALIGNMENT_NOLL) -> np.ndarray:
    """Copy of ``coeffs`` (Noll 1..K) with the Noll indices in ``remove`` set to 0."""
    c = np.array(coeffs, dtype=float)
    for j in remove:
        if 1 <= j <= c.size:
            c[j - 1] = 0.0
    return c


# ----------------------------------------------------------------------------- maps and fits


def wavefront_map(coeffs, n_px: int = 256, remove=ALIGNMENT_NOLL) -> np.ndarray:
    """Wavefront ``W = sum_j c_j Z_j`` on the standard grid.

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll 1..K coefficients, waves.
    n_px : int
        Map size.
    remove : iterable of int
        Noll indices left out (default: alignment terms 1-4).

    Returns
    -------
    ndarray, shape (n_px, n_px)
        Waves; NaN outside the unit disk.
    """
    c = remove_terms(coeffs, remove)
    inside, basis = _grid_basis(int(n_px), c.size)
    out = np.full(n_px * n_px, np.nan)
    out[inside] = basis @ c
    return out.reshape(n_px, n_px)


def fit_zernike(phase_map, mask=None, n_terms: int = 36) -> tuple[np.ndarray, float]:
    """Least-squares Noll fit of a map on the standard grid.

    Parameters
    ----------
    phase_map : ndarray, shape (N, N)
        Wavefront, waves (``x`` along columns, ``y`` along rows, see module docstring).
    mask : ndarray of bool, shape (N, N), optional
        Pixels to use; always intersected with the unit disk and the finite pixels.
    n_terms : int
        Fit Noll 1..n_terms.

    Returns
    -------
    coeffs : ndarray, shape (n_terms,)
        Noll 1..n_terms, waves.
    residual_rms : float
        RMS of (map - fit) over the used pixels, waves.
    """
    w = np.asarray(phase_map, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"phase_map must be square 2-D, got shape {w.shape}")
    n_px = w.shape[0]
    x, y = grid_coordinates(n_px)
    use = (x**2 + y**2 <= 1.0) & np.isfinite(w)
    if mask is not None:
        use &= np.asarray(mask, dtype=bool)
    if use.sum() < n_terms:
        raise ValueError(f"only {int(use.sum())} valid pixels for {n_terms} terms")
    rz = RZern(_radial_order_for(n_terms))
    rz.make_cart_grid(x, y, unit_circle=False)
    sel = rz.vect(use)  # RZern stores its grid in Fortran order: flatten the data the same way
    a = rz.ZZ[sel, :n_terms]
    b = rz.vect(w)[sel]
    coeffs, *_ = np.linalg.lstsq(a, b, rcond=None)
    resid = b - a @ coeffs
    return coeffs, float(np.sqrt(np.mean(resid**2)))


# ----------------------------------------------------------------------------- tables


def zernike_table(coeffs, u=None, cov=None) -> list[dict]:
    """One row per Noll term.

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll 1..K, waves.
    u : array_like, shape (K,), optional
        Standard uncertainties (waves); taken from ``sqrt(diag(cov))`` when ``cov`` is given.
    cov : ndarray, shape (K, K), optional

    Returns
    -------
    list of dict
        Keys ``noll, n, m, name, family, value_waves, u_waves, U_waves, alignment``
        (``alignment`` True for Noll 1-4; ``U = k u`` with the project's coverage factor).
    """
    c = np.asarray(coeffs, dtype=float)
    if u is None:
        u = np.sqrt(np.clip(np.diag(cov), 0, None)) if cov is not None else np.full(c.size, np.nan)
    u = np.asarray(u, dtype=float)
    rows = []
    for i, v in enumerate(c):
        j = i + 1
        n, m = noll_to_nm(j)
        rows.append(
            dict(
                noll=j,
                n=n,
                m=m,
                name=zernike_name(n, m),
                family=zernike_family(n, m),
                value_waves=float(v),
                u_waves=float(u[i]),
                U_waves=float(COVERAGE_FACTOR * u[i]),
                alignment=j in ALIGNMENT_NOLL,
            )
        )
    return rows


def pair_magnitude_axis(c_cos: float, c_sin: float, m: int, cov2x2=None) -> dict:
    """Magnitude and axis of a cos/sin pair ``c_cos cos(m theta) + c_sin sin(m theta)``.

    The pair equals ``A cos(m (theta - theta0))`` with ``A = hypot(c_cos, c_sin)`` and
    ``theta0 = atan2(c_sin, c_cos) / m`` (one maximum of the pattern), reported in
    ``[0, 360 / m)`` degrees, from +x towards +y.

    Parameters
    ----------
    c_cos, c_sin : float
        Noll coefficients of the ``m > 0`` and ``m < 0`` members, waves.
    m : int
        ``|m| >= 1``.
    cov2x2 : ndarray, shape (2, 2), optional
        Covariance of ``(c_cos, c_sin)``, waves^2.

    Returns
    -------
    dict
        ``magnitude_waves, u_magnitude_waves, axis_deg, u_axis_deg`` (delta method; the axis
        uncertainty is capped at the uniform-distribution value ``(360/m)/sqrt(12)`` when the
        magnitude is not significant).
    """
    m = abs(int(m))
    if m < 1:
        raise ValueError("pair_magnitude_axis needs |m| >= 1")
    a = math.hypot(c_cos, c_sin)
    axis = (math.degrees(math.atan2(c_sin, c_cos)) / m) % (360.0 / m)
    u_a = u_ax = float("nan")
    if cov2x2 is not None:
        cv = np.asarray(cov2x2, dtype=float)
        cap = (360.0 / m) / math.sqrt(12.0)
        if a > 0:
            g = np.array([c_cos, c_sin]) / a
            u_a = float(np.sqrt(max(g @ cv @ g, 0.0)))
            gt = np.array([-c_sin, c_cos]) / (a * a * m)
            u_ax = min(math.degrees(float(np.sqrt(max(gt @ cv @ gt, 0.0)))), cap)
        else:
            u_a = float(np.sqrt(max(np.trace(cv) / 2.0, 0.0)))
            u_ax = cap
    return dict(magnitude_waves=a, u_magnitude_waves=u_a, axis_deg=axis, u_axis_deg=u_ax)


def pair_table(coeffs, cov=None) -> list[dict]:
    """Magnitude/axis rows of every complete cos/sin pair among Noll 5..K.

    Returns
    -------
    list of dict
        ``family, n, m (= |m|), noll_cos, noll_sin`` plus the keys of :func:`pair_magnitude_axis`.
    """
    c = np.asarray(coeffs, dtype=float)
    k = c.size
    rows = []
    for j in range(1, k + 1):
        n, m = noll_to_nm(j)
        if m <= 0 or j in ALIGNMENT_NOLL:
            continue
        js = nm_to_noll(n, -m)
        if js > k:
            continue
        cv = None
        if cov is not None:
            idx = [j - 1, js - 1]
            cv = np.asarray(cov)[np.ix_(idx, idx)]
        row = dict(family=zernike_family(n, m), n=n, m=m, noll_cos=j, noll_sin=js)
        row.update(pair_magnitude_axis(c[j - 1], c[js - 1], m, cv))
        rows.append(row)
    rows.sort(key=lambda r: min(r["noll_cos"], r["noll_sin"]))
    return rows
