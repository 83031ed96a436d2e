"""Gauss-Newton polish of the system parameters and the fit's convergence test.

After the staged L-BFGS rounds (:mod:`metrology.solver.reconstruct`), :func:`polish` takes
Gauss-Newton steps on the system parameters until the remaining step is below
:data:`POLISH_TOLERANCE` standard deviations of every parameter with the learned data variances
settled: that is the convergence test of every mode. At the final point it returns what the
uncertainty evaluation needs (:mod:`metrology.solver.uncertainty`): the posterior information
``J^T W J`` (data with the learned variances, plus the priors), the sandwich meat ``J^T W S W J``,
and the per-LED-group and per-image-region normal equations of the linearised jackknifes.
"""

from __future__ import annotations

import torch

from metrology.solver.blocks import Block
from metrology.solver.jacobian import linearise, psd_inverse
from metrology.solver.priors import add_to_normal_equations
from metrology.solver.weights import Weighting

_DEBUG = bool(__import__("os").environ.get("METROLOGY_POLISH_DEBUG"))

WEIGHT_RESTART = 0.05
"""A round whose data-variance update changes some ``v`` by more than this restarts L-BFGS."""
WEIGHT_SETTLED = 0.05
"""The Gauss-Newton test also needs the learned data variances settled to this relative change."""
POLISH_STEPS = 8
"""Default Gauss-Newton budget when :func:`_polish` is called on its own."""
JACKKNIFE_GROUPS = 10
SPATIAL_BLOCKS = 4
"""The spatial jackknife deletes one of ``SPATIAL_BLOCKS^2`` image regions (the same in every frame)."""
POLISH_TOLERANCE = 0.5
"""Converged when the remaining Gauss-Newton step is below this many standard deviations of every
parameter (its effect on the result is then below ~12 % of the uncertainty, added in quadrature)."""


def polish(model, data, mask, noise, specs, evaluate, budget: int = POLISH_STEPS, weighting: Weighting | None = None,
            priors=(), progress=None):
    """Gauss-Newton polishing of the system parameters and the convergence test.

    At most ``budget`` steps are taken. Each step evaluates a few candidates along the
    Gauss-Newton direction (full, half, quarter) and along Levenberg-Marquardt damped directions,
    and keeps the one with the lowest loss: in the curved valley an LED on the pupil edge makes
    (its brightness against the LED position), a shortened Gauss-Newton step goes further than a
    damped one. The learned data variances are re-estimated before every step; converged means a
    remaining step below :data:`POLISH_TOLERANCE` standard deviations with settled variances.

    Returns
    -------
    converged : bool
    (jtj, meat) : Tensors (P, P)
        Posterior information (data with the learned variances, plus the priors) and the sandwich
        meat, at the final point.
    columns : Columns
    per_group : dict
        ``"leds"``: per LED group and ``"regions"``: per image region ``(J^T J, J^T r)``.
    message : str
    steps : int
    """
    n = data.shape[0]
    groups = [list(range(g, n, JACKKNIFE_GROUPS)) for g in range(min(JACKKNIFE_GROUPS, n))]
    weighting = weighting or Weighting(None, data.dtype)
    step = 0
    moved = weighting.update(model, data, mask, noise)
    worst = float("inf")
    while True:
        # the variances stay fixed while Gauss-Newton converges on them (re-estimating them every
        # step moves the target each step: EM-slow); once converged, they are re-estimated and the
        # test repeated until they have settled too
        if step and worst < POLISH_TOLERANCE:
            moved = weighting.update(model, data, mask, noise)
        lin = linearise(model, data, weighting.residual_scale(mask), noise, specs)
        data_jtj, data_jtr = lin.normal()
        jtj, jtr = add_to_normal_equations(data_jtj, data_jtr, model, priors, lin.columns)
        finite = bool(torch.isfinite(jtj).all() and torch.isfinite(jtr).all())
        inv = psd_inverse(jtj) if finite else None
        worst = float("inf")
        if finite:
            delta = -(inv @ jtr)
            worst = float((delta.abs() / torch.sqrt(inv.diagonal().clamp(min=1e-300))).max())
            if _DEBUG:
                sg = torch.sqrt(inv.diagonal())
                order = torch.argsort(delta.abs() / sg, descending=True)[:4]
                print("polish", step, round(float(evaluate({})), 7), round(moved, 3),
                      [(lin.columns.names[i], round(float(delta[i]), 5), round(float(sg[i]), 5)) for i in order.tolist()])
        message = None
        if not finite:
            message = "not converged: non-finite Jacobian"
        elif worst < POLISH_TOLERANCE and (moved <= WEIGHT_SETTLED or step >= budget):
            message = f"converged: remaining Gauss-Newton step {worst:.2g} sigma after {step} steps"
        elif step >= budget:
            message = f"not converged: iteration budget spent with a {worst:.2g} sigma step left"
        else:
            step += 1
            after = _best_step(model, specs, evaluate, jtj, jtr, delta)
            if after is not None:  # cheap steps: the same J^T J, a fresh gradient (one backward pass)
                for _ in range(CHEAP_STEPS):
                    g = _gradient_jtr(model, specs, evaluate, float(mask.sum()))
                    if g is None:
                        break
                    cheap = _best_step(model, specs, evaluate, jtj, g, -(inv @ g), damped=False)
                    if cheap is None or cheap > after - 1e-7 * abs(after):
                        break
                    after = cheap
            if after is None and worst < 2 * POLISH_TOLERANCE:
                # the predicted loss decrease is below the loss's floating-point resolution
                message = f"converged at numerical precision ({worst:.2g} sigma step left)"
            elif after is None:
                message = f"not converged: no step reduces the loss ({worst:.2g} sigma left)"
            elif progress is not None:
                progress(step, after)
        if message is not None:
            meat = lin.meat() + (jtj - data_jtj) if finite else jtj  # the prior's rows are exact
            per_group = {"leds": lin.per_group(groups), "regions": lin.per_block(SPATIAL_BLOCKS)}
            return message.startswith("converged"), (jtj, meat), lin.columns, per_group, message, step


