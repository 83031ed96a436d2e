"""Gaussian priors on fitted parameters (Type B knowledge the fit combines with the data).

A prior ``x ~ N(mean, sigma^2)`` adds ``((x - mean) / sigma)^2`` to the chi-square the fit
minimises; the Gauss-Newton normal equations gain ``1 / sigma^2`` on the diagonal and
``(x - mean) / sigma^2`` in ``J^T r``, so the Fisher information becomes the posterior precision.

Defaults (:func:`default_priors`): each LED's brightness relative to the station's emission law,
``N(1, 0.1^2)`` (LED intensity binning is typically +/-10-20 %); where a schedule frees the law's
exponent, ``N(p0, 3^2)`` around the station's nominal ``p0``. They matter where the data alone say
little: an LED whose unscattered light sits on the pupil edge (its brightness and the edge position
trade against each other), dark-field LEDs under an unknown object (blind mode). The exponent is not
fitted by default: a global brightness trend correlates with the LED distance and tilt, and on
simulated captures it slowed the fit's convergence without improving the lens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PriorSpec:
    """``N(mean, sigma^2)`` on every element of ``path`` (mean ``None``: the geometry's nominal)."""

    path: str
    sigma: float
    mean: float | None = None


BRIGHTNESS_SIGMA = 0.1
EMISSION_SIGMA = 3.0


def default_priors() -> tuple:
    return (PriorSpec("illumination.brightness", BRIGHTNESS_SIGMA, 1.0),
            PriorSpec("illumination.emission_exponent", EMISSION_SIGMA, None))


def _mean(model, spec: PriorSpec) -> float:
    if spec.mean is not None:
        return float(spec.mean)
    if spec.path == "illumination.emission_exponent":
        return float(model.geometry.emission_exponent)
    raise ValueError(f"no nominal value for the prior on {spec.path}")


def prior_chi2(model, priors, overrides: dict | None = None, free=None) -> torch.Tensor:
    """``sum ((x - mean) / sigma)^2`` over the priors (differentiable in ``overrides``)."""
    total = 0.0
    for spec in priors:
        if free is not None and spec.path not in free:
            continue
        x = (overrides or {}).get(spec.path, model.parameter(spec.path))
        total = total + (((x - _mean(model, spec)) / spec.sigma) ** 2).sum()
    return total


def add_to_normal_equations(jtj: torch.Tensor, jtr: torch.Tensor, model, priors, columns):
    """``J^T J`` and ``J^T r`` with the priors' rows added (for the free columns they cover)."""
    jtj = jtj.clone()
    jtr = jtr.clone()
    by_path = {p.path: p for p in priors}
    values = {}
    for i, (path, k) in enumerate(zip(columns.paths, columns.flat_index)):
        spec = by_path.get(path)
        if spec is None:
            continue
        if path not in values:
            values[path] = model.parameter(path).detach().reshape(-1).double().to(jtj.device)
        w = 1.0 / spec.sigma**2
        jtj[i, i] += w
        jtr[i] += w * (float(values[path][k]) - _mean(model, spec))
    return jtj, jtr

