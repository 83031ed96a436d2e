"""Figures of merit (RMS, PV, Strehl, PSF, MTF) and the propagation of their uncertainty."""

import numpy as np
import pytest

from metrology.analysis import figures as F
from metrology.analysis import propagation as P
from metrology.analysis.wavefront import wavefront_map


def _lens(seed=1, k=28, scale=0.02):
    c = np.zeros(k)
    c[4:] = np.random.default_rng(seed).normal(0, scale, k - 4)
    return c


def _rms(c, cov, n_draws=P.N_DRAWS):
    """The RMS wavefront error with its Monte Carlo uncertainty, as the verdict and report get it."""
    return P.derived_figures(c, cov, 520.0, 0.1, pv=False, strehl=False, n_draws=n_draws)["rms_waves"]


def test_rms_matches_pixel_rms():
    c = _lens()
    c[:4] = [0.3, 0.2, -0.1, 0.5]  # alignment terms must be ignored
    w = wavefront_map(c, 256)
    pix = np.sqrt(np.nanmean(w**2))
    assert F.rms_waves(c) == pytest.approx(pix, rel=1e-3)
    assert F.rms_nm(c, 520.0) == pytest.approx(520.0 * F.rms_waves(c))


def test_pv_and_pvr():
    c = np.zeros(11)
    c[10] = 0.1  # spherical: sqrt5 (6r^4 - 6r^2 + 1), range [-0.5, 1] * sqrt5
    assert F.pv_waves(c) == pytest.approx(0.1 * np.sqrt(5) * 1.5, rel=1e-4)
    assert F.pvr_waves(c, 0.01) == pytest.approx(F.pv_waves(c) + 0.03)
    c40 = np.zeros(40)
    c40[10] = 0.1
    c40[38] = 5.0  # beyond Noll 36: ignored by PVr
    assert F.pvr_waves(c40, 0.0) == pytest.approx(F.pv_waves(c))


def test_strehl_lambda_over_14_both_routes():
    sigma = 1 / 14
    assert F.strehl_mahajan(sigma) == pytest.approx(0.8176, abs=1e-4)
    c = np.zeros(11)
    c[[5, 7, 10]] = sigma / np.sqrt(3)  # astigmatism, coma, spherical
    assert F.rms_waves(c) == pytest.approx(sigma)
    s_psf = F.strehl_psf(c, n_pupil=64, pad=4)
    assert abs(s_psf - F.strehl_mahajan(sigma)) < 0.02
    assert F.strehl_on_axis(c, n_pupil=64) <= s_psf + 1e-12


def test_psf_perfect_peak_and_tilt_direction():
    p, px = F.psf(np.zeros(1), n_pupil=32, pad=4)
    assert p.max() == pytest.approx(1.0) and px == pytest.approx(1 / 8)
    n = p.shape[0]
    assert np.unravel_index(np.argmax(p), p.shape) == (n // 2, n // 2)
    # first dark ring of the Airy pattern at 0.61 lambda/NA
    r = np.arange(n // 2) * px
    profile = p[n // 2, n // 2:]
    first_min = r[np.argmax(np.diff(profile) > 0)]
    assert first_min == pytest.approx(0.61, abs=px)
    # +y tilt (Noll 3) moves the PSF peak to +y (larger row index), +x tilt to larger column
    c = np.array([0, 0, 0.5])
    p, _ = F.psf(c, n_pupil=32, pad=4, remove=())
    row, col = np.unravel_index(np.argmax(p), p.shape)
    assert row > n // 2 and col == n // 2


def test_mtf_clear_pupil_matches_analytic():
    nu = np.linspace(0, 1, 101)
    m = F.mtf(np.zeros(1), nu)
    assert np.max(np.abs(m - F.mtf_diffraction_limited(nu))) < 0.01
    curve = F.mtf_curve(np.zeros(1), 520.0, 0.1, n_points=21, n_pupil=64)
    assert curve["frequency_cyc_per_mm"][-1] == pytest.approx(2 * 0.1 / 520e-6)
    assert np.max(np.abs(curve["mtf_y"] - curve["mtf_diffraction_limited"])) < 0.015


def test_mtf_aberrated_routes_agree():
    c = _lens(scale=0.03)
    for nu in (0.2, 0.5, 0.8):
        for az in (0.0, 90.0):
            fft_route = F.mtf(c, [nu], az, n_pupil=128)[0]
            overlap_route = P.mtf_batch(c[None], nu, (az,))[0]
            assert overlap_route == pytest.approx(fft_route, abs=0.01)
            assert fft_route < F.mtf_diffraction_limited(nu)


def test_mc_rms_agrees_with_delta_far_from_zero():
    c = _lens(scale=0.06)
    cov = np.diag(np.r_[np.zeros(4), np.full(c.size - 4, 0.004**2)])
    q = _rms(c, cov)
    u_delta = P.delta_method(F.rms_waves, c, cov)
    assert q.value == pytest.approx(F.rms_waves(c))
    assert q.u == pytest.approx(u_delta, rel=0.10)
    assert q.U == pytest.approx(2 * q.u)


def test_mc_rms_near_zero_is_not_overconfident():
    c = np.zeros(15)
    cov = np.diag(np.r_[np.zeros(4), np.full(11, 0.01**2)])
    q = _rms(c, cov)
    assert P.delta_method(F.rms_waves, c + 1e-12, cov) < 1e-3  # delta method collapses at zero
    assert q.u > 0.02  # MC (spread + bias) does not: E[rms] ~ 0.01 sqrt(11)


def test_derived_figures_consistent():
    c = _lens(scale=0.02)
    cov = np.diag(np.r_[np.zeros(4), np.full(c.size - 4, 0.002**2)])
    d = P.derived_figures(c, cov, 520.0, 0.1, mtf_frequencies_cyc_per_mm=(100,),
                          families=("astigmatism",), terms=(11,), n_draws=500)
    assert d["rms_waves"].value == pytest.approx(F.rms_waves(c))
    assert d["rms_nm"].value == pytest.approx(520 * F.rms_waves(c))
    assert d["pv_waves"].value == pytest.approx(F.pv_waves(c), rel=0.01)
    assert d["strehl"].value == pytest.approx(F.strehl_on_axis(c, n_pupil=128), abs=0.005)
    nu = 100 / F.cutoff_cyc_per_mm(520, 0.1)
    worst = min(F.mtf(c, [nu], a)[0] for a in (0, 45, 90, 135))
    assert d["mtf@100"].value == pytest.approx(worst, abs=0.01)
    assert d["family:astigmatism"].value == pytest.approx(np.hypot(c[4], c[5]))
    assert d["term:11"].value == abs(c[10]) and d["term:11"].u == pytest.approx(0.002)
    for q in d.values():
        assert q.u > 0 and q.U == pytest.approx(2 * q.u)
    # strehl u roughly follows d(Mahajan)/d(sigma) * u_rms
    s = F.rms_waves(c)
    u_strehl_lin = 8 * np.pi**2 * s * F.strehl_mahajan(s) * d["rms_waves"].u
    assert d["strehl"].u == pytest.approx(u_strehl_lin, rel=0.5)


def test_alignment_uncertainty_ignored():
    c = _lens()
    cov = np.diag(np.r_[np.full(4, 1.0), np.full(c.size - 4, 1e-6)])
    q = _rms(c, cov, n_draws=300)
    assert q.u < 5e-3
