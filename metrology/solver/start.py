"""How the fit starts: one start per reconstruction mode (:data:`START`), in one place.

The gradient fit (:func:`metrology.solver.reconstruct.reconstruct`) needs a start inside the basin
of the minimum. :func:`start` runs the start of the schedule's mode:

* ``known`` and ``prior`` (:func:`start_known`, a known reference sample): the LED geometry from
  two searches, each followed by the alternating projections (:func:`start_two_geometries`), and
  the one whose projections end with the lower misfit kept. Without projections (or without a
  geometry search) one geometry search, the intensity scale and brightness, the sample position by
  phase correlation, then the projections if any.
* ``blind`` (:func:`start_blind`, unknown sample): the sample from the mean bright-field frame
  (:func:`initial_sample`), the LED shift and rotation from the bright-field disks
  (:func:`initialise_blind_geometry`), the intensity scale, then the projections with the sample
  free, staged and single (:func:`initialise_pupil`). With fewer than
  :data:`MIN_BRIGHT_FIELD_LEDS` disks, the nominal geometry and a scanned one
  (:func:`scan_geometry`), each followed by the projections, the better kept
  (:func:`start_blind_few_disks`).

The building blocks live in :mod:`.search` (geometry searches) and :mod:`.projection` (the
alternating projections and their fit onto the model's basis).
"""

from __future__ import annotations

import numpy as np
import torch

from metrology.physics import StationModel
from metrology.physics.sample import pad_with_mean
from metrology.solver.projection import basis_mask, project
from metrology.solver.search import (
    DEFAULT_RANGES,
    fit_geometry,
    search_bright_field,
    search_led_frequencies,
)


