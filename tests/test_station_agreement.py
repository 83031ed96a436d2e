"""The station combined over the tiles of a full-field capture, and the test of the tiles' agreement
(``metrology/analysis/station_agreement.py``): closed forms, a Monte Carlo of the chi-square, and
the finding's wording. End to end (an undeclared second aperture): tests/test_field_vignetting.py."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from metrology.analysis.station_agreement import (
    DISAGREEMENT_RATIO, StationAgreement, combine_tiles, disagreement_finding,
)

NAMES = [f"r{i // 3}c{i % 3}" for i in range(9)]


def test_without_constants_it_is_the_inverse_variance_mean():
    y = np.array([1.0, 1.2, 0.9, 1.1])
    u = np.array([0.1, 0.2, 0.1, 0.3])
    a = combine_tiles("x", y, u, np.zeros((4, 0)), NAMES[:4])
    w = 1 / u**2
    mean = float((w * y).sum() / w.sum())
    chi2 = float((w * (y - mean) ** 2).sum())
    assert a.value == pytest.approx(mean, rel=1e-12)
    assert a.chi2 == pytest.approx(chi2, rel=1e-10)
    assert a.dof == 3 and a.tiles == 4
    assert a.birge_ratio == pytest.approx(math.sqrt(chi2 / 3))
    assert a.u == pytest.approx(max(1.0, a.birge_ratio) / math.sqrt(w.sum()), rel=1e-10)


def test_a_constant_common_to_the_tiles_does_not_average_away():
    """A constant acting alike on every tile (contribution c each) moves all estimates together: the
    mean and the agreement are those without it, and its c adds to u in quadrature."""
    y = np.array([0.50, 0.52, 0.49])
    u = np.array([0.01, 0.02, 0.01])
    c = 0.05
    plain = combine_tiles("x", y, u, np.zeros((3, 0)), NAMES[:3])
    shared = combine_tiles("x", y, u, np.full((3, 1), c), NAMES[:3])
    assert shared.value == pytest.approx(plain.value, abs=1e-12)
    assert shared.chi2 == pytest.approx(plain.chi2, rel=1e-8)
    w = 1 / u**2
    expected = math.sqrt(1 / w.sum() + c**2) * max(1.0, plain.birge_ratio)
    assert shared.u == pytest.approx(expected, rel=1e-8)
    # treated as independent (the old combination) u would shrink by sqrt(3) instead
    assert shared.u > 3 * plain.u


def test_the_agreement_chi_square_follows_its_distribution():
    """Tiles drawn from the stated covariance (fit part independent, two constants acting on each
    tile with its own sensitivity): chi2 averages dof, the residuals are standard normal, the
    Birge ratio stays far below the finding's line, and u covers the truth."""
    rng = np.random.default_rng(5)
    n, trials = 9, 3000
    u = rng.uniform(0.005, 0.02, n)
    c = rng.normal(0, 0.02, (n, 2))
    v = np.diag(u**2) + c @ c.T
    chol = np.linalg.cholesky(v)
    chi2, sigma, birge, covered = [], [], [], 0
    for _ in range(trials):
        a = combine_tiles("x", 1.0 + chol @ rng.standard_normal(n), u, c, NAMES)
        chi2.append(a.chi2)
        sigma.append(a.worst_sigma)
        birge.append(a.birge_ratio)
        covered += abs(a.value - 1.0) < 2 * a.u
    assert np.mean(chi2) == pytest.approx(n - 1, rel=0.05)
    assert max(birge) < DISAGREEMENT_RATIO / 2
    assert covered / trials > 0.95
    # the worst of 9 standardised residuals: |z| of the max of 9 correlated normals, mostly < 3.5
    assert np.quantile(np.abs(sigma), 0.99) < 3.5


def test_a_tile_that_bends_the_station_is_named():
    y = np.full(9, -0.49)
    y[8] = 0.33  # the corner tile absorbed an undeclared aperture with the LED shift
    a = combine_tiles("illumination.shift_mm[0]", y, np.full(9, 0.015), np.full((9, 1), 0.01), NAMES)
    assert a.disagrees and a.worst_tile == "r2c2" and a.worst_sigma > 10
    text = disagreement_finding([a], {"illumination.shift_mm[0]": "LED array shift x"})
    assert text.startswith("the tiles disagree on the one station they share (LED array shift x: scatter ")
    assert "tile r2c2 furthest at +" in text and "[field] vignetting" in text
    assert re.search(r"\.\s", text) is None and len(text) < 300  # one sentence


def test_agreeing_tiles_give_no_finding_and_one_tile_cannot_disagree():
    ok = StationAgreement("x", 0.0, 0.1, 8.0, 8, 1.0, 9, "r0c0", 1.2)
    assert disagreement_finding([ok]) is None
    one = combine_tiles("x", [3.0], [0.1], np.zeros((1, 0)), ["r1c1"])
    assert one.dof == 0 and not one.disagrees and one.worst_sigma == 0.0 and one.u == pytest.approx(0.1)
    many = [StationAgreement(f"p{i}", 0.0, 0.1, 640.0 * (i + 1), 8, math.sqrt(80.0 * (i + 1)), 9, "r2c2", 9.0)
            for i in range(4)]
    text = disagreement_finding(many)
    assert text.index("p3") < text.index("p2") and "p1" not in text and " and 2 more)" in text


def test_the_mean_is_weighted_by_the_fit_parts_and_u_carries_the_constants():
    """Constants acting on the tiles with different sensitivities: the reported mean is weighted by
    the fit parts alone (it does not lean on the tiles' differences to cancel a constant), and its u
    is the full ``w^T V w``; the agreement is the generalised least-squares chi-square."""
    y = np.array([0.10, 0.13, 0.08, 0.11])
    u = np.array([0.01, 0.02, 0.01, 0.015])
    c = np.array([[0.02], [0.05], [-0.01], [0.03]])
    a = combine_tiles("x", y, u, c, NAMES[:4])
    w = (1 / u**2) / (1 / u**2).sum()
    v = np.diag(u**2) + c @ c.T
    assert a.value == pytest.approx(float(w @ y), rel=1e-12)
    vi = np.linalg.inv(v)
    m_gls = float(np.ones(4) @ vi @ y / (np.ones(4) @ vi @ np.ones(4)))
    chi2 = float((y - m_gls) @ vi @ (y - m_gls))
    assert a.chi2 == pytest.approx(chi2, rel=1e-9)
    assert a.u == pytest.approx(max(1.0, math.sqrt(chi2 / 3)) * math.sqrt(w @ v @ w), rel=1e-9)
