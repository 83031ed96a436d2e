"""Gauss-Newton polish of the system parameters and the fit's convergence test.

After the staged L-BFGS rounds (:mod:`metrology.solver.reconstruct`), :func:`polish` takes
Gauss-Newton steps on the system parameters until the remaining step is below
:data:`POLISH_TOLERANCE` standard deviations of every parameter, from a fresh linearisation
with the learned data variances re-estimated at that point: that is the convergence test of every
mode. Between linearisations, quasi-Newton steps reuse the last one (the Jacobian is most of the
polish's cost). At the final point it returns what the
uncertainty evaluation needs (:mod:`metrology.solver.uncertainty`): the posterior information
``J^T W J`` (data with the learned variances, plus the priors), the sandwich meat ``J^T W S W J``,
and the per-LED-group and per-image-region normal equations of the linearised jackknifes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metrology.solver.blocks import Block
from metrology.solver.jacobian import linearise, psd_inverse
from metrology.solver.priors import add_to_normal_equations
from metrology.solver.weights import Weighting

_DEBUG = bool(__import__("os").environ.get("METROLOGY_POLISH_DEBUG"))

WEIGHT_RESTART = 0.05
"""A round whose data-variance update changes some ``v`` by more than this restarts L-BFGS."""
POLISH_STEPS = 8
"""Default Gauss-Newton budget when :func:`_polish` is called on its own."""
JACKKNIFE_GROUPS = 10
SPATIAL_BLOCKS = 4
"""The spatial jackknife deletes one of ``SPATIAL_BLOCKS^2`` image regions (the same in every frame)."""
POLISH_TOLERANCE = 0.5
"""Converged when the remaining Gauss-Newton step is below this many standard deviations of every
parameter (its effect on the result is then below ~12 % of the uncertainty, added in quadrature).
The step is that of the bound-constrained problem (:func:`bounded_step`): a parameter on a search
bound that the step would push across it is held there."""
BOUND_TOLERANCE = 1e-6
"""A value within this many of its parameter's steps (:class:`~metrology.solver.schedule.ParameterSpec`
``step``) of a search bound counts as on it (:func:`bounded_step`)."""


def polish(model, data, mask, noise, specs, evaluate, budget: int = POLISH_STEPS, weighting: Weighting | None = None,
           priors=(), progress=None):
    """Gauss-Newton polishing of the system parameters and the convergence test.

    At most ``budget`` steps are taken, each from a fresh linearisation (the forward-mode
    Jacobian, the cost of the polish). Each step evaluates a few candidates along the Gauss-Newton
    direction (full, half, quarter) and along Levenberg-Marquardt damped directions, and keeps the
    one with the lowest loss: in the curved valley an LED on the pupil edge makes (its brightness
    against the LED position), a shortened Gauss-Newton step goes further than a damped one. Then
    quasi-Newton steps reuse the linearisation (:func:`_quasi_newton_steps`) until the step they
    predict is well below the tolerance, so one more linearisation usually ends the polish.

    The learned data variances stay fixed while Gauss-Newton converges on them; once it has (a
    remaining step below :data:`POLISH_TOLERANCE` standard deviations) they are re-estimated at
    that point and the test repeated with them. The residuals and Jacobian carry the variances
    only as a per-pixel scale, so at an unchanged point the linearisation is rescaled
    (:meth:`~metrology.solver.jacobian.Linearisation.rescaled`, equal to a fresh one) rather than
    rebuilt. Converged means: a remaining step below :data:`POLISH_TOLERANCE` standard deviations
    from a fresh linearisation at the final point, with the variances re-estimated at that point
    (a joint fixed point of the alternation: the variances are the MAP of the final residuals and
    Gauss-Newton with them has converged).

    Returns
    -------
    converged : bool
    (jtj, meat) : Tensors (P, P)
        Posterior information (data with the learned variances, plus the priors) and the sandwich
        meat, at the final point (its fresh linearisation).
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
    weights_here = True  # the variances were re-estimated at the current point
    lin = linearise(model, data, weighting.residual_scale(mask), noise, specs)
    while True:
        eq = _normal_equations(lin, model, specs, priors)
        if _DEBUG:
            _debug(step, evaluate, moved, lin.columns, eq)
        if eq.worst < POLISH_TOLERANCE and not weights_here:
            # Gauss-Newton has converged on these variances: re-estimate them here and test again
            moved, weights_here = weighting.update(model, data, mask, noise), True
            lin = lin.rescaled(weighting.residual_scale(mask))
            continue
        message = None
        if not eq.finite:
            message = "not converged: non-finite Jacobian"
        elif eq.worst < POLISH_TOLERANCE:  # with the variances re-estimated at this very point
            message = (f"converged: remaining Gauss-Newton step {eq.worst:.2g} sigma after {step} steps "
                       f"(data variances re-estimated there: largest change {moved:.2g}{_held_clause(eq.held)})")
        if message is None and step >= budget:
            message = f"not converged: iteration budget spent with a {eq.worst:.2g} sigma step left"
        elif message is None:
            step += 1
            after = _step(model, specs, evaluate, eq, float(mask.sum()))
            if after is None and eq.worst < 2 * POLISH_TOLERANCE:
                # the predicted loss decrease is below the loss's floating-point resolution
                message = f"converged at numerical precision ({eq.worst:.2g} sigma step left)"
            elif after is None:
                message = f"not converged: no step reduces the loss ({eq.worst:.2g} sigma left)"
            else:
                if progress is not None:
                    progress(step, after)
                weights_here = False
                lin = linearise(model, data, weighting.residual_scale(mask), noise, specs)
        if message is not None:
            meat = lin.meat() + (eq.jtj - eq.data_jtj) if eq.finite else eq.jtj  # the prior's rows are exact
            per_group = {"leds": lin.per_group(groups), "regions": lin.per_block(SPATIAL_BLOCKS)}
            return message.startswith("converged"), (eq.jtj, meat), lin.columns, per_group, message, step


