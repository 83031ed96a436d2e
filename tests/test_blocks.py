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


def test_a_joint_pass_that_raises_the_loss_is_undone(monkeypatch):
    """A joint settle pass that ends higher than it began (here forced: the fake pass jumps far outside
    the bounds) is undone: the model keeps the point before it and the loop ends, not converged,
    saying why (the backstop to the projected losses of the next test)."""
    from torch.func import functional_call

    from metrology.solver import default_schedule, settle
    from metrology.solver.jacobian import columns_for

    m = _model()
    specs = [ParameterSpec("illumination.shift_mm", 0.1, bounds=(-3.0, 3.0)),
             ParameterSpec("pupil.zernike_waves", 0.01, bounds=(-2.0, 2.0))]
    with torch.no_grad():
        data = m().detach().clone()
        m.illumination.shift_mm.add_(0.05)  # a little off the data's optimum

    def evaluate(overrides):
        return ((functional_call(m, overrides, ()) - data) ** 2).mean()

    def fake_lbfgs(block, evaluate, max_iter):  # the joint pass wanders far outside the bounds
        class Opt:
            def step(self, closure):
                if isinstance(block, JointBlock):
                    with torch.no_grad():
                        for z in block.z:
                            z.add_(1e3)
        return Opt(), None

    monkeypatch.setattr(settle, "lbfgs", fake_lbfgs)
    monkeypatch.setattr(settle, "remaining_step_sigma", lambda *a, **k: 10.0)  # never settled by the test
    n = len(columns_for(m, specs).names)
    before = {k: p.detach().clone() for k, p in m.named_parameters()}
    settled, message, *_ = settle.sample_settled(m, data, torch.ones_like(data), None, default_schedule("blind", 10),
                                                 evaluate, None, specs, torch.eye(n, dtype=torch.float64), 1.0)
    assert not settled and message.startswith("not converged") and "raised the loss" in message, message
    for k, p in m.named_parameters():  # the sample's (no-op) pass round-trips it through its FFT: rounding
        torch.testing.assert_close(p.detach(), before[k], rtol=1e-12, atol=1e-12, msg=k)


def test_an_lbfgs_pass_across_a_bound_stores_the_point_it_judged():
    """An L-BFGS pass compares the losses of points it can store (the projected point,
    :meth:`Block.values`). Closed form over two station parameters, x (bounds +/-5) and y (bounds
    +/-1): L = (x - 0.5)^2 + 100 (x + y - 3)^2, from (1.9, 0.9) (L = 5.96). Unbounded, its optimum is
    (0.5, 2.5) (L = 0), stored clamped at (0.5, 1) (L = 225: the UConn red joint settle pass went
    from 0.78 to 23 this way); bounded, it is (401/202, 1) (L = 2.2277)."""
    from metrology.solver.blocks import lbfgs

    m = _model()
    specs = [ParameterSpec("illumination.rotation_deg", 1.0, bounds=(-5.0, 5.0)),
             ParameterSpec("illumination.distance_error_mm", 1.0, bounds=(-1.0, 1.0))]
    with torch.no_grad():
        m.illumination.rotation_deg.fill_(1.9)
        m.illumination.distance_error_mm.fill_(0.9)

    def evaluate(overrides):
        x = overrides.get("illumination.rotation_deg", m.illumination.rotation_deg)
        y = overrides.get("illumination.distance_error_mm", m.illumination.distance_error_mm)
        return (x - 0.5) ** 2 + 100.0 * (x + y - 3.0) ** 2

    block = Block(m, specs)
    opt, closure = lbfgs(block, evaluate, 50)
    opt.step(closure)
    block.project_and_store()
    with torch.no_grad():
        stored = float(evaluate({}))
    assert stored < 5.96
    assert abs(stored - 2.2277) < 1e-3, stored
    assert abs(float(m.illumination.rotation_deg) - 401 / 202) < 1e-3
    assert float(m.illumination.distance_error_mm) == 1.0
