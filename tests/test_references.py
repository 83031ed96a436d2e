"""Reference samples: band limits, grid independence, symmetry, file loading."""

from __future__ import annotations

import numpy as np
import pytest

from metrology.errors import InputError
from metrology.references import CATALOGUE, fourier_resample, load_reference_file, reference_transmission

FOV = 52.0


def test_broadband_identical_on_two_grids():
    coarse = reference_transmission("random-broadband", FOV, 160, seed=3)
    fine = reference_transmission("random-broadband", FOV, 320, seed=3)
    assert np.abs(fine[::2, ::2] - coarse).max() < 1e-10
    other = reference_transmission("random-broadband", FOV, 160, seed=4)
    assert np.abs(other - coarse).max() > 0.1


def test_broadband_is_band_limited_with_broad_flat_spectrum():
    t = reference_transmission("random-broadband", FOV, 256, seed=1, cutoff_cpum=1.0)
    spec = np.abs(np.fft.fft2(t)) ** 2
    f = np.fft.fftfreq(256, FOV / 256)
    fr = np.hypot(*np.meshgrid(f, f))
    assert spec[fr > 1.0 + 1e-9].max() < 1e-20 * spec.max()  # nothing above the cut-off
    ring = [spec[(fr > lo) & (fr < lo + 0.1)].mean() for lo in (0.05, 0.3, 0.55, 0.8)]
    assert max(ring) / min(ring) < 2.0  # flat (broad) spectrum, not a low-pass blob
    amplitude, phase = np.abs(t), np.angle(t)
    assert amplitude.max() <= 1.0 + 1e-9 and 0.5 < amplitude.mean() < 0.9
    assert 0.25 < phase.std() < 0.7


def test_siemens_star_symmetry():
    n = 128
    t = reference_transmission("siemens-star", FOV, n)
    c = n // 2
    i, j = np.meshgrid(np.arange(-40, 41), np.arange(-40, 41))
    np.testing.assert_allclose(t[c + i, c + j], t[c - i, c - j], atol=1e-12)  # 180 deg
    np.testing.assert_allclose(t[c + i, c + j], t[c - i, c + j], atol=1e-12)  # mirror in x
    assert np.isclose(t[1, 1], 1.0)  # clear outside the star
    values = np.abs(t[c - 40 : c + 41, c - 40 : c + 41])
    assert values.min() < 0.4 and values.max() == pytest.approx(1.0)
    assert np.mean(values) == pytest.approx((1 + 0.35) / 2, abs=0.05)  # equal clear and dark spokes


def test_usaf_bars_binary_and_catalogue():
    t = reference_transmission("usaf-bars", FOV * 2, 256)
    assert np.abs(t).min() == pytest.approx(0.05) and np.abs(t).max() == pytest.approx(1.0)
    assert set(CATALOGUE) == {"random-broadband", "siemens-star", "usaf-bars"}
    with pytest.raises(InputError, match="unknown reference"):
        reference_transmission("moon", FOV, 64)


def test_fourier_resample_round_trip():
    x = np.random.default_rng(0).standard_normal((24, 24))
    up = fourier_resample(x, 48)
    assert np.abs(up[::2, ::2] - x).max() < 1e-12
    assert np.abs(fourier_resample(up, 24) - x).max() < 1e-12


def test_load_reference_file(tmp_path):
    t = reference_transmission("random-broadband", FOV, 128, seed=2)
    np.save(tmp_path / "t.npy", t)
    got = load_reference_file(tmp_path / "t.npy", FOV / 128, FOV, 256)
    want = reference_transmission("random-broadband", FOV, 256, seed=2)
    assert np.abs(got - want).max() < 1e-9
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.abs(t).astype(np.float32))
    amp = load_reference_file(tmp_path / "a.tif", FOV / 128, FOV, 128)
    assert np.abs(amp - np.abs(t)).max() < 1e-6
    with pytest.raises(InputError, match="does not cover"):
        load_reference_file(tmp_path / "t.npy", FOV / 256, FOV, 128)
    (tmp_path / "bad.npy").write_text("junk")
    with pytest.raises(InputError, match="bad.npy"):
        load_reference_file(tmp_path / "bad.npy", 0.5, FOV, 64)
    with pytest.raises(InputError, match="not found"):
        load_reference_file(tmp_path / "none.npy", 0.5, FOV, 64)
