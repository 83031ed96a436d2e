"""The field model of the pupil (closed forms): Hopkins' terms as Zernikes, the generalised
least-squares field fit (exact recovery, covariance against Monte Carlo, chi-square), distortion
and field curvature from the tiles' sample pose."""

from __future__ import annotations

import numpy as np
import pytest

from metrology.analysis.field import TileData, fit_distortion, fit_field_curvature, fit_field_model
from metrology.analysis.wavefront import fit_zernike, grid_coordinates
from metrology.field_terms import design_matrix, field_basis, field_zernike

K = 15
GRID_H = [(hx, hy) for hy in (-0.7, 0.0, 0.7) for hx in (-0.7, 0.0, 0.7)]


def _hopkins_map(h, w, n_px=128):
    """``W(H, rho)`` of Hopkins' expansion evaluated directly on a pupil grid (waves)."""
    x, y = grid_coordinates(n_px)
    hx, hy = h
    hr = hx * x + hy * y  # H . rho
    r2 = x**2 + y**2
    return (w["W040"] * r2**2 + w["W131"] * hr * r2 + w["W222"] * hr**2 + w["W220"] * (hx**2 + hy**2) * r2
            + w["W311"] * (hx**2 + hy**2) * hr)


def test_hopkins_terms_as_zernike_match_a_direct_fit():
    w = {"W040": 0.05, "W131": 0.08, "W222": 0.10, "W220": 0.05, "W311": 0.03}
    for h in [(0.0, 0.0), (0.6, -0.3), (-0.2, 0.9)]:
        direct, _ = fit_zernike(_hopkins_map(h, w), n_terms=K)
        mapped = field_zernike(h, K, seidel=w)
        np.testing.assert_allclose(mapped[1:], direct[1:], atol=2e-4)  # piston dropped by design


def test_nodal_terms_follow_the_vector_product():
    # W222 (H - A)^2 = W222 (H^2 - 2 A H + A^2): the astigmatic node moves to A
    a = 0.3 + 0.2j
    w222 = 0.1
    from metrology.field_terms import ASTIGMATISM_PER_W222 as f

    nodal = {"astigmatism_linear": ((-2 * a * w222 * f).real, (-2 * a * w222 * f).imag),
             "astigmatism_constant": ((a * a * w222 * f).real, (a * a * w222 * f).imag)}
    at_node = field_zernike((a.real, a.imag), K, seidel={"W222": w222}, nodal=nodal)
    assert abs(at_node[4]) < 1e-12 and abs(at_node[5]) < 1e-12  # no astigmatism at the node
    on_axis = field_zernike((0.0, 0.0), K, seidel={"W222": w222}, nodal=nodal)
    assert np.hypot(on_axis[4], on_axis[5]) == pytest.approx(abs(a) ** 2 * w222 * f)


def _tiles(coeffs, covs, budget=None, names=()):
    return [TileData(f"t{i}", h, c, v, np.zeros(2), np.ones(2), 0.0, 1.0, None if budget is None else budget[:, i],
                     names) for i, (h, c, v) in enumerate(zip(GRID_H, coeffs, covs))]


def _truth(columns, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 0.02, len(columns))
    a = design_matrix(columns, np.array(GRID_H), K)
    c = np.zeros((len(GRID_H), K))
    c[:, 4:] = a @ theta
    return theta, c


@pytest.mark.parametrize("fifth", [False, True])
def test_synthetic_lens_is_recovered_exactly(fifth):
    cols = field_basis(K, fifth_order=fifth)
    theta, c = _truth(cols)
    cov = np.array([np.eye(K) * 1e-6] * len(GRID_H))
    model = fit_field_model(_tiles(c, cov), K, cols)
    np.testing.assert_allclose(model.fit.values, theta, atol=1e-10)
    assert model.chi2 < 1e-12 and model.dof == len(GRID_H) * (K - 4) - len(cols) and model.scatter_waves == 0
    for t, h in enumerate(GRID_H):
        value, _ = model.evaluate(np.array(h))
        np.testing.assert_allclose(value, c[t, 4:], atol=1e-10)
    # the Hopkins coefficients come back from the columns
    w = {"W040": 0.05, "W131": 0.08, "W222": 0.10}
    c = np.array([field_zernike(h, K, seidel=w) for h in GRID_H])
    seidel = fit_field_model(_tiles(c, cov), K).seidel
    for key, value in w.items():
        assert seidel[key][0] == pytest.approx(value, abs=1e-9)


