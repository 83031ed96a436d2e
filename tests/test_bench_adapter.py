"""The PtyLab adapter's pure helpers (benchmarks/ptylab_adapter.py; no PtyLab needed).

The real-data cross-check (docs/real-data.md) reads a sample defocus off PtyLab's free pupil and
passes it refracted LED angles; these tests pin the conventions those numbers rest on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from metrology.physics import StationModel
from metrology.physics.zernike import evaluate_numpy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pa():
    spec = importlib.util.spec_from_file_location("ptylab_adapter", ROOT / "benchmarks" / "ptylab_adapter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_encoder_gives_ptylab_the_illumination_sine(pa):
    """PtyLab's straight-line sine ``e / sqrt(|e|^2 + zled^2)`` of the written encoder (rows first)
    equals lambda k_j, also for steep angles."""
    rng = np.random.default_rng(0)
    k = rng.uniform(-0.9, 0.9, (50, 2)) / 0.5 / np.sqrt(2)  # |lambda k| < 0.9 at 500 nm
    enc = pa.encoder_from_frequencies(k, 500.0, 91.88)
    s = enc / np.sqrt(np.sum(enc**2, axis=1, keepdims=True) + (91.88e-3) ** 2)
    np.testing.assert_allclose(s[:, ::-1], k * 0.5, rtol=1e-12, atol=1e-15)


def test_defocus_phase_is_the_models_defocus(pa):
    """The adapter's defocus phase equals the phase our pupil gains from ``sample.defocus_um``
    (same expression, same sign) on the model's own grid."""
    from metrology.io.station_file import load_station

    station = load_station(str(ROOT / "fixtures" / "stations" / "bench-4x-15x15.toml")).replace(zernike_terms=15)
    g = station.geometry(station.led_list()[:1])
    model = StationModel(g, dtype=torch.float64)
    zero = torch.zeros((1, 2), dtype=torch.float64)
    with torch.no_grad():
        p0 = model.pupil(zero, torch.tensor(0.0, dtype=torch.float64))[0].numpy()
        p1 = model.pupil(zero, torch.tensor(-23.0, dtype=torch.float64))[0].numpy()
    inside = np.abs(p0) > 0.5
    n = p0.shape[0]
    expected = pa.defocus_phase_rad(n, g.df, g.wavelength_um, -23.0)
    np.testing.assert_allclose(np.angle(p1 * np.conj(p0))[inside], np.angle(np.exp(1j * expected))[inside], atol=1e-9)
    assert expected[n // 2, n // 2] == 0.0 and expected[n // 2, -1] > 0  # negative defocus: phase rises outwards


@pytest.mark.parametrize("defocus_um", [-55.0, -15.0, 6.0])
def test_fit_defocus_recovers_defocus_and_zernikes_through_the_point_reflection(pa, defocus_um):
    """A pupil with defocus, Noll 5-15, a tilt and a piston, given in PtyLab's point-reflected
    frame and mapped back with ``pupil_in_our_frame``, returns the defocus and the Zernikes."""
    n, pixel_um, wavelength_um, na = 64, 1.845, 0.475, 0.1
    df = 1.0 / (n * pixel_um)
    u = (np.arange(n) - n // 2) * df / (na / wavelength_um)
    x, y = np.meshgrid(u, u)
    rng = np.random.default_rng(1)
    c = np.zeros(15)
    c[4:] = rng.normal(0.0, 0.02, 11)
    phase = pa.defocus_phase_rad(n, df, wavelength_um, defocus_um) + 2 * np.pi * evaluate_numpy(c, x, y) + 0.8 * x + 1.1
    ours = np.exp(1j * phase) * (x**2 + y**2 <= 1.0)
    theirs = ours[(n - np.arange(n)) % n][:, (n - np.arange(n)) % n]  # P_p(u) = P(-u)
    z, zern = pa.fit_defocus_um(pa.pupil_in_our_frame(theirs), df, wavelength_um, na)
    assert z == pytest.approx(defocus_um, abs=1e-6)
    np.testing.assert_allclose(zern, c[4:], atol=1e-9)
