"""Pupil of the lens under test: Zernike phase, apodisation, differentiable edge, defocus."""

from __future__ import annotations

import math

import torch
from torch import nn

from metrology.physics.geometry import StationGeometry
from metrology.physics.zernike import monomial_matrix, shifted_polynomial_grid


def soft_disk(radius_px: torch.Tensor, r_px: torch.Tensor) -> torch.Tensor:
    """Anti-aliased disk: 1 inside, 0 outside, a linear ramp one pixel wide at the edge."""
    return (radius_px - r_px + 0.5).clamp(0.0, 1.0)


def disk_coverage(radius_px: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """Area fraction of each unit pixel (centred at ``(ux, uy)``, pixels) covered by the disk.

    The edge is treated as a straight line through the pixel with the local normal
    ``(ux, uy) / r``; the covered area of a unit square below a line at signed distance
    ``t = radius - r`` from its centre is piecewise quadratic in ``t`` (exact for a straight edge,
    continuously differentiable). This is the pupil integrated over each frequency cell, the right
    discretisation for a continuous object spectrum, and it moves smoothly with the radius and
    the sub-pixel shift, so the edge carries gradients.
    """
    r = torch.sqrt(ux**2 + uy**2 + 1e-12)
    a0 = ux.abs() / r
    b0 = uy.abs() / r
    a = torch.maximum(a0, b0).clamp(min=0.5**0.5)  # >= 1/sqrt(2) for any direction; guards r = 0
    b = torch.minimum(a0, b0).clamp(min=1e-4)
    s = (radius_px - r) + 0.5 * (a + b)  # distance of the edge from the outermost corner
    low = s**2 / (2 * a * b)
    mid = (s - 0.5 * b) / a
    high = 1 - (a + b - s) ** 2 / (2 * a * b)
    cov = torch.where(s <= b, low, torch.where(s <= a, mid, high))
    return torch.where(s <= 0, torch.zeros_like(s), torch.where(s >= a + b, torch.ones_like(s), cov))


class Pupil(nn.Module):
    """Lens pupil ``P(f) = A(f) exp(i 2 pi W(f))`` evaluated on a box of the frequency grid.

    Parameters (paths under ``pupil.``)
    ---------------------------------
    zernike_waves : (K,)
        Noll 1..K phase coefficients (waves). Noll 1-4 are alignment terms and stay fixed at 0
        in the default schedule (sample position and defocus carry them).
    log_amplitude : (K,)
        Noll coefficients of ``ln A`` (apodisation); zero = uniform amplitude.
    na : ()
        Numerical aperture (the edge radius); fixed by default.

    Attributes
    ----------
    edge : {"coverage", "ramp"}
        Discretisation of the pupil edge: the disk's area fraction over each frequency cell
        (default, :func:`disk_coverage`) or a one-pixel linear ramp (:func:`soft_disk`).
    """

    def __init__(self, geometry: StationGeometry, dtype=torch.float32, edge: str = "coverage"):
        super().__init__()
        if edge not in ("coverage", "ramp"):
            raise ValueError(f"unknown pupil edge {edge!r}")
        self.edge = edge
        self.geometry = geometry
        k = geometry.zernike_terms
        self.zernike_waves = nn.Parameter(torch.zeros(k, dtype=dtype))
        self.log_amplitude = nn.Parameter(torch.zeros(k, dtype=dtype))
        self.na = nn.Parameter(torch.tensor(geometry.na, dtype=dtype))

    def box_coordinates(self) -> torch.Tensor:
        """Box grid ``u`` (pixels from the centre), shape (B,), B = 2 * half + 1."""
        h = self.geometry.pupil_box_half
        return torch.arange(-h, h + 1, dtype=self.na.dtype, device=self.na.device)

    def phase_waves(self, shift_px: torch.Tensor, coeffs: torch.Tensor | None = None) -> torch.Tensor:
        """``W(g - shift)`` on the box, shape (J, B, B), waves.

        Parameters
        ----------
        shift_px : Tensor, shape (J, 2)
            Sub-pixel shifts ``(sx, sy)`` of the pupil in grid pixels.
        coeffs : Tensor, shape (K,), optional
            Zernike coefficients; defaults to ``zernike_waves``.
        """
        c = self.zernike_waves if coeffs is None else coeffs
        radius = self.na / self.geometry.wavelength_um / self.geometry.df
        mono = torch.as_tensor(monomial_matrix(c.shape[0]), dtype=c.dtype, device=c.device)
        d = torch.tensordot(c, mono, dims=1)
        u = self.box_coordinates() / radius
        return shifted_polynomial_grid(d, shift_px[:, 0] / radius, shift_px[:, 1] / radius, u)

    def forward(self, shift_px: torch.Tensor, defocus_um: torch.Tensor) -> torch.Tensor:
        """Complex pupil times defocus on the box, shifted by ``shift_px``.

        Parameters
        ----------
        shift_px : Tensor, shape (J, 2)
            Pupil centre offsets in grid pixels (the sub-pixel remainders of ``k_j``).
        defocus_um : Tensor, shape ()
            Sample defocus (um, see :mod:`metrology.conventions`).

        Returns
        -------
        Tensor, shape (J, B, B), complex
        """
        g = self.geometry
        u = self.box_coordinates()
        fx = (u[None, None, :] - shift_px[:, 0, None, None]) * g.df
        fy = (u[None, :, None] - shift_px[:, 1, None, None]) * g.df
        f2 = fx**2 + fy**2
        radius_px = self.na / g.wavelength_um / g.df
        if self.edge == "coverage":
            edge = disk_coverage(radius_px, fx / g.df, fy / g.df)
        else:
            edge = soft_disk(radius_px, torch.sqrt(f2 + 1e-30) / g.df)
        phase = 2 * math.pi * self.phase_waves(shift_px)
        inv_lambda = 1.0 / g.wavelength_um
        kz_minus_k = -f2 / (torch.sqrt((inv_lambda**2 - f2).clamp(min=1e-12)) + inv_lambda)
        phase = phase + 2 * math.pi * defocus_um * kz_minus_k
        log_amp = self.phase_waves(shift_px, self.log_amplitude)
        amplitude = edge * torch.exp(log_amp)
        return torch.polar(amplitude, phase)
