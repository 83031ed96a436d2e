"""GUM uncertainty budget for the station constants the fit does not estimate.

The fit holds some quantities at the values the station file states: the wavelength (an LED's
centroid is known to a few nm), the lens NA and magnification, the camera pixel, the LED pitch,
emitter size and, where not fitted, the LED distance, the slide's thickness and index. Each is
known only to a tolerance, and each moves the fitted optimum ``theta*(c)`` of the loss
``L(theta, c)``. By the implicit function theorem, at the optimum

    d theta* / d c = -H^-1 d2L / (d theta d c),

and with the Gauss-Newton Hessian ``H = J^T W J`` of the weighted whitened residuals ``r``,
``d2L / (d theta d c) = J^T W (d r / d c)``. ``d r / d c`` is a central difference of the residual
in float64 (two forward passes of the model with the constant moved), ``J^T W (d r / d c)`` one
reverse-mode pass; ``H`` is the Fisher information the fit already holds. The sensitivities of
every fitted parameter to every constant, times the constants' standard uncertainties, are the
budget (GUM, JCGM 100, 5.1.2), with the correlations they induce (the coefficients share the
wavelength):

    C_const = S diag(u_c^2) S^T,   S[:, i] = d theta* / d c_i.

The sample is held while a constant moves: right in known mode (the given reference). In prior and
blind modes it is fitted and would follow the constant; ``free_sample=True`` (opt-in) takes that
response, the system part of the joint (system, sample) solve, :mod:`metrology.solver.marginal`
(holding it was measured to miss responses of 1-2e-3 waves, docs/uncertainty.md, section 6). The
sensitivities are
checked in ``tests/test_budget.py`` (moving the parameters by ``S h`` restores the optimum after a
small move ``h`` of a constant). The response is linear only over a fraction of a typical tolerance
(docs/uncertainty.md, "Linearity"); the off-model trials of ``benchmarks/bench_offmodel.py``, which
draw the true constants from their stated uncertainties, measure the budget's calibration at full
scale (a Monte Carlo check in the sense of GUM Supplement 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch

from metrology.parameters import BY_PATH
from metrology.solver.jacobian import linearise, psd_inverse, whitened_residual
from metrology.solver.priors import add_to_normal_equations, prior_chi2

CONSTANTS = {
    "wavelength_nm": ("Wavelength (LED centroid)", "nm"),
    "na": ("Lens NA", ""),
    "magnification": ("Lens magnification", ""),
    "camera_pixel_um": ("Camera pixel pitch", "um"),
    "led_pitch_mm": ("LED pitch", "mm"),
    "led_distance_mm": ("LED board distance", "mm"),
    "led_size_mm": ("LED emitter size", "mm"),
    "spectral_fwhm_nm": ("LED spectral width (FWHM)", "nm"),
    "slide_thickness_mm": ("Slide thickness", "mm"),
    "slide_index": ("Slide refractive index", ""),
    "led_tilt_deg": ("LED board tilt (not fitted)", "deg"),
}
"""Station constants with a budget entry: name (the station geometry's attribute; ``na`` is the
fixed ``pupil.na``; a key of :data:`HELD_PARAMETERS` is a station parameter the fit's mode holds)
-> (label, unit). The name is the station file's ``[uncertainty]`` key."""

HELD_PARAMETERS = {"led_tilt_deg": "illumination.tilt_deg"}
"""Station parameters a mode may hold at nominal (blind mode holds the LED board's tilt: with an
unknown object it trades against the object's scale), by ``[uncertainty]`` key: when held, each
element enters the budget with the key's standard uncertainty (per element), as a constant would."""

STANDS_FOR = {"led_distance_mm": "illumination.distance_error_mm", "na": "pupil.na", **HELD_PARAMETERS}
"""``[uncertainty]`` key -> the fitted parameter that measures the same quantity: the constant enters
the budget only when the fit's mode holds that parameter (a fitted one carries its uncertainty, and
its prior where it has one, in the posterior)."""

HELD_STEP = 1e-3
"""Central-difference step of a held parameter (its unit), whose nominal value is often 0."""

RELATIVE_STEP = 1e-4
"""Central-difference step, relative to the constant's value (float64 residuals)."""


@dataclass
class ConstantSensitivity:
    """``d theta* / d c`` of every fitted system parameter (the Jacobian's columns) for one constant."""

    name: str
    label: str
    unit: str
    value: float
    per_unit: np.ndarray  # (P,) change of each fitted parameter per unit of the constant
    key: str = ""  # the [uncertainty] key whose u applies (default: name)
    second_order: np.ndarray | None = None  # (P,) sqrt(2) x the even part of the response at c +/- u (curvature)
    remaining_sigma: float = 0.0  # how far the finite response's re-fit was from its optimum (sigma)
    solve: object = None  # the joint (system, sample) solve behind a free-sample response (marginal.JointSolve)

    def __post_init__(self):
        self.key = self.key or self.name


def _moves(model, name: str) -> list:
    """``(name, label, value, step, move)`` for each scalar behind the budget entry ``name``:
    one for a constant, one per element for a held parameter; ``move(value)`` returns a moved copy."""
    label, _ = CONSTANTS[name]
    if name in HELD_PARAMETERS:
        path = HELD_PARAMETERS[name]
        values = model.parameter(path).detach().reshape(-1)
        axes = BY_PATH[path].axes or tuple(str(i) for i in range(values.numel()))
        return [(f"{name}[{axis}]", f"{label}, {axis}", float(values[i]), HELD_STEP,
                 lambda v, i=i: _element_moved(model, path, i, v)) for i, axis in enumerate(axes)]
    value = _value(model, name)
    return [(name, label, value, RELATIVE_STEP * max(abs(value), 1e-3), lambda v: _moved(model, name, v))]


def _element_moved(model, path: str, index: int, value: float):
    """A copy of ``model`` with element ``index`` of parameter ``path`` set to ``value``."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.parameter(path).view(-1)[index] = value
    return m


def _value(model, name: str) -> float:
    if name == "na":
        return float(model.pupil.na.detach())
    return float(getattr(model.geometry, name))


def _moved(model, name: str, value: float):
    """A copy of ``model`` with the constant ``name`` set to ``value`` (same parameters and buffers)."""
    m = copy.deepcopy(model)
    if name == "na":
        with torch.no_grad():
            m.pupil.na.fill_(value)
        return m
    geometry = replace(model.geometry, **{name: value})
    for module in m.modules():
        if hasattr(module, "geometry"):
            module.geometry = geometry
    return m


def _residual(model, data, noise, scale) -> torch.Tensor:
    return whitened_residual(model(), data, noise, model.camera.background_counts) * scale


def residual_scale(fit) -> torch.Tensor:
    """The fit's ``mask / sqrt(v)`` (learned data variances) in float64 on the CPU, where the budget runs."""
    mask = fit.mask.double().cpu()
    return mask if fit.weights is None else mask / torch.sqrt(fit.weights.pixel_variance(torch.float64).cpu())


def applicable_constants(fit) -> list:
    """The constants that move this fit: the LED distance only when it was not fitted, the slide only
    when there is one, the emitter size only when non-zero, the spectral width only when modelled,
    the NA only when held."""
    g = fit.model.geometry
    fitted = set(fit.columns.paths)
    return [n for n in CONSTANTS
            if STANDS_FOR.get(n) not in fitted
            and not (n in ("slide_thickness_mm", "slide_index") and g.slide_thickness_mm == 0)
            and not (n == "led_size_mm" and g.led_size_mm == 0)
            and not (n == "spectral_fwhm_nm" and g.spectral_fwhm_nm == 0)]


def constant_sensitivities(fit, names=None, uncertainties: dict | None = None, free_sample: bool = False) -> list:
    """Sensitivities of the fitted system parameters to the station constants.

    Parameters
    ----------
    fit : metrology.solver.FitResult
        A finished fit (its Fisher information ``jtj`` and columns are used).
    names : sequence of str, optional
        Constants (keys of :data:`CONSTANTS`; default all that apply: the LED distance only when it
        was not fitted, the slide only when there is one, the emitter size only when non-zero).
    uncertainties : dict, optional
        Standard uncertainty of each constant (``[uncertainty]`` keys, their units). Given, the
        response is evaluated at the scale of the uncertainty (:func:`finite_response`: the optimum
        re-found with the constant at ``c +/- u``, the sample held), which keeps the budget honest where
        the fit is not linear over the tolerance; not given (or 0), the implicit-function derivative at
        the optimum.
    free_sample : bool
        Where the fit estimated the sample (prior and blind modes), let it follow each constant: the
        implicit derivative of the joint (system, sample) optimum (:func:`free_sample_response`)
        instead of the system's with the sample held. Opt-in: ~10x the held budget's time, its
        calibration over the off-model trials not yet measured (docs/uncertainty.md, section 6).

    Returns
    -------
    list of ConstantSensitivity
    """
    base = copy.deepcopy(fit.model).double().cpu()
    if names is None:
        names = applicable_constants(fit)
    data = fit.data.double().cpu()
    scale = residual_scale(fit)
    inverse = psd_inverse(fit.jtj.double())
    cols = fit.columns
    params = {p: base.parameter(p) for p in set(cols.paths)}
    g_opt = base_r = None
    out, free = [], []  # free: (index in out, d r / d c) of the constants whose response lets the sample follow
    for key, name, label, value, h, move in ((k, *m) for k in names for m in _moves(base, k)):
        u = float((uncertainties or {}).get(key, 0.0) or 0.0)
        if u > 0:
            if g_opt is None:
                g_opt = loss_gradient(base, data, fit.noise, scale, cols, fit.schedule.priors)
            up, rem_up = finite_response(move(value + u), data, fit.noise, scale, cols, fit.schedule.priors, inverse, g_opt)
            down, rem_down = finite_response(move(value - u), data, fit.noise, scale, cols, fit.schedule.priors, inverse, g_opt)
            out.append(ConstantSensitivity(name, label, CONSTANTS[key][1], value, (up - down) / (2 * u), key,
                                           second_order=np.sqrt(2.0) * 0.5 * (up + down),
                                           remaining_sigma=max(rem_up, rem_down)))
            continue
        with torch.no_grad():
            dr = (_residual(move(value + h), data, fit.noise, scale)
                  - _residual(move(value - h), data, fit.noise, scale)) / (2 * h)
        if free_sample and sample_free(fit):  # the sample follows the constant: one joint solve below
            out.append(ConstantSensitivity(name, label, CONSTANTS[key][1], value, np.zeros(len(cols.names)), key))
            free.append((len(out) - 1, dr))
            continue
        if base_r is None or not all(p.requires_grad for p in params.values()):
            # one forward pass with its graph, back-propagated once per constant (a finite response's
            # gradient in between releases the parameters: then built again)
            for p in params.values():
                p.requires_grad_(True)
            base_r = _residual(base, data, fit.noise, scale)
        for p in params.values():
            p.grad = None
        (base_r * dr).sum().backward(retain_graph=True)
        jtdr = torch.stack([params[p].grad.reshape(-1)[k] if params[p].grad is not None else torch.zeros((), dtype=torch.float64)
                            for p, k in zip(cols.paths, cols.flat_index)])
        out.append(ConstantSensitivity(name, label, CONSTANTS[key][1], value, (-(inverse @ jtdr)).numpy(), key))
    if free:
        response, solve = free_sample_response(fit, base, data, scale, torch.stack([dr for _, dr in free]))
        for (i, _), row in zip(free, response):
            out[i].per_unit = (-row).numpy()
            out[i].solve = solve
    return out


def sample_free(fit) -> bool:
    """Whether the fit estimated the sample (prior and blind modes)."""
    return bool(fit.schedule.sample_parameters())


def free_sample_response(fit, model, data, scale, dr: torch.Tensor):
    """``H^-1 J^T W (d r / d c)`` over (system, sample), its system part, for each residual derivative
    ``dr`` (K, J, n, n), at ``model`` (the fit's point, float64).

    By symmetry its row ``i`` is ``(H^-1 e_i) . J^T W dr``: one joint solve per reported system column
    (:func:`metrology.solver.marginal.joint_solve`), shared by all the constants, gives every response
    as a dot product. (Solving for each constant's right-hand side directly still changed by 2 % per
    10 iterations after 300; this way by 7 % per 10 after 40, with 40 right-hand sides instead of 9:
    neither is cheap yet, docs/uncertainty.md, section 3.) The brightness rows are left at 0 (they share a gauge with
    the sample's scale and no reported figure reads them).

    Returns
    -------
    response : Tensor (K, P)
    solve : JointSolve
    """
    from metrology.solver.marginal import JointOperator, joint_solve  # lazy: blind and prior fits only

    specs = fit.schedule.system_parameters()
    lin = linearise(model, data, scale, fit.noise, specs)
    if lin.columns.names != fit.columns.names:
        raise RuntimeError("the budget's linearisation does not match the fit's columns")
    data_jtj, data_jtr = lin.normal()
    jtj, _ = add_to_normal_equations(data_jtj, data_jtr, model, fit.schedule.priors, lin.columns)
    n = model.geometry.object_px
    sample_prior = float(fit.mask.sum()) * fit.schedule.prior_weight / n**2
    op = JointOperator(model, data, scale, fit.noise, lin, (jtj - data_jtj).diagonal(), sample_prior)
    with torch.no_grad():
        bs, bo = op.adjoint(dr)
        unit = torch.zeros((len(lin.plain), op.p), dtype=torch.float64)
        unit[range(len(lin.plain)), lin.plain] = 1.0
        solve = joint_solve(model, op, unit, torch.zeros((len(lin.plain),) + op.sample_shape, dtype=torch.float64), jtj)
        response = torch.zeros((dr.shape[0], op.p), dtype=torch.float64)
        response[:, lin.plain] = bs @ solve.system.T + torch.einsum("kabc,pabc->kp", bo, solve.sample)
    return response, solve


FINITE_STEPS = 120
"""L-BFGS iterations of :func:`finite_response` at most (a hard case, a constant that moves the
transition LEDs' brightness by tens of sigma, needed ~50)."""
FINITE_CHUNK = 8
"""L-BFGS iterations between two tests of :data:`FINITE_TOLERANCE` (one run: its history carries on)."""
FINITE_TOLERANCE = 0.05
""":func:`finite_response` stops when the remaining step is below this many standard deviations."""


def loss_gradient(model, data, noise, scale, cols, priors=()) -> torch.Tensor:
    """``J^T W r`` plus the priors' ``(x - mean) / sigma^2`` over the columns ``cols`` at ``model``
    (float64; :func:`_loss_and_gradient` also gives the loss ``(r^T W r + prior chi-square) / 2``)."""
    return _loss_and_gradient(model, data, noise, scale, cols, priors)[1]


def _loss_and_gradient(model, data, noise, scale, cols, priors=()):
    params = {p: model.parameter(p) for p in set(cols.paths)}
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    loss = 0.5 * _residual(model, data, noise, scale).pow(2).sum() + 0.5 * prior_chi2(model, priors)
    loss.backward()
    grad = torch.stack([params[p].grad.reshape(-1)[k] if params[p].grad is not None else torch.zeros((), dtype=torch.float64)
                        for p, k in zip(cols.paths, cols.flat_index)])
    for p in params.values():
        p.requires_grad_(False)
        p.grad = None
    return float(loss.detach()), grad


def _shift_columns(model, cols, delta: torch.Tensor) -> None:
    """Add ``delta`` (the columns' raw units) to the model's fitted elements, in place."""
    with torch.no_grad():
        for (p, k), d in zip(zip(cols.paths, cols.flat_index), delta.tolist()):
            model.parameter(p).view(-1)[k] += d


def finite_response(moved, data, noise, scale, cols, priors, inverse, g_opt) -> tuple:
    """Change of the fitted system parameters when a constant moves by a finite amount.

    ``moved`` is the fitted model with the constant moved (its other values at the optimum); the
    optimum of the fit's loss is re-found by L-BFGS in the coordinates the fit's own information
    whitens (``theta = theta0 + H^-1/2 z``), the sample held as in the implicit-function derivative.
    ``g_opt`` is the gradient at the fit's point with the constant unmoved (not exactly zero at a
    converged fit: the change is what counts, so the loss is tilted by ``-g_opt . delta``). (A
    Newton-chord iteration with the fixed information stalled at the wavelength's full tolerance,
    where the transition LEDs' brightness moves by tens of posterior sigma.) The iterations stop when
    the remaining Newton step (in the fit's information) is below :data:`FINITE_TOLERANCE` standard
    deviations, tested every :data:`FINITE_CHUNK` iterations, or after :data:`FINITE_STEPS`.

    Returns
    -------
    delta : ndarray (P,)
        Change of each column (its raw units).
    remaining_sigma : float
        The largest remaining Newton step at the end, in standard deviations (converged below
        :data:`FINITE_TOLERANCE`).
    """
    sd = torch.sqrt(inverse.diagonal().clamp(min=1e-300))
    evals, evecs = torch.linalg.eigh(inverse)
    whiten = evecs * torch.sqrt(evals.clamp(min=0.0))
    z = torch.zeros(len(cols.names), dtype=torch.float64, requires_grad=True)
    state = {"delta": torch.zeros(len(cols.names), dtype=torch.float64), "grad": None}

    def closure():
        delta = whiten @ z.detach()
        _shift_columns(moved, cols, delta - state["delta"])
        state["delta"] = delta
        loss, grad = _loss_and_gradient(moved, data, noise, scale, cols, priors)
        state["grad"] = grad
        z.grad = whiten.T @ (grad - g_opt)
        return torch.tensor(loss - float(g_opt @ delta), dtype=torch.float64)

    def remaining() -> float:
        closure()  # the model at the current z (the last evaluation may have been a line-search trial)
        return float(((inverse @ (state["grad"] - g_opt)).abs() / sd).max())

    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=FINITE_CHUNK, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)
    left = remaining()
    for _ in range(-(-FINITE_STEPS // FINITE_CHUNK)):
        if left < FINITE_TOLERANCE:
            break
        opt.step(closure)  # the optimiser's state (history, step) carries over from chunk to chunk
        left = remaining()
    return state["delta"].numpy(), left


def in_stated_waves(sensitivities, model, cols) -> list:
    """The sensitivities of the reported quantities: the Zernike coefficients in waves at the station's
    stated wavelength, whatever the true one.

    The model's coefficients are waves at its own wavelength ``lambda`` (the phase ``2 pi W`` at the
    LED centroid), so the wavelength's model response ``S`` is that of waves at ``lambda``. The lens's
    optical path difference is ``W lambda``; reported in waves at the stated ``lambda_s``, it reads
    ``W lambda / lambda_s``, whose response to the true wavelength is ``S + W / lambda_s`` per nm. A
    centroid ``delta`` nm above the stated one makes every coefficient read ``-(S + W / lambda_s)
    delta`` off: the unit term is along the lens itself, so it adds most to the RMS wavefront's u
    (without it blind U(RMS) under-covered, the errors following the drawn centroid: docs/uncertainty.md,
    section 5). Returns copies; a wavelength entry gains ``W / lambda_s`` on the Zernike columns, the
    others are unchanged (:func:`constant_sensitivities` keeps the model response, which its tests
    check against the model)."""
    out = []
    lam = float(model.geometry.wavelength_nm)
    w = model.pupil.zernike_waves.detach().double().reshape(-1).cpu().numpy()
    rows = [(i, k) for i, (p, k) in enumerate(zip(cols.paths, cols.flat_index)) if p == "pupil.zernike_waves"]
    for s in sensitivities:
        if s.name == "wavelength_nm" and rows:
            per_unit = np.array(s.per_unit, dtype=float, copy=True)
            for i, k in rows:
                per_unit[i] += w[k] / lam
            s = replace(s, per_unit=per_unit)
        out.append(s)
    return out


def contribution(s: ConstantSensitivity, u: float) -> np.ndarray:
    """One constant's standard-uncertainty contribution to every fitted parameter (P,): the linear
    part ``S u`` and, where the response was evaluated at ``c +/- u``, its curvature term added in
    quadrature (the sign of the linear part kept)."""
    lin = s.per_unit * u
    if s.second_order is None or u == 0:
        return lin
    return np.where(lin < 0, -1.0, 1.0) * np.sqrt(lin**2 + s.second_order**2)


def constants_covariance(sensitivities, uncertainties: dict) -> np.ndarray:
    """``S diag(u^2) S^T`` over the fitted parameters, from :func:`constant_sensitivities` and the
    standard uncertainties ``{name: u}`` (in each constant's unit; missing or 0: no contribution),
    plus each constant's curvature term ``q q^T`` where the response was evaluated at ``c +/- u``
    (for a quadratic response ``a x + b x^2`` of a normal ``x``: variance ``a^2 u^2 + 2 b^2 u^4``,
    JCGM 100, 5.1.2 note; ``q = sqrt(2) b u^2`` is :attr:`ConstantSensitivity.second_order`)."""
    if not sensitivities:
        return np.zeros((0, 0))
    p = sensitivities[0].per_unit.size
    cov = np.zeros((p, p))
    for s in sensitivities:
        u = float(uncertainties.get(s.key, 0.0) or 0.0)
        cov += np.outer(s.per_unit, s.per_unit) * u**2
        if s.second_order is not None and u > 0:
            cov += np.outer(s.second_order, s.second_order)
    return cov
