"""Joint reconstruction of station misalignment, lens pupil and (optionally) the sample.

The solver only ever receives ``(model, data, noise, schedule)``. Free parameters are optimised
in preconditioned units (``value / step``) with L-BFGS; parameters are released at the iteration
their :class:`~metrology.solver.schedule.ParameterSpec` names, and bounds are enforced by
projection. In prior and blind modes the sample and the system parameters are updated in
alternation (the UA-FP self-calibrating loop), each with its own L-BFGS memory.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from metrology.measurement import DataQuality
from metrology.physics import StationModel
from metrology.solver.blocks import INNER_ITERATIONS, Block, SampleBlock, lbfgs
from metrology.solver.device import device_label
from metrology.solver.jacobian import columns_for, normal_equations
from metrology.solver.losses import LOSSES, chi_square, total_variation
from metrology.solver.polish import WEIGHT_RESTART, polish
from metrology.solver.priors import add_to_normal_equations, prior_chi2
from metrology.solver.quality import (NoiseModel, assess, blank_frames, estimate_background, flag_blank,
                                      frames_left_out)
from metrology.solver.schedule import Schedule, parameters_at_bounds
from metrology.solver.settle import sample_settled
from metrology.solver.start import MIN_BRIGHT_FIELD_LEDS, start
from metrology.solver.weights import DataWeights, Weighting


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
    meat: torch.Tensor | None = None  # J^T W S W J with the residuals' spatial covariance (assembly.spectral_meat)
    jackknife: list | None = None  # per LED group (J_g^T J_g, J_g^T r_g) at the solution
    jackknife_regions: list | None = None  # per image region (J_b^T J_b, J_b^T r_b) at the solution
    device: str = "cpu"  # where the fit ran (metrology.solver.device.device_label)
    at_bounds: list = field(default_factory=list)  # free elements that ended on a bound (schedule.parameters_at_bounds)
    weights: DataWeights | None = None  # learned variance inflation (metrology.solver.weights)
    chi2_weighted: float | None = None  # chi-square with the learned variances
    reference: torch.Tensor | None = None  # prior mode: the sample the prior pulls towards (complex, (n, n))

    @property
    def reduced_chi2(self) -> float:
        """Reduced chi-square of the fit's own likelihood (with the learned data variances)."""
        chi2 = self.chi2 if self.chi2_weighted is None else self.chi2_weighted
        return chi2 / max(self.dof, 1)

    @property
    def reduced_chi2_noise(self) -> float:
        """Reduced chi-square against the camera noise alone (how far the model is from the data)."""
        return self.chi2 / max(self.dof, 1)



def _objective(model, data, mask, noise, schedule, reference, weighting: Weighting):
    loss_fn = LOSSES[schedule.loss]
    n_valid = float(mask.sum())

    def evaluate(overrides: dict) -> torch.Tensor:
        out = functional_call(model, overrides, ())
        bg = overrides.get("camera.background_counts", model.camera.background_counts)
        loss = loss_fn(out, data, mask, noise.gain_e_per_count, noise.read_noise_counts, bg, weighting.pixel)
        if schedule.priors:
            loss = loss + prior_chi2(model, schedule.priors, overrides) / n_valid
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



