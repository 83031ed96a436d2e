"""Camera: intensity scale and background of the recorded frames (noise lives in the simulator)."""

from __future__ import annotations

import torch
from torch import nn


class Camera(nn.Module):
    """Linear camera response ``counts = counts_per_unit * exposure_j * b_j * |psi|^2 + background``.

    Parameters (paths under ``camera.``)
    ----------------------------------
    counts_per_unit : ()
        Counts for unit intensity (a clear plane wave through a clear pupil) at unit exposure.
    background_counts : ()
        Additive background (counts).
    """

    def __init__(self, counts_per_unit: float = 1.0, background_counts: float = 0.0, dtype=torch.float32):
        super().__init__()
        self.counts_per_unit = nn.Parameter(torch.tensor(float(counts_per_unit), dtype=dtype))
        self.background_counts = nn.Parameter(torch.tensor(float(background_counts), dtype=dtype))

    def forward(self, intensity: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """Counts from intensity (J, n, n) and per-frame gain (J,) (brightness x exposure)."""
        return self.counts_per_unit * gain[:, None, None] * intensity + self.background_counts
