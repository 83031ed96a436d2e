"""Zernike polynomials in Noll order, as exact Cartesian polynomials.

The canonical key is ``(n, m)`` with signed ``m`` (``m >= 0``: ``cos(m theta)``, ``m < 0``:
``sin(|m| theta)``); Noll indices start at 1. Each polynomial is normalised to unit RMS over the
unit disk (Noll). See :mod:`metrology.conventions`.

Inside the differentiable model a Zernike sum is held as a matrix of monomial coefficients
``D[a, b]`` of ``x^a y^b`` (``x, y`` in units of the pupil radius). A lateral shift of the
polynomial is then an exact ``D -> Sx^T D Sy`` (binomial expansion), and evaluation on a grid is
separable (``Y D^T X^T``), which makes per-LED sub-pixel pupil shifts cost a few small matrix
products rather than one polynomial evaluation per LED and pixel.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from metrology.orderings import noll_norm, noll_to_nm


def radial_coefficients(n: int, m: int) -> dict[int, int]:
    """Integer coefficients of ``R_n^|m|(rho)`` as ``{power: coefficient}``."""
    m = abs(m)
    out = {}
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * math.factorial(n - s) // (
            math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s)
        )
        out[n - 2 * s] = c
    return out


def _poly_mul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.zeros((p.shape[0] + q.shape[0] - 1, p.shape[1] + q.shape[1] - 1), dtype=object)
    for (a, b), v in np.ndenumerate(p):
        if v:
            out[a : a + q.shape[0], b : b + q.shape[1]] += v * q
    return out


@lru_cache(maxsize=None)
def monomial_matrix(n_terms: int) -> np.ndarray:
    """Monomial coefficients of Noll 1..n_terms.

    Returns
    -------
    ndarray, shape (n_terms, d + 1, d + 1), float64
        ``M[k, a, b]`` is the coefficient of ``x^a y^b`` in Noll ``k + 1`` (normalised), with
        ``d`` the largest radial order.
    """
    nmax = max(noll_to_nm(j)[0] for j in range(1, n_terms + 1))
    out = np.zeros((n_terms, nmax + 1, nmax + 1))
    r2 = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=object)  # x^2 + y^2
    for k in range(n_terms):
        n, m = noll_to_nm(k + 1)
        am = abs(m)
        # (x + i y)^|m| split into real (cos) and imaginary (sin) parts
        re = np.zeros((am + 1, am + 1), dtype=object)
        im = np.zeros((am + 1, am + 1), dtype=object)
        for t in range(am + 1):
            c = math.comb(am, t)
            # i^t: t%4 = 0:1, 1:i, 2:-1, 3:-i ; term x^(am-t) y^t
            if t % 4 == 0:
                re[am - t, t] += c
            elif t % 4 == 1:
                im[am - t, t] += c
            elif t % 4 == 2:
                re[am - t, t] -= c
            else:
                im[am - t, t] -= c
        ang = re if m >= 0 else im
        total = np.zeros((nmax + 1, nmax + 1), dtype=object)
        for power, c in radial_coefficients(n, m).items():
            p = (power - am) // 2
            rp = np.array([[1]], dtype=object)
            for _ in range(p):
                rp = _poly_mul(rp, r2)
            term = _poly_mul(rp, ang) * c
            total[: term.shape[0], : term.shape[1]] += term
        out[k] = np.asarray(total, dtype=np.float64) * noll_norm(n, m)
    return out


def evaluate_numpy(coeffs: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Evaluate ``sum_k coeffs[k] Z_{k+1}(x, y)`` (float64 reference; x, y in pupil radii)."""
    mm = monomial_matrix(len(coeffs))
    d = np.tensordot(np.asarray(coeffs, float), mm, axes=1)
    out = np.zeros(np.broadcast(x, y).shape)
    for (a, b), v in np.ndenumerate(d):
        if v != 0.0:
            out = out + v * x**a * y**b
    return out


def shift_matrices(shift: torch.Tensor, degree: int) -> torch.Tensor:
    """Binomial shift matrices ``S[..., a, p] = C(a, p) (-s)^(a - p)`` for ``p <= a``.

    Parameters
    ----------
    shift : Tensor, shape (...)
        Shift in pupil radii.
    degree : int
        Largest power.

    Returns
    -------
    Tensor, shape (..., degree + 1, degree + 1)
        ``sum_a D_a (x - s)^a = sum_p (S^T D)_p x^p``.
    """
    a = torch.arange(degree + 1, device=shift.device)
    diff = a[:, None] - a[None, :]
    binom = torch.tensor(
        [[math.comb(i, j) if j <= i else 0 for j in range(degree + 1)] for i in range(degree + 1)],
        dtype=shift.dtype,
        device=shift.device,
    )
    powers = (-shift[..., None, None]) ** diff.clamp(min=0).to(shift.dtype)
    return binom * powers * (diff >= 0).to(shift.dtype)


def shifted_polynomial_grid(
    coeff_matrix: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Evaluate a 2-D polynomial at shifted points of a square grid, batched over shifts.

    Parameters
    ----------
    coeff_matrix : Tensor, shape (d + 1, d + 1)
        ``D[a, b]`` coefficient of ``x^a y^b``.
    shift_x, shift_y : Tensor, shape (J,)
        Shifts in the polynomial's units (pupil radii).
    u : Tensor, shape (B,)
        Grid coordinates along x (columns) and y (rows), pupil radii.

    Returns
    -------
    Tensor, shape (J, B, B)
        ``out[j, r, c] = poly(u[c] - shift_x[j], u[r] - shift_y[j])``.
    """
    d = coeff_matrix.shape[-1] - 1
    sx = shift_matrices(shift_x, d)  # (J, d+1, d+1) [a, p]
    sy = shift_matrices(shift_y, d)
    e = sx.transpose(-1, -2) @ coeff_matrix @ sy  # (J, p, q)
    powers = torch.arange(d + 1, device=u.device, dtype=u.dtype)
    vander = u[:, None] ** powers  # (B, d+1)
    # out[j, r, c] = sum_pq vander[c, p] e[j, p, q] vander[r, q]
    return vander @ e.transpose(-1, -2) @ vander.T


def zernike_grid(n_terms: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zernike basis at arbitrary points (for analysis and tests).

    Returns
    -------
    Tensor, shape (n_terms, *x.shape)
    """
    mm = torch.as_tensor(monomial_matrix(n_terms), dtype=x.dtype, device=x.device)
    d = mm.shape[-1] - 1
    px = torch.stack([x**a for a in range(d + 1)])
    py = torch.stack([y**b for b in range(d + 1)])
    return torch.einsum("kab,a...,b...->k...", mm, px, py)
