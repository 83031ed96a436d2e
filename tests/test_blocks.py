"""The optimiser's parameter blocks never store a non-finite pass (metrology.solver.blocks)."""

import torch

from metrology.physics import StationModel
from metrology.solver.blocks import Block, JointBlock, SampleBlock
from metrology.solver.schedule import ParameterSpec
from tests.physics_cases import random_object, small_geometry


def _model():
    g = small_geometry(frame_px=16, n_side=3, upsampling=2, zernike_terms=10)
    return StationModel(g, random_object(g.object_px, seed=1), dtype=torch.float64)


def test_a_pass_that_turned_nan_is_not_stored():
    """A finite pass is stored (clamped to the bounds); one with a NaN leaves the model as it was,
    for the system, the sample, and both together (all or nothing)."""
    m = _model()
    specs = [ParameterSpec("illumination.shift_mm", 0.1, bounds=(-3.0, 3.0)), ParameterSpec("pupil.zernike_waves", 0.01)]
    block = Block(m, specs)
    with torch.no_grad():
        block.z[0].fill_(1.0)
    block.project_and_store()
    assert torch.allclose(m.illumination.shift_mm.detach(), torch.full((2,), 0.1, dtype=torch.float64))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        block.z[0][3] = float("nan")
    assert not block.finite()
    block.project_and_store()
    sample = SampleBlock(m, 0.01)
    with torch.no_grad():
        sample.z[0][0, 0, 0] = float("nan")
    sample.project_and_store()
    good = Block(m, specs[:1])
    with torch.no_grad():
        good.z[0].fill_(2.0)
    JointBlock(good, sample).project_and_store()  # the sample is NaN: neither is stored
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


def test_the_settle_test_stops_on_a_non_finite_jacobian():
    """A settle loop handed a non-finite ``J^T J`` says so and moves nothing (a joint pass whitened
    by it would turn every parameter into NaN)."""
    from metrology.solver import default_schedule
    from metrology.solver.settle import sample_settled

    m = _model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    jtj = torch.full((3, 3), float("nan"), dtype=torch.float64)
    settled, message, *_ = sample_settled(m, None, None, None, default_schedule("blind", 10), None, None, [], jtj, 1.0)
    assert not settled and "not finite" in message and message.startswith("not converged")
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
