"""What the report prints besides the limits (issue 17): Seidel table, profiles, synthetic
interferogram, and PVr / fit residual / PSF-peak Strehl computed, not copied."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metrology.analysis import lens_detail as L
from metrology.analysis.figures import pv_waves
from metrology.analysis.wavefront import wavefront_map


def test_seidel_astigmatism_is_the_peak_of_the_seidel_form():
    c = np.zeros(11)
    c[5] = 0.01  # Noll 6, astigmatism 0 deg
    row = next(r for r in L.magnitude_axis_table(c, np.eye(11) * 1e-8) if r["n"] == 2)
    # W222 rho^2 cos^2(theta): the Zernike form plus its balancing focus; at the pupil edge along the
    # axis it is W222 above the value across it
    w = wavefront_map(c, 257)
    edge_along, edge_across = w[128, 256], w[0, 128]
    assert row["seidel_waves"] == pytest.approx(2 * math.sqrt(6) * 0.01)
    assert edge_along - edge_across == pytest.approx(row["seidel_waves"], rel=0.02)


def test_interferogram_has_the_stated_tilt_fringes():
    fringes = L.synthetic_interferogram(np.zeros(11), tilt_fringes=6.0, n_px=512)
    centre = fringes[256] - 0.5
    crossings = int(np.sum(np.sign(centre[1:]) != np.sign(centre[:-1])))
    assert crossings == 12  # 6 periods across the diameter: two half-intensity crossings each


def test_profile_follows_the_wavefront():
    c = np.zeros(11)
    c[10] = 0.02  # spherical: radially symmetric, the same along every diameter
    a, b = L.wavefront_profile(c, 0.0), L.wavefront_profile(c, 57.0)
    assert np.allclose(a["waves"], b["waves"], atol=1e-12)
    rho = np.asarray(a["r"])
    assert np.allclose(a["waves"], 0.02 * math.sqrt(5) * (6 * rho**4 - 6 * rho**2 + 1), atol=1e-12)


def test_pvr_and_residual_are_computed_not_copied():
    rng = np.random.default_rng(3)
    c = np.zeros(45)
    c[4:36] = rng.normal(0, 0.01, 32)
    c[36:] = rng.normal(0, 0.004, 9)  # terms beyond Noll 36: the 36-term fit's residual
    cov = np.diag(np.r_[np.zeros(4), np.full(41, 1e-6)])
    out = L.report_figures(c, cov, seed=1)
    residual = math.sqrt(float(np.sum(c[36:] ** 2)))
    assert out["fit_residual_waves"] == pytest.approx(residual)
    assert out["pvr_waves"].value == pytest.approx(pv_waves(c[:36]) + 3 * residual, rel=1e-3)  # grid vs MC grid
    assert out["pvr_waves"].value > pv_waves(c) and out["pvr_waves"].u > 0
    assert 0 < out["strehl_psf"].value < 1 and out["strehl_psf"].u > 0