CHEAP_STEPS = 4
"""Gauss-Newton steps per linearisation that reuse its ``J^T J`` with a fresh gradient."""


def remaining_step_sigma(model, specs, evaluate, jtj, n_valid: float) -> float:
    """Largest remaining Gauss-Newton step of the system parameters ``specs``, in standard deviations
    (``|H^-1 J^T W r| / sqrt(diag H^-1)`` with the posterior information ``jtj`` of the polish and a
    fresh gradient: one backward pass); inf when the loss is not finite."""
    g = _gradient_jtr(model, specs, evaluate, n_valid)
    if g is None:
        return float("inf")
    inv = psd_inverse(jtj.to(g.device, g.dtype))
    return float(((inv @ g).abs() / torch.sqrt(inv.diagonal().clamp(min=1e-300))).max())


def _gradient_jtr(model, specs, evaluate, n_valid: float):
    """``J^T W r`` (plus the priors' part) at the current point from one backward pass of the
    loss (``L = (r^T W r + prior chi-square) / N``, so ``J^T W r = N / 2 dL / d theta``)."""
    block = Block(model, specs)
    loss = evaluate(block.values())
    if not torch.isfinite(loss):
        return None
    (grad,) = torch.autograd.grad(loss, block.z[0])
    return (0.5 * n_valid * grad / block.steps).double().to(block.z[0].device)


def _best_step(model, specs, evaluate, jtj, jtr, delta, damped=True):
    """Take the candidate step with the lowest loss (see :func:`_polish`); None if none lowers it."""
    block = Block(model, specs)
    dj = jtj.diagonal()
    candidates = [delta, 0.5 * delta, 0.25 * delta]
    if damped:
        candidates += [-(psd_inverse(jtj + damping * torch.diag(dj)) @ jtr) for damping in (1e-2, 1e-1, 1.0, 10.0)]
    with torch.no_grad():
        before = float(evaluate({}))
        best, best_loss = None, before
        for cand in candidates:
            block.z[0].copy_(cand.to(block.z[0].dtype) / block.steps)
            loss = float(evaluate(block.values()))
            if loss < best_loss:
                best, best_loss = cand, loss
        if best is None:
            return None
        block.z[0].copy_(best.to(block.z[0].dtype) / block.steps)
        block.project_and_store()
    return best_loss
