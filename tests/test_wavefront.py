"""Zernike fit, maps, tables, pair magnitude/axis; orientation pinned on hand-built maps."""

import numpy as np
import pytest

from metrology.analysis import wavefront as wf


def _hand_grid(n):
    u = (np.arange(n) - (n - 1) / 2) / (n / 2)
    x = np.tile(u, (n, 1))  # x = column coordinate
    y = np.tile(u[:, None], (1, n))  # y = row coordinate
    return x, y


def test_fit_returns_known_coefficients():
    rng = np.random.default_rng(0)
    c = rng.normal(0, 0.1, 45)
    w = wf.wavefront_map(c, 128, remove=())
    fit, resid = wf.fit_zernike(w, None, 45)
    np.testing.assert_allclose(fit, c, atol=1e-6)
    assert resid < 1e-9


def test_fit_orientation_on_hand_built_map():
    x, y = _hand_grid(96)
    inside = x**2 + y**2 <= 1
    # 0.3 x tilt along +x (Noll 2 = 2 rho cos), 0.2 astig 45 (Noll 5 = sqrt6 * 2xy),
    # -0.1 coma y (Noll 7 = sqrt8 (3 rho^2 - 2) y)
    w = 0.3 * 2 * x + 0.2 * np.sqrt(6) * 2 * x * y - 0.1 * np.sqrt(8) * (3 * (x**2 + y**2) - 2) * y
    w = np.where(inside, w, np.nan)
    c, _ = wf.fit_zernike(w, None, 15)
    expect = np.zeros(15)
    expect[[1, 4, 6]] = [0.3, 0.2, -0.1]
    np.testing.assert_allclose(c, expect, atol=1e-9)
    # and the map we produce follows the same orientation
    m = wf.wavefront_map(expect, 96, remove=())
    np.testing.assert_allclose(m[inside], w[inside], atol=1e-9)
    assert np.all(np.isnan(m[~inside]))


def test_fit_respects_mask_and_reports_residual():
    x, y = _hand_grid(64)
    w = 0.5 * 2 * y + 0.01 * np.sign(x)  # y tilt + a step no low-order Zernike fits
    mask = np.ones_like(w, bool)
    mask[:, :5] = False
    w[:, :5] = 1e6  # garbage outside the mask must not matter
    c, resid = wf.fit_zernike(w, mask, 10)
    assert c[2] == pytest.approx(0.5, abs=2e-3)
    assert 0.003 < resid < 0.01


def test_map_removes_alignment_and_nan_outside():
    c = np.zeros(11)
    c[:4] = 1.0
    c[10] = 0.05
    m = wf.wavefront_map(c, 64)
    x, y = _hand_grid(64)
    r2 = x**2 + y**2
    exp = 0.05 * np.sqrt(5) * (6 * r2**2 - 6 * r2 + 1)
    np.testing.assert_allclose(m[r2 <= 1], exp[r2 <= 1], atol=1e-12)
    assert np.isnan(m[0, 0])


def test_table_rows():
    c = np.array([0.1, 0.0, 0.0, 0.2, 0.03, -0.04])
    rows = wf.zernike_table(c, u=np.full(6, 0.01))
    assert [r["noll"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[3]["alignment"] and not rows[4]["alignment"]
    assert rows[5]["name"] == "astigmatism 0/90" and rows[5]["family"] == "astigmatism"
    assert rows[4]["U_waves"] == pytest.approx(0.02)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_pair_axis_is_pattern_maximum(m):
    a, theta0 = 0.05, np.radians(17.0)
    cc, cs = a * np.cos(m * theta0), a * np.sin(m * theta0)
    out = wf.pair_magnitude_axis(cc, cs, m, np.diag([1e-6, 1e-6]))
    assert out["magnitude_waves"] == pytest.approx(a)
    assert out["axis_deg"] == pytest.approx(17.0)
    assert out["u_magnitude_waves"] == pytest.approx(1e-3)
    assert out["u_axis_deg"] == pytest.approx(np.degrees(1e-3 / (a * m)))
    # the pattern cc cos(m t) + cs sin(m t) peaks at theta0
    t = np.radians(np.linspace(0, 359.9, 3600))
    pat = cc * np.cos(m * t) + cs * np.sin(m * t)
    assert np.degrees(t[np.argmax(pat)]) % (360 / m) == pytest.approx(17.0, abs=0.2)


def test_pair_table_astigmatism():
    c = np.zeros(11)
    c[4], c[5] = 0.03, 0.04  # Noll 5 sin, Noll 6 cos
    rows = wf.pair_table(c, np.eye(11) * 1e-6)
    astig = [r for r in rows if r["family"] == "astigmatism"][0]
    assert astig["magnitude_waves"] == pytest.approx(0.05)
    assert astig["axis_deg"] == pytest.approx(np.degrees(np.arctan2(0.03, 0.04)) / 2)
