"""Learned data uncertainty: the "uncertainty-aware" part of UA-FP.

The camera's noise model (shot + read noise, :mod:`metrology.solver.losses`) says how well a
perfect model should fit each pixel. A real station is never modelled perfectly: a frame whose LED
sits on the bright-/dark-field transition, a saturated or otherwise odd frame, the border of every
frame (light from outside the field of view reaches it) carry errors the noise model does not
know. Fitted with the noise weights alone, a few such frames drag the station geometry (one frame
can carry thousands of times the chi-square of the median frame).

Here each **region** ``R`` of the capture, a frame split into bands by distance from its edge
(:data:`BAND_EDGES_AIRY`, in units of the Airy scale ``lambda / (NA pixel)``), carries a variance
inflation ``v_R >= 1`` of the noise variance, estimated jointly with the model:

* likelihood: the whitened residual ``r_p`` (unit variance under the noise model) of a pixel in
  ``R`` is ``N(0, v_R)``;
* prior: ``v_R ~ InvGamma(alpha, alpha + 1)`` (mode 1: the noise model; :data:`PRIOR_ALPHA` acts like
  a few pseudo-pixels, so bands with few pixels stay stable), truncated at ``v_R >= 1``;
* the fit minimises the negative log posterior over the model parameters and ``v`` by alternation:
  weighted least squares with weights ``1 / v_R`` for the model, then the closed-form MAP
  ``v_R = max(1, (RSS_R + 2 beta) / (N_R + 2 alpha + 2))`` (EM-like; each step lowers the
  objective). The ``log v_R`` term of the likelihood is what stops ``v_R -> infinity``.

Down-weighted regions stop steering the fit, and because the Fisher information is ``J^T W J``
with ``W = 1 / v``, the uncertainty grows where the data are less trustworthy. ``v`` per frame is
reported (``s_j``, the information-equivalent scale of the frame) as a diagnostic the station
engineer can read on the report's LED map. The robust Huber loss stays available; it down-weights
single pixels, this down-weights whole regions (docs/solver.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metrology.solver.jacobian import whitened_residual

BAND_EDGES_AIRY = (1.0, 3.0, 6.0)
"""Band edges by distance from the frame edge, in Airy scales ``lambda / (NA pixel)`` (pixels):
bands ``[0, 1)``, ``[1, 3)``, ``[3, 6)`` and the interior ``>= 6``."""
PRIOR_ALPHA = 2.0
"""Shape of the inverse-gamma prior of each ``v_R`` (scale ``alpha + 1``: mode 1)."""


def band_map(frame_px: int, airy_px: float, edges=BAND_EDGES_AIRY) -> torch.Tensor:
    """Band index of each pixel by its distance from the nearest frame edge, shape (n, n) int64."""
    i = torch.arange(frame_px)
    d = torch.minimum(i, frame_px - 1 - i)
    dist = torch.minimum(d[:, None], d[None, :]).double()
    band = torch.zeros((frame_px, frame_px), dtype=torch.long)
    for e in edges:
        band = band + (dist >= e * airy_px).long()
    return band


@dataclass
class DataWeights:
    """Variance inflation ``v`` per frame and band (see the module docstring).

    Attributes
    ----------
    bands : Tensor (n, n) int64
        Band of each pixel (0 = outermost).
    variance : Tensor (J, n_bands) float64
        ``v_{j, b} >= 1``.
    pixels : Tensor (J, n_bands) float64
        Valid pixels of each region (the mask's count).
    """

    bands: torch.Tensor
    variance: torch.Tensor
    pixels: torch.Tensor

    @classmethod
    def start(cls, mask: torch.Tensor, airy_px: float) -> "DataWeights":
        """Unit inflation (the noise model) for a (J, n, n) mask."""
        n = mask.shape[-1]
        bands = band_map(n, airy_px).to(mask.device)
        nb = int(bands.max()) + 1
        onehot = torch.nn.functional.one_hot(bands, nb).to(torch.float64)  # (n, n, nb)
        pixels = torch.einsum("jxy,xyb->jb", (mask > 0).double(), onehot)
        return cls(bands, torch.ones_like(pixels), pixels)

    @property
    def n_bands(self) -> int:
        return self.variance.shape[1]

    def pixel_variance(self, dtype=None) -> torch.Tensor:
        """``v`` at every pixel, shape (J, n, n)."""
        v = self.variance[:, self.bands]  # (J, n, n)
        return v if dtype is None else v.to(dtype)

    def update(self, r2: torch.Tensor, mask: torch.Tensor) -> float:
        """MAP update from squared whitened residuals ``r2`` (J, n, n) on the valid pixels.

        Returns the largest relative change of any ``v`` (a convergence measure).
        """
        nb = self.n_bands
        onehot = torch.nn.functional.one_hot(self.bands, nb).to(torch.float64)
        rss = torch.einsum("jxy,xyb->jb", (r2 * (mask > 0)).double(), onehot)
        beta = PRIOR_ALPHA + 1.0
        new = ((rss + 2 * beta) / (self.pixels + 2 * PRIOR_ALPHA + 2)).clamp(min=1.0)
        new = torch.where(self.pixels > 0, new, torch.ones_like(new))
        change = float(((new - self.variance).abs() / self.variance).max()) if new.numel() else 0.0
        self.variance = new
        return change

    def frame_scale(self) -> np.ndarray:
        """Per-frame scale ``s_j`` (J,): the frame's information relative to the noise model is
        ``1 / s_j^2`` (``s_j^2`` is the pixel-weighted harmonic mean of its bands' ``v``); NaN for a
        frame with no pixel in the fit (blank or repeated: it has no scale, and the 1e150 it read
        before set the top of the report's colour scale)."""
        info = (self.pixels / self.variance).sum(dim=1)
        n = self.pixels.sum(dim=1)
        s = torch.sqrt(n.clamp(min=1.0) / info.clamp(min=1e-300))
        return torch.where(n > 0, s, torch.full_like(s, float("nan"))).cpu().numpy()

    def band_scale(self) -> np.ndarray:
        """``sqrt(v)`` per frame and band, shape (J, n_bands) (band 0 = frame border)."""
        return torch.sqrt(self.variance).cpu().numpy()

    def summary(self) -> dict:
        """Plain numbers for results: per-frame scales and how much of the data is down-weighted."""
        s = self.frame_scale()
        info = float((self.pixels / self.variance).sum() / self.pixels.sum().clamp(min=1.0))
        border = self.band_scale()[:, 0]
        return {
            "frame_scale": s.tolist(),
            "band_scale_median": np.median(self.band_scale(), axis=0).tolist(),
            "effective_data_fraction": info,
            "frames_scaled_above_2": int((s > 2.0).sum()),
            "border_scale_median": float(np.median(border)),
        }


@torch.no_grad()
def squared_residuals(model, data: torch.Tensor, mask: torch.Tensor, noise) -> torch.Tensor:
    """Squared whitened residuals of the model's current prediction on the valid pixels (J, n, n)."""
    r = whitened_residual(model(), data, noise, model.camera.background_counts) * mask
    return r * r


class Weighting:
    """The learned data variances as the objective sees them (updated between rounds)."""

    @classmethod
    def for_fit(cls, model, data, mask, noise, learn: bool = True) -> "Weighting":
        """Variances for a fit of ``data``, estimated at the model's current state (bands scaled by
        the Airy length ``lambda / (NA pixel)``); ``learn=False``: the noise model alone."""
        g = model.geometry
        weighting = cls(DataWeights.start(mask, g.wavelength_um / (g.na * g.pixel_um)) if learn else None, data.dtype)
        weighting.update(model, data, mask, noise)
        return weighting

    def __init__(self, weights: "DataWeights | None", dtype):
        self.weights = weights
        self.dtype = dtype
        self.pixel = None if weights is None else 1.0 / weights.pixel_variance(dtype)

    def update(self, model, data, mask, noise) -> float:
        """Re-estimate the variances at the model's current state; the largest relative change."""
        if self.weights is None:
            return 0.0
        change = self.weights.update(squared_residuals(model, data, mask, noise), mask)
        self.pixel = 1.0 / self.weights.pixel_variance(self.dtype)
        return change

    def residual_scale(self, mask):
        """``mask / sqrt(v)``: whitened residuals times this have the learned unit variance."""
        return mask if self.weights is None else mask * torch.sqrt(self.pixel)
