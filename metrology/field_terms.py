"""Field dependence of the pupil, stated once: wave aberration terms of the field vector H as Noll
Zernike coefficients (waves), and the basis the full-field model is fitted in.

Field vector
------------
``H = (Hx, Hy) = (X0, Y0) / field_radius_mm``: a tile's centre in the sample plane (mm; x along
image columns, y along image rows, :mod:`metrology.conventions`) over the lens's field radius
(the station's ``field.field_radius_mm``). ``|H| = 1`` is the edge of the field.

Hopkins' wave aberration terms (rotationally symmetric lens)
------------------------------------------------------------
``W(H, rho) = W040 rho^4 + W131 (H.rho) rho^2 + W222 (H.rho)^2 + W220 |H|^2 rho^2 + W311 |H|^2 (H.rho)``
(waves; ``rho`` the pupil vector, ``|rho| <= 1``). With Noll's normalisation
(``Z4 = sqrt3 (2 rho^2 - 1)``, ``Z5/Z6 = sqrt6 rho^2 sin/cos 2 theta``,
``Z7/Z8 = sqrt8 (3 rho^3 - 2 rho) sin/cos theta``, ``Z11 = sqrt5 (6 rho^4 - 6 rho^2 + 1)``):

* ``rho^4 = Z11 / (6 sqrt5) + Z4 / (2 sqrt3) + 1/3``  (spherical: ``c11 = W040 / (6 sqrt5)``);
* ``rho^3 cos theta = Z8 / (3 sqrt8) + Z2 / 3``  (coma: ``c8 + i c7 = W131 (Hx + i Hy) / (3 sqrt8)``);
* ``(H.rho)^2 = |H|^2 rho^2 / 2 + rho^2 [(Hx^2 - Hy^2) cos 2theta + 2 Hx Hy sin 2theta] / 2``
  (astigmatism: ``c6 + i c5 = W222 (Hx + i Hy)^2 / (2 sqrt6)``, plus ``W222 |H|^2 / 2`` of ``rho^2``);
* ``rho^2 = Z4 / (2 sqrt3) + 1/2`` (field curvature ``W220 |H|^2`` and the ``rho^2`` parts above);
* ``rho cos theta = Z2 / 2`` (distortion: ``c2 + i c3 = W311 |H|^2 (Hx + i Hy) / 2``).

Nodal terms (a decentred or tilted element; Thompson's nodal aberration theory, third order)
---------------------------------------------------------------------------------------------
Written directly as Zernike coefficients with complex notation ``c_cos + i c_sin``: constant coma
``a`` (``c8 + i c7 += a``), constant astigmatism ``b`` (``c6 + i c5 += b``) and linear
astigmatism ``L H`` (``c6 + i c5 += L (Hx + i Hy)``: the astigmatic node displaced from the axis,
``W222 (H - A)^2 = W222 (H^2 - 2 A H + A^2)`` in the vector product of the theory).

Vignetting across the field
---------------------------
Off axis, a second aperture of the lens (a lens rim, a spacer) cuts the stop: the pupil is the
intersection of the stop (radius 1, pupil radii) with a circle of radius ``r`` whose centre moves
linearly with the field, ``c(H) = s H`` (pupil radii; ``s > 0``: towards ``+H``, pupil ``x`` along
image columns as the field's). ``[r, s]`` is the station's ``field.vignetting`` (the fit's start)
and the lens file's ``[field] vignetting`` (the simulator's truth); :func:`vignetting_at` gives one
field point's ``(r, cx, cy)``, the form of ``lens.vignetting`` / ``pupil.vignetting_*``. Where the
circle does not cut the stop (``r >= 1 + s |H|``) the pupil is the stop alone.

The fitted basis
----------------
:func:`field_basis` lists the columns of the field model over the lens Noll terms 5..K: every term
has a constant column (the nodal constants among them), and the field-dependent columns of
Hopkins' third order (``W131`` coma, ``W222`` astigmatism) with the nodal linear astigmatism (two
columns); on request the fifth-order ``W240`` (spherical quadratic in ``|H|``) and ``W331`` (coma
cubic). Tilt and defocus (Noll 2-4) are alignment terms of each tile's fit: distortion and field
curvature are measured from the tiles' sample position and defocus instead
(:mod:`metrology.analysis.field`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SEIDEL_KEYS = ("W040", "W131", "W222", "W220", "W311")
"""Hopkins' wave aberration coefficients (waves, peak at ``|H| = 1``, ``rho = 1``) the lens file states."""

