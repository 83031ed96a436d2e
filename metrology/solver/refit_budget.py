"""The pupil radius's budget term in blind and prior modes: two warm-started re-fits, the sample free.

The frames see the lens NA, its magnification and the camera pixel through one number, the pupil
radius in frequency pixels ``NA N p / (lambda M)`` (the LED distance is fitted in these modes and
takes up their other effect, the scale of the illumination angles). Re-fitting one blind capture at
NA +u and at magnification -u gave the same lens within 0.2e-3 waves in every Noll 5-15 coefficient
(docs/uncertainty.md, section 6). Their errors therefore add along one direction, with the relative
standard uncertainty

    u_r = sqrt((u_NA / NA)^2 + (u_M / M)^2 + (u_p / p)^2).

With the sample free, the fitted optimum's response along it is neither the held-sample response
(:mod:`metrology.solver.budget`: 1.7x too large in defocus, astigmatism and spherical, near 0 in the
high azimuthal orders where the blind misses were) nor linear over one ``u_r``: the sample takes up
part of the change and moves its effect into other coefficients. This term measures that response
directly: the fit is re-run from its own optimum with the pupil radius at ``1 +/- u_r`` of the stated
one (:func:`metrology.solver.reconstruct.refit_from`, the sample, the system and the learned data
variances all following), and the two changes give the linear part ``(up - down) / 2`` and the GUM's
second-order part ``sqrt(2) (up + down) / 2`` (JCGM 100, 5.1.2 note), as the held finite budget does
(:func:`metrology.solver.budget.constants_covariance`). It replaces the held NA, magnification and
camera-pixel terms; the wavelength keeps its own (held) term. The cost is two warm re-fits.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from metrology.solver.budget import ConstantSensitivity, applicable_constants, sample_free
from metrology.solver.reconstruct import refit_from

RADIUS_KEYS = ("na", "magnification", "camera_pixel_um")
"""The ``[uncertainty]`` keys that act through the pupil radius alone: the term replaces theirs."""
RADIUS_KEY = "pupil_radius"
"""The budget source's name (its value and ``u`` in percent of the stated radius)."""
RADIUS_LABEL = "Pupil radius in frequency pixels (NA, magnification, camera pixel; by re-fits)"


@dataclass
class RadiusRefits:
    """What the two re-fits of :func:`pupil_radius_sensitivity` did (reported with the method)."""

    u_relative: float  # u_r (a fraction of the radius)
    converged: tuple  # (at 1 + u_r, at 1 - u_r)
    messages: tuple
    wall_time_s: float

    @property
    def u_percent(self) -> float:
        """``u_r`` in percent (the budget source's unit)."""
        return 100.0 * self.u_relative

    def summary(self) -> dict:
        """Plain values for the measurement's ``uncertainty_method`` record."""
        return {"u_relative": self.u_relative, "converged": list(self.converged),
                "messages": [m[-160:] for m in self.messages], "wall_time_s": round(self.wall_time_s, 1)}


def radius_applies(fit, uncertainties: dict | None) -> bool:
    """Whether the term applies: the sample was fitted, the NA is held, and some ``u`` is given."""
    return bool(sample_free(fit) and "na" in applicable_constants(fit)
                and any(float((uncertainties or {}).get(k, 0.0) or 0.0) > 0 for k in RADIUS_KEYS))


def edge_term_required(fit) -> bool:
    """Whether U must carry the pupil edge's model-form term whatever the station asks: the fit
    measured the NA (blind mode), whose estimate leans on the edge's form (without the term its
    0.1-0.3 % edge bias went uncovered off-model: docs/uncertainty.md, section 5)."""
    return "pupil.na" in fit.columns.paths


def edge_term_u(fit, uncertainties: dict | None, refit_edge: bool | None = None) -> float:
    """The standard uncertainty, per unit of the edge re-fit's difference, of the pupil edge's
    model-form term (0: no term, no re-fit): the station's ``[uncertainty] pupil_edge_model`` where
    set, else 1 where ``refit_edge`` (``None``: :func:`edge_term_required`)."""
    refit_edge = edge_term_required(fit) if refit_edge is None else refit_edge
    return float((uncertainties or {}).get(EDGE_KEY, 0.0) or 0.0) or (1.0 if refit_edge else 0.0)


def relative_radius_u(model, uncertainties: dict) -> float:
    """``u_r``: the relative standard uncertainty of the pupil radius from those of the NA, the
    magnification and the camera pixel (their units, ``[uncertainty]`` keys; missing: 0)."""
    g = model.geometry
    values = {"na": float(model.pupil.na.detach()), "magnification": g.magnification, "camera_pixel_um": g.camera_pixel_um}
    return math.sqrt(sum((float(uncertainties.get(k, 0.0) or 0.0) / values[k]) ** 2 for k in RADIUS_KEYS))


