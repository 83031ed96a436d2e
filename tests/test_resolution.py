"""Resolution measures that artefact texture cannot fake (metrology/analysis/resolution.py, issue 14).

The "reconstructions" here are the target's field passed through an ideal synthetic aperture (a
circle of radius ``cutoff`` in frequency) plus noise: what an FPM reconstruction that resolves
exactly what its aperture allows would give. Invented texture is added to them the way a blind fit
makes it (beyond the aperture, or as an artefact pattern), and must never raise the claim.
"""

from __future__ import annotations

import numpy as np
import pytest

from metrology.analysis import resolution as R

N, PX = 256, 0.25  # px, um
PERIODS = (4.0, 3.0, 2.5, 2.0, 1.6, 1.3, 1.1, 0.9)
NA, NA_ILL, WAVELENGTH = 0.1, 0.2, 0.54  # synthetic aperture (0.1 + 0.2) / 0.54 = 0.556 cycles/um


def _freq():
    f = np.fft.fftfreq(N, PX)
    return np.hypot(f[:, None], f[None, :])


def _lowpass(image, cutoff):
    return np.fft.ifft2(np.fft.fft2(image) * (_freq() <= cutoff))


def _highpass_texture(rng, cutoff, rms):
    t = np.fft.ifft2(np.fft.fft2(rng.normal(0, 1, (N, N))) * (_freq() > cutoff)).real
    return t * rms / t.std()


def _edge_width_um(image):
    """The retired 10-90 % edge width (contrast / steepest slope): texture makes it 'sharper'."""
    gy, gx = np.gradient(image, PX)
    lo, hi = np.percentile(image, [5, 95])
    return 0.8 * (hi - lo) / np.percentile(np.hypot(gx, gy), 99)


@pytest.fixture(scope="module")
def target():
    return R.grating_target(N, PX, PERIODS)


@pytest.fixture(scope="module")
def cutoff():
    return R.synthetic_aperture_cutoff(NA, NA_ILL, WAVELENGTH)


def test_a_resolved_grating_is_found_at_its_period(target, cutoff):
    image, patches, blanks = target
    rec = np.abs(_lowpass(image, cutoff)) + np.random.default_rng(1).normal(0, 0.01, image.shape)
    res = R.grating_resolution(rec, PX, patches, blanks, cutoff_cpum=cutoff)
    print(f"\nresolved period {res.resolved_period_um} um vs theoretical lambda/(NA + NA_ill) "
          f"{res.theoretical_period_um:.3f} um")
    # the finest target period within the aperture: 2.0 um (1.6 um is at 0.625 > 0.556 cycles/um)
    assert res.resolved_period_um == 2.0
    assert res.theoretical_period_um == pytest.approx(1.8)
    # each resolved patch stands far above its floor with a coherent phase; the unresolved do not
    for r in res.patches:
        if r.patch.period_um >= 2.0:
            assert r.modulation > 10 * r.floor and r.coherence > 0.95
    # a poorer reconstruction (aperture 1 / 2.8 um) resolves 3 um, not 2.5 um
    poor = np.abs(_lowpass(image, 1 / 2.8)) + np.random.default_rng(2).normal(0, 0.01, image.shape)
    assert R.grating_resolution(poor, PX, patches, blanks, cutoff_cpum=cutoff).resolved_period_um == 3.0


def test_texture_beyond_the_aperture_does_not_raise_the_grating_claim(target, cutoff):
    image, patches, blanks = target
    rng = np.random.default_rng(3)
    poor = np.abs(_lowpass(image, 1 / 2.8)) + rng.normal(0, 0.01, image.shape)
    textured = poor + _highpass_texture(rng, 1 / 2.8, 0.15)
    # the texture fools an edge width (it reads the image as much sharper) ...
    assert _edge_width_um(textured) < 0.85 * _edge_width_um(poor)
    # ... but not the lock-in: 3 um, with or without the aperture cap
    for cap in (cutoff, None):
        assert R.grating_resolution(textured, PX, patches, blanks, cutoff_cpum=cap).resolved_period_um == 3.0


