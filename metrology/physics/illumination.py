"""LED array: positions, misalignment and exact illumination spatial frequencies."""

from __future__ import annotations

import math

import torch
from torch import nn

from metrology.physics.geometry import StationGeometry


def board_offsets_mm(geometry: StationGeometry, dtype=torch.float64, device=None) -> torch.Tensor:
    """Nominal in-plane LED positions relative to the board centre.

    Returns
    -------
    Tensor, shape (J, 2)
        ``(x, y)`` in mm; ``x = (col - center_col) pitch``, ``y = (row - center_row) pitch``.
    """
    rc = torch.tensor(geometry.leds, dtype=dtype, device=device).reshape(-1, 2)
    x = (rc[:, 1] - geometry.led_center_col) * geometry.led_pitch_mm
    y = (rc[:, 0] - geometry.led_center_row) * geometry.led_pitch_mm
    return torch.stack([x, y], dim=-1)


def _air_sine_through_slide(rho, height, thickness, index, iterations=12):
    """Sine of the air-side angle of the ray from an LED at lateral distance ``rho`` and height
    ``height`` (mm) to the tile, through a slide of ``thickness`` and ``index`` under the sample.

    Solves ``rho = (height - t) tan(a) + t tan(asin(sin(a) / n))`` by Newton iterations
    (differentiable; starts from the straight line).
    """
    s = rho / torch.sqrt(rho**2 + height**2)
    if thickness == 0.0:
        return s
    for _ in range(iterations):
        c = torch.sqrt(1 - s**2)
        sg = s / index
        cg = torch.sqrt(1 - sg**2)
        f = (height - thickness) * s / c + thickness * sg / cg - rho
        df = (height - thickness) / c**3 + thickness / (index * cg**3)
        s = (s - f / df).clamp(0.0, 0.999999)
    return s


class Illumination(nn.Module):
    """LED array with its misalignment and per-LED brightness.

    Parameters (paths under ``illumination.``)
    ----------------------------------------
    shift_mm : (2,)
        Lateral shift ``(dx, dy)`` of the board (mm).
    rotation_deg : ()
        Rotation about the optical axis, from +x towards +y (deg).
    distance_error_mm : ()
        Extra distance of the board from the sample (mm).
    tilt_deg : (2,)
        Board tilt about x and about y (deg).
    brightness : (J,)
        Relative brightness of each LED (1 nominal) on top of the angular emission law.
    emission_exponent : ()
        Exponent ``p`` of the emission law: an LED at angle ``theta`` from the axis lights the
        sample ``cos(theta)^p`` as brightly as one on the axis (``p = n + 3`` for a ``cos^n``
        emitter on a flat board: ``cos^3`` from the distance and the obliquity; 4 for a Lambertian
        LED). Fitted from the brightness pattern, with a prior (:mod:`metrology.solver.priors`).
    stray_light : (J,)
        Uniform intensity each LED adds to its own frame off the imaging path (flare, glare off the
        optics' mounts), in units of the clear-pupil intensity of that LED (so it scales with the
        LED's gain); 0 nominal, fitted where the station states ``lens.stray_light``.
    """

    def __init__(self, geometry: StationGeometry, dtype=torch.float32):
        super().__init__()
        self.geometry = geometry
        j = geometry.n_leds
        self.shift_mm = nn.Parameter(torch.zeros(2, dtype=dtype))
        self.rotation_deg = nn.Parameter(torch.zeros((), dtype=dtype))
        self.distance_error_mm = nn.Parameter(torch.zeros((), dtype=dtype))
        self.tilt_deg = nn.Parameter(torch.zeros(2, dtype=dtype))
        self.brightness = nn.Parameter(torch.ones(j, dtype=dtype))
        self.emission_exponent = nn.Parameter(torch.tensor(float(geometry.emission_exponent), dtype=dtype))
        self.stray_light = nn.Parameter(torch.zeros(j, dtype=dtype))

    def led_positions_mm(self) -> torch.Tensor:
        """LED positions after misalignment.

        Returns
        -------
        Tensor, shape (J, 3)
            ``(x, y, z)`` in mm, ``z < 0`` below the sample.
        """
        g = self.geometry
        p = board_offsets_mm(g, dtype=self.shift_mm.dtype, device=self.shift_mm.device)
        x, y = p[:, 0], p[:, 1]
        z = torch.zeros_like(x)
        ax, ay = torch.deg2rad(self.tilt_deg[0]), torch.deg2rad(self.tilt_deg[1])
        y, z = y * torch.cos(ax) - z * torch.sin(ax), y * torch.sin(ax) + z * torch.cos(ax)
        x, z = x * torch.cos(ay) + z * torch.sin(ay), -x * torch.sin(ay) + z * torch.cos(ay)
        rot = torch.deg2rad(self.rotation_deg)
        x, y = x * torch.cos(rot) - y * torch.sin(rot), x * torch.sin(rot) + y * torch.cos(rot)
        x = x + self.shift_mm[0]
        y = y + self.shift_mm[1]
        z = z - (g.led_distance_mm + self.distance_error_mm)
        return torch.stack([x, y, z], dim=-1)

    def spatial_frequencies(self, positions_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Exact illumination spatial frequencies ``k_j`` (cycles/um), shape (J, 2).

        ``k_j = (x_j - X0, y_j - Y0) sin(a_j) / (lambda rho_j)`` with ``a_j`` the air-side angle
        (straight line without a slide, refracted through it otherwise).
        """
        g = self.geometry
        pos = self.led_positions_mm() if positions_mm is None else positions_mm
        dx = pos[..., 0] - g.tile_center_mm[0]
        dy = pos[..., 1] - g.tile_center_mm[1]
        height = -pos[..., 2]
        rho = torch.sqrt(dx**2 + dy**2 + 1e-24)
        s = _air_sine_through_slide(rho, height, g.slide_thickness_mm, g.slide_index)
        scale = s / (rho * g.wavelength_um)
        return torch.stack([dx * scale, dy * scale], dim=-1)

    def emission(self) -> torch.Tensor:
        """Relative irradiance of the sample by each LED from the emission law, shape (J,):
        ``cos(theta_j)^p`` with ``theta_j`` the angle of the line from the LED to the tile centre."""
        g = self.geometry
        pos = self.led_positions_mm()
        dx = pos[:, 0] - g.tile_center_mm[0]
        dy = pos[:, 1] - g.tile_center_mm[1]
        h = -pos[:, 2]
        cos = h / torch.sqrt(dx**2 + dy**2 + h**2)
        return cos**self.emission_exponent

    def illumination_na(self) -> torch.Tensor:
        """Illumination NA ``lambda |k_j|`` of each LED, shape (J,)."""
        return torch.linalg.vector_norm(self.spatial_frequencies(), dim=-1) * self.geometry.wavelength_um


def max_nominal_illumination_na(geometry: StationGeometry, margin_mm: float = 3.0) -> float:
    """Largest illumination NA over the LED list, allowing ``margin_mm`` of misalignment."""
    p = board_offsets_mm(geometry)
    r = torch.linalg.vector_norm(p - torch.tensor(geometry.tile_center_mm, dtype=p.dtype, device=p.device), dim=-1)
    r = r.max().item() + margin_mm
    return r / math.hypot(r, geometry.led_distance_mm - margin_mm)