def _step(model, specs, evaluate, eq, n_valid: float) -> float | None:
    """The best Gauss-Newton candidate from ``eq`` (:func:`_best_step`), then quasi-Newton steps on
    its ``J^T W J`` (:func:`_quasi_newton_steps`); the loss after them, None if no candidate lowers it."""
    after = _best_step(model, specs, evaluate, eq.jtj, eq.jtr, eq.delta, held=eq.held)
    return None if after is None else _quasi_newton_steps(model, specs, evaluate, eq.jtj, n_valid)


@dataclass
class _Equations:
    """The Gauss-Newton system of one linearisation (with the priors) and its step."""

    data_jtj: torch.Tensor
    jtj: torch.Tensor
    jtr: torch.Tensor
    finite: bool
    inv: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    worst: float = float("inf")  # largest |step| / sigma
    held: torch.Tensor | None = None  # elements held on a bound (bool, P)


def _normal_equations(lin, model, specs, priors) -> _Equations:
    data_jtj, data_jtr = lin.normal()
    jtj, jtr = add_to_normal_equations(data_jtj, data_jtr, model, priors, lin.columns)
    eq = _Equations(data_jtj, jtj, jtr, bool(torch.isfinite(jtj).all() and torch.isfinite(jtr).all()))
    if eq.finite:
        eq.delta, eq.inv, eq.held = bounded_step(jtj, jtr, Block(model, specs))
        eq.worst = _step_sigma(eq.delta, eq.inv)
    return eq


def bounded_step(jtj: torch.Tensor, jtr: torch.Tensor, block: Block):
    """The Gauss-Newton step of the bound-constrained problem, by an active set.

    An element on a search bound (within :data:`BOUND_TOLERANCE` steps) is held there when the step
    would push it across: the step of the others is ``-(H_FF)^-1 g_F`` with the held ones fixed, and
    a held element is released again when the quadratic model's gradient there
    (``g + H delta``) no longer points across its bound (its Lagrange multiplier changed sign).
    Without this a fit whose optimum lies beyond a bound could never pass the convergence test (the
    unconstrained step there stays large however often the projected step is taken); with it, the fit
    converges on the bound and the verdict reports the element as on it
    (:func:`~metrology.solver.schedule.parameters_at_bounds`).

    Parameters
    ----------
    jtj : Tensor (P, P)
        ``J^T W J`` (with the priors).
    jtr : Tensor (P,)
        ``J^T W r``: half the gradient of the loss's chi-square (descent is ``-jtr``).
    block : Block
        The parameters' current values and bounds (``theta0``, ``lower``, ``upper``, ``steps``), in
        the columns' order.

    Returns
    -------
    delta : Tensor (P,)
        The step (zero on held elements).
    inv : Tensor (P, P)
        The inverse of the free elements' ``J^T W J`` (zero rows and columns on held ones): the
        conditional covariance the step is measured against.
    held : Tensor (P,) of bool
    """
    dtype, dev = jtj.dtype, jtj.device
    theta, lower, upper = (t.to(dev, dtype) for t in (block.theta0, block.lower, block.upper))
    tol = BOUND_TOLERANCE * block.steps.to(dev, dtype)
    at_lo, at_hi = theta <= lower + tol, theta >= upper - tol
    held = (at_lo & (jtr > 0)) | (at_hi & (jtr < 0))  # steepest descent points across
    for _ in range(2 * len(theta) + 1):
        free = ~held
        inv = _inverse_on(jtj, free)
        delta = -(inv @ jtr)
        q = jtr + jtj @ delta  # the quadratic model's gradient at the step
        out = free & ((at_lo & (delta < 0)) | (at_hi & (delta > 0)))
        back = held & ((at_lo & (q < 0)) | (at_hi & (q > 0)))
        if not bool(out.any() or back.any()):
            break
        held = (held | out) & ~back
    return delta, inv, held