NODAL_KEYS = ("coma_constant", "astigmatism_constant", "astigmatism_linear")
"""Nodal (misaligned element) terms of the lens file: ``[cos, sin]`` Zernike pairs (waves)."""

SPHERICAL_PER_W040 = 1.0 / (6.0 * math.sqrt(5.0))
COMA_PER_W131 = 1.0 / (3.0 * math.sqrt(8.0))
ASTIGMATISM_PER_W222 = 1.0 / (2.0 * math.sqrt(6.0))
DEFOCUS_PER_RHO2 = 1.0 / (2.0 * math.sqrt(3.0))
"""Noll Z4 coefficient per wave of ``rho^2``."""


VIGNETTING_MARGIN = 0.05
"""A tile is modelled with the second aperture when its nominal circle comes within this many pupil
radii of the stop's far edge (``r < 1 + s |H| + margin``): a start that does not yet cut the stop
can still move onto it."""


def vignetting_at(vignetting, h) -> tuple | None:
    """The second aperture ``(r, cx, cy)`` (pupil radii) at field point ``h`` (2,) for the field
    vignetting ``(r, s)`` (module docstring, "Vignetting across the field"), or ``None`` where it does not
    reach the stop (within :data:`VIGNETTING_MARGIN`) or ``vignetting`` is ``None``."""
    if vignetting is None:
        return None
    r, s = (float(v) for v in vignetting)
    hx, hy = float(h[0]), float(h[1])
    if r >= 1.0 + abs(s) * math.hypot(hx, hy) + VIGNETTING_MARGIN:
        return None
    return (r, s * hx, s * hy)


def field_zernike(h, n_terms: int, seidel: dict | None = None, nodal: dict | None = None) -> np.ndarray:
    """Noll 1..n_terms coefficients (waves) of the field-dependent terms at field points ``h``.

    Parameters
    ----------
    h : array-like, shape (T, 2) or (2,)
        Normalised field vectors ``(Hx, Hy)``.
    n_terms : int
        Number of Noll terms (>= 11).
    seidel : dict, optional
        ``{"W040": waves, ...}`` (keys of :data:`SEIDEL_KEYS`; missing = 0).
    nodal : dict, optional
        ``{"coma_constant": (cos, sin), ...}`` (keys of :data:`NODAL_KEYS`; waves).

    Returns
    -------
    ndarray, shape (T, n_terms) (or (n_terms,) for one field point)
        Piston is dropped; tilt (Noll 2, 3) carries distortion and defocus (Noll 4) the ``rho^2``
        parts (field curvature, the balance of spherical and astigmatism).
    """
    if n_terms < 11:
        raise ValueError("the field terms need at least 11 Noll terms")
    hh = np.atleast_2d(np.asarray(h, dtype=np.float64))
    s = {k: 0.0 for k in SEIDEL_KEYS} | dict(seidel or {})
    nd = {k: (0.0, 0.0) for k in NODAL_KEYS} | dict(nodal or {})
    hc = hh[:, 0] + 1j * hh[:, 1]
    h2 = np.abs(hc) ** 2
    out = np.zeros((hh.shape[0], n_terms))
    coma = s["W131"] * COMA_PER_W131 * hc + complex(*nd["coma_constant"])
    astig = s["W222"] * ASTIGMATISM_PER_W222 * hc**2 + complex(*nd["astigmatism_constant"]) \
        + complex(*nd["astigmatism_linear"]) * hc
    tilt = s["W311"] * h2 * hc / 2.0 + s["W131"] * hc / 3.0
    rho2 = s["W040"] + s["W222"] * h2 / 2.0 + s["W220"] * h2  # waves of rho^2 (W040's rho^4 holds one)
    out[:, 1], out[:, 2] = tilt.real, tilt.imag
    out[:, 3] = rho2 * DEFOCUS_PER_RHO2
    out[:, 5], out[:, 4] = astig.real, astig.imag
    out[:, 7], out[:, 6] = coma.real, coma.imag
    out[:, 10] = s["W040"] * SPHERICAL_PER_W040
    return out[0] if np.ndim(h) == 1 else out


