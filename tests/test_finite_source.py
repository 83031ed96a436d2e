"""Finite LED emitter: the source-smeared hard pupil edge and its incoherent remainder.

An LED is an incoherent source: each emitter point lights the sample with its own plane wave and
the camera adds the intensities. The model averages the hard pupil edge over the emitter's image
(:func:`metrology.physics.pupil.source_edge`) and adds the incoherent part of each frequency
sample's own power (:meth:`metrology.physics.StationModel.intensity`). The checks below compare it
with closed forms and with the literal simulator (hard edge, one coherent frame per emitter point).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrology import simulate as S
from metrology import simulate_optics as O
from metrology.physics import StationModel
from metrology.physics.pupil import source_edge
from tests.physics_cases import small_geometry
from tests.sim_cases import bench_station

EDGE_LED = (8, 9)  # (1, 2) steps from the centre: illumination NA 0.0994, at the 0.1 cut-off


def _clear_model(size_mm, distance_error_mm):
    g = small_geometry(frame_px=32, leds=[EDGE_LED], led_size_mm=size_mm)
    m = StationModel(g, dtype=torch.float64)
    with torch.no_grad():
        m.illumination.distance_error_mm.fill_(distance_error_mm)
    return m


def test_clear_sample_at_the_edge_transmits_the_emitters_fraction():
    """A clear sample has one plane-wave component: the frame is uniform and equals the fraction of
    the emitter's image inside the stop, whatever the coherence (closed form for a straight edge)."""
    size = 0.4
    for dh in (-0.6, -0.2, 0.0, 0.3, 0.8):
        m = _clear_model(size, dh)
        with torch.no_grad():
            frame = m.intensity()[0]
            side = float(m.source_side_px()[0])
            k = m.frequency_offsets_px()[0].double()
            d = float(m.geometry.pupil_radius_px - torch.linalg.vector_norm(k))  # > 0 inside
        assert float(frame.max() - frame.min()) < 1e-12
        # the edge is nearly straight across the emitter: the fraction of a square of side s whose
        # centre is d inside a straight edge, with the edge normal along the LED's direction
        ux, uy = abs(float(k[0])), abs(float(k[1]))
        r = float(torch.linalg.vector_norm(k))
        f64 = dict(dtype=torch.float64)
        expect = float(source_edge(torch.tensor(r + d, **f64), torch.tensor(ux, **f64), torch.tensor(uy, **f64),
                                   torch.tensor(side, **f64)))
        assert 0.0 < float(frame[0, 0]) < 1.0
        assert float(frame[0, 0]) == pytest.approx(expect, abs=1e-9)
    # bigger emitters smear the transition more: the frame at the same LED moves towards one half
    near = [float(_clear_model(s, -0.2).intensity()[0, 0, 0]) for s in (0.1, 0.4, 1.6)]
    assert abs(near[2] - 0.5) < abs(near[1] - 0.5) < abs(near[0] - 0.5)


@pytest.fixture(scope="module")
def transition_case():
    """The 4x bench (32-px frames, a 0.4 mm emitter) and LEDs around the bright-/dark-field
    transition, a random-broadband sample, and the literal simulator's frames through a hard edge
    averaged over 15 x 15 emitter points."""
    st = bench_station(32).replace(led_size_mm=0.4)
    leds = [(7, 7), (7, 8), (8, 9), (9, 8), (6, 5), (5, 6), (9, 9), (7, 10), (4, 7)]
    rng = np.random.default_rng(21)
    truth = S.check_misalignment(S.draw_misalignment(rng, n_leds=len(leds)), len(leds))
    coeffs = np.zeros(36)
    coeffs[4:15] = rng.normal(0, 0.04, 11)
    n_fine = st.frame_px * st.upsampling * 2
    t = S.reference_transmission("random-broadband", st.fov_um, n_fine, seed=3)
    sim = O.simulate_intensity(st, leds, truth, t, coeffs, led_subsources=15)
    full = {**truth, "pupil.zernike_waves": list(coeffs), "leds": [list(x) for x in leds], "reference_seed": 3}
    return st, leds, full, sim


def _model_frames(st, full, edge):
    model = S.model_from_truth(st, full)
    model.pupil.edge = edge
    with torch.no_grad():
        return model.intensity().numpy()


def test_model_matches_the_incoherent_average_through_a_hard_stop(transition_case):
    """Frame by frame, the source-smeared model is within 0.3 % (relative RMS) of the literal
    average over 225 emitter points in bright field and within 2 % in dark field (there all light is
    scattered and the neglected cross terms of two samples on the edge weigh most; at 2e4 photons
    per unit intensity that is a hundredth of the shot noise); the cell-coverage edge it replaced
    misses the transition frames by tens of per cent."""
    st, leds, full, sim = transition_case
    ours = _model_frames(st, full, "source")
    cells = _model_frames(st, full, "coverage")

    def rel(a):
        return np.sqrt(((a - sim) ** 2).sum(axis=(1, 2)) / (sim**2).sum(axis=(1, 2)))

    d = np.hypot(*O.illumination_frequencies(st, O.led_positions_mm(st, leds, full)).T) * st.fov_um
    d = d - st.na / (st.wavelength_nm * 1e-3) * st.fov_um
    near = np.abs(d) < 1.0
    assert near.sum() >= 2  # the case has transition frames
    assert rel(ours)[d < -1.0].max() < 0.003
    assert rel(ours).max() < 0.02
    assert rel(cells)[near].max() > 0.1
    assert (rel(cells)[near] > 4 * rel(ours)[near]).all()


def test_a_point_led_is_the_hard_stop():
    """Without an emitter the edge is the hard stop up to the floor width (a tenth of a frequency
    pixel): the frames are within 1 % of the literal simulator's hard edge."""
    st = bench_station(32).replace(led_size_mm=0.0)
    leds = [(7, 7), (6, 8), (7, 11), (3, 7), (10, 10)]
    truth = S.check_misalignment({}, len(leds))
    coeffs = np.zeros(36)
    coeffs[[4, 6, 10]] = [0.05, -0.03, 0.02]
    t = S.reference_transmission("random-broadband", st.fov_um, st.frame_px * st.upsampling * 2, seed=1)
    sim = O.simulate_intensity(st, leds, truth, t, coeffs)
    full = {**truth, "pupil.zernike_waves": list(coeffs), "leds": [list(x) for x in leds], "reference_seed": 1}
    ours = _model_frames(st, full, "source")
    rel = np.sqrt(((ours - sim) ** 2).sum() / (sim**2).sum())
    assert rel < 0.01
