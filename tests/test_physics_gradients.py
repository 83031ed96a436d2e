"""Gradients of the station model: finite, non-zero where physics says so, equal to finite differences."""

import pytest
import torch

from metrology.physics import CALIBRATABLE, StationModel
from tests.physics_cases import random_object, small_geometry


def _tiny_model():
    # a real emitter (the source-smeared edge), pixel integration, a finite LED spectrum,
    # two-circle vignetting and the LEDs' spherical waves: every path of the forward model
    g = small_geometry(frame_px=20, n_side=3, upsampling=4, zernike_terms=10, led_size_mm=0.3, pixel_quadrature=2,
                       spectral_fwhm_nm=20.0, spectral_points=2, vignetting=(1.1, 0.3, -0.2), emission_exponent=4.0,
                       margin_px=2, spherical_illumination=True)
    m = StationModel(g, random_object(g.object_px, seed=2), dtype=torch.float64)
    with torch.no_grad():
        m.illumination.shift_mm.copy_(torch.tensor([0.31, -0.22], dtype=torch.float64))
        m.illumination.rotation_deg.fill_(1.3)
        m.illumination.distance_error_mm.fill_(0.7)
        m.illumination.tilt_deg.copy_(torch.tensor([0.4, -0.6], dtype=torch.float64))
        m.illumination.brightness.copy_(torch.linspace(0.9, 1.1, g.n_leds, dtype=torch.float64))
        m.pupil.zernike_waves[4:].copy_(torch.linspace(-0.08, 0.08, 6, dtype=torch.float64))
        m.pupil.log_amplitude[3:6].copy_(torch.tensor([0.05, -0.03, 0.02], dtype=torch.float64))
        m.sample.defocus_um.fill_(3.0)
        m.sample.position_um.copy_(torch.tensor([0.4, -0.3], dtype=torch.float64))
        m.camera.background_counts.fill_(0.1)
    return m


def _loss(m, target, weights):
    return ((m() - target) * weights).sum()


@pytest.mark.parametrize("path", sorted(CALIBRATABLE))
def test_gradient_matches_finite_differences(path):
    m = _tiny_model()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        target = m() * 0.9
    weights = torch.rand(target.shape, generator=gen, dtype=torch.float64)
    m.zero_grad()
    loss = _loss(m, target, weights)
    loss.backward()
    p = m.parameter(path)
    grad = p.grad.flatten()
    assert torch.isfinite(grad).all(), path
    # check a few entries against central differences
    flat_idx = torch.linspace(0, p.numel() - 1, min(p.numel(), 4)).round().long().unique()
    for i in flat_idx:
        eps = 1e-6 * max(1.0, abs(p.flatten()[i].item()))
        with torch.no_grad():
            p.view(-1)[i] += eps
            lp = _loss(m, target, weights).item()
            p.view(-1)[i] -= 2 * eps
            lm = _loss(m, target, weights).item()
            p.view(-1)[i] += eps
        fd = (lp - lm) / (2 * eps)
        assert abs(fd - grad[i].item()) <= 1e-5 * max(1.0, abs(fd)), (path, i.item(), fd, grad[i].item())


def test_gradients_non_zero_where_physics_says_so():
    m = _tiny_model()
    with torch.no_grad():
        target = m() * 0.9 + 0.01
    m.zero_grad()
    ((m() - target) ** 2).sum().backward()
    nonzero = [
        "illumination.shift_mm",
        "illumination.rotation_deg",
        "illumination.distance_error_mm",
        "illumination.tilt_deg",
        "illumination.brightness",
        "illumination.stray_light",
        "pupil.na",
        "sample.defocus_um",
        "sample.position_um",
        "camera.counts_per_unit",
        "camera.background_counts",
    ]
    for path in nonzero:
        assert m.parameter(path).grad.abs().max() > 0, path
    zw = m.pupil.zernike_waves.grad
    assert zw[0].abs() < 1e-9 * zw.abs().max()  # piston does not change intensities
    assert zw[4:].abs().min() > 0


def test_float32_default_and_float64_agree():
    g = small_geometry(frame_px=16, n_side=3, upsampling=3, zernike_terms=10)
    t = random_object(g.object_px, seed=5)
    m32 = StationModel(g, t)
    m64 = StationModel(g, t, dtype=torch.float64)
    assert m32.pupil.zernike_waves.dtype == torch.float32
    with torch.no_grad():
        for m in (m32, m64):
            m.pupil.zernike_waves[4:].fill_(0.05)
            m.illumination.shift_mm.fill_(0.2)
        a, b = m32(), m64()
    assert a.dtype == torch.float32
    assert torch.allclose(a.double(), b, atol=1e-5 * b.abs().max().item())