def test_an_artefact_pattern_at_an_unresolved_grating_frequency_does_not_count(target, cutoff):
    """Stripes at exactly the 2.5 um vector over the whole field (a periodic artefact of a fit) put
    power at that frequency in the 2.5 um patch, and as much in the blank windows: not resolved."""
    image, patches, blanks = target
    poor = np.abs(_lowpass(image, 1 / 2.8)) + np.random.default_rng(4).normal(0, 0.01, image.shape)
    x = np.arange(N) * PX
    for angle in (0.0, 90.0):
        stripes = 0.3 * np.cos(2 * np.pi * x / 2.5 + 0.7)
        art = poor + (stripes[None, :] if angle == 0.0 else stripes[:, None])
        res = R.grating_resolution(art, PX, patches, blanks, cutoff_cpum=cutoff)
        assert res.resolved_period_um in (3.0, 4.0)  # never finer (the stripes leak into 3 um's floor too)
        hit = [r for r in res.patches if r.patch.period_um == 2.5 and r.patch.angle_deg == angle][0]
        assert hit.modulation > 0.2 and not hit.resolved  # the power is there; the floor is too
    # a period beyond the aperture is never claimed, however clean
    sharp = image + 0.0
    assert R.grating_resolution(sharp, PX, patches, blanks, cutoff_cpum=cutoff).resolved_period_um == 2.0


def test_spectral_snr_is_capped_at_the_aperture_and_lowered_by_invented_texture(cutoff):
    rng = np.random.default_rng(5)
    sample = np.exp(1j * rng.normal(0, 1, (N, N)))
    fc1 = 0.7 * cutoff  # what this reconstruction really resolves
    rec = _lowpass(sample, fc1) + 0.002 * (rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N)))
    base = R.spectral_snr_resolution(rec, PX, cutoff)
    print(f"\nspectral SNR: {base.frequency_cpum:.3f} cycles/um (period {base.period_um:.2f} um); true band "
          f"{fc1:.3f}, aperture {cutoff:.3f}")
    assert fc1 - 0.03 <= base.frequency_cpum <= fc1 + 0.025  # the Hann window spreads ~1 ring
    # noise beyond the aperture raises the floor: the claim can only fall
    noisy = rec + _highpass_texture(rng, cutoff, 0.2)
    assert R.spectral_snr_resolution(noisy, PX, cutoff).frequency_cpum <= base.frequency_cpum
    # stripes (an artefact pattern) between the true band and the aperture, and beyond it: not contiguous
    x = np.arange(N) * PX
    for f_art in (0.9 * cutoff, 1.3 * cutoff):
        art = rec + 0.5 * np.cos(2 * np.pi * f_art * x)[None, :]
        assert R.spectral_snr_resolution(art, PX, cutoff).frequency_cpum <= base.frequency_cpum
    # a perfect image resolved to Nyquist is still claimed only up to the aperture
    full = sample + 0.0
    with pytest.raises(ValueError, match="no room beyond the synthetic aperture"):
        R.spectral_snr_resolution(full, PX, 2.75)  # the grid reaches 2.83 cycles/um (its corners)
    assert R.spectral_snr_resolution(_lowpass(sample, 1.9), PX, cutoff).frequency_cpum <= cutoff


def test_frc_of_two_halves_ignores_texture_the_fits_invent_independently(cutoff):
    rng = np.random.default_rng(6)
    sample = np.exp(1j * rng.normal(0, 1, (N, N)))
    fc1 = 0.7 * cutoff
    truth = _lowpass(sample, fc1)

    def half(seed):
        r = np.random.default_rng(seed)
        noise = 0.002 * (r.normal(size=(N, N)) + 1j * r.normal(size=(N, N)))
        # in-band texture between the true band and the aperture, different in each half
        inv = np.fft.ifft2(np.fft.fft2(r.normal(size=(N, N))) * ((_freq() > fc1) & (_freq() <= cutoff)))
        return truth * np.exp(1j * 0.4 * seed) + noise + 0.3 * inv / np.abs(inv).std()

    a, b = half(1), half(2)
    frc = R.frc_resolution(a, b, PX, cutoff)
    # the single-image measure is fooled by in-band texture (why the halves exist) ...
    assert R.spectral_snr_resolution(a, PX, cutoff).frequency_cpum > fc1 + 0.05
    # ... the FRC is not, and the arbitrary global phase of blind fits does not matter
    print(f"\nFRC half-bit: {frc.frequency_cpum:.3f} cycles/um; true band {fc1:.3f}; aperture {cutoff:.3f}")
    assert fc1 - 0.03 <= frc.frequency_cpum <= fc1 + 0.025
    assert R.frc_resolution(truth, truth, PX, cutoff).frequency_cpum <= cutoff


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        R.synthetic_aperture_cutoff(0.0, 0.1, 0.5)
    with pytest.raises(ValueError, match="square"):
        R.ring_spectrum(np.zeros((4, 6)), 1.0)
    image, patches, _ = R.grating_target(64, 0.5, (4.0,))
    with pytest.raises(ValueError, match="blank window"):
        R.grating_resolution(image, 0.5, patches, [])
    with pytest.raises(ValueError, match="finite"):
        R.grating_resolution(np.full((64, 64), np.nan), 0.5, patches, [(1.0, 1.0)])