@dataclass(frozen=True)
class FieldColumn:
    """One column of the field model: ``name`` (stable key), ``label`` (for reports) and the Noll
    terms it moves with their field functions (``((noll, kind), ...)``, see :func:`_column_values`)."""

    name: str
    label: str
    terms: tuple


def _column_values(kind: str, h: np.ndarray) -> np.ndarray:
    """Field function ``kind`` at field points ``h`` (T, 2), shape (T,)."""
    hx, hy = h[:, 0], h[:, 1]
    table = {
        "1": np.ones_like(hx), "hx": hx, "hy": hy, "-hy": -hy, "h2": hx**2 + hy**2,
        "hx2-hy2": hx**2 - hy**2, "2hxhy": 2 * hx * hy,
        "h2hx": (hx**2 + hy**2) * hx, "h2hy": (hx**2 + hy**2) * hy,
    }
    return table[kind]


def field_basis(n_terms: int, fifth_order: bool = False) -> list[FieldColumn]:
    """The field model over Noll 5..``n_terms`` (see the module text).

    Constant columns ``const.Z<j>`` for every lens term; ``W131`` (coma linear in H), ``W222``
    (astigmatism quadratic) and ``astigmatism_linear.x/.y`` (nodal); with ``fifth_order`` also
    ``W240`` (spherical quadratic in H) and ``W331`` (coma cubic), which need tiles at three or
    more field radii and cost precision on few tiles (``W331`` is nearly collinear with ``W131``
    on a 3 x 3 grid). Column values are Zernike coefficients (waves) at ``|H| = 1``
    (``W131 = 3 sqrt8 x`` column value, ``W222 = 2 sqrt6 x`` column value:
    :func:`seidel_from_columns`).
    """
    cols = [FieldColumn(f"const.Z{j}", f"Z{j} constant", ((j, "1"),)) for j in range(5, n_terms + 1)]
    cols += [
        FieldColumn("W131", "coma, linear in H", ((8, "hx"), (7, "hy"))),
        FieldColumn("W222", "astigmatism, quadratic in H", ((6, "hx2-hy2"), (5, "2hxhy"))),
        FieldColumn("astigmatism_linear.x", "astigmatism, linear in H (nodal, x)", ((6, "hx"), (5, "hy"))),
        FieldColumn("astigmatism_linear.y", "astigmatism, linear in H (nodal, y)", ((6, "-hy"), (5, "hx"))),
    ]
    if fifth_order:
        if n_terms >= 11:
            cols.append(FieldColumn("W240", "spherical, quadratic in H", ((11, "h2"),)))
        cols.append(FieldColumn("W331", "coma, cubic in H", ((8, "h2hx"), (7, "h2hy"))))
    return cols


def design_matrix(columns: list[FieldColumn], h, n_terms: int, first: int = 5) -> np.ndarray:
    """Model matrix ``A`` with ``c_t[first..n_terms] = A[t] @ theta``, shape (T, n_lens, P)."""
    hh = np.atleast_2d(np.asarray(h, dtype=np.float64))
    a = np.zeros((hh.shape[0], n_terms - first + 1, len(columns)))
    for p, col in enumerate(columns):
        for noll, kind in col.terms:
            if first <= noll <= n_terms:
                a[:, noll - first, p] += _column_values(kind, hh)
    return a


def seidel_from_columns(values: dict) -> dict:
    """Hopkins coefficients (waves) from fitted column values (Zernike waves at ``|H| = 1``):
    ``W040`` from ``const.Z11``, ``W131``, ``W222``; a linear map, so the same factors scale the
    uncertainties. Keys present in ``values`` only."""
    factors = {"const.Z11": ("W040", 1 / SPHERICAL_PER_W040), "W131": ("W131", 1 / COMA_PER_W131),
               "W222": ("W222", 1 / ASTIGMATISM_PER_W222)}
    return {name: values[key] * f for key, (name, f) in factors.items() if key in values}
