"""Blank frames (a dead LED, a missed trigger, a dropped frame) against live LEDs at the bright-/dark-field
transition (:func:`metrology.solver.quality.blank_frames`), and the background estimate beside a dropped frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metrology
from metrology.solver import NoiseModel
from metrology.solver.quality import (TRANSITION_BAND, assess, blank_frames, duplicate_frames, estimate_background,
                                      flat_frames)
from tests.sim_cases import FIXTURES, bench_station, centre_leds, lens_coefficients, simulate_to

NOISE = NoiseModel(gain_e_per_count=1.0, read_noise_counts=2.0)
BACKGROUND = 10.0


def _frames(levels):
    """(J, 8, 8) frames at ``levels`` counts above the background on average, with a +/-0.2-count
    checkerboard (a frame without any variation is blank by itself: a stuck readout)."""
    checker = 0.2 * (1 - 2 * ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2)).double()
    return BACKGROUND + torch.tensor(levels, dtype=torch.float64)[:, None, None] + checker


# frames: a bright-field LED, an LED just outside the edge that the started model put inside it
# (predicted bright), and two dark-field LEDs; the pupil's NA 0.1
PREDICTED = _frames([1000.0, 800.0, 20.0, 15.0])
ILLUMINATION_NA = [0.0, 0.099, 0.12, 0.13]


def test_a_live_led_at_the_transition_is_not_blank():
    """The transition LED reads 30 counts (dark-field scatter) for a predicted 800: blank by the started
    model alone (the rule that lost live edge frames), live by the dark field (30 > 20 % of its median)."""
    data = _frames([1000.0, 30.0, 20.0, 15.0])
    assert blank_frames(data, PREDICTED, BACKGROUND, NOISE) == [1]
    assert blank_frames(data, PREDICTED, BACKGROUND, NOISE, ILLUMINATION_NA, 0.1) == []


def test_a_dead_led_is_blank_at_the_transition_and_elsewhere():
    """A dead LED reads the background alone: blank at the transition (below 20 % of the dark field's
    median) and in the bright field, with or without the illumination NA."""
    data = _frames([1000.0, 0.5, 20.0, 15.0])
    assert blank_frames(data, PREDICTED, BACKGROUND, NOISE, ILLUMINATION_NA, 0.1) == [1]
    dead_bright = _frames([0.0, 30.0, 20.0, 15.0])
    assert blank_frames(dead_bright, PREDICTED, BACKGROUND, NOISE, ILLUMINATION_NA, 0.1) == [0]


def test_the_transition_band_is_relative_to_the_na():
    """An LED beyond the band is judged by the started model as before (a dark-field LED predicted at
    20 counts that reads 1 is dead)."""
    outside = 0.1 * (1 + 1.5 * TRANSITION_BAND)
    data = _frames([1000.0, 30.0, 1.0, 15.0])
    assert blank_frames(data, PREDICTED, BACKGROUND, NOISE, [0.0, 0.099, outside, 0.13], 0.1) == [2]


def test_a_dropped_frame_does_not_pull_the_background_estimate():
    """A camera drop-out reads 0 counts everywhere, below the offset. Among the darkest tenth of the
    frames it pulled the pooled 5th percentile to 0 (a known fit of 81 frames then put every
    dark-field brightness on its bound 0); flat frames are left out of the estimate."""
    rng = np.random.default_rng(3)
    frames = 40.0 + rng.normal(0.0, 2.0, size=(20, 16, 16))
    frames[:10] += 500.0  # bright field
    expected = estimate_background(frames)
    assert abs(expected - (40.0 - 1.645 * 2.0)) < 0.5  # the 5th percentile of N(40, 2^2)
    frames[12] = 0.0  # dropped
    assert flat_frames(frames).tolist() == [j == 12 for j in range(20)]
    assert estimate_background(frames) == pytest.approx(estimate_background(np.delete(frames, 12, axis=0)))
    assert abs(estimate_background(frames) - expected) < 0.5


def test_a_dropped_frame_is_excluded_and_the_known_fit_holds(tmp_path):
    """End to end (known mode, 9 x 9 LEDs, 32 px: the case where it was found): one frame dropped
    (all 0) is named blank, left out of the fit, and the fit converges with no parameter on a bound
    and the lens within its U."""
    station, leds = bench_station(32), centre_leds(9)
    coeffs = lens_coefficients(0.03, 1)
    spec = FIXTURES / "specs" / "plan-4x-010.toml"
    cap, st, _ = simulate_to(tmp_path, station, coeffs, seed=1, leds=leds, blank_frames=[0])
    result = metrology.inspect(cap, st, spec)
    doc = result.document
    assert doc["data_quality"]["blank_frames"] == [0]
    assert doc["solver"]["converged"] and doc["solver"]["at_bounds"] == []
    assert doc["solver"]["reduced_chi2"] < 2.0
    error = result.measurement.zernike_waves[4:15] - coeffs[4:15]
    assert np.abs(error).max() < 0.005
    assert np.abs(error / result.measurement.zernike_u[4:15]).max() < 4.0


def test_a_repeated_frame_is_named_and_left_out_of_the_fit():
    """A frame equal to an earlier one in every pixel (a missed trigger) is flagged and masked; frames
    that merely look alike (the same scene, fresh noise) and flat frames are not."""
    rng = np.random.default_rng(5)
    scene = 100.0 + 50.0 * rng.random((16, 16))
    frames = np.stack([rng.poisson(scene).astype(float) for _ in range(30)])
    frames[7] = frames[6]  # the buffer read again
    frames[20] = frames[3]
    frames[25] = 0.0
    frames[26] = 0.0  # two dropped frames: flat, for the blank-frame rule
    assert duplicate_frames(frames) == [[7, 6], [20, 3]]
    mask, quality = assess(frames, NoiseModel(), 100.0)
    assert not mask[7].any() and not mask[20].any() and mask[6].all() and mask[3].all() and mask[25].all()
    assert quality.duplicate_frames == [[7, 6], [20, 3]]
    (flag,) = [f for f in quality.flags if f[0] == "duplicate_frames"]
    assert "frame 7 repeats frame 6" in flag[1] and flag[2] == "error"  # 2 of 30 > 5 %
    frames[20] = rng.poisson(scene)
    assert [f[2] for f in assess(frames, NoiseModel(), 100.0)[1].flags if f[0] == "duplicate_frames"] == ["warning"]


def test_the_per_frame_terms_of_frames_left_out_are_held():
    """A frame left out of the fit has no data for its brightness and stray light: the schedule holds
    them (free, the stray light had no gradient and no prior and went to its bound); other terms, and
    the stages' own element lists, are kept."""
    from metrology.solver.schedule import ParameterSpec, Schedule

    s = Schedule(parameters=(ParameterSpec("illumination.brightness", 0.01, 0, (0.0, 10.0)),
                             ParameterSpec("illumination.stray_light", 0.01, 2, (-1.0, 10.0), (0, 1, 2)),
                             ParameterSpec("illumination.shift_mm", 0.01)))
    held = s.without_frames([1, 5], 8)
    assert [(p.path, p.indices, p.start) for p in held.parameters] == [
        ("illumination.brightness", (0, 2, 3, 4, 6, 7), 0), ("illumination.stray_light", (0, 2), 2),
        ("illumination.shift_mm", None, 0)]
    assert s.without_frames([], 8) is s
    assert [p.path for p in s.without_frames([0, 1, 2], 8).parameters] == ["illumination.brightness",
                                                                          "illumination.shift_mm"]


def test_the_blank_frame_flag_names_the_bright_field_ones_that_make_it_an_error():
    """One blank dark-field frame of 81 is a warning; a blank bright-field frame is an error and the
    flag says which (a frame of another LED under a bright-field LED reads so, not only a dead LED)."""
    from metrology.measurement import DataQuality
    from metrology.solver.quality import flag_blank

    bright = np.zeros(81, bool)
    bright[30:33] = True
    q = DataQuality()
    flag_blank(q, [0], 81, bright)
    assert q.flags[-1][2] == "warning" and "bright field" not in q.flags[-1][1]
    q = DataQuality()
    flag_blank(q, [0, 31], 81, bright)
    (code, message, severity) = q.flags[-1]
    assert code == "blank_frames" and severity == "error"
    assert message.endswith("[0, 31], of them in the bright field: [31]") and "a frame of another LED" in message
