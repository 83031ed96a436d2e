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


SOURCE_FLOOR_PX = 0.1
"""Smallest source width (frequency pixels) of the source-smeared edge: keeps the edge
differentiable for a point LED (the width of a 0.01 mm emitter on the fixture stations)."""


def source_edge(radius_px: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor, side_px: torch.Tensor) -> torch.Tensor:
    """Fraction of a square source of side ``side_px`` (frequency pixels), centred on each point
    ``(ux, uy)`` (pixels from the pupil centre), that falls inside the hard disk of radius
    ``radius_px``: the hard pupil edge seen by a plane-wave component through a finite LED.

    Each point of an LED emitter illuminates the sample with its own plane wave, so every object
    frequency reaches the pupil at a spread of positions of the emitter's shape and angular size.
    The disk is hard (a real stop); averaging the transmission over the source gives this
    profile, :func:`disk_coverage` with the pixel replaced by the source (exact for a straight edge
    across the square). ``side_px`` broadcasts against ``ux`` (e.g. shape (J, 1, 1)).
    """
    s = side_px.clamp(min=SOURCE_FLOOR_PX)
    return disk_coverage(radius_px / s, ux / s, uy / s)


def kz_minus_k(f2: torch.Tensor, wavelength_um: float) -> torch.Tensor:
    """``k_z - k = sqrt(1/lambda^2 - f^2) - 1/lambda`` (cycles/um) at squared spatial frequency
    ``f2``, in the form that keeps its digits near the axis (evanescent frequencies clamped)."""
    inv_lambda = 1.0 / wavelength_um
    return -f2 / (torch.sqrt((inv_lambda**2 - f2).clamp(min=1e-12)) + inv_lambda)


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
    vignetting_radius : (), vignetting_center : (2,)
        Two-circle vignetting (``geometry.vignetting`` set): a second aperture of radius
        ``vignetting_radius`` pupil radii centred at ``vignetting_center`` (pupil radii, pupil
        frame) clips the stop; the pupil transmits inside both (off-axis field points see the
        stop intersected with the shifted image of another aperture).

    Attributes
    ----------
    edge : {"source", "coverage", "ramp"}
        The pupil edge: hard, seen through the finite LED (default, :func:`source_edge`: the
        fraction of the emitter's image inside the stop, per frequency sample; the model adds the
        incoherent part of the average, see :meth:`metrology.physics.StationModel.intensity`); or
        the disk's area fraction over each frequency cell (:func:`disk_coverage`); or a one-pixel
        linear ramp (:func:`soft_disk`). The last two are kept for comparison.
    """

    EDGES = ("source", "coverage", "ramp")

    def __init__(self, geometry: StationGeometry, dtype=torch.float32, edge: str = "source"):
        super().__init__()
        if edge not in self.EDGES:
            raise ValueError(f"unknown pupil edge {edge!r}")
        self.edge = edge
        self.geometry = geometry
        k = geometry.zernike_terms
        self.zernike_waves = nn.Parameter(torch.zeros(k, dtype=dtype))
        self.log_amplitude = nn.Parameter(torch.zeros(k, dtype=dtype))
        self.na = nn.Parameter(torch.tensor(geometry.na, dtype=dtype))
        vig = geometry.vignetting or (0.0, 0.0, 0.0)
        self.vignetting_radius = nn.Parameter(torch.tensor(float(vig[0]), dtype=dtype))
        self.vignetting_center = nn.Parameter(torch.tensor([float(vig[1]), float(vig[2])], dtype=dtype))

    def box_coordinates(self) -> torch.Tensor:
        """Box grid ``u`` (pixels from the centre), shape (B,), B = 2 * half + 1."""
        h = self.geometry.pupil_box_half
        return torch.arange(-h, h + 1, dtype=self.na.dtype, device=self.na.device)

    def box_frequencies(self, shift_px: torch.Tensor) -> tuple:
        """Spatial frequencies ``(fx, fy)`` (cycles/um) of the box cells relative to the pupil centre
        shifted by ``shift_px`` (J, 2) grid pixels, each shape (J, B, B)."""
        df = self.geometry.df
        u = self.box_coordinates()
        fx = (u[None, None, :] - shift_px[:, 0, None, None]) * df
        fy = (u[None, :, None] - shift_px[:, 1, None, None]) * df
        return fx, fy

    def defocus_phase(self, shift_px: torch.Tensor, wavelength_scale: float = 1.0) -> torch.Tensor:
        """The defocus propagator's phase per um of defocus, ``2 pi (k_z - k)``, on the box shifted by
        ``shift_px``, shape (J, B, B), rad/um (what :meth:`parts` multiplies by ``defocus_um``)."""
        fx, fy = self.box_frequencies(shift_px)
        return 2 * math.pi * kz_minus_k(fx**2 + fy**2, self.geometry.wavelength_um * wavelength_scale)

    def phase_waves(self, shift_px: torch.Tensor, coeffs: torch.Tensor | None = None,
                    wavelength_scale: float = 1.0) -> torch.Tensor:
        """``W(g - shift)`` on the box, shape (J, B, B), waves.

        Parameters
        ----------
        shift_px : Tensor, shape (J, 2)
            Sub-pixel shifts ``(sx, sy)`` of the pupil in grid pixels.
        coeffs : Tensor, shape (K,), optional
            Zernike coefficients; defaults to ``zernike_waves``.
        wavelength_scale : float
            ``lambda / lambda_0``: the Zernike radius ``NA / lambda`` in pixels scales with it.
        """
        c = self.zernike_waves if coeffs is None else coeffs
        radius = self.na / (self.geometry.wavelength_um * wavelength_scale) / self.geometry.df
        mono = torch.as_tensor(monomial_matrix(c.shape[0]), dtype=c.dtype, device=c.device)
        d = torch.tensordot(c, mono, dims=1)
        u = self.box_coordinates() / radius
        return shifted_polynomial_grid(d, shift_px[:, 0] / radius, shift_px[:, 1] / radius, u)

    def parts(self, shift_px: torch.Tensor, defocus_um: torch.Tensor, source_px: torch.Tensor | None = None,
              edge: str | None = None, wavelength_scale: float = 1.0):
        """The pupil's edge transmission and its smooth part, on the box shifted by ``shift_px``.

        Parameters
        ----------
        shift_px : Tensor, shape (J, 2)
            Pupil centre offsets in grid pixels (the sub-pixel remainders of ``k_j``).
        defocus_um : Tensor, shape ()
            Sample defocus (um, see :mod:`metrology.conventions`).
        source_px : Tensor, shape (J,), optional
            Side of each LED's emitter image in frequency pixels (``edge = "source"``; default
            the floor :data:`SOURCE_FLOOR_PX`).
        edge : str, optional
            Edge discretisation for this call (default :attr:`edge`).
        wavelength_scale : float
            ``lambda / lambda_0`` for one wavelength of the LED spectrum: the cut-off ``NA /
            lambda``, the aberration in waves of the same optical path difference (``W / s``) and
            the defocus propagator follow it.

        Returns
        -------
        edge : Tensor, shape (J, B, B), real in [0, 1]
        body : Tensor, shape (J, B, B), complex
            ``A exp(i 2 pi (W + defocus))``; the pupil is ``edge * body``.
        """
        g = self.geometry
        fx, fy = self.box_frequencies(shift_px)
        f2 = fx**2 + fy**2
        wavelength_um = g.wavelength_um * wavelength_scale
        radius_px = self.na / wavelength_um / g.df
        kind = self.edge if edge is None else edge
        if kind == "source":
            if source_px is None:
                source_px = torch.full((shift_px.shape[0],), SOURCE_FLOOR_PX, dtype=fx.dtype, device=fx.device)
            transmission = source_edge(radius_px, fx / g.df, fy / g.df, source_px[:, None, None])
        elif kind == "coverage":
            transmission = disk_coverage(radius_px, fx / g.df, fy / g.df)
        else:
            transmission = soft_disk(radius_px, torch.sqrt(f2 + 1e-30) / g.df)
        if g.vignetting is not None:
            # a second aperture of the lens (off-axis field point): the pupil is inside both
            rv = self.vignetting_radius * radius_px
            cx = self.vignetting_center[0] * radius_px
            cy = self.vignetting_center[1] * radius_px
            side = source_px[:, None, None] if (kind == "source" and source_px is not None) else torch.ones_like(fx[:1])
            transmission = transmission * source_edge(rv, fx / g.df - cx, fy / g.df - cy, side)
        phase = 2 * math.pi * self.phase_waves(shift_px, wavelength_scale=wavelength_scale) / wavelength_scale
        phase = phase + 2 * math.pi * defocus_um * kz_minus_k(f2, wavelength_um)
        log_amp = self.phase_waves(shift_px, self.log_amplitude, wavelength_scale)
        return transmission, torch.polar(torch.exp(log_amp), phase)

    def forward(self, shift_px: torch.Tensor, defocus_um: torch.Tensor, source_px: torch.Tensor | None = None,
                edge: str | None = None):
        """Complex pupil times defocus on the box, shifted by ``shift_px`` (see :meth:`parts`).

        Returns
        -------
        Tensor, shape (J, B, B), complex
        """
        transmission, body = self.parts(shift_px, defocus_um, source_px, edge)
        return transmission * body
