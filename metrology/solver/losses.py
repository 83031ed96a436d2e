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
    """``sqrt(M - b + c)`` and ``sqrt(D - b + c)``; below the dark level (``M < b``) the model's root
    continues along its tangent at ``M = b`` (:func:`model_root`)."""
    # the data's floor keeps sqrt' finite where a dark pixel reads below the offset
    return model_root(model - background, c), torch.sqrt((data - background + c).clamp(min=1e-12))


def model_root(signal, c):
    """``sqrt(s + c)`` for a signal ``s >= 0`` (counts above the dark level), continued below 0 by its
    tangent there, ``sqrt(c) + s / (2 sqrt(c))``: continuously differentiable, strictly increasing.

    A model can only fall below the dark level through a negative stray light (a frame's uniform term
    may go negative: it also absorbs an error of the held dark offset). A clamp at 0 left the loss
    flat there, and a fit that crossed it could not come back: an off-model trial (bench_offmodel,
    known, seed 14) ended with one dark-field frame's brightness at 0.14 instead of 1.03, its haze at
    -0.037, the model 10 counts under the data's dark level (chi2 1853 per pixel, not converged),
    where the true values give 5.7. With the tangent the residual keeps pointing back.
    """
    root_c = c**0.5
    return torch.sqrt(signal.clamp(min=0.0) + c) + signal.clamp(max=0.0) / (2 * root_c)


def model_root_slope(signal, root, c):
    """``d model_root / d s``: ``1 / (2 root)`` for ``s >= 0``, ``1 / (2 sqrt(c))`` below."""
    return 0.5 / torch.where(signal >= 0, root, root.new_tensor(float(c) ** 0.5))


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
    x = model - background  # below the dark level: c exp(x / c), C1 at 0 (see model_root)
    m = (x.clamp(min=0.0) + c * torch.exp(x.clamp(max=0.0) / c)) * gain_e_per_count
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
