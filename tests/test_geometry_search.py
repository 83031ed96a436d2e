"""The known-mode LED geometry search in two passes (issue 18): on a large board the LEDs near the
axis are searched over the whole misalignment range, the geometry is fitted to them, and the outer
LEDs are only refined around its prediction. Same geometry as the exhaustive search, far fewer
candidate frames (fixture 15 x 15 bench at 32 px, random misalignment, ~10 s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metrology.solver.search as search
import metrology.solver.start as start
from metrology.physics import StationModel
from metrology.references import reference_transmission
from tests.sim_cases import misaligned_capture

GEOMETRY = ("shift_mm", "rotation_deg", "distance_error_mm", "tilt_deg")
FACTOR = start.INNER_SEARCH_NA_FACTOR


def _search(station, capture, monkeypatch, factor):
    """Geometry found by :func:`search_geometry_known` and the candidate frames it modelled."""
    g = station.geometry(capture.leds)
    model = StationModel(g, transmission=reference_transmission(capture.reference_sample, station.fov_um,
                                                                g.object_px, seed=0))
    count = []
    real = search.search_led_frequencies

    def counting(model, data, crop_px=64, ranges=search.DEFAULT_RANGES, leds=None, radius_px=None):
        r = search.search_radius_px(model, ranges, 1.0 / (min(g.frame_px, crop_px) * g.pixel_um))
        r = r if radius_px is None else torch.full_like(r, radius_px)
        chosen = torch.ones_like(r, dtype=torch.bool) if leds is None else leds
        count.append(int(((2 * r[chosen] + 1) ** 2).sum()))
        return real(model, data, crop_px, ranges, leds, radius_px)

    monkeypatch.setattr(start, "search_led_frequencies", counting)
    monkeypatch.setattr(start, "INNER_SEARCH_NA_FACTOR", factor)
    data = torch.as_tensor(capture.frames, dtype=torch.float32)
    start.search_geometry_known(model, data, station.camera.background_counts)
    with torch.no_grad():
        found = {n: getattr(model.illumination, n).detach().double().numpy().copy() for n in GEOMETRY}
    return found, sum(count), len(count)


def test_two_pass_search_finds_the_exhaustive_geometry_with_fewer_candidates(monkeypatch):
    station, leds, capture, truth, _ = misaligned_capture(32, 15, seed=4, rms_waves=0.04)
    one, n_one, calls_one = _search(station, capture, monkeypatch, 1e9)  # every LED inside: one pass
    two, n_two, calls_two = _search(station, capture, monkeypatch, FACTOR)
    assert calls_one == 1 and calls_two == 2
    assert n_two < 0.6 * n_one, (n_one, n_two)  # 1.8x fewer at 32 px (2.8x at 64 px)
    np.testing.assert_allclose(two["shift_mm"], one["shift_mm"], atol=0.005)
    assert two["rotation_deg"] == pytest.approx(one["rotation_deg"], abs=0.02)
    assert two["distance_error_mm"] == pytest.approx(one["distance_error_mm"], abs=0.05)
    # and both near the truth: the start is a start (the fit refines it), not a measurement
    np.testing.assert_allclose(two["shift_mm"], truth["illumination.shift_mm"], atol=0.1)
    assert two["rotation_deg"] == pytest.approx(truth["illumination.rotation_deg"], abs=0.3)


def test_small_boards_keep_the_single_pass(monkeypatch):
    """7 x 7 LEDs: too few dark-field LEDs inside the inner radius to fit a geometry first."""
    station, leds, capture, truth, _ = misaligned_capture(32, 7, seed=4, rms_waves=0.04)
    _, _, calls = _search(station, capture, monkeypatch, FACTOR)
    assert calls == 1
