"""MTF across the field (metrology/analysis/field_mtf.py): sagittal and tangential MTF at a field
point against closed forms and the FFT route, the focus term from the field curvature, the
uncertainty, and MTF limits per field zone (fast: synthetic field models, no fit). The end-to-end
MTF on a simulated full-frame capture is in tests/test_full_field.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from metrology.analysis import figures
from metrology.analysis.field import TileData, fit_field_curvature, fit_field_model, w220_from_curvature
from metrology.analysis.field_mtf import (FOCUS_BEST, FOCUS_IMAGE_PLANE, FieldMtf, defocus_noll4_per_um,
                                          image_plane_focus, mtf_at_point, mtf_vignetted_batch,
                                          tangential_azimuth_deg)
from metrology.analysis.propagation import delta_method, mtf_batch
from metrology.analysis.spec import MtfLimit, Zone
from metrology.analysis.verdict import FAIL, INCONCLUSIVE, PASS
from metrology.analysis.zones import judge_zone, mtf_vs_field
from metrology.conventions import MTF_DIRECTIONS_TEXT
from metrology.field_terms import design_matrix, field_basis

WL, NA, K = 520.0, 0.1, 11
CUT = 2 * NA / (WL * 1e-6)  # cycles/mm
FREQS = (60.0, 120.0, 250.0)
GRID = [(x, y) for y in (-0.7, 0.0, 0.7) for x in (-0.7, 0.0, 0.7)]


def _closed_form(nu):
    return (2 / math.pi) * (math.acos(nu) - nu * math.sqrt(1 - nu * nu))


def _mtf(c, h, freqs=FREQS, cov=None):
    r = mtf_at_point(c, np.zeros((K, K)) if cov is None else cov, h, freqs, WL, NA, n_draws=50)
    return np.array([q.value for q in r["sagittal"]]), np.array([q.value for q in r["tangential"]]), r


def _c(**terms):
    c = np.zeros(K)
    for j, v in terms.items():
        c[int(j[1:]) - 1] = v
    return c


@pytest.mark.parametrize("h", [(0.0, 0.0), (0.6, 0.0), (-0.3, 0.5), (0.0, -1.0)])
def test_clear_pupil_is_the_diffraction_limit_in_both_directions(h):
    s, t, r = _mtf(np.zeros(K), h)
    expected = [_closed_form(f / CUT) for f in FREQS]
    np.testing.assert_allclose(s, expected, atol=1e-12)
    np.testing.assert_allclose(t, expected, atol=1e-12)
    np.testing.assert_allclose(r["diffraction_limited"], expected, atol=1e-12)


def test_directions_follow_the_field_vector_and_the_axis_convention():
    assert tangential_azimuth_deg((0.0, 0.0)) == 0.0  # on the axis: tangential along +x
    assert tangential_azimuth_deg((0.0, 0.5)) == pytest.approx(90.0)
    assert tangential_azimuth_deg((-0.5, -0.5)) == pytest.approx(-135.0)
    assert "on the axis (H = 0) tangential is along +x" in MTF_DIRECTIONS_TEXT


def test_astigmatism_away_from_its_medial_focus_splits_sagittal_from_tangential():
    """Z6 (cos 2 theta, lines along 0/90 deg) plus defocus: x^2 carries twice the phase, y^2 none
    (for Z6 = sqrt(6) Z4 / sqrt(3)): the tangential MTF of a point on +x drops, the sagittal stays
    at the diffraction limit; the opposite sign swaps them; a point on +y swaps them too."""
    a = 0.06
    plus = _c(Z4=a / math.sqrt(2), Z6=a)  # W = a sqrt(6) x^2 (+ piston)
    minus = _c(Z4=a / math.sqrt(2), Z6=-a)  # W = a sqrt(6) y^2
    s, t, _ = _mtf(plus, (0.8, 0.0))
    np.testing.assert_allclose(s, [_closed_form(f / CUT) for f in FREQS], atol=1e-9)
    assert (t < s - 0.05).all()
    s2, t2, _ = _mtf(minus, (0.8, 0.0))
    np.testing.assert_allclose(s2, t, atol=1e-9)
    np.testing.assert_allclose(t2, s, atol=1e-9)
    s3, t3, _ = _mtf(plus, (0.0, 0.8))  # the same lens at a point on +y: tangential along y
    np.testing.assert_allclose(s3, t, atol=1e-9)
    np.testing.assert_allclose(t3, s, atol=1e-9)
    # at 45 deg: Z5 (sin 2 theta) with a point on the diagonal splits them the same way
    s4, t4, _ = _mtf(_c(Z4=a / math.sqrt(2), Z5=a), (0.5, 0.5))
    np.testing.assert_allclose(t4, t, atol=2e-3)
    np.testing.assert_allclose(s4, s, atol=2e-3)
    # at the medial focus (no Z4) Z6 blurs both directions alike: the focus term is what splits them
    s5, t5, _ = _mtf(_c(Z6=a), (0.8, 0.0))
    np.testing.assert_allclose(s5, t5, atol=1e-9)
    assert (s5 < s - 0.01).all()


def test_defocus_lowers_both_directions_equally():
    s0 = np.array([_closed_form(f / CUT) for f in FREQS])
    s1, t1, _ = _mtf(_c(Z4=0.05), (0.4, 0.3))
    s2, t2, _ = _mtf(_c(Z4=0.10), (0.4, 0.3))
    np.testing.assert_allclose(s1, t1, atol=1e-9)
    np.testing.assert_allclose(s2, t2, atol=1e-9)
    assert (s2 < s1 - 0.01).all() and (s1 < s0 - 0.005).all()


def test_overlap_route_matches_the_fft_route_off_axis():
    c = _c(Z4=0.04, Z6=0.05, Z8=0.03, Z11=0.02)
    h = (0.3, 0.5)
    s, t, _ = _mtf(c, h)
    az = math.degrees(math.atan2(h[1], h[0]))
    fft_t = figures.mtf(c, np.array(FREQS) / CUT, az, remove=(1, 2, 3))
    fft_s = figures.mtf(c, np.array(FREQS) / CUT, az + 90, remove=(1, 2, 3))
    np.testing.assert_allclose(t, fft_t, atol=0.006)
    np.testing.assert_allclose(s, fft_s, atol=0.006)
    # without keep_defocus the judged on-axis MTF still drops Noll 4 (old behaviour)
    assert mtf_batch(c[None], 0.3, (0.0,))[0] == pytest.approx(mtf_batch(_c(Z6=0.05, Z8=0.03, Z11=0.02)[None], 0.3,
                                                                          (0.0,))[0])


def _fft_otf(c, aperture, nu, azimuth_deg, radius_px=100, n=512):
    """|OTF| of the vignetted pupil by FFT autocorrelation on a fine grid (independent route): the
    stop of ``radius_px`` cut by the circle ``aperture`` (pupil radii), phase Noll ``c`` (1-3 dropped),
    at a whole-pixel shift ``2 nu radius_px`` along 0 or 90 deg."""
    from metrology.analysis.wavefront import zernike_basis

    a = (np.arange(n) - n // 2) / radius_px
    x, y = np.meshgrid(a, a)
    r, cx, cy = aperture
    inside = (x**2 + y**2 <= 1) & ((x - cx) ** 2 + (y - cy) ** 2 <= r * r)
    cc = np.array(c, dtype=float)
    cc[:3] = 0
    w = (zernike_basis(len(cc), x[inside], y[inside]) @ cc)
    p = np.zeros((n, n), complex)
    p[inside] = np.exp(2j * np.pi * w)
    otf = np.fft.ifft2(np.abs(np.fft.fft2(p)) ** 2) / inside.sum()
    shift = int(round(2 * nu * radius_px))
    assert abs(shift - 2 * nu * radius_px) < 1e-9
    return abs(otf[0, shift] if azimuth_deg == 0 else otf[shift, 0])


@pytest.mark.parametrize("aperture", [(1.2, 0.5, 0.0), (1.0, -0.3, 0.4), (0.9, 0.0, 0.0)])
def test_vignetted_mtf_matches_the_fft_autocorrelation_of_the_cut_pupil(aperture):
    """The two-circle pupil's MTF (overlap area over the pupil's, times the mean phasor) against the
    FFT autocorrelation of the same cut pupil on a fine grid, with and without aberrations."""
    for c in (np.zeros(K), _c(Z4=0.03, Z6=0.05, Z8=0.03, Z11=0.02)):
        for nu in (0.1, 0.25, 0.4, 0.6):
            for az in (0.0, 90.0):
                got = mtf_vignetted_batch(c[None], nu, az, aperture)[0]
                assert got == pytest.approx(_fft_otf(c, aperture, nu, az), abs=0.01), (c, nu, az)
    assert mtf_vignetted_batch(np.zeros((1, K)), 0.0, 0.0, aperture)[0] == 1.0


def test_vignetting_cuts_the_tangential_mtf_and_is_the_stop_where_it_does_not_reach():
    """A second aperture centred towards +x at a point on +x narrows the pupil along x: the tangential
    MTF (along H) drops at high frequency, the sagittal much less; an aperture that does not reach
    the stop gives the diffraction limit."""
    h = (0.8, 0.0)
    free = mtf_at_point(np.zeros(K), np.zeros((K, K)), h, FREQS, WL, NA, n_draws=20, aperture=(3.0, 0.1, 0.0))
    for d in ("sagittal", "tangential"):
        np.testing.assert_allclose([q.value for q in free[d]], [_closed_form(f / CUT) for f in FREQS], atol=0.005)
    cut = mtf_at_point(np.zeros(K), np.zeros((K, K)), h, FREQS, WL, NA, n_draws=20, aperture=(1.1, 0.5, 0.0))
    t = np.array([q.value for q in cut["tangential"]])
    s = np.array([q.value for q in cut["sagittal"]])
    assert t[-1] < s[-1] - 0.05 and t[-1] < _closed_form(FREQS[-1] / CUT) - 0.1, (t, s)


def test_uncertainty_is_the_monte_carlo_of_the_covariance():
    c = _c(Z4=0.03, Z6=0.05, Z7=0.02)
    cov = np.diag(np.r_[0, 0, 0, 0.004, 0.003, 0.005, 0.002, 0.002, 0.001, 0.001, 0.001] ** 2)
    r = mtf_at_point(c, cov, (0.5, 0.2), (120.0,), WL, NA, n_draws=2000)
    az = math.degrees(math.atan2(0.2, 0.5))
    for name, a in (("tangential", az), ("sagittal", az + 90)):
        q = r[name][0]
        lin = delta_method(lambda x, a=a: mtf_batch(x[None], 120.0 / CUT, (a,), keep_defocus=True)[0], c, cov)
        assert q.u == pytest.approx(lin, rel=0.15) and q.U == pytest.approx(2 * q.u)
    assert mtf_at_point(c, np.zeros((K, K)), (0.5, 0.2), (120.0,), WL, NA, n_draws=50)["sagittal"][0].u < 1e-12


def test_focus_term_follows_the_sample_defocus_convention():
    # Noll 4 of a sample defocus: the W220 convention of the field-curvature fit, spread over Z4
    assert defocus_noll4_per_um(NA, WL) * 2 * math.sqrt(3) == pytest.approx(
        w220_from_curvature((1.0, 0.0), None, NA, WL)[0])
    fit = SimpleNamespace(value=lambda name: (-20.0, 2.0))
    c4, u4 = image_plane_focus(fit, np.array([[0.0, 0.0], [0.6, 0.8], [0.3, 0.0]]), NA, WL)
    per = defocus_noll4_per_um(NA, WL)
    np.testing.assert_allclose(c4, [0.0, -20 * per, -20 * per * 0.09])
    np.testing.assert_allclose(u4, [0.0, 2 * abs(per), 2 * abs(per) * 0.09])
    np.testing.assert_array_equal(image_plane_focus(None, np.ones((2, 2)), NA, WL)[0], [0.0, 0.0])


def _field(w222=0.08, curvature=True, u=1e-4):
    """Synthetic tiles of a lens with astigmatism ``w222 |H|^2`` only (W220 = 0) whose sample defocus
    follows the medial focus (``W222 / 2`` of ``|H|^2 rho^2``): with ``curvature`` the field-curvature
    fit is made from it."""
    cols = field_basis(K)
    theta = np.zeros(len(cols))
    theta[[c.name for c in cols].index("W222")] = w222 / 2 / math.sqrt(6)  # the Z5/Z6 column: waves at |H| = 1
    h = np.array(GRID, dtype=float)
    lens = design_matrix(cols, h, K) @ theta
    per_um = w220_from_curvature((1.0, 0.0), None, NA, WL)[0]  # W220 waves per um of sample defocus
    z = (w222 / 2) * (h**2).sum(axis=1) / per_um
    data = [TileData(f"t{i}", tuple(hh), np.concatenate([np.zeros(4), c]), np.eye(K) * u**2, np.zeros(2),
                     np.ones(2), float(zz), 0.01) for i, (hh, c, zz) in enumerate(zip(h, lens, z))]
    return SimpleNamespace(tiles=[SimpleNamespace(name=d.name, h=d.h) for d in data], model=fit_field_model(data, K),
                           distortion=None, notes=[], central=4,
                           curvature=fit_field_curvature(data) if curvature else None)


def test_w222_lens_at_the_image_plane_blurs_only_the_tangential_direction():
    """W = W222 (H . rho)^2 at the paraxial image plane: bars along H's direction (sagittal) see no
    phase, the tangential MTF drops as |H|^2 grows; at each point's own best focus the two agree."""
    field = _field(w222=0.25)
    mtf = FieldMtf(field.model, field.curvature, (120.0,), WL, NA, n_draws=100)
    dl = _closed_form(120.0 / CUT)
    assert mtf.focus == FOCUS_IMAGE_PLANE
    t = []
    for h in ((0.0, 0.0), (0.35, 0.35), (0.0, -0.7), (-0.7, 0.7)):
        r = mtf.at(h)
        assert r["sagittal"][0].value == pytest.approx(dl, abs=2e-3), h
        t.append(r["tangential"][0].value)
    assert t[0] == pytest.approx(dl, abs=2e-3) and t[0] > t[1] > t[2] > t[3] and t[3] < dl - 0.1
    best = FieldMtf(field.model, None, (120.0,), WL, NA, n_draws=100)
    r = best.at((-0.7, 0.7))
    assert best.focus == FOCUS_BEST and r["sagittal"][0].value == pytest.approx(r["tangential"][0].value, abs=1e-6)


