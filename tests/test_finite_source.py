"""Finite LED emitter (partially coherent illumination) in the station model."""

from __future__ import annotations

import numpy as np
import torch

from metrology.physics import StationModel
from tests.physics_cases import random_object, small_geometry

EDGE_LED = (8, 9)  # (1, 2) steps from the centre: illumination NA 0.0994, at the 0.1 cut-off
SIZE_MM = 0.4


def _models(size_mm, leds=(EDGE_LED,)):
    g = small_geometry(frame_px=32, leds=list(leds), led_size_mm=size_mm)
    obj = random_object(g.object_px, seed=4, phase=0.6, amp=0.3)
    return StationModel(g, obj, dtype=torch.float64)


def _brute_force(size_mm, points=11):
    """Incoherent mean over a uniform grid of emitter points, each a point LED moved by the
    array shift (the exact illumination geometry)."""
    model = _models(0.0)
    u = ((np.arange(points) + 0.5) / points - 0.5) * size_mm
    acc = 0.0
    with torch.no_grad():
        for ey in u:
            for ex in u:
                model.illumination.shift_mm.copy_(torch.tensor([ex, ey], dtype=torch.float64))
                acc = acc + model.intensity()
    return acc / points**2


def test_point_leds_have_no_stencil():
    assert _models(0.0).finite_source_stencil() is None


def test_only_leds_near_the_cut_off_are_treated():
    model = _models(SIZE_MM, leds=(EDGE_LED, (7, 7)))  # edge LED and the on-axis LED
    rows, steps = model.finite_source_stencil()
    assert rows.tolist() == [0] and float(steps[0]) > 0


def test_finite_emitter_matches_the_incoherent_average():
    """At the bright-field/dark-field transition the emitter size changes the frame by several
    per cent; the model's four-point stencil reproduces the brute-force average far better than a
    point LED does."""
    truth = _brute_force(SIZE_MM)
    with torch.no_grad():
        point = _models(0.0).intensity()
        finite = _models(SIZE_MM).intensity()
    err_point = float((point - truth).norm() / truth.norm())
    err_finite = float((finite - truth).norm() / truth.norm())
    assert err_point > 0.02
    assert err_finite < 0.25 * err_point


def test_gradients_through_the_stencil():
    model = _models(SIZE_MM)
    params = [model.illumination.shift_mm, model.pupil.zernike_waves, model.sample.defocus_um]
    names = ("shift", "zernike", "defocus")

    def make(i):
        def f(x):
            with torch.no_grad():
                params[i].copy_(x)
            return model.intensity().sum()
        return f

    for i, p in enumerate(params):
        x0 = p.detach().clone() + 0.01
        with torch.no_grad():
            p.copy_(x0)
        model.zero_grad()
        model.intensity().sum().backward()
        g = p.grad.detach().clone().reshape(-1)
        f = make(i)
        for k in range(min(g.numel(), 6)):
            e = torch.zeros_like(x0).reshape(-1)
            e[k] = 1e-6
            num = (f(x0 + e.reshape(x0.shape)) - f(x0 - e.reshape(x0.shape))) / 2e-6
            assert abs(float(num) - float(g[k])) <= 1e-5 * max(1.0, abs(float(num))), (names[i], k)
        with torch.no_grad():
            p.copy_(x0)
