"""Nominal station geometry: plain numbers, no tensors, validated on construction.

A :class:`StationGeometry` is what the station TOML file describes (see ``docs/formats.md``) plus
the LED list of a capture. Everything the physics modules derive (grids, frequencies) is computed
from it inside ``forward()``; nothing is cached.
"""

from __future__ import annotations

import math

import numpy as np
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
        Emitter side (mm): the pupil edge is seen through the emitter's image (finite source).
    slide_thickness_mm, slide_index : float
        Glass slide under the sample (refraction shifts the illumination); 0 thickness = none.
    spectral_fwhm_nm : float
        LED spectral width (FWHM, nm; Gaussian): frames are the weighted sum over
        ``spectral_points`` wavelengths (Gauss-Hermite nodes); 0: monochromatic.
    spectral_points : int
        Wavelengths sampled across the LED spectrum when ``spectral_fwhm_nm > 0`` (2: the lens is
        measured as well as with 3 at 0.7x the cost; docs/solver.md, "The LED spectrum").
    vignetting : (float, float, float) or None
        Two-circle vignetting of an off-axis tile: the nominal second aperture ``(radius, dx, dy)``
        in pupil radii (start of ``pupil.vignetting_*``); None: the stop alone.
    emission_exponent : float
        Nominal exponent ``p`` of the LEDs' angular emission law ``cos^p`` (the start and prior
        mean of ``illumination.emission_exponent``; 0: every LED lights the sample alike).
    pixel_quadrature : int
        Camera pixel integration: Gauss-Legendre points per axis over each pixel's area (0 or 1:
        the intensity sampled at the pixel centre).
    margin_px : int
        Camera pixels of sample modelled beyond each side of the frame: the frame is the central
        crop of the image of a larger (periodic) field, so light from outside the frame reaches its
        border as on a real slide (0: the frame itself is the periodic field).
    stray_light : bool
        Each frame carries a uniform haze of its LED's light that reached the camera off the imaging
        path (flare, glare off mounts and barrel): ``illumination.stray_light`` is fitted, one value
        per LED (False: held at 0).
    spherical_illumination : bool
        Each LED lights the sample with a spherical wave, not a plane wave: across the modelled
        field the illumination angle changes by ``x / R`` (``R`` the LED distance, reduced by a
        slide), so a frame's border sees each LED from another angle than its centre. Modelled as the
        waves' common curvature on the sample (:meth:`metrology.physics.StationModel.illumination_phase`).
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
    pixel_quadrature: int = 0
    margin_px: int = 0
    emission_exponent: float = 0.0
    spectral_fwhm_nm: float = 0.0
    spectral_points: int = 2
    vignetting: tuple | None = None
    spherical_illumination: bool = False
    stray_light: bool = False

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
            (0 <= self.pixel_quadrature <= 4, "pixel_quadrature must be 0-4"),
            (0 <= self.margin_px <= self.frame_px, "margin_px must be in [0, frame_px]"),
            (0 <= self.spectral_fwhm_nm < 0.5 * self.wavelength_nm, "spectral_fwhm_nm must be in [0, wavelength / 2)"),
            (1 <= self.spectral_points <= 7, "spectral_points must be 1-7"),
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
    def field_px(self) -> int:
        """Side of the modelled field in camera pixels: the frame plus ``margin_px`` on each side
        (the frame is the central crop of the modelled field's image)."""
        return self.frame_px + 2 * self.margin_px

    @property
    def object_px(self) -> int:
        """Reconstruction grid side (pixels): the modelled field at ``upsampling`` points per camera pixel."""
        return self.field_px * self.upsampling

    @property
    def frame_offset_px(self) -> int:
        """Object-grid index of the frame's pixel (0, 0) (the margin, in object pixels)."""
        return self.margin_px * self.upsampling

    @property
    def object_pixel_um(self) -> float:
        return self.pixel_um / self.upsampling

    @property
    def df(self) -> float:
        """Frequency step of the model's grids (cycles/um): the modelled field's lattice."""
        return 1.0 / (self.field_px * self.pixel_um)

    @property
    def data_df(self) -> float:
        """Frequency step of a camera frame's DFT (cycles/um)."""
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
        """Half-width of the pupil box (pixels): radius (at the shortest wavelength of the LED
        spectrum) + soft edge + sub-pixel shift."""
        shortest = min(scale for scale, _ in self.spectral_nodes())
        return int(math.ceil(self.pupil_radius_px / shortest + 2.0))

    def spectral_nodes(self):
        """``(scale, weight)`` pairs: wavelengths ``lambda_0 scale`` across a Gaussian LED spectrum of
        ``spectral_fwhm_nm`` (Gauss-Hermite nodes, weights summing to 1); ``[(1.0, 1.0)]`` when
        monochromatic."""
        if self.spectral_fwhm_nm <= 0 or self.spectral_points <= 1:
            return [(1.0, 1.0)]
        x, w = np.polynomial.hermite_e.hermegauss(self.spectral_points)
        sigma = self.spectral_fwhm_nm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        w = w / w.sum()
        return [(float(1.0 + sigma * xi / self.wavelength_nm), float(wi)) for xi, wi in zip(x, w)]

    @property
    def n_leds(self) -> int:
        return len(self.leds)

    def check_sampling(self, max_illumination_na: float) -> None:
        """Raise ``ValueError`` if the grids cannot hold the pupil or the widest illumination."""
        half = self.pupil_box_half
        if 2 * half + 1 > self.field_px:
            raise ValueError(
                f"pupil (radius {self.pupil_radius_px:.1f} px) does not fit in {self.frame_px}-px frames: "
                "the camera undersamples the field; use a larger frame or smaller NA"
            )
        k_max = max_illumination_na / self.wavelength_um / self.df
        if k_max + half + 1 > self.object_px / 2:
            need = (k_max + half + 1) * 2 / self.field_px
            raise ValueError(
                f"upsampling {self.upsampling} too small for illumination NA {max_illumination_na:.3f}: "
                f"need at least {math.ceil(need)}"
            )