def _zone(limit, h_max=1.0):
    return Zone("full field", h_max, mtf=[MtfLimit(120.0, limit)])


def test_zone_mtf_limit_judged_at_the_worst_point_and_direction():
    field = _field()
    rows, inner = judge_zone(_zone(0.3, 0.5), field, WL, NA, n_draws=100)
    assert inner["verdict"] == PASS and rows[0].kind == "min"
    rows, full = judge_zone(_zone(0.9), field, WL, NA, n_draws=100)
    (fig,) = full["figures"]
    assert full["verdict"] == FAIL and fig["direction"] == "tangential" and fig["kind"] == "min"
    assert math.hypot(*fig["h"]) == pytest.approx(1.0) and fig["points"] == 1 + 9 + 64  # axis, the tiles (|H| <= 0.99), grid
    assert rows[0].name == "zone 'full field' (|H| <= 1): MTF at 120 cycles/mm (sagittal and tangential)"
    assert rows[0].reason.startswith(f"worst of {fig['points']} field points at H = (") and ", tangential:" in rows[0].reason
    worst = FieldMtf(field.model, field.curvature, (120.0,), WL, NA, n_draws=100).at(fig["h"])["tangential"][0]
    assert fig["value"] == pytest.approx(worst.value) and fig["U"] == pytest.approx(worst.U)
    rows, straddle = judge_zone(_zone(fig["value"] - 0.5 * fig["U"]), field, WL, NA, n_draws=100)
    assert straddle["verdict"] == INCONCLUSIVE and "straddles" in rows[0].reason
    _, generous = judge_zone(_zone(fig["value"] - 1.5 * fig["U"]), field, WL, NA, n_draws=100)
    assert generous["verdict"] == PASS
    unfitted = SimpleNamespace(**{**vars(field), "model": None, "notes": ["no fit"]})
    _, unfit = judge_zone(_zone(0.3), unfitted, WL, NA, n_draws=100)
    assert unfit["verdict"] == INCONCLUSIVE and "no field model (no fit)" in unfit["figures"][0]["reason"]


