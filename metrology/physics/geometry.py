"""Nominal station geometry: plain numbers, no tensors, validated on construction.

A :class:`StationGeometry` is what the station TOML file describes (see ``docs/formats.md``) plus
the LED list of a capture. Everything the physics modules derive (grids, frequencies) is computed
from it inside ``forward()``; nothing is cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StationGeometry:
    """Nominal geometry of an LED-array QA station and its reconstruction grid.

    Parameters
    ----------
    wavelength_nm : float
        Illumination wavelength (nm).
    na : float
        Nominal numerical aperture of the lens under test.
    magnification : float
        Lens magnification (camera pixel / magnification = object-side pixel).
    camera_pixel_um : float
        Camera pixel pitch (um).
    frame_px : int
        Frame side (pixels); frames are square ``frame_px x frame_px``.
    upsampling : int
        Reconstruction grid = camera grid x ``upsampling``.
    led_pitch_mm : float
        LED pitch (mm).
    led_distance_mm : float
        Nominal distance from the LED board to the sample (mm).
    led_center_row, led_center_col : float
        Board ``(row, col)`` nominally on the optical axis (may be fractional).
    leds : tuple of (int, int)
        ``(row, col)`` of each frame's LED, in capture order.
    tile_center_mm : (float, float)
        Field position ``(X0, Y0)`` of the reconstructed tile (mm, sample plane).
    zernike_terms : int
        Number of Noll terms in the pupil phase (Noll 1..zernike_terms).
    led_size_mm : float
        Emitter side (mm); used by the simulator only (finite source).
    slide_thickness_mm, slide_index : float
        Glass slide under the sample (refraction shifts the illumination); 0 thickness = none.
    """

    wavelength_nm: float
    na: float
    magnification: float
    camera_pixel_um: float
    frame_px: int
    upsampling: int
    led_pitch_mm: float
    led_distance_mm: float
    led_center_row: float
    led_center_col: float
    leds: tuple = field(default_factory=tuple)
    tile_center_mm: tuple = (0.0, 0.0)
    zernike_terms: int = 36
    led_size_mm: float = 0.0
    slide_thickness_mm: float = 0.0
    slide_index: float = 1.52

    def __post_init__(self):
        checks = [
            (self.wavelength_nm > 0, "wavelength_nm must be > 0"),
            (0 < self.na < 1, "na must be in (0, 1)"),
            (self.magnification > 0, "magnification must be > 0"),
            (self.camera_pixel_um > 0, "camera_pixel_um must be > 0"),
            (self.frame_px >= 8 and self.frame_px % 2 == 0, "frame_px must be even and >= 8"),
            (self.upsampling >= 1, "upsampling must be >= 1"),
            (self.led_pitch_mm > 0, "led_pitch_mm must be > 0"),
            (self.led_distance_mm > 0, "led_distance_mm must be > 0"),
            (self.zernike_terms >= 4, "zernike_terms must be >= 4"),
            (self.led_size_mm >= 0, "led_size_mm must be >= 0"),
            (self.slide_thickness_mm >= 0, "slide_thickness_mm must be >= 0"),
            (self.slide_index >= 1, "slide_index must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.slide_thickness_mm >= self.led_distance_mm:
            raise ValueError("slide_thickness_mm must be smaller than led_distance_mm")
        object.__setattr__(self, "leds", tuple((int(r), int(c)) for r, c in self.leds))

    # ---- derived sampling (cheap; recomputed on demand) ----
    @property
    def wavelength_um(self) -> float:
        return self.wavelength_nm * 1e-3

    @property
    def pixel_um(self) -> float:
        """Object-side camera pixel (um)."""
        return self.camera_pixel_um / self.magnification

    @property
    def object_px(self) -> int:
        """Reconstruction grid side (pixels)."""
        return self.frame_px * self.upsampling

    @property
    def object_pixel_um(self) -> float:
        return self.pixel_um / self.upsampling

    @property
    def df(self) -> float:
        """Frequency step of both grids (cycles/um)."""
        return 1.0 / (self.frame_px * self.pixel_um)

    @property
    def cutoff(self) -> float:
        """Pupil cut-off NA / lambda (cycles/um)."""
        return self.na / self.wavelength_um

    @property
    def pupil_radius_px(self) -> float:
        return self.cutoff / self.df

    @property
    def pupil_box_half(self) -> int:
        """Half-width of the pupil box (pixels): radius + soft edge + sub-pixel shift."""
        return int(math.ceil(self.pupil_radius_px + 2.0))

    @property
    def n_leds(self) -> int:
        return len(self.leds)

    def check_sampling(self, max_illumination_na: float) -> None:
        """Raise ``ValueError`` if the grids cannot hold the pupil or the widest illumination."""
        half = self.pupil_box_half
        if 2 * half + 1 > self.frame_px:
            raise ValueError(
                f"pupil (radius {self.pupil_radius_px:.1f} px) does not fit in {self.frame_px}-px frames: "
                "the camera undersamples the field; use a larger frame or smaller NA"
            )
        k_max = max_illumination_na / self.wavelength_um / self.df
        if k_max + half + 1 > self.object_px / 2:
            need = (k_max + half + 1) * 2 / self.frame_px
            raise ValueError(
                f"upsampling {self.upsampling} too small for illumination NA {max_illumination_na:.3f}: "
                f"need at least {math.ceil(need)}"
            )
