"""Calibration schedules: which parameter paths are free, their step, when released, their bounds.

A :class:`Schedule` is a list of :class:`ParameterSpec`, one per parameter path of the registry
(:mod:`metrology.parameters`). Paths not listed stay fixed. ``step`` is the parameter's
natural step size: the optimiser works on ``p / step`` (a diagonal preconditioner for L-BFGS) and
uses it as the learning rate of Adam sample updates. ``start`` is the iteration at which the
parameter is released; ``indices`` frees only some elements (e.g. Noll 5..K of the Zernike vector);
``bounds`` are enforced by projection after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from metrology.parameters import BY_PATH, GEOMETRY, MODES, PER_FRAME, SCHEDULE_ORDER
from metrology.solver.jacobian import STRAY_LIGHT, columns_for
from metrology.solver.priors import default_priors


@dataclass(frozen=True)
class ParameterSpec:
    """How one parameter path is fitted.

    Parameters
    ----------
    path : str
        Parameter path, e.g. ``"illumination.shift_mm"``.
    step : float
        Typical step / scale in the parameter's unit (preconditioner; Adam learning rate).
    start : int
        Iteration at which the parameter is released (0: from the start).
    bounds : (float, float) or None
        Inclusive bounds, in the parameter's unit.
    indices : tuple of int or None
        Free elements (flat indices); ``None`` frees all.
    """

    path: str
    step: float
    start: int = 0
    bounds: tuple | None = None
    indices: tuple | None = None

    def __post_init__(self):
        if self.path not in BY_PATH:
            raise ValueError(f"unknown parameter path {self.path!r}")
        if self.step <= 0:
            raise ValueError(f"{self.path}: step must be > 0")
        if self.bounds is not None and self.bounds[0] >= self.bounds[1]:
            raise ValueError(f"{self.path}: empty bounds {self.bounds}")


@dataclass(frozen=True)
class Schedule:
    """A calibration schedule.

    Parameters
    ----------
    mode : {"known", "prior", "blind"}
        Reference sample known (only its pose is fitted), used as a prior (initialised and
        regularised towards its map), or unknown (initialised from the bright-field images).
    parameters : tuple of ParameterSpec
        Free parameters; any path not listed is fixed.
    max_iterations : int
        Total iteration budget. The first ``staging_rounds`` iterations are outer L-BFGS rounds
        (each: ``sample_steps`` L-BFGS iterations on the sample, if free, and 10 preconditioned
        L-BFGS iterations on the system parameters, releasing parameters as scheduled); the rest
        of the budget goes to Gauss-Newton steps on the system parameters until the remaining step
        is below half a standard deviation (the convergence test). A fit that runs out of budget
        first is reported as not converged.
    staging_rounds : int
        Outer L-BFGS rounds before the Gauss-Newton phase (fewer when the loss settles earlier).
    rtol : float
        Convergence: relative change of the loss over ``patience`` iterations below ``rtol`` ends
        the outer rounds early (0: never; the blind default).
    patience : int
        Window for the convergence test.
    loss : {"amplitude", "poisson", "huber"}
        Data term (see :mod:`metrology.solver.losses`).
    tv_weight : float
        Total-variation weight on the sample (prior and blind modes).
    prior_weight : float
        Weight pulling the sample towards the reference map (prior mode).
    sample_steps : int
        Sample updates per alternation in prior/blind modes (the UA-FP self-calibrating loop
        alternates sample updates and system updates).
    projection_iterations : int
        Alternating projections (free pupil phase map; the sample too in blind mode) before the
        gradient fit, projected onto the model's Zernike basis (:mod:`metrology.solver.projection`);
        0 skips them.
    data_weights : bool
        Learn the data's variance inflation per frame and border band jointly with the model
        (:mod:`metrology.solver.weights`; the default). False: the camera noise model alone.
    priors : tuple of PriorSpec
        Gaussian priors on fitted parameters (:mod:`metrology.solver.priors`; default: LED
        brightness about the emission law, and the law's exponent).
    edge_continuation : tuple of float
        Coarse to fine: in outer round ``i`` the pupil edge is seen through a source at least
        ``edge_continuation[i]`` frequency pixels wide (then the physical emitter): the first
        rounds see a smooth landscape, where an LED whose unscattered light sits on the edge cannot
        trade its brightness against a wrong LED position (a steep edge makes that a local minimum).
    settle_rounds : int
        With a free sample, the most rounds of (sample pass, convergence test, joint pass, polish)
        the fit gets for the sample to settle (:func:`metrology.solver.settle.sample_settled`);
        a fit still moving after them is "not converged". Converged blind fits settle in rounds
        8-16 at 32 px; fits that had not settled after 16 did after ~20 (``docs/solver.md``). A
        deliberately truncated fit (few outer iterations) may lower it to bound its time; its
        convergence is then rarely claimed.
    """

    mode: str = "known"
    projection_iterations: int = 0
    parameters: tuple = field(default_factory=tuple)
    max_iterations: int = 12
    staging_rounds: int = 4
    rtol: float = 1e-5
    patience: int = 2
    loss: str = "amplitude"
    tv_weight: float = 0.0
    prior_weight: float = 0.0
    sample_steps: int = 5
    data_weights: bool = True
    priors: tuple = field(default_factory=default_priors)
    edge_continuation: tuple = (1.0, 0.5, 0.25)
    settle_rounds: int = 24

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.loss not in ("amplitude", "poisson", "huber"):
            raise ValueError(f"unknown loss {self.loss!r}")
        seen = {}
        for p in self.parameters:
            elems = set(p.indices) if p.indices is not None else None
            prev = seen.get(p.path)
            if prev is not None and (prev is None or elems is None or prev & elems):
                raise ValueError(f"{p.path}: listed twice with overlapping elements")
            if p.path in seen and seen[p.path] is None:
                raise ValueError(f"{p.path}: listed twice with overlapping elements")
            seen[p.path] = elems if prev is None else prev | elems

    def edge_softening(self, round_index: int) -> float:
        """Smallest source width (frequency pixels) the model uses in outer round ``round_index``."""
        return self.edge_continuation[round_index] if round_index < len(self.edge_continuation) else 0.0

    def specs(self, path: str) -> list:
        """The specs that free elements of ``path`` (several when released in stages)."""
        return [p for p in self.parameters if p.path == path]

    def sample_parameters(self) -> list:
        """The specs of the sample's fields (prior and blind modes; empty when the sample is known)."""
        return [p for p in self.parameters if p.path.startswith("sample.field")]

    def system_parameters(self) -> list:
        """Every other spec: the station, the lens and the camera."""
        return [p for p in self.parameters if not p.path.startswith("sample.field")]

    def free_at(self, iteration: int) -> list:
        """Specs released at ``iteration`` (excluding sample fields, updated separately)."""
        return [p for p in self.system_parameters() if p.start <= iteration]

    def without(self, *paths) -> "Schedule":
        """The same schedule with ``paths`` fixed (e.g. misalignment frozen at nominal)."""
        return replace(self, parameters=tuple(p for p in self.parameters if p.path not in paths))

    def without_frames(self, frames, n_frames: int) -> "Schedule":
        """The same schedule with the per-frame terms (:data:`metrology.parameters.PER_FRAME`: each
        LED's brightness and stray light) of ``frames`` held: frames left out of the fit (blank,
        repeated) have no data for them. Free, a held-out frame's stray light had no gradient and no
        prior, and the Gauss-Newton step sent it to its bound (blind off-model glare trials, 3 of 30)."""
        drop = {int(j) for j in frames}
        if not drop:
            return self
        specs = []
        for p in self.parameters:
            if p.path in PER_FRAME:
                kept = tuple(j for j in (range(n_frames) if p.indices is None else p.indices) if j not in drop)
                if not kept:
                    continue
                p = replace(p, indices=kept)
            specs.append(p)
        return replace(self, parameters=tuple(specs))


GEOMETRY_PATHS = GEOMETRY
"""The LED board geometry (:data:`metrology.parameters.GEOMETRY`)."""


PROJECTION_ITERATIONS = {"known": 30, "prior": 30, "blind": 60}
"""Alternating-projection iterations before the gradient fit (see :mod:`metrology.solver.projection`)."""


def default_specs(mode: str = "known", zernike_terms: int = 36) -> tuple:
    """The default schedule's :class:`ParameterSpec` list for ``mode``, from the registry's
    :attr:`metrology.parameters.Parameter.fit` entries (in :data:`metrology.parameters.SCHEDULE_ORDER`):
    one spec per parameter, or one per stage where the registry releases elements in stages (their
    indices clipped to ``zernike_terms``; an empty stage is left out)."""
    specs = []
    for path in SCHEDULE_ORDER:
        p = BY_PATH[path]
        if mode not in p.fit.modes:
            continue
        if not p.fit.stages:
            specs.append(ParameterSpec(path, p.fit.step, p.fit.start, p.bounds))
        for stage in p.fit.stages:
            indices = tuple(i for i in stage.elements if i < zernike_terms)
            if indices:
                specs.append(ParameterSpec(path, p.fit.step, stage.start, p.bounds, indices))
    return tuple(specs)


def default_schedule(mode: str = "known", zernike_terms: int = 36, max_iterations: int | None = None) -> Schedule:
    """Staged default: LED geometry, brightness and sample pose first; then the lens aberrations by
    increasing radial order; the apodisation last (then everything together). The parameters, their
    steps, release iterations and bounds are the registry's (:func:`default_specs`).

    Noll 1-4 stay fixed at zero (alignment terms carried by sample position and defocus).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rounds = {"known": 6, "prior": 30, "blind": 60}[mode]
    iters = max_iterations or rounds + 12
    return Schedule(
        mode=mode,
        parameters=default_specs(mode, zernike_terms),
        max_iterations=iters,
        staging_rounds=min(rounds, iters),
        tv_weight=0.0 if mode == "known" else 1e-3,
        # blind: ~1e5 free sample values keep lowering the loss slowly, and a stop on a small loss
        # change is premature (PtyLab case 2: two runs stopped early at 0.0031 / 0.0038 waves, two
        # that ran the rounds out at 0.0009 / 0.0010): blind runs all its rounds, and the
        # Gauss-Newton test decides convergence as in every mode
        rtol=0.0 if mode == "blind" else 1e-5,
        prior_weight=0.1 if mode == "prior" else 0.0,
        projection_iterations=PROJECTION_ITERATIONS[mode],
    )


def parameters_at_bounds(model, schedule: Schedule, rtol: float = 1e-6) -> list[str]:
    """Free parameter elements that ended on a bound of their :class:`ParameterSpec`.

    A value on its bound is where the projection stopped the fit, not an optimum: the best fit
    lies outside the allowed range and the parameter's uncertainty (and its correlations) do not
    hold there.

    Parameters
    ----------
    model : StationModel
    schedule : Schedule
    rtol : float
        A value within ``rtol * max(1, |bound|)`` of a bound counts as on it.

    Returns
    -------
    list of str
        The elements' Jacobian column names (``path`` or ``path[i]``,
        :func:`metrology.solver.jacobian.columns_for`), in schedule order.
    """
    specs = list(schedule.parameters)
    cols = columns_for(model, specs)
    values = {path: model.parameter(path).detach().flatten().double().cpu() for path in set(cols.paths)}
    out = []
    for name, path, k, si in zip(cols.names, cols.paths, cols.flat_index, cols.spec):
        if specs[si].bounds is None:
            continue
        lo, hi = (float(b) for b in specs[si].bounds)
        v = float(values[path][k])
        if v <= lo + rtol * max(1.0, abs(lo)) or v >= hi - rtol * max(1.0, abs(hi)):
            out.append(name)
    return out


VIGNETTING_PATHS = ("pupil.vignetting_radius", "pupil.vignetting_center")
BACKGROUND = "camera.background_counts"


def station_schedule(geometry, mode: str = "known", max_iterations: int | None = None) -> Schedule:
    """The default schedule for a station's geometry: :func:`default_schedule`, plus

    * the two-circle vignetting's aperture (``pupil.vignetting_*``) when the station states one
      (released with the low-order aberrations; without it those parameters have no effect and stay
      out of the fit);
    * each frame's stray light (``illumination.stray_light``) when the station states
      ``lens.stray_light``, released with the low-order aberrations. The camera background is then
      held at its start (the station's stated dark offset, ``reconstruct(background_counts=)``): a
      common offset of the frames is the background or the stray light, a gauge of the two; and the
      default iteration budget grows by :data:`STRAY_LIGHT_POLISH_STEPS` Gauss-Newton steps.
    """
    schedule = default_schedule(mode, geometry.zernike_terms, max_iterations)
    params = schedule.parameters
    if geometry.vignetting is not None:
        params = params + tuple(ParameterSpec(path, 0.01, 1, BY_PATH[path].bounds) for path in VIGNETTING_PATHS)
    if geometry.stray_light:
        params = tuple(p for p in params if p.path != BACKGROUND) + (
            ParameterSpec(STRAY_LIGHT, 0.001, 1, BY_PATH[STRAY_LIGHT].bounds),)
        if max_iterations is None:  # the default budget's Gauss-Newton steps doubled
            schedule = replace(schedule, max_iterations=schedule.max_iterations + STRAY_LIGHT_POLISH_STEPS)
    return schedule if params == schedule.parameters else replace(schedule, parameters=params)


STRAY_LIGHT_POLISH_STEPS = 12
"""Gauss-Newton steps added to the default budget when each frame's stray light is fitted: a dark
frame just outside the pupil edge couples its brightness and its haze in a curved valley that the
polish follows in more steps (bench_offmodel --stray-light, 32 px, seed 5: 16 steps, not converged
in the 12 of the default budget with a 16 sigma step left)."""
