"""Joint reconstruction of station misalignment, lens pupil and (optionally) the sample.

The solver only ever receives ``(model, data, noise, schedule)``. Free parameters are optimised
in preconditioned units (``value / step``) with L-BFGS; parameters are released at the iteration
their :class:`~metrology.solver.schedule.ParameterSpec` names, and bounds are enforced by
projection. In prior and blind modes the sample and the system parameters are updated in
alternation (the UA-FP self-calibrating loop), each with its own L-BFGS memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from metrology.measurement import DataQuality
from metrology.physics import StationModel
from metrology.solver.device import device_label
from metrology.solver.jacobian import columns_for, normal_equations, psd_inverse
from metrology.solver.losses import LOSSES, chi_square, total_variation
from metrology.solver.quality import NoiseModel, assess, blank_frames, estimate_background, flag_blank
from metrology.solver.schedule import Schedule, parameters_at_bounds
from metrology.solver.start import start


@dataclass
class FitResult:
    """Outcome of :func:`reconstruct` (the model holds the fitted parameters)."""

    model: StationModel
    schedule: Schedule
    data: torch.Tensor
    mask: torch.Tensor
    noise: NoiseModel
    quality: DataQuality
    history: list
    iterations: int
    converged: bool
    message: str
    chi2: float
    dof: int
    frame_residuals: np.ndarray
    wall_time_s: float
    init_summary: dict = field(default_factory=dict)
    jtj: torch.Tensor | None = None  # Fisher information of the system parameters at the solution
    columns: object = None  # metrology.solver.jacobian.Columns naming the rows of jtj
    jackknife: list | None = None  # per LED group (J_g^T J_g, J_g^T r_g) at the solution
    device: str = "cpu"  # where the fit ran (metrology.solver.device.device_label)
    at_bounds: list = field(default_factory=list)  # free elements that ended on a bound (schedule.parameters_at_bounds)

    @property
    def reduced_chi2(self) -> float:
        return self.chi2 / max(self.dof, 1)


class _Block:
    """Free parameter elements optimised together in preconditioned coordinates ``z``.

    ``theta = theta0 + W z`` with ``W = diag(step)`` (sample fields) or ``W = L^-T`` where
    ``L L^T`` is the Gauss-Newton Hessian of the loss at the start (system parameters): in ``z``
    the problem is close to isotropic, so L-BFGS converges in few iterations.
    """

    def __init__(self, model: StationModel, specs, hessian: torch.Tensor | None = None):
        self.model = model
        self.specs = list(specs)
        self.cols = columns_for(model, self.specs)
        self.paths = list(dict.fromkeys(s.path for s in self.specs))
        dtype = model.pupil.na.dtype
        dev = model.pupil.na.device
        cols = self.cols
        self.slices = {  # positions (in column order) of each path's columns
            path: torch.as_tensor([i for i, p in enumerate(cols.paths) if p == path], dtype=torch.long, device=dev)
            for path in self.paths
        }
        self.index = {
            path: torch.as_tensor([cols.flat_index[i] for i in self.slices[path].tolist()], dtype=torch.long, device=dev)
            for path in self.paths
        }
        spec_of = [self.specs[i] for i in cols.spec]
        with torch.no_grad():
            self.theta0 = torch.stack(
                [model.parameter(p).detach().flatten()[k] for p, k in zip(cols.paths, cols.flat_index)]
            ).to(dtype)
        steps = torch.tensor([sp.step for sp in spec_of], dtype=dtype, device=dev)
        self.lower = torch.tensor([(sp.bounds or (-float("inf"), 0))[0] for sp in spec_of], dtype=dtype, device=dev)
        self.upper = torch.tensor([(sp.bounds or (0, float("inf")))[1] for sp in spec_of], dtype=dtype, device=dev)
        if hessian is None:
            self.w = None
            self.steps = steps
        else:
            # W = H^-1/2 through the eigen-decomposition: robust to directions the data do not
            # constrain (their eigenvalues are floored, so the step there stays bounded)
            h = hessian.double()
            # a floor on each parameter's curvature, in units of its step: directions the data do
            # not see (a dark frame's brightness under a smooth start) must not get unbounded steps
            st = steps.double()
            typical = torch.median(h.diagonal() * st**2).clamp(min=1e-30)
            h = h + torch.diag(1e-4 * typical / st**2)
            d = torch.sqrt(h.diagonal().clamp(min=1e-30))
            evals, evecs = torch.linalg.eigh(h / d[:, None] / d[None, :])
            evals = evals.clamp(min=1e-4 * float(evals.max().clamp(min=1e-30)))
            self.w = ((evecs / torch.sqrt(evals)) @ evecs.T / d[:, None]).to(dtype)
        self.z = [torch.zeros(len(self.theta0), dtype=dtype, device=dev, requires_grad=True)]

    def theta(self) -> torch.Tensor:
        z = self.z[0]
        return self.theta0 + (z * self.steps if self.w is None else self.w @ z)

    def values(self) -> dict:
        """Parameter tensors (differentiable w.r.t. ``z``) to pass to ``functional_call``."""
        theta = self.theta()
        out = {}
        for path in self.paths:
            p = self.model.parameter(path).detach()
            flat = p.flatten().index_put((self.index[path],), theta[self.slices[path]])
            out[path] = flat.reshape(p.shape)
        return out

    def project_and_store(self) -> None:
        """Write the values back into the model, clamped to the bounds."""
        with torch.no_grad():
            theta = torch.maximum(torch.minimum(self.theta(), self.upper), self.lower)
            for path in self.paths:
                p = self.model.parameter(path)
                flat = p.detach().flatten().clone()
                flat[self.index[path]] = theta[self.slices[path]]
                p.copy_(flat.reshape(p.shape))


class _SampleBlock:
    """The sample, optimised through its spectrum with a Fourier-domain preconditioner.

    ``O = O0 + step * w(f) * (z_re + i z_im)``, ``t = IFFT(O)``, with ``w = 1 / sqrt(coverage + eps)``
    and ``coverage(f) = sum_j |P(f - k_j)|^2``: frequencies seen by many LEDs get small steps,
    those seen by few get large ones, which equalises the curvature of the data term.
    """

    def __init__(self, model: StationModel, step: float):
        self.model = model
        with torch.no_grad():
            t = model.sample.transmission().detach()
            self.o0 = torch.fft.fftshift(torch.fft.fft2(t))
            cover = model.spectrum_coverage()
            n = t.shape[-1]
            self.w = (step * n / torch.sqrt(cover + 0.05 * cover.max())).to(t.real.dtype)
        self.z = [torch.zeros((2,) + t.shape, dtype=t.real.dtype, device=t.device, requires_grad=True)]

    def transmission(self) -> torch.Tensor:
        z = self.z[0]
        spec = self.o0 + self.w * torch.complex(z[0], z[1])
        return torch.fft.ifft2(torch.fft.ifftshift(spec))

    def values(self) -> dict:
        t = self.transmission()
        return {"sample.field_real": t.real, "sample.field_imag": t.imag}

    def project_and_store(self) -> None:
        with torch.no_grad():
            t = self.transmission()
            self.model.sample.field_real.copy_(t.real)
            self.model.sample.field_imag.copy_(t.imag)


def _objective(model, data, mask, noise, schedule, reference):
    loss_fn = LOSSES[schedule.loss]

    def evaluate(overrides: dict) -> torch.Tensor:
        out = functional_call(model, overrides, ())
        bg = overrides.get("camera.background_counts", model.camera.background_counts)
        loss = loss_fn(out, data, mask, noise.gain_e_per_count, noise.read_noise_counts, bg)
        if schedule.tv_weight or schedule.prior_weight:
            re = overrides.get("sample.field_real", model.sample.field_real)
            im = overrides.get("sample.field_imag", model.sample.field_imag)
            t = torch.complex(re, im)
            if schedule.tv_weight:
                loss = loss + schedule.tv_weight * total_variation(t)
            if schedule.prior_weight and reference is not None:
                loss = loss + schedule.prior_weight * (t - reference).abs().pow(2).mean()
        # a line-search probe far outside the physical range must read as "much worse", not NaN
        return torch.nan_to_num(loss, nan=1e30, posinf=1e30)

    return evaluate


INNER_ITERATIONS = 10
"""L-BFGS iterations per outer iteration of the system step."""


def _lbfgs(block: _Block, evaluate, max_iter: int):
    opt = torch.optim.LBFGS(
        block.z, lr=1.0, max_iter=max_iter, max_eval=4 * max_iter, history_size=30, line_search_fn="strong_wolfe",
        tolerance_grad=1e-12, tolerance_change=1e-15,
    )

    def closure():
        opt.zero_grad()
        loss = evaluate(block.values())
        loss.backward()
        return loss

    return opt, closure


def prepare(model: StationModel, frames, noise: NoiseModel):
    """Data tensor, fit mask, data quality and background estimate of a capture."""
    data_np = np.asarray(frames, dtype=np.float64)
    background = estimate_background(data_np)
    mask_np, quality = assess(data_np, noise, background)
    dtype, dev = model.pupil.na.dtype, model.pupil.na.device
    data = torch.as_tensor(data_np, dtype=dtype, device=dev)
    mask = torch.as_tensor(mask_np, dtype=dtype, device=dev)
    return data, mask, quality, background


def reconstruct(
    model: StationModel,
    frames,
    noise: NoiseModel,
    schedule: Schedule,
    *,
    initialise_geometry: bool = True,
    ranges=None,
    progress=None,
    reference_transmission=None,
    observe=None,
) -> FitResult:
    """Fit the station model to a capture.

    Parameters
    ----------
    model : StationModel
        Nominal model; its sample holds the reference map (known/prior) or the start (blind). The
        fit runs on its device (``model.to("cuda")``, see :mod:`metrology.solver.device`).
    frames : array-like, shape (J, n, n)
        Measured frames (counts), in the model's LED order.
    noise : NoiseModel
        Camera noise (counts) for the data term, saturation and quality checks.
    schedule : Schedule
        Free parameters, iterations, loss.
    initialise_geometry : bool
        Search the LED geometry at the start (:func:`metrology.solver.start.start`); off when the
        geometry is held at nominal.
    ranges : dict, optional
        Misalignment the per-LED geometry search covers (default
        :data:`metrology.solver.search.DEFAULT_RANGES`).
    progress : callable, optional
        ``progress(iteration, max_iterations, loss)`` after each iteration.
    observe : callable, optional
        ``observe(zernike_waves)`` with the lens estimate during the projections (for time-to-accuracy
        benchmarks; see :func:`metrology.solver.projection.project`).
    reference_transmission : array-like, optional
        Given in blind mode when the model's sample already holds a start (else the start makes one
        from the bright-field frames).

    Returns
    -------
    FitResult
    """
    t0 = time.perf_counter()
    data, mask, quality, background = prepare(model, frames, noise)
    summary = start(model, data, mask, background, schedule, search_geometry=initialise_geometry, ranges=ranges,
                    observe=observe, sample_given=reference_transmission is not None)
    _exclude_blank_frames(model, data, mask, quality, background, noise)
    reference = None
    if schedule.mode == "prior":
        reference = model.sample.transmission().detach().clone()
    evaluate = _objective(model, data, mask, noise, schedule, reference)
    if progress is not None:  # the initialisation's result, as iteration 0
        with torch.no_grad():
            progress(0, schedule.max_iterations, float(evaluate({})))
    rounds = _staged_rounds(model, data, mask, noise, schedule, evaluate, progress)
    it, converged, message, cols_all = rounds.iterations, rounds.converged, rounds.message, rounds.columns
    jtj, per_group = None, None
    system_specs = [p for p in schedule.parameters if not p.path.startswith("sample.field")]
    if system_specs and rounds.history and np.isfinite(rounds.history[-1]):
        budget = max(schedule.max_iterations - it, 0)
        polished, jtj, cols_all, per_group, polish_msg, steps = _polish(
            model, data, mask, noise, system_specs, evaluate, budget,
            None if progress is None else (lambda k, v: progress(it + k, schedule.max_iterations, v)),
        )
        it += steps
        # the Gauss-Newton test decides; with a free sample its own loop must have settled too
        converged = polished and (converged or not rounds.sample_free)
        message = polish_msg if not rounds.sample_free else message + "; " + polish_msg
    chi2, per_frame, dof = _chi_square_dof(model, data, mask, noise, schedule)
    return FitResult(
        model=model, schedule=schedule, data=data, mask=mask, noise=noise, quality=quality, history=rounds.history,
        iterations=it, converged=converged, message=message, chi2=chi2, dof=dof,
        frame_residuals=per_frame.cpu().numpy(), wall_time_s=time.perf_counter() - t0, init_summary=summary,
        # the uncertainty analysis runs on the CPU in float64, whatever device fitted
        jtj=None if jtj is None else jtj.cpu(), columns=cols_all, device=device_label(data.device),
        jackknife=None if per_group is None else [(a.cpu(), b.cpu()) for a, b in per_group],
        at_bounds=parameters_at_bounds(model, schedule),
    )


def _chi_square_dof(model, data, mask, noise, schedule):
    """Chi-square of the fitted model, per-frame RMS normalised residuals and the degrees of freedom
    (valid pixels minus free parameter elements)."""
    with torch.no_grad():
        pred = model()
        chi2, per_frame = chi_square(
            pred, data, mask, noise.gain_e_per_count, noise.read_noise_counts, model.camera.background_counts
        )
    n_free = sum(
        (len(p.indices) if p.indices is not None else model.parameter(p.path).numel()) for p in schedule.parameters
    )
    return chi2, per_frame, int(mask.sum().item()) - n_free


def _exclude_blank_frames(model, data, mask, quality, background, noise) -> None:
    """Find the frames with no signal where the started model predicts some, record them in
    ``quality`` and take them out of the fit ``mask`` (in place)."""
    with torch.no_grad():
        pred = model()
    blank = blank_frames(data, pred, background, noise)
    flag_blank(quality, blank, data.shape[0], model.bright_field().cpu().numpy())
    if blank:
        mask[blank] = 0.0


@dataclass
class _Rounds:
    """Outcome of :func:`_staged_rounds`."""

    history: list
    iterations: int
    converged: bool
    message: str
    columns: object  # Columns of every system parameter (None when the sample alone is free)
    sample_free: bool


def _staged_rounds(model, data, mask, noise, schedule, evaluate, progress) -> _Rounds:
    """The outer L-BFGS rounds: the sample (if free) and the system parameters released so far,
    each with its own L-BFGS memory, until ``schedule.staging_rounds`` or the loss settles.

    The system block is preconditioned by the Gauss-Newton Hessian at the start (restricted to the
    parameters free in the round) and rebuilt whenever parameters are released.
    """
    history: list = []
    converged = False
    message = "maximum iterations reached"
    active_paths = None
    system = sample_block = None
    sample_specs = [p for p in schedule.parameters if p.path.startswith("sample.field")]
    if sample_specs:
        sample_block = _SampleBlock(model, min(p.step for p in sample_specs))
        s_opt, s_closure = _lbfgs(sample_block, evaluate, schedule.sample_steps)
    last_release = max([p.start for p in schedule.parameters], default=0)
    system_specs = [p for p in schedule.parameters if not p.path.startswith("sample.field")]
    hessian_all, cols_all = None, None
    if system_specs:
        jtj, _, _, cols_all = normal_equations(model, data, mask, noise, system_specs)
        hessian_all = 2.0 * jtj / float(mask.sum())
    it = 0
    for it in range(1, schedule.staging_rounds + 1):
        free = schedule.free_at(it - 1)
        paths = tuple(p.path for p in free)
        if paths != active_paths:
            if system is not None:
                system.project_and_store()
            system = None
            if free:
                names = columns_for(model, free).names
                pos = {n: i for i, n in enumerate(cols_all.names)}
                sel = torch.as_tensor([pos[n] for n in names], dtype=torch.long, device=hessian_all.device)
                system = _Block(model, free, hessian_all[sel[:, None], sel[None, :]])
                opt, closure = _lbfgs(system, evaluate, INNER_ITERATIONS)
            active_paths = paths
        if sample_block is not None:
            s_opt.step(s_closure)
            sample_block.project_and_store()
        if system is not None:
            loss = opt.step(closure)
            system.project_and_store()
        else:
            loss = evaluate({})
        value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        if not np.isfinite(value):
            message = "loss became non-finite"
            break
        history.append(value)
        if progress is not None:
            progress(it, schedule.max_iterations, value)
        if it > last_release + schedule.patience and len(history) > schedule.patience:
            old = history[-1 - schedule.patience]
            if abs(old - value) <= schedule.rtol * max(abs(old), 1e-30) * schedule.patience:
                converged = True
                message = f"relative loss change below {schedule.rtol:g} per iteration"
                break
    return _Rounds(history, it, converged, message, cols_all, sample_block is not None)


POLISH_STEPS = 8
"""Default Gauss-Newton budget when :func:`_polish` is called on its own."""
JACKKNIFE_GROUPS = 10
POLISH_TOLERANCE = 0.5
"""Converged when the remaining Gauss-Newton step is below this many standard deviations of every
parameter (its effect on the result is then below ~12 % of the uncertainty, added in quadrature)."""


def _polish(model, data, mask, noise, specs, evaluate, budget: int = POLISH_STEPS, progress=None):
    """Gauss-Newton polishing of the system parameters and the convergence test.

    At most ``budget`` steps are taken. Returns ``(converged, jtj, columns, per_group, message,
    steps)`` with ``jtj`` (Fisher information of the whitened residuals) at the final point, for the
    uncertainty evaluation.
    """
    worst = float("inf")
    n = data.shape[0]
    groups = [list(range(g, n, JACKKNIFE_GROUPS)) for g in range(min(JACKKNIFE_GROUPS, n))]
    step = 0
    while True:
        jtj, jtr, rtr, cols, per_group = normal_equations(model, data, mask, noise, specs, groups=groups)
        if not (torch.isfinite(jtj).all() and torch.isfinite(jtr).all()):
            return False, jtj, cols, per_group, "not converged: non-finite Jacobian", step
        inv = psd_inverse(jtj)
        delta = -(inv @ jtr)
        sigma = torch.sqrt(inv.diagonal().clamp(min=1e-300))
        worst = float((delta.abs() / sigma).max())
        if worst < POLISH_TOLERANCE:
            return True, jtj, cols, per_group, f"converged: remaining Gauss-Newton step {worst:.2g} sigma after {step} steps", step
        if step >= budget:
            return False, jtj, cols, per_group, f"not converged: iteration budget spent with a {worst:.2g} sigma step left", step
        step += 1
        block = _Block(model, specs)
        with torch.no_grad():
            before = float(evaluate({}))
            # Levenberg-Marquardt: the Gauss-Newton step first, then increasingly damped ones
            for damping in (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
                if damping:
                    dj = jtj.diagonal()
                    delta = -(psd_inverse(jtj + damping * torch.diag(dj)) @ jtr)
                block.z[0].copy_(delta.to(block.z[0].dtype) / block.steps)
                block.project_and_store()
                after = float(evaluate({}))
                if after < before:
                    break
                block.z[0].zero_()
                block.project_and_store()
            else:
                if worst < 2 * POLISH_TOLERANCE:
                    # the predicted loss decrease is below the loss's floating-point resolution
                    return True, jtj, cols, per_group, f"converged at numerical precision ({worst:.2g} sigma step left)", step
                return False, jtj, cols, per_group, f"not converged: no step reduces the loss ({worst:.2g} sigma left)", step
        if progress is not None:
            progress(step, after)
