"""Data terms and regularisers of the reconstruction.

All data terms take modelled counts ``model`` and measured counts ``data`` of shape (J, n, n), a
0/1 ``mask`` of the same shape (saturated and hot pixels, blank frames are 0), the camera's
noise description (``gain_e_per_count``; ``read_noise_counts`` including quantisation) and the
current ``background`` (counts, an offset that carries no shot noise), and optionally per-pixel
``weight`` (J, n, n): the inverse of the learned variance inflation
(:mod:`metrology.solver.weights`). They return a scalar normalised per valid pixel so that a
perfect model with pure noise gives a value near 1.
"""

from __future__ import annotations

import torch


def noise_variance(model, gain_e_per_count, read_noise_counts, background=0.0):
    """Variance of a pixel's counts: shot noise ``(model - background) / gain`` plus read noise."""
    return (model - background).clamp(min=0.0) / gain_e_per_count + read_noise_counts**2


def _offset(gain_e_per_count, read_noise_counts):
    # shifted-Poisson offset: counts + sigma_read^2 * gain behaves like Poisson in electrons
    return read_noise_counts**2 * gain_e_per_count + 1.0 / gain_e_per_count


def _roots(model, data, background, c):
    # the floor keeps sqrt' finite where the clamp is active (its zero tangent must not meet an infinity)
    return torch.sqrt((model - background).clamp(min=0.0) + c), torch.sqrt((data - background + c).clamp(min=1e-12))


def _weighted(mask, weight):
    return mask if weight is None else mask * weight


def amplitude_loss(model, data, mask, gain_e_per_count, read_noise_counts, background=0.0, weight=None):
    """Amplitude (square-root) least squares: ``4 g (sqrt(M + c) - sqrt(D + c))^2``.

    Variance-stabilised for shot noise: each term has expectation ~1 for a perfect model.
    """
    c = _offset(gain_e_per_count, read_noise_counts)
    sm, sd = _roots(model, data, background, c)
    return 4 * gain_e_per_count * (_weighted(mask, weight) * (sm - sd) ** 2).sum() / mask.sum()


def poisson_loss(model, data, mask, gain_e_per_count, read_noise_counts, background=0.0, weight=None):
    """Poisson negative log-likelihood in electrons (shifted by the read noise), per pixel,
    with the saturated-model constant removed so a perfect model gives ~0.5."""
    c = _offset(gain_e_per_count, read_noise_counts)
    m = ((model - background).clamp(min=0.0) + c) * gain_e_per_count
    d = (data - background + c).clamp(min=1e-6) * gain_e_per_count
    nll = m - d * torch.log(m) - (d - d * torch.log(d))
    return 2 * (_weighted(mask, weight) * nll).sum() / mask.sum()


def huber_loss(model, data, mask, gain_e_per_count, read_noise_counts, background=0.0, weight=None, delta=3.0):
    """Robust loss: Huber on the variance-stabilised amplitude residual (``delta`` in sigmas)."""
    c = _offset(gain_e_per_count, read_noise_counts)
    sm, sd = _roots(model, data, background, c)
    r = 2 * gain_e_per_count**0.5 * (sm - sd)
    if weight is not None:
        r = r * torch.sqrt(weight)  # Huber on the residual in units of its learned standard deviation
    a = r.abs()
    h = torch.where(a <= delta, r**2, 2 * delta * a - delta**2)
    return (mask * h).sum() / mask.sum()


LOSSES = {"amplitude": amplitude_loss, "poisson": poisson_loss, "huber": huber_loss}


def total_variation(field: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Isotropic total variation of a complex or real (N, N) map (periodic), mean per pixel."""
    dx = torch.roll(field, -1, dims=-1) - field
    dy = torch.roll(field, -1, dims=-2) - field
    return torch.sqrt(dx.abs() ** 2 + dy.abs() ** 2 + eps).mean()


def chi_square(model, data, mask, gain_e_per_count, read_noise_counts, background=0.0, weight=None):
    """Sum of squared normalised residuals over valid pixels and per frame.

    Returns
    -------
    total : float
        Against the camera noise alone.
    per_frame : Tensor, shape (J,)
        RMS normalised residual of each frame (valid pixels only).
    weighted : float
        With the learned variance inflation (``weight = 1 / v``; equals ``total`` without it).
    """
    with torch.no_grad():
        var = noise_variance(model, gain_e_per_count, read_noise_counts, background)
        z2 = mask * (data - model) ** 2 / var
        per_frame = torch.sqrt(z2.sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp(min=1))
        weighted = z2.sum().item() if weight is None else (z2 * weight).sum().item()
        return z2.sum().item(), per_frame, weighted