# ----------------------------------------------------------------------------- building blocks
def phase_correlation_shift(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Shift ``(dx, dy)`` in pixels that moves image ``b`` onto image ``a`` (sub-pixel, parabolic)."""
    fa = torch.fft.fft2(a - a.mean())
    fb = torch.fft.fft2(b - b.mean())
    r = fa * fb.conj()
    corr = torch.fft.ifft2(r / (r.abs() + 1e-12)).real
    n = a.shape[-1]
    iy, ix = np.unravel_index(int(torch.argmax(corr)), corr.shape)

    def sub(vals):
        l, c, r_ = vals
        den = l - 2 * c + r_
        return float(0.5 * (l - r_) / den) if den < 0 else 0.0

    dy = sub([corr[(iy - 1) % n, ix], corr[iy, ix], corr[(iy + 1) % n, ix]])
    dx = sub([corr[iy, (ix - 1) % n], corr[iy, ix], corr[iy, (ix + 1) % n]])
    sx = ((ix + n // 2) % n - n // 2) + dx
    sy = ((iy + n // 2) % n - n // 2) + dy
    return float(sx), float(sy)


def initialise_intensity(model: StationModel, data: torch.Tensor, background: float, mask: torch.Tensor,
                         object_known: bool = True) -> None:
    """Set ``camera.background_counts``, ``camera.counts_per_unit`` and per-LED brightness from frame means.

    Brightness is the measured / predicted frame sum relative to the bright-field median. With an
    unknown object (``object_known=False``, blind mode) the start object is smooth and predicts
    almost no dark-field light, so that ratio says nothing about a dark-field LED (it would clamp at
    the upper bound): those LEDs start at the nominal brightness 1 instead. Simulated blind case
    (32 px, 11 x 11 LEDs): dark-field brightness ending 2.8x too high with a 2.7 reduced chi2 and
    0.003 waves of lens error, against 1.7 % / 1.4 / 0.0012 waves from the nominal start.
    """
    with torch.no_grad():
        model.camera.background_counts.fill_(background)
        model.camera.counts_per_unit.fill_(1.0)
        model.illumination.brightness.fill_(1.0)
        inten = model.intensity() * (model.exposure * model.illumination.emission())[:, None, None]
        m = mask.to(inten.dtype)
        measured = ((data - background) * m).sum(dim=(-2, -1))
        predicted = (inten * m).sum(dim=(-2, -1)).clamp(min=1e-12)
        ratio = measured / predicted
        bf = model.bright_field()
        scale = float(torch.median(ratio[bf])) if bf.any() else float(torch.median(ratio))
        model.camera.counts_per_unit.fill_(max(scale, 1e-12))
        b = (ratio / scale).clamp(0.05, 10.0)
        b[predicted < 1e-9 * predicted.max()] = 1.0
        if not object_known:
            b[~bf] = 1.0
        model.illumination.brightness.copy_(b)


def initialise_pose(model: StationModel, data, mask, background) -> dict:
    """Intensity scale, background and brightness (:func:`initialise_intensity`), then the sample
    position by phase correlation of the most on-axis frame with its model (known reference)."""
    initialise_intensity(model, data, background, mask, object_known=True)
    with torch.no_grad():
        k = torch.linalg.vector_norm(model.illumination.spatial_frequencies(), dim=-1)
        j = int(torch.argmin(k))
        pred = model(indices=torch.tensor([j], device=data.device))[0]
        sx, sy = phase_correlation_shift(data[j], pred)
        g = model.geometry
        model.sample.position_um.add_(torch.tensor([sx, sy], dtype=pred.dtype, device=pred.device) * g.pixel_um)
    return {"position_um": model.sample.position_um.detach().tolist()}


def initial_sample(model: StationModel, data: torch.Tensor, background: float) -> None:
    """Set the sample to the square root of the mean bright-field frame (zero phase)."""
    g = model.geometry
    with torch.no_grad():
        bf = model.bright_field()
        frames = data[bf] if bf.any() else data[:1]
        amp = torch.sqrt((frames - background).clamp(min=0) / model.exposure[bf, None, None]).mean(dim=0)
        amp = amp / torch.sqrt((amp**2).mean()).clamp(min=1e-12)
        n, big = g.frame_px, g.frame_px * g.upsampling
        spec = torch.fft.fftshift(torch.fft.fft2(amp.to(torch.complex128)))
        pad = (big - n) // 2
        spec = torch.nn.functional.pad(spec, (pad, pad, pad, pad)) * (big / n) ** 2
        t = torch.fft.ifft2(torch.fft.ifftshift(spec)).real
        if g.margin_px:  # the modelled margin starts at the frame's mean
            t = pad_with_mean(t.to(torch.complex128), g.frame_offset_px).real
        model.sample.field_real.copy_(t.to(model.sample.field_real.dtype))
        model.sample.field_imag.zero_()


MIN_BRIGHT_FIELD_LEDS = 4
"""Bright-field disks the blind start needs to fit the LED shift and rotation (fewer: nominal kept,
and a scan tried beside it: :func:`start_blind_few_disks`)."""


def initialise_blind_geometry(model: StationModel, data: torch.Tensor, background: float, bright_field=None) -> dict:
    """Fit the LED shift and rotation to the bright-field disk centres (blind mode; the known-mode
    start uses it too). ``bright_field``: the result of :func:`search_bright_field` for this model
    and data, when already computed."""
    k, w = search_bright_field(model, data - background) if bright_field is None else bright_field
    if int((w > 0).sum()) < MIN_BRIGHT_FIELD_LEDS:
        return {"bright_field_leds": int((w > 0).sum()), "note": "too few bright-field LEDs; nominal geometry kept"}
    # bright-field LEDs sit close to the axis: they fix the shift and the rotation, while the
    # distance and the tilt (radial scalings) are left at their nominal values
    out = fit_geometry(model, k, w, names=("shift_mm", "rotation_deg"))
    out["bright_field_leds"] = int((w > 0).sum())
    return out


SCAN_SHIFT_POINTS = 5
"""Blind start with fewer than :data:`MIN_BRIGHT_FIELD_LEDS` disks (:func:`scan_geometry`): LED
shifts per axis over the misalignment range (0.5 mm apart over +/- 1 mm)."""
SCAN_REFINE_ITERATIONS = 10
"""Projection iterations that rank the scan's best candidates (:data:`SCAN_FINALISTS`)."""
SCAN_FINALISTS = 3
"""Candidates of each scan stage, best by the start's own misfit, that the projections rank."""

_SCAN_STATE = ("pupil.zernike_waves", "sample.defocus_um", "sample.position_um", "sample.field_real",
               "sample.field_imag", "illumination.brightness", "camera.counts_per_unit", "camera.background_counts")


def _set_geometry(model, geometry: dict) -> None:
    """Set ``illumination.<name>`` for each ``{name: value}``."""
    ill = model.illumination
    with torch.no_grad():
        for name, value in geometry.items():
            getattr(ill, name).copy_(torch.as_tensor(value, dtype=getattr(ill, name).dtype))


def _scan_misfit(model, data, mask, background, geometry: dict, iterations: int, saved: dict) -> float:
    """Amplitude misfit of the blind start at one LED geometry (``{name: value}``), after
    ``iterations`` projections (1: the start's own misfit); the model's state restored after."""
    _set_geometry(model, geometry)
    initialise_intensity(model, data, background, mask, object_known=False)
    misfit = project(model, data, mask, background, iterations, True)["error_end"]
    with torch.no_grad():
        for p, v in saved.items():
            model.parameter(p).copy_(v)
    return float(misfit)


def scan_geometry(model: StationModel, data, mask, background: float, ranges=None) -> dict:
    """LED shift, rotation and distance of a board with few bright-field disks, by a scan.

    One disk cannot place the array: its two-disk pattern is symmetric in the sign of the
    illumination frequency, and a wide pitch leaves no second one. What the frames do show is which
    LEDs light the pupil and how much of it (a neighbour at the bright-/dark-field transition is
    half lit): the start's amplitude misfit (the smooth start sample, no dark-field light) ranks
    candidate geometries by that pattern. Coordinate-wise over ``ranges``
    (:data:`~metrology.solver.search.DEFAULT_RANGES`): the shift on a
    :data:`SCAN_SHIFT_POINTS`-square grid, then rotation and distance at
    -range, 0, +range, then the shift again on a half-step grid around the best; the
    :data:`SCAN_FINALISTS` best of each stage ranked after :data:`SCAN_REFINE_ITERATIONS`
    projections. The model is left at the best geometry, its sample and pupil as found.
    """
    ranges = ranges or DEFAULT_RANGES
    ill = model.illumination
    saved = {p: model.parameter(p).detach().clone() for p in _SCAN_STATE}
    best = {"shift_mm": ill.shift_mm.detach().double().cpu().numpy().copy(),
            "rotation_deg": float(ill.rotation_deg.detach()), "distance_error_mm": float(ill.distance_error_mm.detach())}
    tried = 0

    def pick(candidates: list) -> tuple:
        nonlocal tried
        tried += len(candidates)
        first = [_scan_misfit(model, data, mask, background, c, 1, saved) for c in candidates]
        finalists = [candidates[i] for i in np.argsort(first)[:SCAN_FINALISTS]]
        refined = [_scan_misfit(model, data, mask, background, c, SCAN_REFINE_ITERATIONS, saved) for c in finalists]
        return finalists[int(np.argmin(refined))], min(refined)

    span = np.linspace(-ranges["shift_mm"], ranges["shift_mm"], SCAN_SHIFT_POINTS)
    step = span[1] - span[0]
    shifts = [np.array([x, y]) for x in span for y in span]
    best, _ = pick([best | {"shift_mm": s} for s in shifts])
    best, _ = pick([best | {"rotation_deg": r, "distance_error_mm": d}
                    for r in (-ranges["rotation_deg"], 0.0, ranges["rotation_deg"])
                    for d in (-ranges["distance_error_mm"], 0.0, ranges["distance_error_mm"])])
    fine = (-step / 2, 0.0, step / 2)
    best, misfit = pick([best | {"shift_mm": best["shift_mm"] + np.array([x, y])} for x in fine for y in fine])
    _set_geometry(model, best)
    return {"scan_candidates": tried, "scan_misfit": misfit, "shift_mm": [float(v) for v in best["shift_mm"]],
            "rotation_deg": float(best["rotation_deg"]), "distance_error_mm": float(best["distance_error_mm"])}


INNER_SEARCH_NA_FACTOR = 2.0
"""The known-mode geometry search covers the LEDs inside this factor times the lens NA over the
whole misalignment range, fits the geometry to them, then refines the others within
:data:`REFINE_RADIUS_PX` of that geometry's prediction (a 15 x 15 board: 2.8x fewer candidate frames)."""
REFINE_RADIUS_PX = 3
"""Search radius (crop grid pixels) of the outer LEDs around the inner LEDs' geometry."""
MIN_INNER_DARK_FIELD = 12
"""Dark-field LEDs the inner pass needs before the outer ones are refined instead of searched."""


def search_geometry_known(model: StationModel, data, background, ranges=None, bright_field=None) -> dict:
    """LED geometry from a known reference: dark-field frames matched against modelled frames, and
    the bright-field frames' two-disk pattern (independent of the pupil phase, so robust to strong
    aberrations), fitted together (robustly) to the global geometry. ``bright_field``: the result
    of :func:`~metrology.solver.search.search_bright_field` for this model and data, when already
    computed.

    In two passes where the board is large (:data:`INNER_SEARCH_NA_FACTOR`): the LEDs near the axis
    over the whole misalignment range, the geometry fitted to them, then the outer LEDs within
    :data:`REFINE_RADIUS_PX` of its prediction, and the geometry fitted to all."""
    ranges = ranges or DEFAULT_RANGES
    with torch.no_grad():
        k_nom = model.illumination.spatial_frequencies().detach()
        radius = torch.linalg.vector_norm(k_nom, dim=-1)
        near_bf = radius < model.geometry.cutoff + 3 * model.geometry.df
        inner = (radius < INNER_SEARCH_NA_FACTOR * model.geometry.cutoff).cpu()
    signal = data - background  # once: each search reads it
    k_bf, w_bf = search_bright_field(model, signal) if bright_field is None else bright_field
    two_pass = int((inner & ~near_bf.cpu()).sum()) >= MIN_INNER_DARK_FIELD and not bool(inner.all())
    k, score = search_led_frequencies(model, signal, ranges=ranges, leds=inner if two_pass else None)
    if two_pass:
        fit_geometry(model, *_with_disks(k, score, near_bf, k_bf, w_bf))
        k_out, s_out = search_led_frequencies(model, signal, leds=~inner, radius_px=REFINE_RADIUS_PX)
        outer = (~inner).to(k.device)
        k = torch.where(outer[:, None], k_out, k)
        score = torch.where(outer, s_out, score)
    return fit_geometry(model, *_with_disks(k, score, near_bf, k_bf, w_bf))


def _with_disks(k, score, near_bf, k_bf, w_bf) -> tuple:
    """Per-LED estimates and weights for :func:`fit_geometry`: the dark-field matches (not those near
    the bright-field edge) and the bright-field disks (twice their weight), or every match where
    fewer than 6 remain."""
    weight = score.clamp(min=0) * (~near_bf).to(score.device).double()
    use_bf = (w_bf > 0).to(k.device)
    k = torch.where(use_bf[:, None], k_bf.to(k.device, k.dtype), k)
    weight = torch.where(use_bf, 2.0 * w_bf.to(weight.device, weight.dtype), weight)
    if (weight > 0).sum() < 6:
        weight = score.clamp(min=0)
    return k, weight


def start_two_geometries(model, data, mask, background, schedule, ranges, observe) -> dict:
    """Known/prior start from two LED geometries, each followed by the projections; the one whose
    projections end with the lower amplitude misfit is kept.

    1. The bright-field disks alone (LED shift and rotation; distance and tilt nominal), as in blind
       mode: independent of the pupil phase, so strong aberrations cannot bias it.
    2. The full search (dark-field frames matched through a clear pupil, plus the disks): it also
       finds distance and tilt, but a wave of aberration biases it (PtyLab case 2: 0.2 mm and
       0.2 deg off, projections end at 0.033 waves against 0.0035 from the disks alone).
    """
    free = basis_mask(model, schedule.parameters, False)
    bright_field = search_bright_field(model, data - background)  # both geometries start from it

    def start_from(search):
        geometry = search()
        summary = initialise_pose(model, data, mask, background)
        summary["geometry_search"] = geometry
        summary["projection"] = initialise_pupil(model, data, mask, background, schedule.projection_iterations,
                                                 False, free, observe)
        return summary

    kept, other, first = _lower_misfit(
        model, lambda: start_from(lambda: initialise_blind_geometry(model, data, background, bright_field)),
        lambda: start_from(lambda: search_geometry_known(model, data, background, ranges, bright_field)))
    kept.update(kept="bright-field geometry" if first else "full geometry search", other=other)
    return kept


def _lower_misfit(model, first, second) -> tuple:
    """Run the starts ``first()`` and ``second()`` from the same model state (each returns a summary
    with its projections' ``projection["error_end"]``) and leave the model where the lower one ended
    (``second`` on a tie). Returns ``(kept summary, other summary, whether first was kept)``."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    a = first()
    after_first = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    b = second()
    if a["projection"]["error_end"] < b["projection"]["error_end"]:
        model.load_state_dict(after_first)
        return a, b, True
    return b, a, False


BLIND_FIRST_NA_FACTOR = 2.0
"""Blind mode also tries a first pass on the LEDs inside this factor times the lens NA (bright field
and the first dark-field rings) before all: from a bright-field-only object, all LEDs at once end
the 15 x 15 / 128 px PtyLab case at 0.17 waves pupil error, staged at 0.003; on the 11 x 11 / 64 px
case the single pass fits better. The pass with the lower final misfit is kept."""

_STATE = ("pupil.zernike_waves", "sample.defocus_um", "sample.position_um", "sample.field_real", "sample.field_imag")


def initialise_pupil(model: StationModel, data, mask, background: float, iterations: int, blind: bool,
                     free=None, observe=None) -> dict:
    """The projections as the solver runs them: one pass over all LEDs with a known sample; in
    blind mode also a staged run (``iterations // 2`` on the low-angle LEDs, see
    :data:`BLIND_FIRST_NA_FACTOR`, then ``iterations`` over all), keeping whichever ends with the
    lower amplitude misfit. ``free``, ``observe``: see :func:`project`."""
    if not blind:
        return project(model, data, mask, background, iterations, False, free=free, observe=observe)
    with torch.no_grad():
        k = torch.linalg.vector_norm(model.illumination.spatial_frequencies(), dim=-1)
        sel = torch.nonzero(k < BLIND_FIRST_NA_FACTOR * model.pupil.na / model.geometry.wavelength_um).flatten()
        start = {p: model.parameter(p).detach().clone() for p in _STATE}
    if not 9 <= sel.numel() < k.numel():
        return project(model, data, mask, background, iterations, True, free=free, observe=observe)
    # the staged run first: where it is the better one (large fields, strong aberrations) the
    # solver holds a good lens estimate early; the result does not depend on the order
    first = project(model, data, mask, background, max(iterations // 2, 1), True, sel, free, observe)
    staged = project(model, data, mask, background, iterations, True, free=free, observe=observe)
    staged["low_angle_leds"] = int(sel.numel())
    staged["low_angle_error_end"] = first["error_end"]
    with torch.no_grad():
        after_staged = {p: model.parameter(p).detach().clone() for p in _STATE}
        for p, v in start.items():
            model.parameter(p).copy_(v)
    single = project(model, data, mask, background, iterations, True, free=free, observe=observe)
    if single["error_end"] < staged["error_end"]:
        single["kept"] = "single"
        single["staged_error_end"] = staged["error_end"]
        return single
    with torch.no_grad():
        for p, v in after_staged.items():
            model.parameter(p).copy_(v)
    staged["kept"] = "staged"
    return staged


# ----------------------------------------------------------------------------- the starts
def start_known(model: StationModel, data, mask, background, schedule, *, search_geometry: bool = True,
                ranges=None, observe=None, sample_given: bool = True) -> dict:
    """Start of the ``known`` and ``prior`` modes (see the module docstring); returns its summary."""
    if schedule.projection_iterations and search_geometry:
        return start_two_geometries(model, data, mask, background, schedule, ranges, observe)
    summary = {}
    if search_geometry:
        summary["geometry_search"] = search_geometry_known(model, data, background, ranges)
    summary.update(initialise_pose(model, data, mask, background))
    if schedule.projection_iterations:
        summary["projection"] = initialise_pupil(model, data, mask, background, schedule.projection_iterations,
                                                 False, basis_mask(model, schedule.parameters, False), observe)
    return summary


def start_blind(model: StationModel, data, mask, background, schedule, *, search_geometry: bool = True,
                ranges=None, observe=None, sample_given: bool = False) -> dict:
    """Start of the ``blind`` mode (see the module docstring); ``sample_given``: the model's sample
    is already a start (else :func:`initial_sample` sets it). ``ranges``: the misalignment the
    geometry scan covers where the bright-field disks are too few (:func:`start_blind_few_disks`)."""
    if not sample_given:
        initial_sample(model, data, background)
    summary = {}
    if search_geometry:
        summary["geometry_search"] = initialise_blind_geometry(model, data, background)
        if summary["geometry_search"]["bright_field_leds"] < MIN_BRIGHT_FIELD_LEDS and schedule.projection_iterations:
            return start_blind_few_disks(model, data, mask, background, schedule, ranges, observe, summary)
    initialise_intensity(model, data, background, mask, object_known=False)
    if schedule.projection_iterations:
        summary["projection"] = initialise_pupil(model, data, mask, background, schedule.projection_iterations,
                                                 True, basis_mask(model, schedule.parameters, True), observe)
    return summary


def start_blind_few_disks(model, data, mask, background, schedule, ranges, observe, summary) -> dict:
    """Blind start where the bright-field disks are too few to place the LED array
    (:data:`MIN_BRIGHT_FIELD_LEDS`; a board at a wide pitch has the centre LED alone in bright
    field): two geometries, each followed by the projections, and the one whose projections end
    with the lower amplitude misfit kept (as :func:`start_two_geometries` does with a known sample).

    1. The nominal geometry.
    2. The geometry of :func:`scan_geometry` (which LEDs light the pupil, and how much of it).

    Neither is sure: the fit's chi-square and the verdict judge the result, and a fit that does
    not explain the data names this start as the likely cause
    (:func:`metrology.solver.reconstruct.reconstruct`).
    """
    free = basis_mask(model, schedule.parameters, True)

    def projections():
        initialise_intensity(model, data, background, mask, object_known=False)
        return initialise_pupil(model, data, mask, background, schedule.projection_iterations, True, free, observe)

    def scanned():
        scan = scan_geometry(model, data, mask, background, ranges)
        return {"scan": scan, "projection": projections()}

    kept, other, scan_kept = _lower_misfit(model, scanned, lambda: {"projection": projections()})
    search = summary["geometry_search"]
    search["scan"] = (kept if scan_kept else other)["scan"]
    search["note"] = ("too few bright-field LEDs; scanned geometry kept (it fitted better than the nominal one)"
                      if scan_kept else "too few bright-field LEDs; nominal geometry kept (a scanned geometry fitted worse)")
    return summary | {"projection": kept["projection"], "other": other["projection"]}


START = {"known": start_known, "prior": start_known, "blind": start_blind}
"""The start of each reconstruction mode."""


def start(model: StationModel, data, mask, background: float, schedule, *, search_geometry: bool = True,
          ranges=None, observe=None, sample_given: bool | None = None) -> dict:
    """Bring ``model`` to the start of the fit for ``schedule.mode`` (:data:`START`).

    Parameters
    ----------
    model : StationModel
        Nominal model; its sample holds the reference map (known/prior) or a start (blind).
    data, mask : Tensor, shape (J, n, n)
        Frames (counts) and the fit mask.
    background : float
        Estimated camera background (counts).
    schedule : Schedule
        Its mode, projection iterations and free parameters.
    search_geometry : bool
        Search the LED geometry (off when the geometry is held at nominal).
    ranges : dict, optional
        Misalignment the per-LED search covers (default :data:`~metrology.solver.search.DEFAULT_RANGES`).
    observe : callable, optional
        ``observe(zernike_waves)`` during the projections (see :func:`~metrology.solver.projection.project`).
    sample_given : bool, optional
        The model's sample is a start already (blind mode; default: the mode's own default).

    Returns
    -------
    dict
        What the start did (geometry search residuals, projection misfits, ...), for the fit summary.
    """
    extra = {} if sample_given is None else {"sample_given": sample_given}
    return START[schedule.mode](model, data, mask, background, schedule, search_geometry=search_geometry,
                                ranges=ranges, observe=observe, **extra)
