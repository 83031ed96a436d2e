"""Measurement uncertainty of the fitted parameters and their identifiability.

Method (stated in every report through ``docs/uncertainty.md``):

* **Type A, noise and learned data uncertainty**: the Fisher information ``F = J^T W J`` of the
  whitened residuals at the solution (shot + read noise), with ``W = 1 / v`` the variance
  inflation learned per frame and border band (:mod:`metrology.solver.weights`): frames the model
  explains poorly carry less information. ``C_F = F^-1`` (Laplace approximation).
* **Type B, model mismatch**: (a) the sandwich ``C_S = F^-1 (J^T W S W J) F^-1`` with ``S`` the
  residuals' own spatial covariance, estimated per frame from their smoothed power spectrum
  (:func:`metrology.solver.assembly.spectral_meat`): a structured, spatially correlated misfit
  carries far less information than the same variance of white noise, and the sandwich says how
  much less at the frequencies each parameter is measured at; (b) ``C_F`` scaled by the reduced
  chi-square when it exceeds 1 (Birge ratio); (c) a linearised delete-one-group jackknife over
  interleaved LED groups: each group's frames are removed in turn and the Gauss-Newton step
  ``(F - F_g)^-1 J_g^T r_g`` gives the refit without them; LED-dependent systematic residuals make
  the groups disagree; (d) the same jackknife over 4 x 4 image regions (the same region deleted from
  every frame): field-dependent misfit (vignetting, the frame border) makes the regions disagree.
* The standard uncertainty of each parameter is the largest of (a)-(d); correlations are
  those of the sandwich. The GUM budget (:mod:`metrology.solver.budget`) adds the station constants
  that are not fitted. ``U = k u`` with ``k = 2``.
"""

from __future__ import annotations

import numpy as np
import torch

from metrology.measurement import (
    BudgetSource,
    Identifiability,
    Measurement,
    SolverReport,
    StationEstimate,
    UncertaintyParts,
)
from metrology.orderings import lens_only
from metrology.parameters import BY_PATH, PER_FRAME, TRACKED, element_label, element_name, element_names
from metrology.solver.budget import (
    CONSTANTS, applicable_constants, constant_sensitivities, constants_covariance, contribution, in_stated_waves,
)
from metrology.solver.jacobian import psd_inverse
from metrology.solver.refit_budget import (
    EDGE_KEY, RADIUS_KEY, RADIUS_KEYS, edge_model_sensitivity, edge_term_u, pupil_radius_sensitivity,
    radius_applies,
)
from metrology.solver.schedule import VIGNETTING_PATHS

STRONG_CORRELATION = 0.95
VIF_LIMIT = 1e4
"""A parameter is unidentifiable when its variance inflation ``C_ii F_ii`` exceeds this (more than
99.99 % of its information shared with other parameters) or its correlation with another exceeds
0.999."""


def jackknife_covariance(jtj: torch.Tensor, groups) -> torch.Tensor:
    """Linearised delete-one-group jackknife covariance from per-group normal equations."""
    steps = []
    for a_g, b_g in groups:
        reduced = jtj - a_g
        # parameters seen only by the removed frames (their LEDs' brightness) drop out
        keep = reduced.diagonal() > 1e-9 * jtj.diagonal()
        step = torch.zeros_like(b_g)
        step[keep] = psd_inverse(reduced[keep][:, keep]) @ b_g[keep]
        steps.append(step)
    d = torch.stack(steps)
    g = d.shape[0]
    dev = d - d.mean(dim=0, keepdim=True)
    return (g - 1) / g * dev.T @ dev