def test_mtf_vs_field_lists_tiles_axis_and_zone_grid():
    field = _field()
    spec = SimpleNamespace(zones=[_zone(0.3, 0.7), _zone(0.3, 1.0)])
    mtf = FieldMtf(field.model, field.curvature, (60.0, 120.0), WL, NA, n_draws=50)
    block = mtf_vs_field(field, spec, mtf)
    pts = block["points"]
    assert [p["source"] for p in pts[:9]] == [f"tile t{i}" for i in range(9)]
    assert sum(p["source"] == "axis" for p in pts) == 0  # the centre tile is the axis
    assert sum(p["source"] == "zone grid" for p in pts) == 2 * 64 - 4  # the 0.7 grid meets the edge tiles
    assert block["frequencies_cyc_per_mm"] == [60.0, 120.0] and block["focus"] == FOCUS_IMAGE_PLANE
    assert block["diffraction_limited"] == pytest.approx([_closed_form(60 / CUT), _closed_form(120 / CUT)])
    assert all(len(p["sagittal"]) == len(p["tangential"]) == 2 for p in pts)
    assert mtf_vs_field(field, spec, None) is None


def test_the_zone_verdict_judges_the_mtf_through_the_fitted_second_aperture():
    """A field measurement with a fitted second aperture (``field.vignetting``): the zone verdict and
    the MTF across the field go through the cut pupil at each point (not the plain stop)."""
    from metrology.analysis.field import fit_field_vignetting
    from metrology.analysis.field_mtf import aperture_of
    from metrology.analysis.zones import field_mtf
    from metrology.field_terms import vignetting_at

    field = _field()

    def tiles(u):
        return [TileData(f"v{i}", h, np.zeros(K), np.eye(K), np.zeros(2), np.ones(2), 0.0, 0.01,
                         vignetting=np.array([1.1, 0.6 * h[0], 0.6 * h[1]]), vignetting_u=np.full(3, u))
                for i, h in enumerate(GRID) if h != (0.0, 0.0)]

    cut = SimpleNamespace(**{**vars(field), "vignetting": fit_field_vignetting(tiles(0.01))})
    loose = SimpleNamespace(**{**vars(field), "vignetting": fit_field_vignetting(tiles(0.1))})
    assert cut.vignetting.value("radius")[0] == pytest.approx(1.1) and cut.vignetting.value("shift_per_h")[0] == \
        pytest.approx(0.6)
    spec = SimpleNamespace(zones=[_zone(0.3, 1.0)], mtf_frequencies=lambda: (250.0,))
    h = (0.7, 0.0)
    plain, through = field_mtf(field, spec, WL, NA, 50).at(h), field_mtf(cut, spec, WL, NA, 50).at(h)
    c, cov = field.model.lens_at(np.array([h]))
    c4, _ = image_plane_focus(field.curvature, np.array([h]), NA, WL)
    c[0, 3] = c4[0]
    expected = mtf_vignetted_batch(c, 250.0 / CUT, 0.0, (1.1, 0.42, 0.0))[0]
    assert through["tangential"][0].value == pytest.approx(expected, abs=0.01)
    assert through["tangential"][0].value < plain["tangential"][0].value - 0.05
    # the aperture's own u widens U: the MTF at r, s +/- their sd (principal directions), in quadrature
    wide = field_mtf(loose, spec, WL, NA, 50).at(h)["tangential"][0]
    assert wide.value == pytest.approx(through["tangential"][0].value, abs=1e-12)
    (r, sh), cov = aperture_of(loose)
    ev, vec = np.linalg.eigh(cov)
    step = [0.5 * (mtf_vignetted_batch(c, 250.0 / CUT, 0.0, vignetting_at(np.array([r, sh]) + d, h))[0]
                   - mtf_vignetted_batch(c, 250.0 / CUT, 0.0, vignetting_at(np.array([r, sh]) - d, h))[0])
            for d in (np.sqrt(ev)[:, None] * vec.T)]
    q = through["tangential"][0]  # the same draws of the coefficients, an aperture known 10x better
    assert wide.u == pytest.approx(math.hypot(q.u, *step), rel=0.02)
    assert max(abs(x) for x in step) > 3 * q.u  # the aperture's part dominates here: without it the test fails
    _, plain_zone = judge_zone(_zone(0.3), field, WL, NA, n_draws=50)
    _, cut_zone = judge_zone(_zone(0.3), cut, WL, NA, n_draws=50)
    assert cut_zone["figures"][0]["value"] < plain_zone["figures"][0]["value"]