def test_covariance_and_chi_square_against_monte_carlo():
    cols = field_basis(K, fifth_order=True)
    theta, c = _truth(cols, seed=3)
    rng = np.random.default_rng(5)
    lens = K - 4
    blocks = []
    for _ in GRID_H:  # correlated per-tile blocks of the lens terms
        m = rng.normal(0, 1, (lens, lens))
        b = np.zeros((K, K))
        b[4:, 4:] = (m @ m.T / lens + np.eye(lens)) * 1e-6
        blocks.append(b)
    # two station constants: the same error moves every tile alike (a wavelength, a magnification)
    budget = np.repeat(rng.normal(0, 1e-3, (2, 1, K)), len(GRID_H), axis=1)
    budget[:, :, :4] = 0.0
    big = np.zeros((len(GRID_H) * lens,) * 2)
    for i, b in enumerate(blocks):
        big[i * lens : (i + 1) * lens, i * lens : (i + 1) * lens] = b[4:, 4:]
    g = budget[:, :, 4:].reshape(2, -1)
    chol = np.linalg.cholesky(big + g.T @ g)
    names = ("a", "b")
    fits, chi2 = [], []
    for _ in range(800):
        noisy = c.copy()
        noisy[:, 4:] += (chol @ rng.normal(0, 1, len(big))).reshape(len(GRID_H), lens)
        model = fit_field_model(_tiles(noisy, blocks, budget, names), K, cols)
        fits.append(model.fit.values)
        chi2.append(model.chi2)  # against the tiles' own u (before any per-field scatter)
    fits = np.array(fits)
    predicted = fit_field_model(_tiles(c, blocks, budget, names), K, cols).fit.cov
    u_pred = np.sqrt(np.diag(predicted))
    u_mc = fits.std(axis=0)
    np.testing.assert_allclose(u_mc / u_pred, 1.0, atol=0.12)
    assert np.all(np.abs(fits.mean(axis=0) - theta) < 4 * u_pred / np.sqrt(len(fits)))
    dof = len(GRID_H) * lens - len(cols)
    assert np.mean(chi2) == pytest.approx(dof, rel=0.05)
    # without the shared constants the prediction is too small: the correlation matters
    alone = fit_field_model(_tiles(c, blocks), K, cols).fit.cov
    assert np.max(u_mc / np.sqrt(np.diag(alone))) > 1.3


def test_tiles_that_cannot_separate_the_terms_are_refused():
    ring = [(0.7, 0.7), (-0.7, 0.7), (0.7, -0.7), (-0.7, -0.7)]  # one radius: |H|^2 is a constant
    tiles = [TileData(f"t{i}", h, np.zeros(K), np.eye(K) * 1e-6, np.zeros(2), np.ones(2), 0.0, 1.0)
             for i, h in enumerate(ring * 3)]
    with pytest.raises(ValueError, match="const.Z11.*W240|W240.*const.Z11"):
        fit_field_model(tiles, K, field_basis(K, fifth_order=True))
    fit_field_model(tiles, K)  # the third-order basis is separable on one ring


def test_distortion_and_magnification_recovered():
    radius_mm = 0.075
    p0, m, w, d3 = np.array([0.4, -0.2]), 0.15, -0.05, 0.08  # um
    tiles = []
    for i, (hx, hy) in enumerate(GRID_H):
        h2 = hx * hx + hy * hy
        pos = p0 + m * np.array([hx, hy]) + w * np.array([-hy, hx]) + d3 * h2 * np.array([hx, hy])
        tiles.append(TileData(f"t{i}", (hx, hy), np.zeros(K), np.eye(K), pos, np.full(2, 0.01), 0.0, 1.0))
    out = fit_distortion(tiles, radius_mm)
    assert out["magnification_error"][0] == pytest.approx(m / 75.0, abs=1e-12)
    assert out["rotation_rad"][0] == pytest.approx(w / 75.0, abs=1e-12)
    assert out["distortion_percent_edge"][0] == pytest.approx(100 * d3 / 75.0, abs=1e-10)
    for (_name, r, pct, _u), (hx, hy) in zip(out["tiles"], GRID_H):
        if r > 0:
            assert pct == pytest.approx(100 * d3 * (hx * hx + hy * hy) / 75.0, abs=1e-10)  # pincushion > 0


def test_field_curvature_recovered():
    tiles = [TileData(f"t{i}", h, np.zeros(K), np.eye(K), np.zeros(2), np.ones(2),
                      3.0 + 0.5 * h[0] - 0.2 * h[1] + 4.0 * (h[0] ** 2 + h[1] ** 2), 0.1) for i, h in enumerate(GRID_H)]
    fit = fit_field_curvature(tiles)
    np.testing.assert_allclose(fit.values, [3.0, 0.5, -0.2, 4.0], atol=1e-10)


def test_per_field_scatter_is_estimated_and_covered():
    """A lens that is not exactly the field model (independent per-field noise tau on every term of
    every tile) and tiles whose own u differ tenfold: tau is found, and u covers the errors."""
    cols = field_basis(K)
    theta, c = _truth(cols, seed=7)
    rng = np.random.default_rng(11)
    own = [np.eye(K) * (s * 1e-4) ** 2 for s in rng.uniform(1, 10, len(GRID_H))]
    tau, z, taus = 0.004, [], []
    for _ in range(300):
        noisy = c.copy()
        noisy[:, 4:] += rng.normal(0, tau, noisy[:, 4:].shape)
        for t, v in enumerate(own):
            noisy[t, 4:] += rng.normal(0, np.sqrt(v[4, 4]), K - 4)
        model = fit_field_model(_tiles(noisy, own), K)
        taus.append(model.scatter_waves)
        z.append((model.fit.values - theta) / model.fit.u)
    z = np.array(z)
    assert np.median(taus) == pytest.approx(tau, rel=0.15)
    assert np.sqrt(np.mean(z**2)) == pytest.approx(1.0, abs=0.15)
    assert np.mean(np.abs(z) <= 2) > 0.9
    # without the scatter (tiles' own u alone) the same errors are many u wide
    plain = fit_field_model(_tiles(c, own), K)
    assert plain.scatter_waves == 0.0 and plain.chi2 < 1e-12
