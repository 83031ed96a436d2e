"""Sample: complex transmission on the reconstruction grid, and its pose in the station."""

from __future__ import annotations

import torch
from torch import nn

from metrology.physics.geometry import StationGeometry


def pad_with_mean(t: torch.Tensor, margin: int) -> torch.Tensor:
    """A frame's transmission (M, M) inside a field ``margin`` pixels wider on each side, the margin
    filled with the frame's mean transmission (the best guess of a sample unknown there; the
    unscattered light it passes is right, the scattered light it misses is what the frame border's
    learned variance absorbs)."""
    out = torch.full((t.shape[0] + 2 * margin,) * 2, complex(t.mean()), dtype=t.dtype, device=t.device)
    out[margin : margin + t.shape[0], margin : margin + t.shape[1]] = t
    return out


class Sample(nn.Module):
    """Reference sample held as a complex transmission ``t = field_real + i field_imag``.

    Parameters (paths under ``sample.``)
    ----------------------------------
    field_real, field_imag : (N, N)
        Transmission on the reconstruction grid (pixel ``geometry.object_pixel_um``) over the
        modelled field (the frame and its margin, ``geometry.margin_px``); fixed when the reference
        sample is known, free in prior and blind modes. A transmission given for the frame alone
        is padded with its mean (:func:`pad_with_mean`).
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
        t = torch.as_tensor(transmission).to(torch.complex128)
        inner = geometry.frame_px * geometry.upsampling
        if t.shape == (inner, inner) and inner != n:
            t = pad_with_mean(t, geometry.frame_offset_px)
        if t.shape != (n, n):
            raise ValueError(f"sample transmission must be {n}x{n} (or the frame's {inner}x{inner}), got {tuple(t.shape)}")
        self.field_real = nn.Parameter(t.real.to(dtype).clone())
        self.field_imag = nn.Parameter(t.imag.to(dtype).clone())
        self.defocus_um = nn.Parameter(torch.zeros((), dtype=dtype))
        self.position_um = nn.Parameter(torch.zeros(2, dtype=dtype))

    def transmission(self) -> torch.Tensor:
        """Complex transmission, shape (N, N)."""
        return torch.complex(self.field_real, self.field_imag)

    def spectrum(self, illumination=None) -> torch.Tensor:
        """Centred spectrum ``fftshift(fft2(t))``, shape (N, N); DC at index N // 2.

        ``illumination``: a phase (N, N) complex the sample is lit with besides each LED's plane
        wave (:meth:`metrology.physics.StationModel.illumination_phase`), or None."""
        t = self.transmission()
        if illumination is not None:
            t = t * illumination
        return torch.fft.fftshift(torch.fft.fft2(t), dim=(-2, -1))
