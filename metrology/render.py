"""A realistic station renderer: captures with the physics real stations show.

This is a second simulator, independent of the solver's model (:mod:`metrology.physics`) and of the
literal simulator's imaging code (:mod:`metrology.simulate_optics`): numpy float64, one FFT pair per LED,
wavelength and emitter point, nothing shared with the model but the conventions
(:mod:`metrology.conventions`), the LED geometry of :func:`metrology.simulate_optics.led_positions_mm` and
the LED spectrum's quadrature (:func:`metrology.simulate_optics.spectrum_samples`).
It exists so that recovery and uncertainty checks meet the ways a real station differs from the
model (``GUIDE.md``, "Avoid the inverse crime"):

* **non-periodic field**: the sample is a larger field (``margin`` x the frame on each side) and the
  camera frame is the central crop of its image, so light from outside the frame reaches the
  frame's border as on a real slide;
* **hard pupil edge on a fine lattice**: the pupil is a hard circle evaluated exactly at the
  (finer) lattice of the larger field, no cell-area anti-aliasing;
* **finite LED spectrum**: the frame is the weighted sum of coherent frames over a sampled LED
  spectrum (Gaussian, ``fwhm_nm`` wide around ``centroid_nm``); each wavelength has its own
  illumination frequencies, pupil cut-off, aberration in waves (fixed optical path difference) and
  defocus propagator;
* **finite emitter**: an incoherent average over points across the square emitter;
* **pixel integration**: each camera pixel integrates the intensity over its square area (exact:
  the intensity is formed unaliased at ``q`` sub-samples per pixel and box-filtered in Fourier);
* **two-circle vignetting**: the pupil amplitude is the stop intersected with a second, shifted
  circle (another aperture of the lens seen from an off-axis field point);
* **LED angular emission**: brightness ``cos^(n + 3)`` of the illumination angle (Lambertian-like
  emitter ``cos^n`` times the ``cos^3`` of distance and obliquity on the sample plane);
* **veiling glare** (optional): each LED's light that reaches the camera off the imaging path (scatter
  off the barrel, mounts and stop) as a smooth haze with a linear gradient across the frame along
  the LED's azimuth; the model's stray-light term is uniform, so the gradient is the
  part it does not represent;
* **spherical illumination** (optional): each LED's wave is the exact spherical wave from its
  position, so the illumination angle changes across the field (two crops of one frame see
  different angles, as on a real station); without it the whole field sees the plane wave of the
  tile centre.

Conventions are those of the model: the pupil centre sees the object's frequency ``+k_j``; pixel
``(0, 0)`` of the frame sits at ``x = y = 0`` of the reference map's central crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from metrology.simulate_optics import illumination_frequencies, led_positions_mm, spectrum_samples


@dataclass(frozen=True)
class RealPhysics:
    """What the renderer adds to the ideal station (each independently switchable).

    Parameters
    ----------
    margin : float
        Extra field on each side of the frame, as a fraction of the frame (0: periodic frame).
    centroid_nm : float or None
        True LED spectral centroid (None: the station's wavelength).
    fwhm_nm : float
        LED spectral width (FWHM, nm; 0: monochromatic).
    spectral_points : int
        Wavelengths sampled across the spectrum (:func:`metrology.simulate_optics.spectrum_samples`:
        equal steps over +/- 3 standard deviations; in the literal simulator's 32-px frames 11 are
        0.12 noise standard deviations RMS from the continuous spectrum, and the 3 Gauss-Hermite
        nodes used here before 2026-12-03 were 0.8 off).
    pixel_integration : bool
        Each pixel integrates the intensity over its area (True) or samples it at its centre.
    emitter_points : int
        Points per emitter side (``emitter_points^2`` incoherent points; station ``led_size_mm``).
    vignetting : (float, float, float) or None
        Second aperture ``(radius, dx, dy)`` in units of the pupil radius: the pupil amplitude is 1
        inside both the stop and this circle.
    emission_exponent : float or None
        LED angular emission ``cos^n`` (None: every LED equally bright apart from the drawn
        brightness).
    true_na, true_pixel_um, true_magnification, true_pitch_mm, true_distance_mm : float or None
        Station constants as they really are (None: as the station file states).
    spherical_illumination : bool
        Illuminate with each LED's exact spherical wave (the angle varies across the field; the
        tile centre ``station.tile_center_mm`` is the frame's centre); no slide allowed.
    stray_light : tuple of float
        Each LED's veiling glare, mean over the frame, in units of the clear-pupil on-axis intensity
        (before the LED's emission law and brightness, which scale it as they scale the image);
        empty: none.
    stray_gradient : float
        The glare's linear change across the frame, peak to peak as a fraction of its mean, along the
        azimuth of the LED's illumination frequency.
    """

    margin: float = 0.5
    centroid_nm: float | None = None
    fwhm_nm: float = 0.0
    spectral_points: int = 11
    pixel_integration: bool = True
    emitter_points: int = 3
    vignetting: tuple | None = None
    emission_exponent: float | None = None
    true_na: float | None = None
    true_pixel_um: float | None = None
    true_magnification: float | None = None
    true_pitch_mm: float | None = None
    true_distance_mm: float | None = None
    spherical_illumination: bool = False
    stray_light: tuple = ()
    stray_gradient: float = 0.0
    extra: dict = field(default_factory=dict)


def _noll_nm(j: int) -> tuple[int, int]:
    """Noll index -> (n, m) with signed m (m < 0: sine), written independently of the model."""
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    k = j - n * (n + 1) // 2  # 1-based position within order n
    ms = [m for m in range(n % 2, n + 1, 2) for _ in ((0,) if m == 0 else (0, 1))]
    m = ms[k - 1]
    if m == 0:
        return n, 0
    return n, (m if j % 2 == 0 else -m)


def zernike_noll(j: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Noll-normalised Zernike ``Z_j(rho, theta)`` (explicit radial sum; no model code)."""
    n, m = _noll_nm(j)
    am = abs(m)
    r = np.zeros_like(rho)
    for s in range((n - am) // 2 + 1):
        c = (-1) ** s * math.factorial(n - s) / (
            math.factorial(s) * math.factorial((n + am) // 2 - s) * math.factorial((n - am) // 2 - s))
        r = r + c * rho ** (n - 2 * s)
    if m == 0:
        return math.sqrt(n + 1) * r
    ang = np.cos(am * theta) if m > 0 else np.sin(am * theta)
    return math.sqrt(2 * (n + 1)) * r * ang


def _pupil(fx, fy, cutoff, zernike_waves_here, defocus_um, wavelength_um, log_amplitude=None, vignetting=None):
    """Complex pupil times defocus at frequencies (cycles/um); hard edges; 0 outside."""
    f2 = fx**2 + fy**2
    inside = f2 <= cutoff**2
    rho = np.sqrt(f2) / cutoff
    theta = np.arctan2(fy, fx)
    if vignetting is not None:
        r2, dx, dy = vignetting
        inside &= (fx / cutoff - dx) ** 2 + (fy / cutoff - dy) ** 2 <= r2**2
    out = np.zeros(fx.shape, dtype=np.complex128)
    if not inside.any():
        return out
    ri, ti = rho[inside], theta[inside]
    w = np.zeros_like(ri)
    for j, c in enumerate(zernike_waves_here, start=1):
        if c:
            w += c * zernike_noll(j, ri, ti)
    amp = np.ones_like(ri)
    if log_amplitude is not None:
        la = np.zeros_like(ri)
        for j, c in enumerate(log_amplitude, start=1):
            if c:
                la += c * zernike_noll(j, ri, ti)
        amp = np.exp(la)
    inv = 1.0 / wavelength_um
    h = defocus_um * (np.sqrt(inv**2 - f2[inside]) - inv)
    out[inside] = amp * np.exp(2j * math.pi * (w + h))
    return out


def _camera_intensity(spectrum, k, cutoff, fov_large, grid, zernike_here, defocus_um, lam_um, log_amplitude,
                      vignetting) -> np.ndarray:
    """One coherent intensity: the sample's lattice spectrum through the hard pupil at ``f_l - k``,
    ``|field|^2`` at ``q`` points per camera pixel over the larger field, shape (grid, grid)."""
    m_side = spectrum.shape[0]
    radius = cutoff * fov_large
    cx, cy = k[0] * fov_large, k[1] * fov_large
    lx = np.arange(math.floor(cx - radius) - 1, math.ceil(cx + radius) + 2)
    ly = np.arange(math.floor(cy - radius) - 1, math.ceil(cy + radius) + 2)
    if max(np.abs(lx).max(), np.abs(ly).max()) >= m_side // 2:
        raise ValueError("an LED's spectrum leaves the large sample's grid: sample it finer")
    gx, gy = np.meshgrid(lx, ly)
    p = _pupil(gx / fov_large - k[0], gy / fov_large - k[1], cutoff, zernike_here, defocus_um, lam_um, log_amplitude,
               vignetting)
    a = np.zeros((grid, grid), dtype=np.complex128)
    a[gy % grid, gx % grid] = p * spectrum[gy % m_side, gx % m_side]
    psi = np.fft.ifft2(a) * (grid / m_side) ** 2
    return psi.real**2 + psi.imag**2


def _camera_pixels(intensity: np.ndarray, box2, crop) -> np.ndarray:
    """The camera's ``n x n`` pixels of an intensity at ``q`` points per pixel: the pixel box (when
    ``box2``), then the central crop ``crop = (c0, n, q)``. Linear: applied once to a sum of
    incoherent intensities (an LED's emitter points)."""
    if box2 is not None:
        intensity = np.fft.ifft2(np.fft.fft2(intensity) * box2).real
    c0, n, q = crop
    return intensity[c0 * q : (c0 + n) * q : q, c0 * q : (c0 + n) * q : q]


def _spherical_residual(position_mm, k, lam_um: float, x_um: np.ndarray, y_um: np.ndarray, tile_mm) -> np.ndarray:
    """``exp(i 2 pi (psi + k.x))`` on the sample grid: the LED's spherical wave ``exp(i 2 pi psi)``,
    ``psi = r / lambda`` (``r`` the distance from the LED), divided by the plane wave
    ``exp(-i 2 pi k.x)`` of the tile centre (``k = -grad psi`` there: the pupil centre sees the
    object's frequency ``+k``), which :func:`_camera_intensity` applies as the spectrum's shift.
    ``x_um, y_um``: positions from the tile centre (um)."""
    dx = (tile_mm[0] - position_mm[0]) * 1e3 + x_um
    dy = (tile_mm[1] - position_mm[1]) * 1e3 + y_um
    dz = -position_mm[2] * 1e3
    r = np.sqrt(dx**2 + dy**2 + dz**2)
    r0 = math.sqrt(((tile_mm[0] - position_mm[0]) * 1e3) ** 2 + ((tile_mm[1] - position_mm[1]) * 1e3) ** 2 + dz**2)
    return np.exp(2j * math.pi * ((r - r0) / lam_um + (k[0] * x_um + k[1] * y_um)))


def _station_as_true(station, physics: RealPhysics):
    """The station with its constants as they really are (for geometry), via ``replace``."""
    changes = {}
    if physics.true_pitch_mm is not None:
        changes["led_pitch_mm"] = physics.true_pitch_mm
    if physics.true_distance_mm is not None:
        changes["led_distance_mm"] = physics.true_distance_mm
    return station.replace(**changes) if changes else station


def _veiling_glare(mean: np.ndarray, gradient: float, k: np.ndarray, n: int) -> np.ndarray:
    """Each LED's haze over the frame, shape (J, n, n): ``mean_j (1 + gradient (x cos a_j + y sin a_j))``
    with ``x, y`` in [-1/2, 1/2] frame widths and ``a_j`` the azimuth of the LED's illumination
    frequency ``k_j`` (J, 2) (the on-axis LED's gradient along +x)."""
    if mean.shape != (len(k),):
        raise ValueError(f"stray_light must have one value per LED ({len(k)}), got shape {mean.shape}")
    x = (np.arange(n) + 0.5) / n - 0.5
    a = np.arctan2(k[:, 1], k[:, 0])
    ramp = np.cos(a)[:, None, None] * x[None, None, :] + np.sin(a)[:, None, None] * x[None, :, None]
    return mean[:, None, None] * (1.0 + gradient * ramp)


def field_side(frame_px: int, margin: float) -> int:
    """Side (camera pixels) of the rendered field around a ``frame_px`` frame with ``margin`` (a
    fraction of the frame on each side): ``round(frame_px (1 + 2 margin))``, made to differ from
    ``frame_px`` by an even count so that the frame sits centred, ``(side - frame_px) // 2`` pixels
    from the field's edge. A sample for :func:`render_intensity` spans this side."""
    side = int(round(frame_px * (1.0 + 2.0 * margin)))
    return side + (side - frame_px) % 2


def render_intensity(station, leds, truth: dict, large_sample: np.ndarray, zernike_waves, physics: RealPhysics,
                     *, log_amplitude=None, progress=None) -> np.ndarray:
    """Noise-free frames (intensity, clear sample = 1 on axis), shape (J, n, n), float64.

    Parameters
    ----------
    station : StationDescription
        As the station file states it (``physics`` says where reality differs).
    leds : sequence of (row, col)
    truth : dict
        Complete misalignment (:func:`metrology.simulate.check_misalignment`).
    large_sample : ndarray complex, shape (M, M)
        Transmission over the larger field ``fov * (1 + 2 margin)`` (the frame's field of view is
        the central part); its pixel is ``fov_large / M``.
    zernike_waves : array (K,)
        Lens aberration, Noll 1..K, waves at the station's stated wavelength (fixed OPD).
    physics : RealPhysics
    """
    n = station.frame_px
    mag = physics.true_magnification or station.magnification
    cam_px = physics.true_pixel_um or station.camera_pixel_um
    pixel = cam_px / mag  # true object-side pixel (um)
    n_large = field_side(n, physics.margin)
    fov_large = n_large * pixel
    m_side = large_sample.shape[0]
    na = physics.true_na or station.na
    lam0 = station.wavelength_nm
    centroid = physics.centroid_nm or lam0
    lams, weights = spectrum_samples(centroid, physics.fwhm_nm, physics.spectral_points)
    q = 3 if physics.pixel_integration else 1  # sub-samples per pixel (intensity unaliased for q >= 2)
    grid = n_large * q
    spectrum = np.fft.fft2(large_sample)
    l_all = np.fft.fftfreq(m_side, 1.0 / m_side)
    pos = truth["sample.position_um"]
    ramp = np.exp(-2j * math.pi * (l_all[None, :] / fov_large * pos[0] + l_all[:, None] / fov_large * pos[1]))
    spectrum = spectrum * ramp
    geo = _station_as_true(station, physics)
    if physics.spherical_illumination and station.slide_thickness_mm > 0:
        raise ValueError("spherical_illumination is rendered without a slide")
    shifted = np.fft.ifft2(spectrum) if physics.spherical_illumination else None  # the sample at its true place
    s_um = np.arange(m_side) * (fov_large / m_side) - ((n_large - n) // 2 + 0.5 * n) * pixel  # from the tile centre
    u = ((np.arange(physics.emitter_points) + 0.5) / physics.emitter_points - 0.5) * station.led_size_mm
    emitters = [(a, b) for b in u for a in u] if station.led_size_mm > 0 and physics.emitter_points > 1 else [(0.0, 0.0)]
    zw = np.asarray(zernike_waves, dtype=float)
    la = None if log_amplitude is None else np.asarray(log_amplitude, dtype=float)
    fgrid = np.fft.fftfreq(grid, 1.0 / grid) / fov_large
    box = np.sinc(fgrid * pixel)
    box2 = box[:, None] * box[None, :] if physics.pixel_integration else None
    c0 = (n_large - n) // 2
    out = np.zeros((len(leds), n, n))
    for lam_nm, wl in zip(lams, weights):
        lam_um = lam_nm * 1e-3
        cutoff = na / lam_um
        zl = zw * (lam0 / lam_nm)  # same optical path difference, in waves at this wavelength
        # the illumination geometry at this wavelength (k scales with 1/lambda)
        geo_l = geo.replace(wavelength_nm=float(lam_nm))
        positions = [led_positions_mm(geo_l, leds, truth, e) for e in emitters]
        ks = [illumination_frequencies(geo_l, p) for p in positions]  # at the tile centre
        for j in range(len(leds)):
            acc = np.zeros((grid, grid))
            for k, p in zip(ks, positions):
                spec_j = spectrum
                if physics.spherical_illumination:
                    spec_j = np.fft.fft2(shifted * _spherical_residual(p[j], k[j], lam_um, s_um[None, :], s_um[:, None],
                                                                        geo.tile_center_mm))
                acc += _camera_intensity(spec_j, k[j], cutoff, fov_large, grid, zl, truth["sample.defocus_um"], lam_um,
                                         la, physics.vignetting)
            out[j] += wl * _camera_pixels(acc, box2, (c0, n, q)) / len(ks)
            if progress is not None:
                progress(j + 1, len(leds))
    k0 = illumination_frequencies(geo, led_positions_mm(geo, leds, truth))
    if len(physics.stray_light):
        out += _veiling_glare(np.asarray(physics.stray_light, dtype=float), physics.stray_gradient, k0, n)
    if physics.emission_exponent is not None:
        s2 = np.clip((k0**2).sum(axis=1) * (lam0 * 1e-3) ** 2, 0.0, 0.999)
        out *= ((1.0 - s2) ** ((physics.emission_exponent + 3.0) / 2.0))[:, None, None]
    return out