def covariance(fit) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Combined covariance of the system parameters (Type A and Type B) and the Fisher covariance.

    Returns
    -------
    cov : Tensor (P, P)
        ``D R D`` with ``R`` the Fisher correlation and ``D`` the per-parameter standard uncertainty.
    cov_fisher : Tensor (P, P)
    info : dict
        Birge ratio and jackknife summary.
    """
    cf = psd_inverse(fit.jtj)
    birge = max(1.0, fit.reduced_chi2)
    var = cf.diagonal() * birge
    info = {"birge_scale": birge, "jackknife_groups": 0, "sandwich": False}
    shape = cf
    if getattr(fit, "meat", None) is not None:
        cs = cf @ fit.meat.to(cf.dtype) @ cf
        cs = 0.5 * (cs + cs.T)
        ratio = cs.diagonal() / cf.diagonal().clamp(min=1e-300)
        info.update(sandwich=True, sandwich_ratio_median=float(ratio.median()), sandwich_ratio_max=float(ratio.max()))
        var = torch.maximum(var, cs.diagonal())
        shape = cs
    if fit.jackknife:
        cj = jackknife_covariance(fit.jtj, fit.jackknife)
        var = torch.maximum(var, cj.diagonal())
        info["jackknife_groups"] = len(fit.jackknife)
    if getattr(fit, "jackknife_regions", None):
        cr = jackknife_covariance(fit.jtj, fit.jackknife_regions)
        var = torch.maximum(var, cr.diagonal())
        info["jackknife_regions"] = len(fit.jackknife_regions)
    u = torch.sqrt(var.clamp(min=0))
    sd = torch.sqrt(shape.diagonal().clamp(min=1e-300))
    corr = (shape / sd[:, None] / sd[None, :]).clamp(-1.0, 1.0)
    return corr * u[:, None] * u[None, :], cf, info


LENS_SCALARS = ("pupil.na",)
"""The lens's scalar parameters a mode may fit (:attr:`Measurement.lens_parameters`)."""


def _fitted_estimates(model, paths, index: dict, total: np.ndarray) -> list:
    """:class:`StationEstimate` of every fitted element of ``paths`` (value, ``u`` from ``total``);
    elements not fitted in this mode are left out."""
    out = []
    for path in paths:
        values = np.ravel(model.parameter(path).detach().double().cpu().numpy())
        for name, v in zip(element_names(path), values):
            if name in index:
                out.append(StationEstimate(name, element_label(name), BY_PATH[path].unit, float(v),
                                           float(np.sqrt(max(total[index[name], index[name]], 0.0)))))
    return out


def identifiability(names, cf: torch.Tensor, jtj: torch.Tensor) -> Identifiability:
    """Correlation matrix, condition number and unidentifiable parameters (the per-frame nuisances,
    LED brightness and stray light, excluded)."""
    keep = [i for i, n in enumerate(names) if not n.startswith(PER_FRAME)]
    sub = cf[keep][:, keep]
    sd = torch.sqrt(sub.diagonal().clamp(min=1e-300))
    corr = torch.nan_to_num(sub / sd[:, None] / sd[None, :]).clamp(-1, 1)
    try:
        ev = torch.linalg.eigvalsh(corr)
        cond = min(float(ev.max() / ev.min().clamp(min=1e-300)), 1e300)
    except RuntimeError:  # numerically singular: as unidentifiable as it gets
        cond = 1e300
    kept = [names[i] for i in keep]
    pairs, bad = [], set()
    c = corr.cpu().numpy()
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            if abs(c[i, j]) >= STRONG_CORRELATION:
                pairs.append((kept[i], kept[j], float(c[i, j])))
                if abs(c[i, j]) > 0.999:
                    bad.update((kept[i], kept[j]))
    vif = (sub.diagonal() * jtj[keep][:, keep].diagonal()).cpu().numpy()
    bad.update(n for n, v in zip(kept, vif) if v > VIF_LIMIT)
    pairs.sort(key=lambda p: -abs(p[2]))
    return Identifiability(
        names=kept, correlation=c, condition_number=cond, strong_pairs=pairs, unidentifiable=sorted(bad)
    )


def _zernike_block(cov, index, k) -> np.ndarray:
    """The (K, K) block of a parameter covariance for Noll 1..K (zeros where not fitted)."""
    zi = [(j, index.get(element_name("pupil.zernike_waves", j))) for j in range(k)]
    zi = [(j, i) for j, i in zi if i is not None]
    out = np.zeros((k, k))
    for a, ia in zi:
        for b, ib in zi:
            out[a, b] = float(cov[ia, ib])
    return out


def _station_u(cov, index) -> dict:
    """Standard uncertainty of every fitted station element (by element name) from ``cov``."""
    return {name: float(np.sqrt(max(float(cov[i, i]), 0.0))) for name, i in index.items()
            if any(name == e for path in TRACKED for e in element_names(path))}


