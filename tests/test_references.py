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


def test_a_station_margin_keeps_the_known_reference_at_its_scale(tmp_path):
    """With ``reconstruction.margin_px`` set, the known reference is drawn over the frame at its own
    scale and continued periodically over the margin (a catalogue sample repeats with the field of
    view): with a field twice the frame (16 px of margin on 32) the model's frames at the same state
    equal those without a margin to rounding (:func:`test_margin_of_a_periodic_sample_changes_nothing`
    in ``test_physics_closed_forms.py``). A map from a file
    keeps its scale too, padded with its mean. Before 2026-12-02 the map was drawn with the margin's
    extra samples over the frame's field of view (scaled by 0.8 with 8 px of margin on 32 px), and a
    known-mode fit of a periodic capture ended with the LED tilt at 2.2 degrees, not converged."""
    from pathlib import Path

    import torch

    from metrology.io import write_capture
    from metrology.io.station_file import load_station
    from metrology.pipeline import build_model, load_inputs
    from metrology.simulate import simulate_capture

    root = Path(__file__).resolve().parents[1]
    plain = load_station(root / "fixtures/stations/bench-4x-15x15.toml").replace(frame_px=32)
    capture, _ = simulate_capture(plain, np.zeros(15), None, noise=False, led_subsources=1)
    write_capture(tmp_path / "capture.tif", capture)
    models = {}
    for name, margin in (("plain", None), ("margin", 16)):
        (tmp_path / f"{name}.toml").write_text(plain.replace(margin_px=margin).to_toml())
        loaded = load_inputs(tmp_path / "capture.tif", tmp_path / f"{name}.toml")
        assert loaded.reference.shape == (32 * plain.upsampling,) * 2
        models[name] = build_model(loaded, "known", torch.float64)
    off = 16 * plain.upsampling
    assert models["margin"].geometry.frame_offset_px == off
    with torch.no_grad():
        for m in models.values():
            m.pupil.zernike_waves[4:10].copy_(torch.linspace(-0.05, 0.06, 6, dtype=torch.float64))
            m.illumination.shift_mm.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
            m.sample.defocus_um.fill_(2.0)
        a, b = models["plain"].intensity(), models["margin"].intensity()
    torch.testing.assert_close(b, a, rtol=0, atol=1e-10 * float(a.max()))
    # a map from a file: its own scale inside the frame, its mean beyond
    np.save(tmp_path / "map.npy", loaded.reference)
    from_file = load_inputs(tmp_path / "capture.tif", tmp_path / "margin.toml", reference=tmp_path / "map.npy")
    t = build_model(from_file, "known", torch.float64).sample.transmission().detach().numpy()
    inner = slice(off, off + loaded.reference.shape[0])
    np.testing.assert_allclose(t[inner, inner], loaded.reference, atol=1e-6)
    np.testing.assert_allclose(t[:off, :off], loaded.reference.mean(), atol=1e-6)