def _column_values(model, cols) -> np.ndarray:
    """The fitted elements named by ``cols`` (their raw units), float64."""
    return cols.values(model).double().cpu().numpy()


def pupil_radius_sensitivity(fit, uncertainties: dict) -> tuple:
    """The fitted system's response to the pupil radius, by two warm re-fits with the sample free.

    Parameters
    ----------
    fit : metrology.solver.FitResult
        A prior- or blind-mode fit (:func:`radius_applies`).
    uncertainties : dict
        The station's ``[uncertainty]`` table (``na`` and ``magnification`` dimensionless,
        ``camera_pixel_um`` in um).

    Returns
    -------
    sensitivity : ConstantSensitivity
        Key :data:`RADIUS_KEY`, value 100 (%, the stated radius), ``per_unit`` the change of every
        fitted column per percent of the radius, ``second_order`` the curvature term at ``u_r``.
    refits : RadiusRefits
    """
    t0 = time.perf_counter()
    base = copy.deepcopy(fit.model).double().cpu()
    u_r = relative_radius_u(base, uncertainties)
    before = _column_values(base, fit.columns)
    changes, converged, messages = [], [], []
    for sign in (1.0, -1.0):
        model = copy.deepcopy(base)
        with torch.no_grad():
            model.pupil.na.mul_(1.0 + sign * u_r)
        ok, message = refit_from(fit, model)
        changes.append(_column_values(model, fit.columns) - before)
        converged.append(bool(ok))
        messages.append(message)
    up, down = changes
    sensitivity = ConstantSensitivity(RADIUS_KEY, RADIUS_LABEL, "%", 100.0, (up - down) / (2.0 * 100.0 * u_r), RADIUS_KEY,
                                      second_order=math.sqrt(2.0) * 0.5 * (up + down))
    return sensitivity, RadiusRefits(u_r, tuple(converged), tuple(messages), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- the pupil edge's model form
EDGE_KEY = "pupil_edge_model"
"""The budget source's name and ``[uncertainty]`` key: the model form of the pupil edge (a Type B
component whose ``u`` is the station's value: how many standard uncertainties the difference counts
for; 1 with ``refit_edge`` alone)."""
EDGE_LABEL = "Pupil edge model (the fit re-run with the other edge discretisation)"
ALTERNATIVE_EDGE = {"source": "coverage", "coverage": "source", "ramp": "coverage"}
"""The edge the re-fit uses for each edge the fit used (:attr:`metrology.physics.pupil.Pupil.EDGES`)."""


@dataclass
class EdgeRefit:
    """What the re-fit of :func:`edge_model_sensitivity` did (reported with the method)."""

    edges: tuple  # (the fit's, the re-fit's)
    converged: bool
    message: str
    wall_time_s: float

    def summary(self) -> dict:
        """Plain values for the measurement's ``uncertainty_method`` record."""
        return {"edges": list(self.edges), "converged": self.converged, "message": self.message[-160:],
                "wall_time_s": round(self.wall_time_s, 1)}


def edge_model_sensitivity(fit) -> tuple:
    """The model-form term of the pupil edge: the fit re-run, warm, with the other edge discretisation.

    A real pupil edge is neither of the model's discretisations (the source-averaged edge of a finite
    LED, the pixel-coverage edge): it is a hard circle seen through the emitter and integrated over
    the camera pixel. Off-model (``metrology/render.py``: a hard edge on a finer lattice, a finite
    emitter) the LED geometry of a known fit is off by up to 6 times its fit-part ``u`` while the two
    discretisations' fits differ by about as much (docs/uncertainty.md, section 6). The difference of
    the two optima, ``delta`` for every fitted column, is taken as one standard uncertainty of a
    common cause (JCGM 100, 4.3: the difference between two plausible models): its contribution is
    ``delta`` times the station's ``pupil_edge_model`` (1: ``delta`` itself), fully correlated over
    the columns.

    Returns
    -------
    sensitivity : ConstantSensitivity
        Key :data:`EDGE_KEY`, value 1, ``per_unit`` the change of every fitted column (their units)
        per unit of ``u`` (the station's ``pupil_edge_model``).
    refit : EdgeRefit
    """
    t0 = time.perf_counter()
    base = copy.deepcopy(fit.model).double().cpu()
    before = _column_values(base, fit.columns)
    model = copy.deepcopy(base)
    model.pupil.edge = ALTERNATIVE_EDGE[base.pupil.edge]
    ok, message = refit_from(fit, model)
    delta = _column_values(model, fit.columns) - before
    sensitivity = ConstantSensitivity(EDGE_KEY, EDGE_LABEL, "", 1.0, delta, EDGE_KEY)
    return sensitivity, EdgeRefit((base.pupil.edge, model.pupil.edge), bool(ok), message, time.perf_counter() - t0)