def prepare(model: StationModel, frames, noise: NoiseModel, background: float | None = None):
    """Data tensor, fit mask, data quality and background of a capture (``background``: the camera's
    dark offset in counts where known, else estimated from the darkest frames)."""
    data_np = np.asarray(frames, dtype=np.float64)
    background = estimate_background(data_np) if background is None else float(background)
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
    background_counts: float | None = None,
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
    background_counts : float, optional
        The camera's dark offset (counts) where known and held (stray light fitted: the darkest
        frames' level would count their stray light as offset); None: from the darkest frames.

    Length: the documentation of its options; the body is the fit's stages in order.

    Returns
    -------
    FitResult
    """
    t0 = time.perf_counter()
    data, mask, quality, background = prepare(model, frames, noise, background_counts)
    model.edge_softening_px = schedule.edge_softening(0)  # the start sees the smooth edge too
    summary = start(model, data, mask, background, schedule, search_geometry=initialise_geometry, ranges=ranges,
                    observe=observe, sample_given=reference_transmission is not None)
    _exclude_blank_frames(model, data, mask, quality, background, noise)
    schedule = schedule.without_frames(frames_left_out(mask), data.shape[0])
    reference = None
    if schedule.mode == "prior":
        reference = model.sample.transmission().detach().clone()
    weighting = Weighting.for_fit(model, data, mask, noise, schedule.data_weights)  # learned data variances
    evaluate = _objective(model, data, mask, noise, schedule, reference, weighting)
    if progress is not None:  # the initialisation's result, as iteration 0
        with torch.no_grad():
            progress(0, schedule.max_iterations, float(evaluate({})))
    rounds = _staged_rounds(model, data, mask, noise, schedule, evaluate, progress, weighting)
    if rounds.sample_free and data.dtype != torch.float64:
        data, mask, weighting, reference, evaluate = _in_float64(model, data, mask, noise, schedule, weighting,
                                                                 reference)
    it, converged, message, cols_all, jtj, meat, per_group = _polished(model, data, mask, noise, schedule, evaluate,
                                                                        weighting, rounds, progress)
    chi2, per_frame, chi2_w, dof = _chi_square_dof(model, data, mask, noise, schedule, weighting)
    message = message if converged else _start_cause(summary, chi2 / max(dof, 1)) + message

    def cpu(pairs):  # the uncertainty analysis runs on the CPU in float64, whatever device fitted
        return None if pairs is None else [(a.cpu(), b.cpu()) for a, b in pairs]

    return FitResult(
        model=model, schedule=schedule, data=data, mask=mask, noise=noise, quality=quality, history=rounds.history,
        iterations=it, converged=converged, message=message, chi2=chi2, dof=dof,
        frame_residuals=per_frame.cpu().numpy(), wall_time_s=time.perf_counter() - t0, init_summary=summary,
        jtj=None if jtj is None else jtj.cpu(), meat=None if meat is None else meat.cpu(), columns=cols_all,
        device=device_label(data.device), jackknife=cpu(per_group and per_group["leds"]),
        jackknife_regions=cpu(per_group and per_group["regions"]), at_bounds=parameters_at_bounds(model, schedule),
        weights=weighting.weights, chi2_weighted=chi2_w, reference=reference,
    )


def refit_from(fit: FitResult, model: StationModel) -> tuple:
    """Re-find the optimum of ``fit``'s objective from ``model``, in place.

    ``model`` is a copy of the fitted model with something the fit holds moved (a station constant:
    :mod:`metrology.solver.refit_budget`). The re-fit is the fit's own last stretch, warm-started: the
    system's Gauss-Newton polish and, with a free sample, the settle loop, on the fit's data, mask,
    schedule and prior reference, with a copy of its learned data variances (re-estimated as the fit
    re-estimates them). It runs in the model's dtype and on its device.

    Returns
    -------
    converged : bool
        The fit's own convergence test at the re-fitted point.
    message : str
    """
    dtype, dev = model.pupil.na.dtype, model.pupil.na.device
    data, mask = fit.data.to(dev, dtype), fit.mask.to(dev, dtype)
    weighting = Weighting(copy.deepcopy(fit.weights), dtype)
    reference = None if fit.reference is None else fit.reference.to(dev, model.sample.transmission().dtype)
    evaluate = _objective(model, data, mask, fit.noise, fit.schedule, reference, weighting)
    with torch.no_grad():
        start_loss = float(evaluate({}))
    rounds = _Rounds([start_loss], 0, True, "warm re-fit", fit.columns, bool(fit.schedule.sample_parameters()))
    _, converged, message, *_ = _polished(model, data, mask, fit.noise, fit.schedule, evaluate, weighting, rounds, None)
    return converged, message


START_CAUSE_CHI2 = 4.0
"""Reduced chi-square against the camera noise above which a fit that kept the nominal LED geometry
is taken not to have found the geometry (the verdict's default limit on the reduced chi-square).
Below it the data are explained and the fit's own reason stands."""


def _start_cause(summary: dict, reduced_chi2_noise: float) -> str:
    """The likely cause of a fit that did not converge, as a leading clause of its message: the
    blind start had too few bright-field disks to fit the LED array (:data:`MIN_BRIGHT_FIELD_LEDS`;
    it kept the nominal geometry or scanned for one) and the fit does not explain the data (reduced
    chi-square against the noise above :data:`START_CAUSE_CHI2`). Empty otherwise: a fit that found
    the geometry from such a start (a small-pixel station: chi-square 2.8 against the noise, LED
    shift 33 um off) keeps its own reason (e.g. a sample still changing)."""
    kept = (summary or {}).get("geometry_search", {})
    disks = kept.get("bright_field_leds", MIN_BRIGHT_FIELD_LEDS)
    if disks >= MIN_BRIGHT_FIELD_LEDS or reduced_chi2_noise <= START_CAUSE_CHI2:
        return ""
    return (f"not converged: the LED geometry could not be started from the data ({disks} "
            f"bright-field LED(s), {MIN_BRIGHT_FIELD_LEDS} needed) and the fit did not find it; ")


def _in_float64(model, data, mask, noise, schedule, weighting, reference):
    """Promote the fit to float64 for a free sample's last stretch (the polish and the settle loop).

    In float32 the loss of a free-sample fit sits at the precision floor while the sample is still
    far from its optimum (off-model blind case: the float32 "optimum" was 0.017 in loss, ~900 in
    chi-square, and 0.003 waves of lens away from the float64 one), so neither its L-BFGS nor the
    convergence test could see it move. Returns ``(data, mask, weighting, reference, evaluate)``.
    """
    model.double()
    data, mask = data.double(), mask.double()
    weighting = Weighting(weighting.weights, torch.float64)
    reference = None if reference is None else reference.to(torch.complex128)
    return data, mask, weighting, reference, _objective(model, data, mask, noise, schedule, reference, weighting)


def _polished(model, data, mask, noise, schedule, evaluate, weighting, rounds, progress):
    """The Gauss-Newton polish after the rounds (:func:`metrology.solver.polish.polish`): the
    convergence test of every mode; with a free sample its own loop must have settled too.

    Returns ``(iterations, converged, message, columns, jtj, meat, per_group)``.
    """
    it, converged, message, cols_all = rounds.iterations, rounds.converged, rounds.message, rounds.columns
    system_specs = schedule.system_parameters()
    if not (system_specs and rounds.history and np.isfinite(rounds.history[-1])):
        return it, converged, message, cols_all, None, None, None
    budget = max(schedule.max_iterations - it, 0)
    polished, (jtj, meat), cols_all, per_group, polish_msg, steps = polish(
        model, data, mask, noise, system_specs, evaluate, budget, weighting, schedule.priors,
        None if progress is None else (lambda k, v: progress(it + k, schedule.max_iterations, v)),
    )
    converged = polished
    if rounds.sample_free:
        settled, sample_msg, *again, more = sample_settled(model, data, mask, noise, schedule, evaluate, weighting,
                                                           system_specs, jtj, float(mask.sum()))
        if again[0] is not None:  # polished again while the sample settled: the final point's information
            jtj, meat, per_group = again
        steps += more
        # polished again while the sample settled: the settle test (the remaining Gauss-Newton step
        # at the final point) is the system's convergence test too
        converged = settled and (polished or again[0] is not None)
        message = f"{message}; {_system_clause(polish_msg, converged)}; {sample_msg}"
    else:
        message = polish_msg
    return it + steps, converged, message, cols_all, jtj, meat, per_group


def _system_clause(polish_msg: str, converged: bool) -> str:
    """The polish's clause in the message of a fit with a free sample, whose convergence the settle
    loop's clause decides (``converged``: the fit's). A converged polish reads "system polished: ..."
    rather than "converged: ..." (a blind fit's message had read "converged: ...; not converged: the
    sample is still changing"); a polish that spent its budget keeps its "not converged" clause where
    the fit did not converge, and reads "system polish unfinished (the settle loop polished it
    again): ..." where it did (UConn green: "not converged: iteration budget spent ...; sample
    settled", a converged fit)."""
    if polish_msg.startswith("converged"):
        return "system polished" + polish_msg[len("converged"):]
    if converged and polish_msg.startswith("not converged: "):
        return "system polish unfinished (the settle loop polished it again): " + polish_msg[len("not converged: "):]
    return polish_msg


def _chi_square_dof(model, data, mask, noise, schedule, weighting: Weighting):
    """Chi-square of the fitted model (against the camera noise and with the learned variances),
    per-frame RMS normalised residuals and the degrees of freedom (valid pixels minus free parameter
    elements and fitted variances)."""
    with torch.no_grad():
        pred = model()
        chi2, per_frame, chi2_w = chi_square(
            pred, data, mask, noise.gain_e_per_count, noise.read_noise_counts, model.camera.background_counts,
            weighting.pixel,
        )
    sample_parts = len(schedule.sample_parameters())
    n_free = sum(_free_elements(model, p) for p in schedule.system_parameters())
    n_free += sample_parts * _sample_dof(model) if sample_parts else 0
    if weighting.weights is not None:
        n_free += int((weighting.weights.variance > 1.0).sum())  # the fitted (not floored) variances
    return chi2, per_frame, chi2_w, int(mask.sum().item()) - n_free


def _free_elements(model, spec) -> int:
    """Free elements of a system parameter (a free sample part: :func:`_sample_dof`)."""
    return len(spec.indices) if spec.indices is not None else model.parameter(spec.path).numel()


def _sample_dof(model) -> int:
    """Degrees of freedom one part (real or imaginary) of a free sample takes from the data. A sample
    grid value is not one: the frames constrain the sample's spectrum only inside the synthetic
    aperture (the union of the LEDs' shifted pupils, :meth:`~metrology.physics.StationModel.spectrum_coverage`),
    and only over the frame's area, not the modelled margin's: the covered spectrum cells times
    ``(frame / field)^2``. Counting every grid value made the reduced chi-square of a blind fit with a
    margin come out ~50000 on a fit whose frames are explained to ~1.3 sigma."""
    g = model.geometry
    covered = int((model.spectrum_coverage() > 0.5).sum())
    return round(covered * (g.frame_px / g.field_px) ** 2)


def _exclude_blank_frames(model, data, mask, quality, background, noise) -> None:
    """Find the frames with no signal where the started model predicts some, record them in
    ``quality`` and take them out of the fit ``mask`` (in place)."""
    with torch.no_grad():
        pred = model()
        illumination_na = model.illumination.illumination_na()
        na = float(model.pupil.na)
    blank = blank_frames(data, pred, background, noise, illumination_na.cpu().numpy(), na)
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


def _staged_rounds(model, data, mask, noise, schedule, evaluate, progress, weighting: Weighting) -> _Rounds:
    """The outer L-BFGS rounds: the sample (if free) and the system parameters released so far,
    each with its own L-BFGS memory, until ``schedule.staging_rounds`` or the loss settles.

    The system block is preconditioned by the Gauss-Newton Hessian at the start (restricted to the
    parameters free in the round) and rebuilt whenever parameters are released or the objective
    changes: the pupil edge's coarse-to-fine continuation (:meth:`Schedule.edge_softening`) and the
    learned data variances re-estimated after every round (:mod:`metrology.solver.weights`).

    Length: the round loop with its release, continuation and restart bookkeeping reads best whole.
    """
    history: list = []
    converged = False
    message = "maximum iterations reached"
    active_paths = None
    system = sample_block = None
    sample_specs = schedule.sample_parameters()
    if sample_specs:
        sample_block = SampleBlock(model, min(p.step for p in sample_specs))
        s_opt, s_closure = lbfgs(sample_block, evaluate, schedule.sample_steps)
    last_release = max([p.start for p in schedule.parameters], default=0)
    system_specs = schedule.system_parameters()
    hessian_all, cols_all = None, None
    if system_specs:
        # a preconditioner needs the Hessian's shape, not its last digits: pixel centres only
        jtj, jtr0, _, cols_all = normal_equations(model, data, weighting.residual_scale(mask), noise, system_specs,
                                                  pixel_points=1)
        jtj, _ = add_to_normal_equations(jtj, jtr0, model, schedule.priors, cols_all)
        hessian_all = 2.0 * jtj / float(mask.sum())
    it = 0
    for it in range(1, schedule.staging_rounds + 1):
        free = schedule.free_at(it - 1)
        paths = tuple(p.path for p in free)
        softening = schedule.edge_softening(it - 1)
        if softening != model.edge_softening_px:
            model.edge_softening_px = softening  # a new objective: fresh quasi-Newton memories
            weighting.update(model, data, mask, noise)
            active_paths = None
        if paths != active_paths:
            if system is not None:
                system.project_and_store()
            system = None
            if free:
                names = columns_for(model, free).names
                pos = {n: i for i, n in enumerate(cols_all.names)}
                sel = torch.as_tensor([pos[n] for n in names], dtype=torch.long, device=hessian_all.device)
                system = Block(model, free, hessian_all[sel[:, None], sel[None, :]])
                opt, closure = lbfgs(system, evaluate, INNER_ITERATIONS)
            active_paths = paths
        if sample_block is not None:
            s_opt.step(s_closure)
            sample_block.project_and_store()
        if system is not None:
            loss = opt.step(closure)
            system.project_and_store()
        else:
            loss = evaluate({})
        if weighting.update(model, data, mask, noise) > WEIGHT_RESTART:
            # a new objective: restart the quasi-Newton memories (the preconditioners stay)
            if system is not None:
                system = Block(model, free, system.hessian)
                opt, closure = lbfgs(system, evaluate, INNER_ITERATIONS)
            if sample_block is not None:
                sample_block = SampleBlock(model, sample_block.step)
                s_opt, s_closure = lbfgs(sample_block, evaluate, schedule.sample_steps)
            with torch.no_grad():
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
                message = (f"relative loss change below {schedule.rtol:g} per iteration" if schedule.rtol
                           else f"loss unchanged over {schedule.patience} rounds")
                break
    if model.edge_softening_px:  # the physical emitter from here on (the polish and the report)
        model.edge_softening_px = 0.0
        weighting.update(model, data, mask, noise)
    return _Rounds(history, it, converged, message, cols_all, sample_block is not None)
