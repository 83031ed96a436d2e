"""Pupil of the lens under test: Zernike phase, apodisation, differentiable edge, defocus."""

from __future__ import annotations

import math

import torch
from torch import nn

from metrology.physics.geometry import StationGeometry
from metrology.physics.zernike import monomial_matrix, shifted_polynomial_grid


def soft_disk(radius_px: torch.Tensor, r_px: torch.Tensor) -> torch.Tensor:
    """Anti-aliased disk: 1 inside, 0 outside, a linear ramp one pixel wide at the edge.

    The area of the ramp equals that of the hard disk to first order, and the value moves
    continuously with ``radius_px`` and the coordinates, so the edge carries gradients.
    """
    return (radius_px - r_px + 0.5).clamp(0.0, 1.0)


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
    """

    def __init__(self, geometry: StationGeometry, dtype=torch.float32):
        super().__init__()
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
        edge = soft_disk(radius_px, torch.sqrt(f2 + 1e-30) / g.df)
        phase = 2 * math.pi * self.phase_waves(shift_px)
        inv_lambda = 1.0 / g.wavelength_um
        kz_minus_k = -f2 / (torch.sqrt((inv_lambda**2 - f2).clamp(min=1e-12)) + inv_lambda)
        phase = phase + 2 * math.pi * defocus_um * kz_minus_k
        log_amp = self.phase_waves(shift_px, self.log_amplitude)
        amplitude = edge * torch.exp(log_amp)
        return torch.polar(amplitude, phase)