def _budget_sources(fit, index, k, constant_uncertainties, finite: bool = False, free_sample: bool = False,
                    refit_radius: bool = False, refit_edge: bool | None = None) -> tuple:
    """GUM sources of the station constants: :class:`BudgetSource` list, their covariance over the
    fitted parameters (see :mod:`metrology.solver.budget`) and what the re-fits did: a dict with
    ``pupil_radius_refits`` (:class:`~metrology.solver.refit_budget.RadiusRefits`) with
    ``refit_radius``, ``pupil_edge_refit`` (:class:`~metrology.solver.refit_budget.EdgeRefit`)
    with ``refit_edge`` (``None``: where :func:`edge_term_required`)."""
    p = len(fit.columns.names)
    uncertainties = dict(constant_uncertainties or {})
    edge_u = edge_term_u(fit, uncertainties, refit_edge)
    wanted = [n for n, u in uncertainties.items() if u and n in CONSTANTS]
    if not wanted and not edge_u:
        return [], np.zeros((p, p)), {}
    applicable = set(applicable_constants(fit))
    refits, refitted, done = None, [], {}  # refitted: the terms measured by re-fits
    if edge_u:
        s, edge = edge_model_sensitivity(fit)
        refitted.append(s)
        uncertainties[EDGE_KEY] = edge_u
        done["pupil_edge_refit"] = edge
    if refit_radius and radius_applies(fit, uncertainties):
        s, refits = pupil_radius_sensitivity(fit, uncertainties)
        refitted.append(s)
        uncertainties[RADIUS_KEY] = refits.u_percent
        done["pupil_radius_refits"] = refits
    # a re-fit that did not converge leaves the term's size open: the held terms it replaces stay beside it
    replaced = RADIUS_KEYS if refits is not None and all(refits.converged) else ()
    held = [n for n in wanted if n in applicable and n not in replaced]
    sens = (constant_sensitivities(fit, held, uncertainties if finite else None, free_sample) if held else []) + refitted
    sens = in_stated_waves(sens, fit.model, fit.columns)  # the wavelength also sets the unit of the coefficients
    sources = []
    for s in sens:
        u = float(uncertainties[s.key])
        vec = contribution(s, u)
        z = np.zeros(k)
        for j in range(k):
            i = index.get(element_name("pupil.zernike_waves", j))
            if i is not None:
                z[j] = vec[i]
        station = {name: float(vec[i]) for name, i in index.items()
                   if any(name == e for path in TRACKED for e in element_names(path))}
        sources.append(BudgetSource(s.name, s.label, s.unit, u, z, station))
    return sources, constants_covariance(sens, uncertainties), done