def _inverse_on(jtj: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """The inverse of ``jtj``'s block on the ``free`` elements (P,) bool, zero rows and columns
    elsewhere, shape (P, P)."""
    inv = torch.zeros_like(jtj)
    idx = torch.nonzero(free).flatten()
    inv[idx[:, None], idx[None, :]] = psd_inverse(jtj[idx[:, None], idx[None, :]])
    return inv


def _held_clause(held) -> str:
    n = 0 if held is None else int(held.sum())
    return f"; {n} parameter element(s) held on a search bound" if n else ""


def _step_sigma(delta: torch.Tensor, inv: torch.Tensor) -> float:
    """Largest ``|delta_i| / sqrt((H^-1)_ii)``: the step in standard deviations."""
    return float((delta.abs() / torch.sqrt(inv.diagonal().clamp(min=1e-300))).max())


def _debug(step, evaluate, moved, columns, eq) -> None:
    """One line per linearisation (``METROLOGY_POLISH_DEBUG=1``): loss, variance change, the
    four largest remaining steps (name, step, sigma)."""
    with torch.no_grad():
        loss = float(evaluate({}))
    top = []
    if eq.finite:
        sg = torch.sqrt(eq.inv.diagonal())
        order = torch.argsort(eq.delta.abs() / sg, descending=True)[:4]
        top = [(columns.names[i], round(float(eq.delta[i]), 5), round(float(sg[i]), 5)) for i in order.tolist()]
    print("polish", step, round(loss, 7), round(moved, 3), f"{eq.worst:.3g} sigma", top, flush=True)


DAMPINGS = (1e-2, 1e-1, 1.0, 10.0)
"""Levenberg-Marquardt dampings (relative to the diagonal of ``J^T W J``) of a step's candidates."""
QUASI_DAMPINGS = (1e-2, 1e-1)
"""The dampings of a quasi-Newton step's candidates (the larger ones rarely win there)."""
CHEAP_STEPS = 6
"""Quasi-Newton steps per linearisation that reuse its ``J^T W J`` (secant-updated) with a fresh
gradient."""
QUASI_TARGET = 0.25
"""The quasi-Newton steps stop once the step they predict is below this fraction of
:data:`POLISH_TOLERANCE`: the next (fresh) linearisation then usually passes the test."""


def remaining_step_sigma(model, specs, evaluate, jtj, n_valid: float) -> float:
    """Largest remaining Gauss-Newton step of the system parameters ``specs``, in standard deviations
    (``|H^-1 J^T W r| / sqrt(diag H^-1)`` with the posterior information ``jtj`` of the polish and a
    fresh gradient: one backward pass; bound-constrained as in :func:`bounded_step`); inf when the
    loss is not finite."""
    g = _gradient_jtr(model, specs, evaluate, n_valid)
    if g is None:
        return float("inf")
    delta, inv, _ = bounded_step(jtj.to(g.device, g.dtype), g, Block(model, specs))
    return _step_sigma(delta, inv)


def _quasi_newton_steps(model, specs, evaluate, jtj, n_valid: float) -> float:
    """Steps that reuse a linearisation's ``J^T W J`` after its Gauss-Newton step, with the data
    variances held (re-estimating them every step moves the target every step: EM-slow).

    Each step takes a fresh gradient ``J^T W r`` (one backward pass) and ``J^T W J`` corrected by
    BFGS secant updates from the previous step (``y = g - g_prev`` over the step ``s``; skipped
    unless ``s^T y > 0``, which keeps it positive definite), and keeps the best of the full, half
    and quarter step and the :data:`QUASI_DAMPINGS` Levenberg-Marquardt steps: in a curved valley
    the damped steps are the ones that make progress, and the secant updates learn its bend.

    Stops when the predicted step is below :data:`QUASI_TARGET` x :data:`POLISH_TOLERANCE`
    standard deviations (the caller's fresh linearisation then tests it), when no candidate lowers
    the loss (the predicted and actual decrease disagree: time to re-linearise), or after
    :data:`CHEAP_STEPS`. None of this decides convergence.

    Returns
    -------
    float
        The loss after the steps.
    """
    hess, x0, g0 = jtj.clone(), None, None
    loss = None
    for _ in range(CHEAP_STEPS):
        loss, g = _loss_and_gradient(model, specs, evaluate, n_valid)
        if g is None:
            break
        here = Block(model, specs)
        x = here.theta0.double()
        if x0 is not None:  # the secant pair of the last step
            s, y = x - x0, g - g0
            sy, hs = float(s @ y), hess @ s
            shs = float(s @ hs)
            if sy > 0 and shs > 0:
                hess = hess - torch.outer(hs, hs) / shs + torch.outer(y, y) / sy
        delta, inv, held = bounded_step(hess, g, here)
        if _DEBUG:
            print(f"  quasi-Newton: loss {loss:.7f}, predicted step {_step_sigma(delta, inv):.3g} sigma, "
                  f"secant {x0 is not None}", flush=True)
        if _step_sigma(delta, inv) < QUASI_TARGET * POLISH_TOLERANCE:
            break
        after = _best_step(model, specs, evaluate, hess, g, delta, QUASI_DAMPINGS, loss, held)
        if after is None or after > loss - 1e-7 * abs(loss):
            loss = loss if after is None else after
            break
        loss, x0, g0 = after, x, g
    return loss


def _gradient_jtr(model, specs, evaluate, n_valid: float):
    """``J^T W r`` (plus the priors' part) at the current point from one backward pass of the
    loss (``L = (r^T W r + prior chi-square) / N``, so ``J^T W r = N / 2 dL / d theta``)."""
    return _loss_and_gradient(model, specs, evaluate, n_valid)[1]


def _loss_and_gradient(model, specs, evaluate, n_valid: float):
    """The loss (float) and :func:`_gradient_jtr` (None when the loss is not finite)."""
    block = Block(model, specs)
    loss = evaluate(block.values())
    if not torch.isfinite(loss):
        return float(loss), None
    (grad,) = torch.autograd.grad(loss, block.z[0])
    return float(loss.detach()), (0.5 * n_valid * grad / block.steps).double().to(block.z[0].device)


def _best_step(model, specs, evaluate, jtj, jtr, delta, dampings=DAMPINGS, before: float | None = None,
               held: torch.Tensor | None = None):
    """Take the candidate step with the lowest loss (see :func:`polish`): the full, half and
    quarter Gauss-Newton step ``delta`` and the Levenberg-Marquardt steps with ``dampings``
    (relative to the diagonal; elements ``held`` on a bound, :func:`bounded_step`, stay there);
    None if none lowers the loss (``before``: the loss now, if known).
    A candidate's loss is that of its point projected onto the bounds (:meth:`Block.values
    <metrology.solver.blocks.Block.values>`), the point stored."""
    block = Block(model, specs)
    free = torch.ones(len(jtr), dtype=torch.bool, device=jtr.device) if held is None else ~held
    dj = torch.diag(jtj.diagonal())
    candidates = [delta, 0.5 * delta, 0.25 * delta]
    candidates += [-(_inverse_on(jtj + damping * dj, free) @ jtr) for damping in dampings]
    with torch.no_grad():
        before = float(evaluate({})) if before is None else before
        best, best_loss = None, before
        for cand in candidates:
            block.z[0].copy_(cand.to(block.z[0].dtype) / block.steps)
            loss = float(evaluate(block.values()))
            if loss < best_loss:
                best, best_loss = cand, loss
        if _DEBUG:
            print("    best candidate", None if best is None else [c is best for c in candidates].index(True),
                  f"of {len(candidates)}: {before:.7f} -> {best_loss:.7f}", flush=True)
        if best is None:
            return None
        block.z[0].copy_(best.to(block.z[0].dtype) / block.steps)
        block.project_and_store()
    return best_loss
