"""Zernike orderings, names and families: the one Noll index map of the project.

The canonical key is ``(n, m)`` with signed ``m`` (``m >= 0``: ``cos(m theta)``, ``m < 0``:
``sin(|m| theta)``), see :mod:`metrology.conventions`. Index systems exist only at the edges:

* **Noll** (1-based), our internal vector order: even ``j`` carries ``cos``, odd ``j`` ``sin``.
* **ANSI / OSA** (0-based): ``j = (n (n + 2) + m) / 2``.
* **Fringe / University of Arizona** (1-based): ``j = (1 + (n + |m|) / 2)^2 - 2 |m| + [m < 0]``
  for every index except the classic 37-term set's last term: Fringe 37 is ``(12, 0)`` and, to
  keep the map one-to-one beyond 37, ``(6, +6)`` takes index 49 (the two are swapped with respect
  to the bare formula). Fringe polynomials are *peak*-normalised (no Noll factor).

Families (used for per-family limits) group the cos/sin pair of one ``(n, |m|)``: the family
magnitude is ``sqrt(c_cos^2 + c_sin^2)`` (or ``|c|`` for ``m = 0``). See ``docs/spec.md``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from metrology.conventions import ALIGNMENT_NOLL

MAX_NOLL = 231
"""Largest Noll index accepted in files (radial order 20)."""

# ----------------------------------------------------------------------------- index maps


def _check_nm(n: int, m: int) -> None:
    if n < 0 or abs(m) > n or (n - abs(m)) % 2:
        raise ValueError(f"invalid Zernike (n, m) = ({n}, {m})")


def noll_to_nm(j: int) -> tuple[int, int]:
    """``(n, m)`` of Noll index ``j`` (1-based; even ``j`` cos, odd ``j`` sin, ``m < 0`` = sin)."""
    j = int(j)
    if j < 1:
        raise ValueError(f"Noll index must be >= 1, got {j}")
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    k = j - n * (n + 1) // 2 - 1  # position inside the radial order, 0-based
    am = n % 2 + 2 * ((k + (n + 1) % 2) // 2)
    m = -am if (am != 0 and j % 2 == 1) else am
    return n, m


def nm_to_noll(n: int, m: int) -> int:
    """Noll index (1-based) of ``(n, m)``."""
    _check_nm(n, m)
    first = n * (n + 1) // 2 + 1  # first Noll index of radial order n
    for j in range(first, first + n + 1):
        if noll_to_nm(j) == (n, m):
            return j
    raise AssertionError("unreachable")  # pragma: no cover


def ansi_to_nm(j: int) -> tuple[int, int]:
    """``(n, m)`` of ANSI/OSA index ``j`` (0-based)."""
    j = int(j)
    if j < 0:
        raise ValueError(f"ANSI index must be >= 0, got {j}")
    n = int(math.ceil((-3 + math.sqrt(9 + 8 * j)) / 2))
    while n * (n + 3) // 2 < j:  # guard floating point
        n += 1
    while n > 0 and (n - 1) * (n + 2) // 2 >= j:
        n -= 1
    m = 2 * j - n * (n + 2)
    return n, m


def nm_to_ansi(n: int, m: int) -> int:
    """ANSI/OSA index (0-based) of ``(n, m)``."""
    _check_nm(n, m)
    return (n * (n + 2) + m) // 2


def _fringe_formula(n: int, m: int) -> int:
    return (1 + (n + abs(m)) // 2) ** 2 - 2 * abs(m) + (1 if m < 0 else 0)


def nm_to_fringe(n: int, m: int) -> int:
    """Fringe (University of Arizona) index (1-based) of ``(n, m)``.

    Classic 37-term set for 1..37 (Fringe 37 = ``(12, 0)``); the general formula beyond, with
    ``(6, +6)`` moved to 49 so the map stays one-to-one.
    """
    _check_nm(n, m)
    if (n, m) == (12, 0):
        return 37
    if (n, m) == (6, 6):
        return 49
    return _fringe_formula(n, m)


def fringe_to_nm(j: int) -> tuple[int, int]:
    """``(n, m)`` of Fringe index ``j`` (1-based); inverse of :func:`nm_to_fringe`."""
    j = int(j)
    if j < 1:
        raise ValueError(f"Fringe index must be >= 1, got {j}")
    if j == 37:
        return 12, 0
    if j == 49:
        return 6, 6
    q = math.isqrt(j - 1)  # (1 + (n + |m|)/2) - 1 for this block: block q holds j in [q^2+1, (q+1)^2]
    s = q  # s = (n + |m|) / 2
    r = (s + 1) ** 2 - j  # = 2|m| - [m < 0]
    am = (r + 1) // 2
    m = -am if r % 2 == 1 else am
    n = 2 * s - am
    _check_nm(n, m)
    return n, m


# ----------------------------------------------------------------------------- names and families

_FOIL = {1: "coma", 2: "astigmatism", 3: "trefoil", 4: "quadrafoil", 5: "pentafoil", 6: "hexafoil",
         7: "heptafoil", 8: "octafoil"}
_LEVEL = {0: "", 1: "secondary ", 2: "tertiary ", 3: "quaternary "}


def _base_order(am: int) -> int:
    """Lowest radial order of a family with ``|m| = am`` that is a lens figure."""
    if am == 0:
        return 4  # primary spherical
    if am == 1:
        return 3  # primary coma
    return am


def zernike_family(n: int, m: int) -> str:
    """Family name of ``(n, m)`` (both members of a cos/sin pair share it).

    ``"piston"``, ``"tilt"``, ``"defocus"`` for the alignment terms; then one family per
    ``(n, |m|)``: ``|m| = 0`` -> ``"spherical"`` (n=4), ``"secondary spherical"`` (6), ``"tertiary
    spherical"`` (8), ``"quaternary spherical"`` (10); ``|m| = 1`` -> ``"coma"`` (3), ``"secondary
    coma"`` (5), ...; ``|m| = 2`` -> ``"astigmatism"`` (2), ``"secondary astigmatism"`` (4), ...;
    ``|m| = 3`` -> ``"trefoil"``, ``4`` ``"quadrafoil"``, ``5`` ``"pentafoil"``, ``6`` ``"hexafoil"``,
    ``7`` ``"heptafoil"``, ``8`` ``"octafoil"`` with the same prefixes. Anything else:
    ``"Z(n,|m|)"``.
    """
    _check_nm(n, m)
    am = abs(m)
    if n == 0:
        return "piston"
    if n == 1:
        return "tilt"
    if (n, am) == (2, 0):
        return "defocus"
    level = (n - _base_order(am)) // 2
    base = "spherical" if am == 0 else _FOIL.get(am)
    if base is None or level not in _LEVEL:
        return f"Z({n},{am})"
    return _LEVEL[level] + base


def family_members(family: str, max_n: int = 20) -> list[tuple[int, int]]:
    """All ``(n, m)`` (``n <= max_n``) whose :func:`zernike_family` is ``family``."""
    return list(_family_members(str(family), int(max_n)))


@lru_cache(maxsize=256)
def _family_members(family: str, max_n: int) -> tuple:
    out = []
    for n in range(max_n + 1):
        for m in range(-n, n + 1, 2):
            if zernike_family(n, m) == family:
                out.append((n, m))
    return tuple(out)


def lens_families(max_n: int = 12) -> list[str]:
    """Family names of the lens (non-alignment) terms up to radial order ``max_n``, in Noll order."""
    out = []
    for j in range(5, (max_n + 1) * (max_n + 2) // 2 + 1):
        f = zernike_family(*noll_to_nm(j))
        if f not in out:
            out.append(f)
    return out


def zernike_name(n: int, m: int) -> str:
    """Human name of ``(n, m)``.

    Cos/sin members are told apart by a suffix: ``" 0/90"`` / ``" 45"`` for ``|m| = 2`` families,
    ``" x"`` (cos) / ``" y"`` (sin) otherwise; ``m = 0`` lens terms are ``"primary spherical"``,
    ``"secondary spherical"``, ... Terms without a family name are ``"Z(n,m)"``.
    """
    _check_nm(n, m)
    if n == 0:
        return "piston"
    if n == 1:
        return "tilt x" if m > 0 else "tilt y"
    fam = zernike_family(n, m)
    if fam.startswith("Z("):
        return f"Z({n},{m})"
    if m == 0:
        if fam == "defocus":
            return "defocus"
        return fam if " " in fam else "primary " + fam
    if abs(m) == 2:
        return fam + (" 0/90" if m > 0 else " 45")
    return fam + (" x" if m > 0 else " y")


def is_alignment(n: int, m: int) -> bool:
    """True for piston, tilt and defocus (Noll 1-4)."""
    return n < 2 or (n, m) == (2, 0)


# ----------------------------------------------------------------------------- coefficient vectors


def lens_only(coeffs, cov=None):
    """Copies with the alignment terms (:data:`metrology.conventions.ALIGNMENT_NOLL`: piston, tilt,
    defocus) zeroed: the one place they are taken out of coefficients and covariances.

    Parameters
    ----------
    coeffs : array_like, shape (K,) or (D, K)
        Noll 1..K coefficients (rows: one vector each).
    cov : array_like, shape (K, K), optional
        Their covariance; its alignment rows and columns are zeroed.

    Returns
    -------
    ndarray, or (ndarray, ndarray) when ``cov`` is given
    """
    c = np.array(coeffs, dtype=float, copy=True)
    k = c.shape[-1]
    idx = [j - 1 for j in ALIGNMENT_NOLL if j <= k]
    c[..., idx] = 0.0
    if cov is None:
        return c
    cv = np.array(cov, dtype=float, copy=True)
    if cv.shape != (k, k):
        raise ValueError(f"covariance shape {cv.shape} does not match {k} coefficients")
    cv[idx, :] = 0.0
    cv[:, idx] = 0.0
    return c, cv


def noll_norm(n: int, m: int) -> float:
    """Noll normalisation ``N(n, m)``: ``sqrt(n + 1)`` for ``m = 0``, ``sqrt(2 (n + 1))`` otherwise."""
    return math.sqrt(n + 1) if m == 0 else math.sqrt(2 * (n + 1))


def _reorder(c, src_to_nm, dst_index, n_out, src_start, dst_start, scale):
    c = np.asarray(c, dtype=float)
    if c.ndim != 1:
        raise ValueError("coefficient vector must be 1-D")
    pairs = []
    for i, v in enumerate(c):
        n, m = src_to_nm(i + src_start)
        pairs.append((dst_index(n, m) - dst_start, v * scale(n, m), (n, m)))
    if n_out is None:
        n_out = max((k for k, _, _ in pairs), default=-1) + 1
    out = np.zeros(n_out)
    for k, v, nm in pairs:
        if k < n_out:
            out[k] = v
        elif v != 0.0:
            raise ValueError(f"term {nm} (non-zero) does not fit in {n_out} output terms")
    return out


def noll_to_fringe_coefficients(c_noll, n_fringe: int | None = None) -> np.ndarray:
    """Noll-normalised coefficients (Noll 1..K) -> Fringe coefficients (Fringe 1..L, peak-normalised).

    ``c_fringe = c_noll * N(n, m)`` so the wavefront is unchanged. ``L`` defaults to the largest
    Fringe index reached; a non-zero term beyond ``n_fringe`` raises ``ValueError``.
    """
    return _reorder(c_noll, noll_to_nm, nm_to_fringe, n_fringe, 1, 1, noll_norm)


def fringe_to_noll_coefficients(c_fringe, n_noll: int | None = None) -> np.ndarray:
    """Inverse of :func:`noll_to_fringe_coefficients`: ``c_noll = c_fringe / N(n, m)``."""
    return _reorder(c_fringe, fringe_to_nm, nm_to_noll, n_noll, 1, 1, lambda n, m: 1.0 / noll_norm(n, m))


def noll_to_ansi_coefficients(c_noll, n_ansi: int | None = None) -> np.ndarray:
    """Noll 1..K -> ANSI 0..L-1 order, Noll normalisation kept (export order only)."""
    return _reorder(c_noll, noll_to_nm, nm_to_ansi, n_ansi, 1, 0, lambda n, m: 1.0)


def ansi_to_noll_coefficients(c_ansi, n_noll: int | None = None) -> np.ndarray:
    """ANSI 0..L-1 (Noll-normalised) -> Noll 1..K."""
    return _reorder(c_ansi, ansi_to_nm, nm_to_noll, n_noll, 0, 1, lambda n, m: 1.0)