def measurement_from_fit(fit, constant_uncertainties: dict | None = None, finite_budget: bool = False,
                         free_sample_budget: bool = False, refit_radius: bool = False,
                         refit_edge: bool | None = None) -> Measurement:
    """Turn a :class:`~metrology.solver.reconstruct.FitResult` into a plain :class:`Measurement`.

    Parameters
    ----------
    fit : FitResult
    constant_uncertainties : dict, optional
        Standard uncertainty of each station constant the fit holds (keys of
        :data:`metrology.solver.budget.CONSTANTS`, in their units; the station file's
        ``[uncertainty]`` table): the GUM budget adds their effect, with its correlations.
    finite_budget : bool
        Evaluate each constant's effect at ``c +/- u`` (the optimum re-found there, with the GUM's
        second-order term) instead of by the implicit-function derivative at the optimum. Not the
        default: it doubled the demo's U(RMS) and its calibration off-model is not yet measured
        (docs/uncertainty.md, "Linearity"); ``bench_offmodel.py --finite-budget`` measures it.
    free_sample_budget : bool
        In prior and blind modes, take each constant's linear effect with the fitted sample following
        it (:func:`metrology.solver.budget.free_sample_response`) instead of held. Not the default
        yet: its calibration over the off-model trials is not measured (docs/uncertainty.md, section
        6); ``bench_offmodel.py --free-sample-budget`` measures it.
    refit_radius : bool
        Prior and blind modes: the NA, magnification and camera pixel as one term, the pupil radius,
        by two warm re-fits at +/- its u with the sample free (:mod:`metrology.solver.refit_budget`).
        If either re-fit does not converge, the held NA, magnification and pixel terms stay beside it.
    refit_edge : bool, optional
        The pupil edge's model form: the fit re-run, warm, with the other edge discretisation, the
        difference as one standard uncertainty (:mod:`metrology.solver.refit_budget`). ``None``: where
        the fit measured the NA (``edge_term_required``, blind mode); ``True``: always (one warm
        re-fit); ``False``: never, for studies. ``[uncertainty] pupil_edge_model = 1`` in
        ``constant_uncertainties`` turns it on whatever this says (the number scales the difference).
    """
    model = fit.model
    g = model.geometry
    cov, cf, info = covariance(fit)
    index = {n: i for i, n in enumerate(fit.columns.names)}
    k = g.zernike_terms
    z = model.pupil.zernike_waves.detach().double().cpu().numpy()
    budget, cov_const, refits = _budget_sources(fit, index, k, constant_uncertainties, finite_budget,
                                                free_sample_budget, refit_radius, refit_edge)
    total = cov.double().cpu().numpy() + cov_const
    station = _fitted_estimates(model, TRACKED, index, total)  # the elements fitted in this mode
    solver = SolverReport(
        mode=fit.schedule.mode,
        loss_name=fit.schedule.loss,
        iterations=fit.iterations,
        converged=fit.converged,
        final_loss=float(fit.history[-1]) if fit.history else float("nan"),
        history=list(map(float, fit.history)),
        reduced_chi2=float(fit.reduced_chi2),
        frame_residuals=fit.frame_residuals,
        message=fit.message,
        wall_time_s=fit.wall_time_s,
        at_bounds=list(fit.at_bounds),
        reduced_chi2_noise=float(fit.reduced_chi2_noise),
        data_uncertainty={} if fit.weights is None else fit.weights.summary(),
    )
    ident = identifiability(fit.columns.names, cf, fit.jtj)
    parts = UncertaintyParts(
        noise=lens_only(z, _zernike_block(cf, index, k))[1], fit=lens_only(z, _zernike_block(cov, index, k))[1],
        station_noise=_station_u(cf, index), station_fit=_station_u(cov, index))
    m = Measurement(
        wavelength_nm=g.wavelength_nm,
        na=float(model.pupil.na.detach()),
        tile_center_mm=tuple(g.tile_center_mm),
        zernike_waves=z,
        zernike_cov=lens_only(z, _zernike_block(total, index, k))[1],
        station=station,
        solver=solver,
        quality=fit.quality,
        identifiability=ident,
        budget=budget,
        parts=parts,
        vignetting=_fitted_estimates(model, VIGNETTING_PATHS, index, total),
        lens_parameters=_fitted_estimates(model, LENS_SCALARS, index, total),
    )
    m.arrays.update(_fit_records(fit, info, refits))
    return m


def _fit_records(fit, info: dict, refits: dict) -> dict:
    """What the budget and the verdict read besides the estimates: how U was evaluated
    (``uncertainty_method``, with the re-fits' summaries), the side of the sample grid (``sample_px``:
    the element names of its values) and each frame's light and LED (``frame_light``,
    :func:`frame_light`)."""
    return {"uncertainty_method": {**info, **{key: r.summary() for key, r in refits.items()}},
            "sample_px": int(fit.model.geometry.object_px), "frame_light": frame_light(fit.model)}


def frame_light(model) -> dict:
    """Each frame's LED and fitted light (the verdict's checks of a frame whose light went into its
    haze, :func:`metrology.analysis.verdict.traded_frame_findings`, and of a frame the model explains
    far worse than the rest, :func:`metrology.analysis.verdict.misfit_frame_findings`).

    Returns
    -------
    dict
        ``leds`` (J lists (row, col)), ``brightness`` (J,), ``stray_light`` (J, clear-pupil
        intensity) and ``illumination_na`` (J,: ``|k_j| lambda``), plain lists.
    """
    g = model.geometry
    with torch.no_grad():
        illumination_na = model.illumination.illumination_na().double().cpu()
        brightness = model.illumination.brightness.detach().double().cpu()
        stray = model.illumination.stray_light.detach().double().cpu()
    return {"leds": [[int(r), int(c)] for r, c in g.leds], "brightness": brightness.tolist(),
            "stray_light": stray.tolist(), "illumination_na": illumination_na.tolist()}
