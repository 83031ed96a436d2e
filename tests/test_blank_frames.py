"""Blank frames (a dead LED, a missed trigger) against live LEDs at the bright-/dark-field transition
(:func:`metrology.solver.quality.blank_frames`)."""

from __future__ import annotations

import torch

from metrology.solver import NoiseModel
from metrology.solver.quality import TRANSITION_BAND, blank_frames

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
