"""Zernike orderings, names, families and coefficient conversions."""

import numpy as np
import pytest

from metrology import orderings as o


def test_noll_parity_rule():
    for j in range(2, 67):
        n, m = o.noll_to_nm(j)
        if m != 0:
            assert (m > 0) == (j % 2 == 0), j  # even j cos, odd j sin


def test_known_indices():
    assert o.noll_to_nm(4) == (2, 0)
    assert o.noll_to_nm(5) == (2, -2) and o.noll_to_nm(6) == (2, 2)
    assert o.noll_to_nm(11) == (4, 0) and o.noll_to_nm(22) == (6, 0)
    assert o.ansi_to_nm(0) == (0, 0) and o.ansi_to_nm(1) == (1, -1) and o.ansi_to_nm(12) == (4, 0)
    assert o.fringe_to_nm(9) == (4, 0) and o.fringe_to_nm(16) == (6, 0) and o.fringe_to_nm(36) == (10, 0)
    assert o.fringe_to_nm(37) == (12, 0)
    assert o.fringe_to_nm(5) == (2, 2) and o.fringe_to_nm(6) == (2, -2) and o.fringe_to_nm(10) == (3, 3)


def test_round_trips():
    for j in range(1, 67):
        nm = o.noll_to_nm(j)
        assert o.nm_to_noll(*nm) == j
        a = o.nm_to_ansi(*nm)
        assert o.ansi_to_nm(a) == nm
        assert o.noll_to_nm(o.nm_to_noll(*o.ansi_to_nm(a))) == nm
    for j in range(1, 38):
        nm = o.fringe_to_nm(j)
        assert o.nm_to_fringe(*nm) == j
        assert o.nm_to_fringe(*o.ansi_to_nm(o.nm_to_ansi(*o.noll_to_nm(o.nm_to_noll(*nm))))) == j
    seen = {o.fringe_to_nm(j) for j in range(1, 122)}
    assert len(seen) == 121  # one-to-one beyond the classic 37 as well


def test_invalid_nm():
    with pytest.raises(ValueError):
        o.nm_to_noll(3, 0)
    with pytest.raises(ValueError):
        o.noll_to_nm(0)


def test_names_and_families():
    assert o.zernike_name(0, 0) == "piston"
    assert o.zernike_name(1, 1) == "tilt x" and o.zernike_name(1, -1) == "tilt y"
    assert o.zernike_name(2, 0) == "defocus"
    assert o.zernike_name(2, 2) == "astigmatism 0/90" and o.zernike_name(2, -2) == "astigmatism 45"
    assert o.zernike_name(3, 1) == "coma x" and o.zernike_name(3, -1) == "coma y"
    assert o.zernike_name(3, 3) == "trefoil x" and o.zernike_name(3, -3) == "trefoil y"
    assert o.zernike_name(4, 0) == "primary spherical"
    assert o.zernike_name(6, 0) == "secondary spherical"
    assert o.zernike_name(4, -2) == "secondary astigmatism 45"
    assert o.zernike_name(5, 1) == "secondary coma x"
    assert o.zernike_name(20, 2) == "Z(20,2)"
    assert o.zernike_family(2, 2) == o.zernike_family(2, -2) == "astigmatism"
    assert o.zernike_family(4, 2) == "secondary astigmatism"
    assert o.zernike_family(4, 0) == "spherical" and o.zernike_family(6, 0) == "secondary spherical"
    assert o.zernike_family(4, 4) == "quadrafoil" and o.zernike_family(5, 5) == "pentafoil"
    assert sorted(o.family_members("astigmatism")) == [(2, -2), (2, 2)]
    assert o.family_members("spherical") == [(4, 0)]
    assert o.is_alignment(2, 0) and not o.is_alignment(2, 2)


def test_coefficient_conversion_preserves_wavefront():
    """Fringe (peak-normalised) coefficients reproduce the same wavefront as Noll ones."""
    from metrology.analysis.wavefront import zernike_basis

    rng = np.random.default_rng(3)
    c_noll = rng.normal(size=36)
    c_fr = o.noll_to_fringe_coefficients(c_noll)
    x, y = rng.uniform(-0.7, 0.7, (2, 50))
    w_noll = zernike_basis(36, x, y) @ c_noll
    w_fr = np.zeros_like(x)
    for i, v in enumerate(c_fr):
        if v == 0:
            continue
        n, m = o.fringe_to_nm(i + 1)
        j = o.nm_to_noll(n, m)
        w_fr += v * zernike_basis(j, x, y)[:, j - 1] / o.noll_norm(n, m)  # un-normalised polynomial
    np.testing.assert_allclose(w_fr, w_noll, atol=1e-10)
    np.testing.assert_allclose(o.fringe_to_noll_coefficients(c_fr, 36), c_noll, atol=1e-12)
    # Fringe coefficient of Noll 11 (spherical, n=4): times sqrt(5), at Fringe 9
    assert c_fr[8] == pytest.approx(c_noll[10] * np.sqrt(5))
    a = o.noll_to_ansi_coefficients(c_noll)
    assert a[12] == c_noll[10]
    np.testing.assert_allclose(o.ansi_to_noll_coefficients(a, 36), c_noll)
    with pytest.raises(ValueError):
        o.noll_to_fringe_coefficients(c_noll, 9)
