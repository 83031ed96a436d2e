"""Sample: complex transmission on the reconstruction grid, and its pose in the station."""

from __future__ import annotations

import torch
from torch import nn

from metrology.physics.geometry import StationGeometry


class Sample(nn.Module):
    """Reference sample held as a complex transmission ``t = field_real + i field_imag``.

    Parameters (paths under ``sample.``)
    ----------------------------------
    field_real, field_imag : (N, N)
        Transmission on the reconstruction grid (pixel ``geometry.object_pixel_um``); fixed when the
        reference sample is known, free in prior and blind modes.
    defocus_um : ()
        Sample defocus (um); see :mod:`metrology.conventions` for the sign.
    position_um : (2,)
        Lateral displacement ``(sx, sy)`` of the sample (um).
    """

    def __init__(self, geometry: StationGeometry, transmission=None, dtype=torch.float32):
        super().__init__()
        self.geometry = geometry
        n = geometry.object_px
        if transmission is None:
            transmission = torch.ones((n, n), dtype=torch.complex128)
        t = torch.as_tensor(transmission)
        if t.shape != (n, n):
            raise ValueError(f"sample transmission must be {n}x{n}, got {tuple(t.shape)}")
        t = t.to(torch.complex128)
        self.field_real = nn.Parameter(t.real.to(dtype).clone())
        self.field_imag = nn.Parameter(t.imag.to(dtype).clone())
        self.defocus_um = nn.Parameter(torch.zeros((), dtype=dtype))
        self.position_um = nn.Parameter(torch.zeros(2, dtype=dtype))

    def transmission(self) -> torch.Tensor:
        """Complex transmission, shape (N, N)."""
        return torch.complex(self.field_real, self.field_imag)

    def spectrum(self) -> torch.Tensor:
        """Centred spectrum ``fftshift(fft2(t))``, shape (N, N); DC at index N // 2."""
        return torch.fft.fftshift(torch.fft.fft2(self.transmission()), dim=(-2, -1))
