"""The joint (system, sample) solve behind a free sample's budget (:mod:`metrology.solver.marginal`).

Checked on a small blind station (16 px frame, 3 x 3 LEDs, 2x upsampling: 2048 sample values) whose
Jacobian can be written out densely: the operator's products are adjoint to each other, and the
preconditioned conjugate gradients return the system part of the dense solve. The budget of a
free-sample fit uses that response (the sample follows the constant), which differs from the
held-sample one.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metrology.physics import StationModel
from metrology.solver import NoiseModel, default_schedule
from metrology.solver.budget import _moves, _residual, constant_sensitivities, sample_free
from metrology.solver.jacobian import linearise, psd_inverse
from metrology.solver.marginal import JointOperator, joint_solve
from metrology.solver.priors import add_to_normal_equations
from tests.physics_cases import random_object, small_geometry


@pytest.fixture(scope="module")
def station():
    """A blind fit's ingredients at a point near (not at) the optimum: the truth's sample and a lens
    0.02 waves off in Noll 5-8, frames from the truth with Poisson noise."""
    torch.manual_seed(0)
    g = small_geometry(frame_px=16, n_side=3, upsampling=2, zernike_terms=10)
    n = g.object_px
    truth = StationModel(g, random_object(n, seed=3), dtype=torch.float64)
    with torch.no_grad():
        truth.pupil.zernike_waves[4:8] = torch.tensor([0.05, -0.03, 0.02, 0.04], dtype=torch.float64)
        frames = torch.poisson(truth() * 50.0) / 50.0
    model = StationModel(g, random_object(n, seed=3), dtype=torch.float64)
    with torch.no_grad():
        model.pupil.zernike_waves[4:8] = torch.tensor([0.07, -0.01, 0.0, 0.05], dtype=torch.float64)
    noise = NoiseModel(50.0, 1.0, None)
    schedule = default_schedule("blind", g.zernike_terms)
    specs = [p for p in schedule.parameters if not p.path.startswith("sample.field")]
    scale = torch.ones_like(frames)
    lin = linearise(model, frames, scale, noise, specs)
    data_jtj, data_jtr = lin.normal()
    jtj, _ = add_to_normal_equations(data_jtj, data_jtr, model, schedule.priors, lin.columns)
    op = JointOperator(model, frames, scale, noise, lin, (jtj - data_jtj).diagonal())
    return SimpleNamespace(model=model, data=frames, noise=noise, schedule=schedule, specs=specs, lin=lin,
                           jtj=jtj, op=op, scale=scale)


def _dense(op):
    """``J`` written out: (residuals, P + 2 N^2), the system columns first."""
    p = op.p
    with torch.no_grad():
        return _dense_columns(op, p)


def _dense_columns(op, p: int) -> torch.Tensor:
    js = op.system_forward(torch.eye(p, dtype=torch.float64)).reshape(p, -1).T
    m = int(np.prod(op.sample_shape))
    cols = [op.sample_forward(torch.eye(m, dtype=torch.float64)[i:i + 256].reshape(-1, *op.sample_shape))
            .reshape(-1, js.shape[0]).T for i in range(0, m, 256)]
    return torch.cat([js] + cols, dim=1)


def test_operator_products_are_adjoint(station):
    """``<J v, w> = <v, J^T w>`` for the system columns (brightness compressed per frame) and the
    sample fields, on random vectors."""
    op = station.op
    g = torch.Generator().manual_seed(1)
    vs = torch.randn((3, op.p), generator=g, dtype=torch.float64)
    vo = torch.randn((3,) + op.sample_shape, generator=g, dtype=torch.float64)
    w = torch.randn((3,) + tuple(station.data.shape), generator=g, dtype=torch.float64)
    with torch.no_grad():
        lhs_s = (op.system_forward(vs) * w).sum((1, 2, 3))
        rhs_s = (vs * op.system_adjoint(w)).sum(1)
        lhs_o = (op.sample_forward(vo) * w).sum((1, 2, 3))
        rhs_o = (vo * op.sample_adjoint(w)).sum((1, 2, 3))
    np.testing.assert_allclose(lhs_s.numpy(), rhs_s.numpy(), rtol=1e-10)
    np.testing.assert_allclose(lhs_o.numpy(), rhs_o.numpy(), rtol=1e-10)
    # the system columns are the linearisation's own: J_s^T J_s is its normal matrix
    eye = torch.eye(op.p, dtype=torch.float64)
    jtj = op.system_adjoint(op.system_forward(eye))
    np.testing.assert_allclose(jtj.numpy(), station.lin.normal()[0].numpy(), rtol=1e-9, atol=1e-9)


def test_operator_products_are_adjoint_with_two_per_frame_parameters(station):
    """The same with each frame's stray light freed beside its brightness (two compressed per-frame
    tangents): adjoint products, and ``J_s^T J_s`` the linearisation's normal matrix."""
    from metrology.solver.schedule import ParameterSpec

    model = station.model
    with torch.no_grad():
        model.illumination.stray_light.copy_(torch.linspace(0.0, 0.01, len(model.illumination.stray_light)))
    try:
        specs = station.specs + [ParameterSpec("illumination.stray_light", 0.001)]
        lin = linearise(model, station.data, station.scale, station.noise, specs)
        op = JointOperator(model, station.data, station.scale, station.noise, lin, torch.zeros(len(lin.columns.names)))
        g = torch.Generator().manual_seed(2)
        vs = torch.randn((3, op.p), generator=g, dtype=torch.float64)
        w = torch.randn((3,) + tuple(station.data.shape), generator=g, dtype=torch.float64)
        with torch.no_grad():
            lhs = (op.system_forward(vs) * w).sum((1, 2, 3))
            rhs = (vs * op.system_adjoint(w)).sum(1)
            jtj = op.system_adjoint(op.system_forward(torch.eye(op.p, dtype=torch.float64)))
        np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), rtol=1e-10)
        np.testing.assert_allclose(jtj.numpy(), lin.normal()[0].numpy(), rtol=1e-9, atol=1e-9)
        assert sum(p == "illumination.stray_light" for p in lin.columns.paths) == model.geometry.n_leds
    finally:
        with torch.no_grad():
            model.illumination.stray_light.zero_()


