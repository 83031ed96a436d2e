"""The free sample's settle loop: the convergence test of prior and blind fits, and the joint steps
that carry the system and the sample together to the optimum.

After the staged rounds and the system's Gauss-Newton polish (:mod:`metrology.solver.polish`), a fit
with a free sample is converged only when refining the sample no longer moves what is reported
(the lens, the station): :func:`sample_settled`. Where it does, the system and the sample are
coupled (a sample change can mimic a pupil change) and alternating the two zig-zags. The loop
therefore moves both together by a joint L-BFGS pass (the system whitened by the polish's
information), then polishes the system again and repeats the test. A joint Gauss-Newton step
instead (``H^-1 J^T W r`` over (system, sample) by the budget's preconditioned conjugate gradients,
:mod:`metrology.solver.marginal`) was measured and not kept (``docs/solver.md``, stop 27).
"""

from __future__ import annotations

import torch

from metrology.solver.blocks import Block, JointBlock, SampleBlock, lbfgs
from metrology.solver.polish import POLISH_STEPS, POLISH_TOLERANCE, polish, remaining_step_sigma

SETTLE_SAMPLE_STEPS = 20
"""L-BFGS iterations of each of those sample passes."""
JOINT_STEPS = 80
"""L-BFGS iterations of the joint (system and sample) pass between two settle tests."""
JOINT_RISE = 1e-3
"""A joint pass that leaves the objective higher than this fraction above where it began is undone
and ends the loop (not converged; the fit keeps its last good point and says why). A backstop: the
pass's losses are those of points it can store (:meth:`metrology.solver.blocks.Block.values`, the
projected point). Before that, on the UConn red capture (blind, all terms, 45 iterations, 2026-12-04)
a pass judged unclamped went from 0.78 to 23 once clamped to the bounds, and an unguarded fit ended
with the NA at 0.01 and every aberration at +/-2 waves (docs/solver.md)."""


def sample_settled(model, data, mask, noise, schedule, evaluate, weighting, system_specs, jtj, n_valid: float):
    """The convergence test of a free sample, the same as the system's: after a further pass of the
    sample's own L-BFGS, the system parameters' remaining Gauss-Newton step must still be below
    :data:`~metrology.solver.polish.POLISH_TOLERANCE` standard deviations. A sample loop whose loss
    merely stopped changing (a stall) is not converged unless this holds: what is reported (the lens,
    the station) must not move when the sample is refined. Where the pass moves them, the system and
    the sample are moved together (a joint L-BFGS pass of :data:`JOINT_STEPS` iterations over both,
    the system whitened by the polish's information), the system polished again, and the test
    repeated: :attr:`~metrology.solver.schedule.Schedule.settle_rounds` tests at most.

    Returns ``(settled, message, jtj, meat, per_group, steps)`` (the polish's outputs at the final point,
    or ``None`` for those when it was not re-run).
    """
    if jtj is None:
        return False, "sample: no Gauss-Newton information to test it", None, None, None, 0
    step = min(p.step for p in schedule.sample_parameters())
    outputs, steps, worst = None, 0, float("inf")
    for rounds in range(1, schedule.settle_rounds + 1):
        if not bool(torch.isfinite(jtj).all()):  # a non-finite Jacobian: nothing to test or whiten with
            return (False, f"not converged: the Gauss-Newton information is not finite (settle round {rounds})",
                    *(outputs or (None, None, None)), steps)
        block = SampleBlock(model, step)
        opt, closure = lbfgs(block, evaluate, SETTLE_SAMPLE_STEPS)
        opt.step(closure)
        block.project_and_store()
        worst = remaining_step_sigma(model, system_specs, evaluate, jtj, n_valid)
        if worst < POLISH_TOLERANCE:
            return (True, f"sample settled (a further sample pass leaves a {worst:.2g} sigma step, round {rounds})",
                    *(outputs or (None, None, None)), steps)
        if rounds == schedule.settle_rounds:
            break
        joint = JointBlock(Block(model, system_specs, 2.0 * jtj.to(data.dtype) / n_valid), SampleBlock(model, step))
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            loss_before = float(evaluate({}))
        opt, closure = lbfgs(joint, evaluate, JOINT_STEPS)
        opt.step(closure)
        joint.project_and_store()
        with torch.no_grad():
            loss_after = float(evaluate({}))
        if not loss_after <= loss_before + JOINT_RISE * abs(loss_before):  # NaN fails too
            model.load_state_dict(before)
            return (False, f"not converged: the joint pass of settle round {rounds} raised the loss "
                           f"({loss_before:.6g} -> {loss_after:.4g}); the point before it is kept",
                    *(outputs or (None, None, None)), steps)
        polished, (jtj, meat), _, per_group, _, k = polish(model, data, mask, noise, system_specs, evaluate,
                                                          POLISH_STEPS, weighting, schedule.priors)
        outputs, steps = (jtj, meat, per_group), steps + k
    return (False, f"not converged: the sample is still changing after {schedule.settle_rounds} rounds "
                   f"(a further pass leaves a {worst:.2g} sigma step)", *(outputs or (None, None, None)), steps)
