"""Small station geometries shared by the physics and solver tests."""

from __future__ import annotations

import numpy as np
import torch

from metrology.physics import StationGeometry


def small_geometry(frame_px=32, leds=None, n_side=5, upsampling=3, zernike_terms=15, **kw) -> StationGeometry:
    """A 4x/0.1-like station on a small grid (fast)."""
    if leds is None:
        c = n_side // 2
        leds = [(r, q) for r in range(7 - c, 8 + c) for q in range(7 - c, 8 + c)]
    args = dict(
        wavelength_nm=520.0,
        na=0.1,
        magnification=4.0,
        camera_pixel_um=6.5,
        frame_px=frame_px,
        upsampling=upsampling,
        led_pitch_mm=4.0,
        led_distance_mm=90.0,
        led_center_row=7,
        led_center_col=7,
        leds=leds,
        zernike_terms=zernike_terms,
    )
    args.update(kw)
    return StationGeometry(**args)


def random_object(n, seed=0, phase=0.5, amp=0.2, smooth=2.0, dtype=torch.complex128):
    """Smooth random complex transmission (n, n)."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(n)
    fx, fy = np.meshgrid(f, f)
    env = np.exp(-(fx**2 + fy**2) * (n / (smooth * 8)) ** 2 * 0.5)
    a = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * env))
    p = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * env))
    a = a / a.std() * amp
    p = p / p.std() * phase
    return torch.as_tensor((1 + a) * np.exp(1j * p), dtype=dtype)
