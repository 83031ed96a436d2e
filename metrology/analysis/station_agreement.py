"""One station, many tiles: the station estimates of a full-field capture combined, and their agreement.

Every tile of a full-field capture is lit by the same LED array and imaged by the same lens, so
each tile's fit estimates the same station (LED-array shift, rotation, distance, tilt). The tiles'
estimates of one element differ by

* the fit's own uncertainty ``u_fit`` (noise and model mismatch), independent between tiles, and
* the station constants held at their stated values (wavelength, NA, magnification, pixel, LED
  pitch, ...), whose errors act on every tile at once, each tile with its own sensitivity.

Their covariance across the ``n`` tiles is therefore

    V = diag(u_fit^2) + C C^T,    C[i, c] = (d estimate_i / d constant_c) u(constant_c)

(``C`` holds the signed contributions of the GUM budget,
:attr:`metrology.measurement.BudgetSource.station`). The station's value is the mean weighted by
the fit parts alone, ``m = w^T y`` with ``w ~ 1 / u_fit^2``, and ``u(m)^2 = w^T V w``: the
constants' part does not average away (it is common to the tiles). The weights leave the constants
out on purpose: the generalised least-squares mean ``1^T V^-1 y / 1^T V^-1 1`` would lean on the
tiles' *differences* in sensitivity to cancel a constant's error, trading it for fit noise and for
the linearised sensitivities' own error (on the full-field fixture with exact constants it put the
LED rotation 0.0091 deg off against 0.0066 for the central tile alone; these weights: see
docs/full-field.md). The tiles' agreement is tested by the generalised least-squares fit
(:func:`metrology.analysis.field.gls`),
``chi2 = min_m (y - m)^T V^-1 (y - m)`` on ``n - 1`` degrees of freedom (independent of the mean
reported), and ``u(m)`` is widened by the Birge ratio ``sqrt(chi2 / (n - 1))`` when it exceeds 1.

**Why it matters.** A tile whose model misses something that changes across the field (above all
an aperture that cuts the off-axis pupil but is not declared in the station's ``[field]
vignetting``) bends that tile's station estimates to absorb it, while its own fit still reads
reduced chi-square ~1: measured on the full-field fixture (3 x 3 tiles, literal simulator, a
second aperture at (1.2, 0.5) pupil radii, station without it), the LED shift's Birge ratio over
the tiles was 17 and 22 (x, y), against at most 1.2 for every element on the same capture without
the aperture. :data:`DISAGREEMENT_RATIO` turns that into a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metrology.analysis.field import gls

DISAGREEMENT_RATIO = 8.0
"""Birge ratio ``sqrt(chi2 / (n - 1))`` of one station element over the tiles above which the tiles
are said to disagree (their estimates scatter 8x beyond their uncertainty). Off-model the fit part
of U is too small for the station geometry (the tiles then scatter beyond it without anything
being wrong): nine rendered captures (``metrology/render.py``: spherical LED waves, hard pupil edge,
non-periodic field; 3 x 3 crops of 32 px fitted in known mode at their own field points) gave Birge
ratios 1.2-4.5 (median 2.1) over their 54 station elements; an unmodelled second aperture on the
full-field fixture gave 17-22 (docs/full-field.md)."""


@dataclass
class StationAgreement:
    """One station element combined over the tiles.

    ``value``, ``u`` (its unit; ``u`` Birge-widened), ``chi2`` of the agreement on ``dof = tiles - 1``
    degrees of freedom, ``birge_ratio`` ``sqrt(chi2 / dof)`` (1 with one tile), ``tiles`` used,
    ``worst_tile`` (name) and ``worst_sigma`` (its residual over the residual's own standard
    deviation, signed; 0 with one tile)."""

    name: str
    value: float
    u: float
    chi2: float
    dof: int
    birge_ratio: float
    tiles: int
    worst_tile: str
    worst_sigma: float

    @property
    def disagrees(self) -> bool:
        """The tiles scatter beyond :data:`DISAGREEMENT_RATIO` times their uncertainty."""
        return self.dof > 0 and self.birge_ratio > DISAGREEMENT_RATIO


def combine_tiles(name: str, values, u_fit, contributions, tile_names) -> StationAgreement:
    """One station element over the tiles: its mean, u and the tiles' agreement (module docstring).

    Parameters
    ----------
    name : str
        The element's parameter name (e.g. ``illumination.shift_mm[0]``).
    values, u_fit : array_like, shape (n,)
        Each tile's estimate and its fit-part standard uncertainty (the element's unit; > 0).
    contributions : array_like, shape (n, m)
        Each station constant's signed contribution ``sensitivity x u`` to each tile's estimate
        (``m = 0``: no budget).
    tile_names : sequence of str, length n

    Returns
    -------
    StationAgreement
    """
    y = np.asarray(values, dtype=float)
    n = y.size
    c = np.asarray(contributions, dtype=float).reshape(n, -1)
    u_fit = np.asarray(u_fit, dtype=float)
    v = np.diag(np.square(u_fit)) + c @ c.T
    w = 1.0 / np.square(u_fit)
    w = w / w.sum()
    mean = float(w @ y)
    variance = float(w @ v @ w)
    fit = gls(np.ones((n, 1)), y, v, [name])  # the agreement: one value fitted to the tiles
    chi2, dof = max(fit.chi2, 0.0), fit.dof
    birge = math.sqrt(chi2 / dof) if dof > 0 else 1.0
    sigma = np.zeros(n)
    if dof > 0:  # each residual over its own standard deviation: Cov(r) = V - var(fitted value)
        sigma = fit.residuals / np.sqrt(np.clip(np.diag(v) - fit.cov[0, 0], 1e-300, None))
    worst = int(np.argmax(np.abs(sigma)))
    return StationAgreement(name=name, value=mean, u=max(1.0, birge) * math.sqrt(max(variance, 0.0)), chi2=chi2,
                            dof=dof, birge_ratio=birge, tiles=n, worst_tile=str(tile_names[worst]),
                            worst_sigma=float(sigma[worst]))


def disagreement_finding(agreements, labels=None) -> str | None:
    """One sentence naming the station elements the tiles disagree on (worst first, at most two),
    or None where they agree. ``agreements``: :class:`StationAgreement` values; ``labels``: readable
    names by parameter name (the parameter name where missing)."""
    off = sorted((a for a in agreements if a.disagrees), key=lambda a: -a.birge_ratio)
    if not off:
        return None
    labels = labels or {}
    parts = [f"{labels.get(a.name, a.name)}: scatter {a.birge_ratio:.1f}x its uncertainty over {a.tiles} tiles, "
             f"tile {a.worst_tile} furthest at {a.worst_sigma:+.1f} sigma" for a in off[:2]]
    more = f" and {len(off) - 2} more" if len(off) > 2 else ""
    return (f"the tiles disagree on the one station they share ({'; '.join(parts)}{more}): the model misses "
            f"something that changes across the field, such as an aperture not declared in [field] vignetting")
