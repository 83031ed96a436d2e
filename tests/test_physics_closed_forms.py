"""Forward model against closed forms and invariants (issue 2)."""

import math

import numpy as np
import torch
from scipy.special import j1

from metrology.physics import StationModel
from metrology.orderings import noll_to_nm
from metrology.physics.zernike import evaluate_numpy, monomial_matrix, zernike_grid
from tests.physics_cases import random_object, small_geometry


def test_clear_pupil_gives_airy_psf():
    # 0.5 um object pixel, 128 px: pupil radius ~12 px, first Airy zero 0.61 lambda/NA = 3.17 um = 6.3 px
    g = small_geometry(frame_px=128, upsampling=1, leds=[(7, 7)], camera_pixel_um=6.5, magnification=13.0)
    n = g.object_px
    t = torch.zeros((n, n), dtype=torch.complex128)
    t[n // 2, n // 2] = 1.0
    m = StationModel(g, t, dtype=torch.float64)
    with torch.no_grad():
        img = m.intensity()[0].numpy()
    img = img / img.max()
    assert np.unravel_index(img.argmax(), img.shape) == (n // 2, n // 2)
    x_um = (np.arange(n) - n // 2) * g.pixel_um
    v = 2 * math.pi * g.na * np.abs(x_um) / g.wavelength_um
    with np.errstate(invalid="ignore", divide="ignore"):
        airy = np.where(v == 0, 1.0, (2 * j1(v) / v) ** 2)
    profile = img[n // 2]
    near = np.abs(x_um) < 6.0  # central lobe and first ring
    assert np.max(np.abs(profile[near] - airy[near])) < 0.03
    # first zero within a pixel of 0.61 lambda / NA
    right = profile[n // 2 :]
    first_min = np.argmax(np.diff(right) > 0) * g.pixel_um
    assert abs(first_min - 0.61 * g.wavelength_um / g.na) <= g.pixel_um


def test_plane_wave_bright_and_dark_field():
    g = small_geometry(frame_px=32, n_side=9, zernike_terms=15)
    torch.manual_seed(0)
    m = StationModel(g, dtype=torch.float64)
    with torch.no_grad():
        b = 0.8 + 0.4 * torch.rand(g.n_leds, dtype=torch.float64)
        m.illumination.brightness.copy_(b)
        m.pupil.zernike_waves[4:].copy_(0.05 * torch.randn(11, dtype=torch.float64))
        frames = m()
        k = torch.linalg.vector_norm(m.illumination.spatial_frequencies(), dim=-1)
    cutoff = g.cutoff
    radius_px = g.pupil_radius_px
    for j in range(g.n_leds):
        margin = abs(k[j].item() - cutoff) / g.df
        if margin < 1.0:  # within a pixel of the edge: partial transmission by design
            continue
        f = frames[j]
        if k[j] < cutoff:
            assert torch.allclose(f, b[j] * torch.ones_like(f), rtol=1e-10), j
        else:
            assert f.abs().max() < 1e-20, j
    assert radius_px > 5


def test_energy_conserved_through_aberrated_pupil():
    """A band-limited object inside a phase-only pupil: mean image intensity = mean |t|^2 (Parseval)."""
    g = small_geometry(frame_px=48, leds=[(7, 7)], upsampling=2)
    n = g.object_px
    rng = np.random.default_rng(1)
    f = np.fft.fftfreq(n, d=g.object_pixel_um)
    fx, fy = np.meshgrid(f, f)
    keep = np.hypot(fx, fy) < 0.8 * g.cutoff
    spec = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) * keep
    t = 1.0 + 0.3 * np.fft.ifft2(spec) / np.abs(np.fft.ifft2(spec)).std()
    m = StationModel(g, torch.as_tensor(t), dtype=torch.float64)
    with torch.no_grad():
        m.pupil.zernike_waves[4:].copy_(torch.linspace(-0.1, 0.1, 11, dtype=torch.float64))
        img = m.intensity()[0]
    assert abs(img.mean().item() - np.mean(np.abs(t) ** 2)) < 1e-10
    # and the aberration really changed the image (not a trivial pass)
    with torch.no_grad():
        m.pupil.zernike_waves.zero_()
        assert (m.intensity()[0] - img).abs().max() > 1e-2


def test_led_at_plus_x_brings_plus_x_object_frequencies_to_pupil_centre():
    g = small_geometry(frame_px=32, leds=[(7, 10), (7, 4)], upsampling=4)
    m = StationModel(g, dtype=torch.float64)
    k = m.illumination.spatial_frequencies().detach()
    assert k[0, 0] > 0 and k[1, 0] < 0  # LED at +x (column 10) has +x spatial frequency
    n = g.object_px
    # grating with only a +f0 component, f0 on the grid at the +x LED's frequency
    f0 = round(k[0, 0].item() / g.df) * g.df
    x = torch.arange(n, dtype=torch.float64) * g.object_pixel_um
    t = (0.3 * torch.exp(2j * math.pi * f0 * x))[None, :].expand(n, n).clone()
    m2 = StationModel(g, t, dtype=torch.float64)
    with torch.no_grad():
        img = m2.intensity()
    assert torch.allclose(img[0], torch.full_like(img[0], 0.09), rtol=1e-6)
    assert img[1].abs().max() < 1e-20


def _centroid(img, half=8):
    """Centroid (x, y) in pixels within +/- ``half`` pixels of the peak: the hard pupil's ringing
    wraps around the periodic frame, so a whole-frame centroid is pulled towards the centre."""
    r0, c0 = divmod(int(torch.argmax(img)), img.shape[-1])
    win = img[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1]
    win = win - win.min()
    idx = torch.arange(-half, half + 1, dtype=img.dtype)
    s = win.sum()
    return c0 + (win.sum(0) * idx).sum() / s, r0 + (win.sum(1) * idx).sum() / s


def test_tilt_and_position_signs():
    """Documented: +y sample position moves the image to +y (rows down); a positive Noll-3 (y tilt)
    coefficient c moves it to -y by 2 c / (NA / lambda) um."""
    g = small_geometry(frame_px=64, leds=[(7, 7)], upsampling=1, magnification=13.0)
    n = g.object_px
    t = torch.zeros((n, n), dtype=torch.complex128)
    t[n // 2, n // 2] = 1.0
    m = StationModel(g, t, dtype=torch.float64)
    with torch.no_grad():
        x0, y0 = _centroid(m.intensity()[0])
        m.sample.position_um.copy_(torch.tensor([0.0, 2.0 * g.pixel_um], dtype=torch.float64))
        x1, y1 = _centroid(m.intensity()[0])
        m.sample.position_um.zero_()
        c = 0.25
        m.pupil.zernike_waves[2] = c
        x2, y2 = _centroid(m.intensity()[0])
    assert abs((y1 - y0).item() - 2.0) < 0.05 and abs((x1 - x0).item()) < 1e-6
    expected_px = -2 * c / g.cutoff / g.pixel_um
    assert abs((y2 - y0).item() - expected_px) < 0.2 and abs((x2 - x0).item()) < 1e-6


def test_zernike_basis_matches_zernike_package_and_hand_written_orders():
    from zernike import RZern

    k = 36
    cart = RZern(7)
    n = 64
    dd = np.linspace(-1, 1, n)
    xx, yy = np.meshgrid(dd, dd)
    cart.make_cart_grid(xx, yy)
    inside = np.hypot(xx, yy) <= 1
    for j in range(1, k + 1):
        c = np.zeros(cart.nk)
        c[j - 1] = 1.0
        theirs = cart.eval_grid(c, matrix=True)
        mine = evaluate_numpy(np.eye(k)[j - 1], xx, yy)
        assert np.allclose(mine[inside], theirs[inside], atol=1e-9), (j, noll_to_nm(j))
    r, th = np.hypot(xx, yy), np.arctan2(yy, xx)
    hand = {
        1: np.ones_like(r),
        2: 2 * r * np.cos(th),
        3: 2 * r * np.sin(th),
        4: math.sqrt(3) * (2 * r**2 - 1),
        5: math.sqrt(6) * r**2 * np.sin(2 * th),
        6: math.sqrt(6) * r**2 * np.cos(2 * th),
        7: math.sqrt(8) * (3 * r**3 - 2 * r) * np.sin(th),
        8: math.sqrt(8) * (3 * r**3 - 2 * r) * np.cos(th),
        11: math.sqrt(5) * (6 * r**4 - 6 * r**2 + 1),
    }
    for j, ref in hand.items():
        assert np.allclose(evaluate_numpy(np.eye(k)[j - 1], xx, yy), ref, atol=1e-12), j
    # torch evaluation agrees with numpy; orthonormal on the disk
    z = zernike_grid(k, torch.as_tensor(xx), torch.as_tensor(yy)).numpy()
    assert np.allclose(z[:, inside], np.stack([evaluate_numpy(np.eye(k)[i], xx, yy)[inside] for i in range(k)]))
    fine = np.linspace(-1, 1, 401)
    fx, fy = np.meshgrid(fine, fine)
    disk = np.hypot(fx, fy) <= 1
    zf = zernike_grid(k, torch.as_tensor(fx[disk]), torch.as_tensor(fy[disk])).numpy()
    gram = zf @ zf.T / disk.sum()
    assert np.allclose(gram, np.eye(k), atol=0.03)
    assert monomial_matrix(k).shape == (k, 8, 8)


def test_sub_pixel_led_shift_is_smooth_across_integer_boundaries():
    g = small_geometry(frame_px=32, leds=[(7, 8), (8, 9)], upsampling=3)
    t = random_object(g.object_px, seed=3)
    m = StationModel(g, t, dtype=torch.float64)
    with torch.no_grad():
        m.pupil.zernike_waves[4:8].copy_(torch.tensor([0.05, -0.03, 0.04, 0.02], dtype=torch.float64))
    shifts = torch.linspace(-0.25, 0.25, 101, dtype=torch.float64)  # mm; > 1 grid pixel of k
    vals, wholes = [], []
    with torch.no_grad():
        for s in shifts:
            m.illumination.shift_mm[0] = s
            vals.append(m.intensity()[:, 10:14, 10:14].clone())
            wholes.append(torch.round(m.frequency_offsets_px()))
    vals = torch.stack(vals)
    assert len({tuple(w.flatten().tolist()) for w in wholes}) > 1, "test must cross an integer boundary"
    d1 = vals[1:] - vals[:-1]
    d2 = d1[1:] - d1[:-1]
    # smooth: second differences much smaller than first differences everywhere (no jumps)
    assert d2.abs().max() < 0.2 * d1.abs().max()
    assert d1.abs().max() < 0.05 * vals.abs().max()


def test_adjoint_of_linear_field_operator():
    """The map transmission -> exit field spectrum is linear: <A x, y> = <x, A^H y> via autograd."""
    g = small_geometry(frame_px=16, n_side=3, upsampling=3, zernike_terms=10)
    m = StationModel(g, dtype=torch.float64)
    with torch.no_grad():
        m.pupil.zernike_waves[4:].copy_(0.1 * torch.arange(6, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    n = g.object_px
    x = torch.complex(torch.randn(n, n, generator=gen, dtype=torch.float64), torch.randn(n, n, generator=gen, dtype=torch.float64))

    def apply(t):
        m.sample.field_real.data = t.real.clone()
        m.sample.field_imag.data = t.imag.clone()
        return m.field_spectrum()

    ax = apply(x).detach()
    y = torch.complex(torch.randn(ax.shape, generator=gen, dtype=torch.float64), torch.randn(ax.shape, generator=gen, dtype=torch.float64))
    m.zero_grad()
    out = apply(x)
    # for real-valued L = Re<A x, y>, grad wrt (re, im) = A^H y
    (out.conj() * y).real.sum().backward()
    ahy = torch.complex(m.sample.field_real.grad, m.sample.field_imag.grad)
    lhs = (ax.conj() * y).sum()
    rhs = (x.conj() * ahy).sum()
    assert torch.allclose(lhs.real, rhs.real, rtol=1e-10)


def test_pupil_edge_coverage_is_the_disk_area_and_moves_smoothly():
    from metrology.physics.pupil import disk_coverage

    u = torch.arange(-30, 31, dtype=torch.float64)
    radius = torch.tensor(20.3, dtype=torch.float64, requires_grad=True)
    areas = []
    for shift in (0.0, 0.23, 0.5):
        cov = disk_coverage(radius, u[None, :] - shift, u[:, None] + 0.5 * shift)
        areas.append(cov.sum())
        assert abs(cov.sum().item() - math.pi * 20.3**2) < 2e-3 * math.pi * 20.3**2
        assert cov.min() >= 0 and cov.max() <= 1
    areas[0].backward()
    assert abs(radius.grad.item() - 2 * math.pi * 20.3) < 0.01 * 2 * math.pi * 20.3  # d(area)/dR = perimeter


def test_margin_of_a_periodic_sample_changes_nothing():
    """The frame as the central crop of a larger modelled field (``margin_px``): when the sample
    beyond the frame is the frame's own periodic continuation and the field is twice the frame, the
    frames are those of the periodic model exactly (every path: the source-smeared edge and its
    incoherent part, pixel integration, a finite LED spectrum)."""
    from dataclasses import replace

    g = small_geometry(frame_px=20, n_side=5, upsampling=4, zernike_terms=10, led_size_mm=0.3,
                       pixel_quadrature=2, spectral_fwhm_nm=20.0, spectral_points=2)
    obj = random_object(g.object_px, seed=5, phase=0.6, amp=0.2)
    base = StationModel(g, obj, dtype=torch.float64)
    wide = StationModel(replace(g, margin_px=10), torch.tensor(np.pad(obj.numpy(), 40, mode="wrap")),
                        dtype=torch.float64)
    with torch.no_grad():
        for m in (base, wide):
            m.pupil.zernike_waves[4:].copy_(torch.linspace(-0.05, 0.06, 6, dtype=torch.float64))
            m.illumination.shift_mm.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
            m.sample.defocus_um.fill_(2.0)
        a, b = base.intensity(), wide.intensity()
    assert b.shape == a.shape
    torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * float(a.max()))


def test_the_uncentred_box_field_has_the_centred_fields_intensity():
    """Moving a spectrum by whole pixels multiplies its field by a phase ramp, so the camera
    intensity from the uncentred zero-padding (box_field, the model's fast path) equals
    |box_to_field|^2 (the centred spectrum, shifted back) for odd and even fields."""
    from metrology.physics.model import box_field, box_to_field

    gen = torch.Generator().manual_seed(3)
    for n in (32, 33):
        box = torch.randn(4, 11, 11, dtype=torch.complex128, generator=gen)
        centred = box_to_field(box, n)
        field = box_field(box, n)
        torch.testing.assert_close(field.abs() ** 2, centred.abs() ** 2, rtol=1e-12, atol=1e-15)
        # and it is not the trivial identity: the fields themselves differ by the ramp
        assert float((field - centred).abs().max()) > 1e-3