@pytest.fixture(scope="module")
def dense(station):
    """The joint information ``H`` written out, and its pseudo-inverse."""
    op = station.op
    j = _dense(op)
    h = j.T @ j
    h[range(op.p), range(op.p)] += op.prior
    return torch.linalg.pinv(h, hermitian=True, rtol=1e-12)


def _plain_in_sd(station, x: torch.Tensor) -> torch.Tensor:
    """The lens and geometry columns of ``x`` (K, P) in the held fit's standard deviations (the
    brightness shares a gauge with the sample's scale and is not compared)."""
    keep = [i for i, p in enumerate(station.lin.columns.paths) if p != "illumination.brightness"]
    return x[:, keep] / torch.sqrt(psd_inverse(station.jtj).diagonal())[keep]


def test_joint_solve_matches_the_dense_solve(station, dense):
    """The preconditioned CG's system part equals the dense joint solve's within 1 %, and differs
    from the held-sample solve ``H_ss^-1 b_s`` by far more."""
    op = station.op
    g = torch.Generator().manual_seed(2)
    dr = torch.randn((2,) + tuple(station.data.shape), generator=g, dtype=torch.float64)
    with torch.no_grad():
        bs, bo = op.adjoint(dr)
        solve = joint_solve(station.model, op, bs, bo, station.jtj)
    b = torch.cat([bs, bo.reshape(2, -1)], dim=1)
    want = _plain_in_sd(station, (dense @ b.T).T[:, : op.p])
    got = _plain_in_sd(station, solve.system)
    assert solve.converged, solve
    assert float((got - want).norm() / want.norm()) < 0.01
    held = _plain_in_sd(station, bs @ psd_inverse(station.jtj))
    assert float((held - want).norm() / want.norm()) > 0.1


def test_a_free_sample_budget_lets_the_sample_follow(station, dense):
    """The budget of a blind fit takes each constant's response from the joint information: its
    per-unit sensitivity is minus the system part of ``H^-1 J^T (d r / d c)`` (here against the dense
    solve, within 1 %), computed as ``(H^-1 e_i) . J^T (d r / d c)`` from one solve per column."""
    fit = SimpleNamespace(model=station.model, data=station.data, mask=torch.ones_like(station.data), weights=None,
                          noise=station.noise, schedule=station.schedule, jtj=station.jtj,
                          columns=station.lin.columns)
    assert sample_free(fit)
    (held,) = constant_sensitivities(fit, ["led_pitch_mm"])
    assert held.solve is None  # the default holds the sample
    (s,) = constant_sensitivities(fit, ["led_pitch_mm"], free_sample=True)
    assert s.solve is not None and s.solve.converged
    ((_, _, value, step, move),) = _moves(station.model, "led_pitch_mm")
    with torch.no_grad():
        dr = (_residual(move(value + step), station.data, station.noise, station.scale)
              - _residual(move(value - step), station.data, station.noise, station.scale)) / (2 * step)
        bs, bo = station.op.adjoint(dr[None])
    b = torch.cat([bs, bo.reshape(1, -1)], dim=1)
    want = _plain_in_sd(station, -(dense @ b.T).T[:, : station.op.p])
    got = _plain_in_sd(station, torch.as_tensor(s.per_unit)[None])
    assert float((got - want).norm() / want.norm()) < 0.01
    bright = [i for i, p in enumerate(station.lin.columns.paths) if p == "illumination.brightness"]
    assert not np.any(s.per_unit[bright])
