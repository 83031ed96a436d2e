"""The literal station simulator: captures as a real station would record them.

This deliberately takes a different, slower and more literal path than the solver's model
(:mod:`metrology.physics.model`), to avoid the inverse crime (``GUIDE.md``):

* the reference sample lives on a grid ``oversample`` times finer than the reconstruction grid
  (same field of view, from :mod:`metrology.references`) and is displaced by ``position_um`` with
  an exact Fourier shift;
* LED positions and exact (non-paraxial) illumination frequencies ``k_j`` are computed here in
  numpy float64 from the misalignment, independently of :mod:`metrology.physics.illumination`
  (same conventions, :mod:`metrology.conventions`), refraction through a slide included;
* per LED and per emitter sub-source (a Python loop), the sample's spectrum is moved by the tilted
  plane wave, ``O(f + k_j)`` at pupil frequency ``f``, and multiplied by a **hard-edged** pupil
  ``|f| <= NA / lambda`` whose Zernike phase is evaluated with the ``zernike`` package (RZern), and
  by the defocus propagator ``H(f) = exp(i 2 pi z (sqrt(1/lambda^2 - |f|^2) - 1/lambda))``; the
  field is formed at the camera pixels and ``|.|^2`` taken; a finite LED (``size_mm > 0``) is an
  incoherent average over ``led_subsources^2`` points across the emitter;
* a finite LED spectrum (``spectral_fwhm_nm > 0``) is an incoherent sum over
  :data:`SPECTRAL_NODES` wavelengths (each with its own illumination frequencies, cut-off,
  defocus and aberration in waves, the lens's optical path difference fixed); the LEDs' angular
  emission ``cos^p`` (``emission_exponent``) scales each frame (:func:`emission_law`);
* camera: each pixel integrates the intensity over its area when the station says so
  (``camera.pixel_integration``; exact: the field at 2 x 2 points per pixel, the intensity
  box-filtered in Fourier); Poisson shot noise, Gaussian read noise, gain, background,
  quantisation, saturation, optional hot pixels and blank frames.

Why the plane wave is applied in the Fourier domain: the sample is periodic over the field of
view, so its spectrum is a lattice ``f_l``; the tilted wave moves that lattice by ``-k_j``, off the
DFT grid. Multiplying the sampled object by a non-periodic ramp and taking a DFT would wrap the
ramp and leak the bright DC term into dark-field frames, an artefact no real station shows. Here
the pupil is evaluated exactly at ``f_l - k_j`` for every lattice point instead (one "FFT" per
LED: the field at the camera pixels is the inverse DFT of those products; the camera pixels are
every ``upsampling * oversample``-th point of the fine grid, starting at index 0, and because the
field is band-limited by the pupil the small inverse DFT equals the fine one sampled there, see
``tests/test_simulate.py``).

Normalisation: a clear sample through a clear pupil gives intensity exactly 1 (as
:class:`metrology.physics.StationModel`); the camera records
``counts = photons * b_j * e_j * I / photons_per_count + background`` with ``e_j`` the exposure
relative to the median, so ``camera.counts_per_unit = photons / photons_per_count``.
"""

from __future__ import annotations

import math

import numpy as np
from zernike import RZern

from metrology.errors import InputError
from metrology.io.capture import Capture
from metrology.misalignment import (  # noqa: F401  (re-exported: the simulator's public names)
    DEFAULT_RANGES,
    MISALIGNMENT_SHAPES,
    check_misalignment,
    draw_misalignment,
    nominal_misalignment,
)
from metrology.references import CATALOGUE, catalogue_over_field, reference_transmission

SPECTRAL_NODES = 15
"""Wavelengths the literal simulator samples across a finite LED spectrum (:func:`spectrum_samples`:
equally spaced over +/- :data:`SPECTRUM_SPAN_SIGMA` standard deviations). A real LED's spectrum is
continuous: against 41 wavelengths (32 px, 15 x 15 LEDs, 25 nm, 3000 counts in bright field) the
frames' RMS error is 0.06 noise standard deviations with 15, 0.12 with 11 and 0.28 with 7; the
5 Gauss-Hermite nodes used before 2026-12-03 were 0.58 off (a comb of 5 sharp pupil edges)."""

SPECTRUM_SPAN_SIGMA = 3.0
"""Half-width of the simulated LED spectrum in standard deviations (the tails beyond hold 0.3 % of
the light)."""


# ---------------------------------------------------------------------------- geometry
def led_positions_mm(station, leds, truth: dict, offset_mm=(0.0, 0.0)) -> np.ndarray:
    """LED (or emitter sub-source) positions after misalignment, float64.

    Parameters
    ----------
    station : StationDescription
    leds : sequence of (row, col)
    truth : dict
        Misalignment (``illumination.*`` paths).
    offset_mm : (float, float)
        Point on the emitter relative to its centre, in the board plane (mm).

    Returns
    -------
    ndarray, shape (J, 3)
        ``(x, y, z)`` in mm, ``z < 0`` below the sample (conventions: tilt about x, tilt about y,
        rotation, then shift and distance error).
    """
    rc = np.asarray(leds, dtype=np.float64).reshape(-1, 2)
    x = (rc[:, 1] - station.led_center_col) * station.led_pitch_mm + offset_mm[0]
    y = (rc[:, 0] - station.led_center_row) * station.led_pitch_mm + offset_mm[1]
    z = np.zeros_like(x)
    tx, ty = np.deg2rad(truth["illumination.tilt_deg"])
    # right-hand rotation about +x: (y, z) -> (y cos - z sin, y sin + z cos)
    y, z = y * math.cos(tx) - z * math.sin(tx), y * math.sin(tx) + z * math.cos(tx)
    # right-hand rotation about +y: (z, x) -> (z cos - x sin, z sin + x cos)
    x, z = x * math.cos(ty) + z * math.sin(ty), z * math.cos(ty) - x * math.sin(ty)
    a = math.radians(truth["illumination.rotation_deg"])
    x, y = x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
    x = x + truth["illumination.shift_mm"][0]
    y = y + truth["illumination.shift_mm"][1]
    z = z - (station.led_distance_mm + truth["illumination.distance_error_mm"])
    return np.stack([x, y, z], axis=-1)


def _air_angle_through_slide(rho, height, thickness, index):
    """Air-side angle (rad) of the ray from an LED at lateral distance ``rho``, height ``height``
    (mm) to the tile through a slide (``thickness`` mm, refractive ``index``) under the sample.

    Solves ``rho = (height - t) tan(a) + t tan(asin(sin(a) / n))`` for ``a`` by bisection
    (monotonic in ``a``), to float64 precision.
    """
    rho = np.asarray(rho, dtype=np.float64)
    if thickness == 0.0:
        return np.arctan2(rho, height)
    lo = np.zeros_like(rho)
    hi = np.full_like(rho, math.pi / 2 - 1e-12)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        glass = np.arcsin(np.sin(mid) / index)
        r = (height - thickness) * np.tan(mid) + thickness * np.tan(glass)
        lo = np.where(r < rho, mid, lo)
        hi = np.where(r < rho, hi, mid)
    return 0.5 * (lo + hi)


def illumination_frequencies(station, positions_mm: np.ndarray) -> np.ndarray:
    """Exact illumination spatial frequencies ``k_j`` (cycles/um), shape (J, 2), float64.

    ``k_j = (x_j - X0, y_j - Y0) sin(a_j) / (lambda rho_j)``, ``a_j`` the air-side angle of the
    ray from the LED to the tile centre ``(X0, Y0)`` (straight, or refracted through the slide).
    """
    dx = positions_mm[:, 0] - station.tile_center_mm[0]
    dy = positions_mm[:, 1] - station.tile_center_mm[1]
    height = -positions_mm[:, 2]
    rho = np.hypot(dx, dy)
    angle = _air_angle_through_slide(rho, height, station.slide_thickness_mm, station.slide_index)
    lam_um = station.wavelength_nm * 1e-3
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(rho > 0, np.sin(angle) / (rho * lam_um), 0.0)
    return np.stack([dx * scale, dy * scale], axis=-1)


# ---------------------------------------------------------------------------- pupil
class HardPupil:
    """Hard-edged pupil with Zernike phase (RZern), apodisation and defocus, at arbitrary points.

    Parameters
    ----------
    na : float
        Edge NA (also the Zernike normalisation radius ``NA / lambda``).
    wavelength_um : float
    zernike_waves : ndarray (K,)
        Noll 1..K phase (waves).
    log_amplitude : ndarray (K',), optional
        Noll coefficients of ``ln A``.
    defocus_um : float
    edge_width_cpum : float
        0 (default): hard edge. > 0: a linear ramp of this width across the edge, like the
        solver's anti-aliased disk (for validating everything else against the model).
    cell_cpum : float
        > 0: each sample carries the hard disk's area fraction over its frequency cell of this
        side (8 x 8 sub-samples), i.e. the pupil integrated over the cell: the discretisation of
        a continuous (non-periodic) object spectrum. 0: point samples of the hard disk.
    vignetting : (float, float, float), optional
        A second aperture ``(r, cx, cy)`` in pupil radii (radius, centre): the pupil is also 0
        outside it (a hard edge; :func:`metrology.field_terms.vignetting_at`).
    """

    def __init__(self, na, wavelength_um, zernike_waves, log_amplitude=None, defocus_um=0.0, edge_width_cpum=0.0,
                 cell_cpum=0.0, vignetting=None):
        self.vignetting = None if vignetting is None else tuple(float(v) for v in vignetting)
        self.cutoff = na / wavelength_um
        self.wavelength_um = wavelength_um
        self.defocus_um = float(defocus_um)
        self.edge_width = float(edge_width_cpum)
        self.cell = float(cell_cpum)
        self.phase = np.asarray(zernike_waves, dtype=np.float64)
        self.log_amp = np.zeros(0) if log_amplitude is None else np.asarray(log_amplitude, dtype=np.float64)
        k = max(len(self.phase), len(self.log_amp), 1)
        order = 0
        while (order + 1) * (order + 2) // 2 < k:
            order += 1
        self._rz = RZern(max(order, 1))

    def zernike_sum(self, coeffs, rho, theta) -> np.ndarray:
        """``sum_k coeffs[k] Z_{k+1}(rho, theta)`` (RZern column k is Noll k + 1)."""
        out = np.zeros_like(rho)
        for k, c in enumerate(coeffs):
            if c != 0.0:
                out += c * self._rz.Zk(k, rho, theta)
        return out

    def __call__(self, fx, fy) -> np.ndarray:
        """Complex pupil times defocus at frequencies ``(fx, fy)`` (cycles/um); 0 outside."""
        f2 = fx**2 + fy**2
        if self.edge_width > 0:
            edge = np.clip((self.cutoff - np.sqrt(f2)) / self.edge_width + 0.5, 0.0, 1.0)
            inside = edge > 0
        elif self.cell > 0:
            edge = (f2 <= self.cutoff**2).astype(np.float64)
            band = np.abs(np.sqrt(f2) - self.cutoff) < self.cell
            sub = (np.arange(8) + 0.5) / 8 - 0.5
            sx, sy = np.meshgrid(sub * self.cell, sub * self.cell)
            bx, by = fx[band][:, None], fy[band][:, None]
            edge[band] = (((bx + sx.ravel()) ** 2 + (by + sy.ravel()) ** 2) <= self.cutoff**2).mean(axis=1)
            inside = edge > 0
        else:
            inside = f2 <= self.cutoff**2
            edge = inside.astype(np.float64)
        if self.vignetting is not None:
            r, cx, cy = self.vignetting
            inside = inside & ((fx / self.cutoff - cx) ** 2 + (fy / self.cutoff - cy) ** 2 <= r * r)
        out = np.zeros(fx.shape, dtype=np.complex128)
        if not inside.any():
            return out
        fxi, fyi = fx[inside], fy[inside]
        rho = np.sqrt(f2[inside]) / self.cutoff
        theta = np.arctan2(fyi, fxi)  # from +x towards +y (y = row index)
        w = self.zernike_sum(self.phase, rho, theta)
        inv = 1.0 / self.wavelength_um
        w_defocus = self.defocus_um * (np.sqrt(inv**2 - f2[inside]) - inv)
        amp = np.exp(self.zernike_sum(self.log_amp, rho, theta)) if self.log_amp.any() else 1.0
        out[inside] = edge[inside] * amp * np.exp(2j * math.pi * (w + w_defocus))
        return out


# ---------------------------------------------------------------------------- imaging
def fine_spectrum(transmission: np.ndarray, fov_um: float, position_um=(0.0, 0.0)) -> np.ndarray:
    """DFT of the fine-grid sample displaced by ``position_um`` (exact Fourier shift).

    Returns ``O[l_y, l_x]`` in numpy order for lattice frequencies ``l / fov_um``.
    """
    n = transmission.shape[0]
    l = np.fft.fftfreq(n, 1.0 / n)
    fx = l[None, :] / fov_um
    fy = l[:, None] / fov_um
    ramp = np.exp(-2j * math.pi * (fx * position_um[0] + fy * position_um[1]))
    return np.fft.fft2(transmission) * ramp


def _window(k, radius: float, df: float, big: int, frame_px: int):
    """Integer frequency indices ``(gx, gy)`` (each shape (h, w)) of the fine spectrum that the
    pupil, centred on the plane wave ``k`` (cycles/um) with ``radius`` frequency pixels, can reach."""
    cx, cy = k[0] / df, k[1] / df
    lx = np.arange(math.floor(cx - radius) - 1, math.ceil(cx + radius) + 2)
    ly = np.arange(math.floor(cy - radius) - 1, math.ceil(cy + radius) + 2)
    if max(abs(lx).max(), abs(ly).max()) >= big // 2:
        raise ValueError("an LED's spectrum leaves the fine grid: increase oversample")
    if len(lx) > frame_px:
        raise ValueError("the pupil does not fit in the camera frame")
    return np.meshgrid(lx, ly)


def _pixel_field(g: np.ndarray, gx: np.ndarray, gy: np.ndarray, big: int, frame_px: int, sub: int) -> np.ndarray:
    """The camera field, shape (sub n, sub n), of the filtered spectrum samples ``g`` at ``(gx, gy)``."""
    m = frame_px * int(sub)
    a = np.zeros((m, m), dtype=np.complex128)
    a[gy % m, gx % m] = g
    return np.fft.ifft2(a) * (m / big) ** 2


def camera_field(spectrum: np.ndarray, k: np.ndarray, pupil: HardPupil, fov_um: float, frame_px: int,
                 full: bool = False, sub: int = 1) -> np.ndarray:
    """Field at the camera pixels for one plane wave ``k = (kx, ky)`` (cycles/um), shape (n, n).

    ``psi(x_p) = (1/N^2) sum_l P(f_l - k) O_l exp(i 2 pi (f_l - k) x_p)`` up to the common phase
    ``exp(-i 2 pi k x_p)`` (which cancels in the intensity). ``full=True`` forms the field on the
    whole fine grid and samples every ``N / n``-th point (slow; for tests). ``sub > 1``: the field
    at ``sub`` points per pixel and axis, shape (sub n, sub n), point ``(sub r, sub c)`` at pixel
    ``(r, c)``'s centre.
    """
    big = spectrum.shape[0]
    df = 1.0 / fov_um
    gx, gy = _window(k, pupil.cutoff / df, df, big, frame_px)
    g = pupil(gx * df - k[0], gy * df - k[1]) * spectrum[gy % big, gx % big]
    if full:
        a = np.zeros((big, big), dtype=np.complex128)
        a[gy % big, gx % big] = g
        step = big // frame_px
        return np.fft.ifft2(a)[::step, ::step]
    return _pixel_field(g, gx, gy, big, frame_px, sub)


def emitter_intensity(spectrum: np.ndarray, ks, pupil: HardPupil, fov_um: float, frame_px: int,
                      sub: int = 1) -> np.ndarray:
    """Sum over the plane waves ``ks`` (one LED's emitter points, cycles/um) of the camera
    intensity ``|camera_field|^2``, shape (sub n, sub n). The pupil is evaluated once over all
    the points' samples (one call instead of one per point: same values)."""
    big = spectrum.shape[0]
    df = 1.0 / fov_um
    windows = [_window(k, pupil.cutoff / df, df, big, frame_px) for k in ks]
    fx = np.concatenate([(gx * df - k[0]).ravel() for (gx, _), k in zip(windows, ks)])
    fy = np.concatenate([(gy * df - k[1]).ravel() for (_, gy), k in zip(windows, ks)])
    values = pupil(fx, fy)
    out, start = np.zeros((frame_px * sub, frame_px * sub)), 0
    for gx, gy in windows:
        g = values[start:start + gx.size].reshape(gx.shape) * spectrum[gy % big, gx % big]
        start += gx.size
        psi = _pixel_field(g, gx, gy, big, frame_px, sub)
        out += psi.real**2 + psi.imag**2
    return out


def pixel_average(intensity: np.ndarray, sub: int) -> np.ndarray:
    """Each pixel's area average of an intensity sampled ``sub`` times per pixel and axis (shape
    (sub n, sub n), unaliased): an exact box filter in Fourier, then the pixel centres."""
    m = intensity.shape[-1]
    f = np.fft.fftfreq(m, 1.0 / m) / m * sub  # cycles per pixel
    box = np.sinc(f)
    smooth = np.fft.ifft2(np.fft.fft2(intensity) * box[:, None] * box[None, :]).real
    return smooth[::sub, ::sub]


def _emitter_offsets(size_mm: float, subsources: int) -> list:
    if size_mm <= 0 or subsources <= 1:
        return [(0.0, 0.0)]
    u = ((np.arange(subsources) + 0.5) / subsources - 0.5) * size_mm
    return [(float(a), float(b)) for b in u for a in u]


def simulate_intensity(station, leds, truth: dict, transmission: np.ndarray, zernike_waves,
                       *, lens_na=None, log_amplitude=None, led_subsources: int = 9, progress=None,
                       edge_width_cpum: float = 0.0, pupil_edge: str = "hard", vignetting=None) -> np.ndarray:
    """Noise-free intensity at the camera pixels for each LED (brightness not applied; the
    station's LED spectrum and emission law applied).

    Parameters
    ----------
    station : StationDescription
    leds : sequence of (row, col)
    truth : dict
        Complete misalignment (see :func:`check_misalignment`).
    transmission : ndarray complex, shape (N, N)
        Sample on the fine grid over the field of view ``station.fov_um`` (N a multiple of
        ``frame_px``).
    zernike_waves : ndarray (K,)
        Pupil phase, Noll 1..K (waves at the station wavelength).
    lens_na : float, optional
        True pupil edge NA (default: the station's nominal NA).
    log_amplitude : ndarray, optional
        Noll coefficients of ``ln A``.
    led_subsources : int
        Sub-sources per emitter side (``led_subsources^2`` in all) when ``led_size_mm > 0``.
    progress : callable ``progress(i, total)``, optional
    edge_width_cpum : float
        Pupil edge ramp width (0: hard edge; see :class:`HardPupil`).
    pupil_edge : {"hard", "cell"}
        "hard" (default): point samples of the hard disk, exact for the periodic sample (its
        spectrum is the lattice); "cell": the hard disk's area fraction over each frequency cell
        (the model's edge before the source-smeared edge; kept for comparison).
    vignetting : (float, float, float), optional
        The lens's second aperture ``(r, cx, cy)`` at this field point (:class:`HardPupil`).

    Returns
    -------
    ndarray float64, shape (J, n, n)
    """
    n = station.frame_px
    if transmission.shape[0] % n:
        raise ValueError("the fine grid must be a multiple of the frame size")
    spectrum = fine_spectrum(transmission, station.fov_um, truth["sample.position_um"])
    offsets = _emitter_offsets(station.led_size_mm, led_subsources)
    sub = 2 if getattr(station, "pixel_integration", False) else 1  # 2: the intensity is unaliased
    out = np.zeros((len(leds), n, n))
    lams, weights = led_spectrum(station)
    for i, (lam_nm, weight) in enumerate(zip(lams, weights)):
        here = station.replace(wavelength_nm=float(lam_nm)) if lam_nm != station.wavelength_nm else station
        # the lens's optical path difference is fixed: its phase in waves scales as 1 / lambda
        pupil = HardPupil(station.na if lens_na is None else lens_na, lam_nm * 1e-3,
                          np.asarray(zernike_waves, dtype=np.float64) * (station.wavelength_nm / lam_nm), log_amplitude,
                          truth["sample.defocus_um"], edge_width_cpum,
                          cell_cpum=(1.0 / station.fov_um) if pupil_edge == "cell" else 0.0, vignetting=vignetting)
        ks = [illumination_frequencies(here, led_positions_mm(here, leds, truth, o)) for o in offsets]
        for j in range(len(leds)):
            inten = emitter_intensity(spectrum, [k[j] for k in ks], pupil, station.fov_um, n, sub=sub)
            # the pixel average is linear: once per LED, on the emitter points' summed intensity
            out[j] += weight * (pixel_average(inten, sub) if sub > 1 else inten) / len(ks)
            if progress is not None:
                progress(i * len(leds) + j + 1, len(leds) * len(lams))
    return out * emission_law(station, leds, truth)[:, None, None]


def spectrum_samples(centroid_nm: float, fwhm_nm: float, points: int):
    """Wavelengths (nm) and weights (summing to 1) of a Gaussian LED spectrum of ``fwhm_nm`` FWHM:
    the midpoint rule on ``points`` equal intervals over +/- :data:`SPECTRUM_SPAN_SIGMA` standard
    deviations, weighted by the Gaussian. Not Gauss-Hermite: the pupil edge crosses frequency
    cells as the wavelength changes, so a frame is not a smooth function of it and a few
    high-order nodes render a comb of sharp edges; equal steps converge on the continuous
    spectrum (:data:`SPECTRAL_NODES`)."""
    if fwhm_nm <= 0 or points <= 1:
        return np.array([float(centroid_nm)]), np.array([1.0])
    sigma = fwhm_nm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    x = ((np.arange(int(points)) + 0.5) / int(points) * 2.0 - 1.0) * SPECTRUM_SPAN_SIGMA
    w = np.exp(-0.5 * x**2)
    return centroid_nm + sigma * x, w / w.sum()


def led_spectrum(station):
    """Wavelengths (nm) and weights the literal simulator sums over: :data:`SPECTRAL_NODES`
    samples of the station's Gaussian LED spectrum (``spectral_fwhm_nm`` FWHM around
    ``wavelength_nm``, :func:`spectrum_samples`); one wavelength when it is 0."""
    return spectrum_samples(station.wavelength_nm, getattr(station, "spectral_fwhm_nm", 0.0), SPECTRAL_NODES)


def emission_law(station, leds, truth: dict) -> np.ndarray:
    """Relative irradiance of the sample by each LED, shape (J,): ``cos(theta)^p`` with ``theta``
    the angle of the straight line from the (misaligned) LED centre to the tile centre and ``p`` the
    station's ``emission_exponent`` (all ones when it is 0)."""
    p = float(getattr(station, "emission_exponent", 0.0))
    if p == 0.0:
        return np.ones(len(leds))
    pos = led_positions_mm(station, leds, truth)
    dx = pos[:, 0] - station.tile_center_mm[0]
    dy = pos[:, 1] - station.tile_center_mm[1]
    return (-pos[:, 2] / np.sqrt(dx**2 + dy**2 + pos[:, 2] ** 2)) ** p


# ---------------------------------------------------------------------------- capture
def bright_field_mask(station, leds, na=None) -> np.ndarray:
    """Boolean (J,): nominal ``|k_j| < NA / lambda`` (aligned station)."""
    k = illumination_frequencies(station, led_positions_mm(station, leds, nominal_misalignment(len(leds))))
    cutoff = (station.na if na is None else na) / (station.wavelength_nm * 1e-3)
    return np.hypot(k[:, 0], k[:, 1]) < cutoff


def simulate_capture(station, lens_zernike_waves, truth: dict | None = None, *, seed: int = 0,
                     reference: str = "random-broadband", reference_seed: int = 0, oversample: int = 2,
                     photons: float = 2e4, hot_pixel_fraction: float = 0.0, blank_frames=(), progress=None,
                     noise: bool = True, lens=None, leds=None, led_subsources: int = 9, exposure_s: float = 0.01,
                     dark_field_exposure: float = 1.0):
    """Simulate a capture of ``station`` imaging a reference sample through a lens.

    Parameters
    ----------
    station : StationDescription
    lens_zernike_waves : array-like (K,)
        Lens pupil phase, Noll 1..K (waves at the station wavelength).
    truth : dict, optional
        Misalignment by model path (partial allowed; missing = aligned). None: aligned station.
    seed : int
        Seed of the camera noise (and hot pixels). Same seed -> identical frames.
    reference : str
        Reference sample ID (:data:`metrology.references.CATALOGUE`).
    reference_seed : int
        Seed of the reference sample (a physical slide: keep it fixed across captures).
    oversample : int
        Fine grid = reconstruction grid x ``oversample`` (same field of view).
    photons : float
        Photo-electrons per pixel for unit intensity at unit brightness and median exposure.
    hot_pixel_fraction : float
        Fraction of pixels stuck near full scale (same pixels in every frame).
    blank_frames : sequence of int
        Frames returned entirely zero (a camera drop-out; bad-data tests).
    progress : callable ``progress(i, total)``, optional
    noise : bool
        False: no shot/read noise, no quantisation or clipping; float32 frames in counts.
    lens : LensDescription, optional
        Gives the true NA, apodisation, model and serial.
    leds : sequence of (row, col), optional
        Capture order (default ``station.led_list()``).
    led_subsources : int
        Emitter sub-sources per side (finite LED size).
    exposure_s : float
        Exposure of bright-field frames (s); dark-field frames get ``dark_field_exposure`` times it.

    Length: the documentation of its options; the steps are helpers (:func:`simulate_intensity`,
    :func:`_camera_counts`, :func:`_add_hot_pixels`, :func:`_lens_and_camera_truth`).

    Returns
    -------
    capture : Capture
    truth : dict
        Every misalignment parameter by its model path, ``pupil.*``, ``camera.*``, and the
        simulation settings (JSON-ready).
    """
    leds = station.led_list() if leds is None else [tuple(map(int, rc)) for rc in leds]
    n_leds = len(leds)
    mis = check_misalignment(truth or {}, n_leds)
    coeffs = np.asarray(lens_zernike_waves, dtype=np.float64).reshape(-1)
    lens_na = station.na if lens is None else lens.na
    log_amp = None if lens is None or not lens.apodisation else lens.apodisation_coefficients()
    if reference not in CATALOGUE:
        raise InputError(reference, f"unknown reference sample; known: {', '.join(CATALOGUE)}")
    n_fine = station.frame_px * station.upsampling * int(oversample)
    transmission = reference_transmission(reference, station.fov_um, n_fine, seed=reference_seed)
    intensity = simulate_intensity(station, leds, mis, transmission, coeffs, lens_na=lens_na,
                                   log_amplitude=log_amp, led_subsources=led_subsources, progress=progress)

    bright = bright_field_mask(station, leds)
    exposure = np.where(bright, exposure_s, exposure_s * dark_field_exposure)
    rel = exposure / np.median(exposure)
    cam = station.camera
    brightness = np.asarray(mis["illumination.brightness"])
    electrons = photons * (brightness * rel)[:, None, None] * intensity
    rng = np.random.default_rng([int(seed), 7])
    frames = _camera_counts(electrons, cam, rng, noise)
    hot = _add_hot_pixels(frames, station.frame_px, cam.full_scale, hot_pixel_fraction, rng)
    for j in blank_frames:
        frames[int(j)] = 0
    out_truth = dict(mis)
    out_truth.update(_lens_and_camera_truth(station, coeffs, lens_na, log_amp, photons / cam.photons_per_count))
    out_truth.update({
        "seed": int(seed),
        "reference_sample": reference,
        "reference_seed": int(reference_seed),
        "station_id": station.station_id,
        "lens_model": "" if lens is None else lens.model,
        "lens_serial": "" if lens is None else lens.serial,
        "leds": [list(rc) for rc in leds],
        "relative_exposure": rel.tolist(),
        "photons": float(photons),
        "oversample": int(oversample),
        "led_subsources": int(led_subsources),
        "noise": bool(noise),
        "hot_pixels": hot,
        "blank_frames": [int(j) for j in blank_frames],
    })
    capture = Capture(
        frames=frames, leds=leds, exposure_s=exposure, station_id=station.station_id,
        lens_serial=out_truth["lens_serial"], lens_model=out_truth["lens_model"],
        reference_sample=reference, wavelength_nm=station.wavelength_nm,
        extra={"simulated": True, "reference_seed": int(reference_seed)},
    )
    return capture, out_truth


def _camera_counts(electrons, cam, rng, noise: bool) -> np.ndarray:
    """Frames the camera records from photo-electrons: shot and read noise, gain, background,
    quantisation and clipping (uint16); without ``noise`` the exact counts (float32)."""
    if not noise:
        return (electrons / cam.photons_per_count + cam.background_counts).astype(np.float32)
    e = rng.poisson(electrons).astype(np.float64)
    e += rng.normal(0.0, cam.read_noise_e, e.shape)
    counts = np.clip(np.round(e / cam.photons_per_count + cam.background_counts), 0, cam.full_scale)
    return counts.astype(np.uint16)


def _add_hot_pixels(frames, n_px: int, full_scale: int, fraction: float, rng) -> list:
    """Set ``fraction`` of the pixels near full scale in every frame (in place); their ``[row, col]``."""
    if fraction <= 0:
        return []
    count = max(1, int(round(fraction * n_px * n_px)))
    flat = rng.choice(n_px * n_px, size=count, replace=False)
    rows, cols = np.divmod(flat, n_px)
    level = full_scale - rng.integers(0, max(2, full_scale // 50), size=count)
    frames[:, rows, cols] = level.astype(frames.dtype)
    return [[int(r), int(c)] for r, c in zip(rows, cols)]


def _lens_and_camera_truth(station, coeffs, lens_na, log_amp, counts_per_unit) -> dict:
    """The ``pupil.*`` and ``camera.*`` entries of the truth (model paths, JSON-ready)."""
    z = np.zeros(max(station.zernike_terms, len(coeffs)))
    z[: len(coeffs)] = coeffs
    return {
        "pupil.zernike_waves": z.tolist(),
        "pupil.na": float(lens_na),
        "pupil.log_amplitude": [] if log_amp is None else np.asarray(log_amp).tolist(),
        "illumination.emission_exponent": float(getattr(station, "emission_exponent", 0.0)),
        "camera.background_counts": float(station.camera.background_counts),
        "camera.counts_per_unit": float(counts_per_unit),
    }


def model_from_truth(station, truth: dict, transmission=None, dtype=None, leds=None, exposure=None):
    """A :class:`metrology.physics.StationModel` with every parameter set to ``truth``.

    Parameters
    ----------
    station : StationDescription
    truth : dict
        As returned by :func:`simulate_capture` (``truth.json``).
    transmission : ndarray (N, N), optional
        Sample on the reconstruction grid (default: the truth's reference sample, undisplaced:
        the model applies ``sample.position_um`` itself).
    dtype : torch dtype, optional
        Default ``torch.float64``.
    leds, exposure : optional
        LED list and relative exposures (default: from the truth).
    """
    # lazy: torch loads only when a model is needed (start-up time)
    import torch

    from metrology.physics import StationModel

    dtype = torch.float64 if dtype is None else dtype
    leds = truth.get("leds", station.led_list()) if leds is None else leds
    geometry = station.geometry([tuple(rc) for rc in leds])
    if transmission is None:
        transmission = catalogue_over_field(truth.get("reference_sample", "random-broadband"), station.fov_um,
                                            geometry, seed=truth.get("reference_seed", 0))
    if exposure is None:
        exposure = truth.get("relative_exposure")
    model = StationModel(geometry, transmission, exposure, dtype=dtype)
    mis = check_misalignment({k: truth[k] for k in MISALIGNMENT_SHAPES if k in truth}, len(leds))
    values = dict(mis)
    k = geometry.zernike_terms
    z = np.zeros(k)
    zw = np.asarray(truth.get("pupil.zernike_waves", []), dtype=np.float64)[:k]
    z[: len(zw)] = zw
    values["pupil.zernike_waves"] = z
    la = np.zeros(k)
    la_t = np.asarray(truth.get("pupil.log_amplitude", []), dtype=np.float64)[:k]
    la[: len(la_t)] = la_t
    values["pupil.log_amplitude"] = la
    for key in ("pupil.na", "camera.background_counts", "camera.counts_per_unit"):
        if key in truth:
            values[key] = truth[key]
    with torch.no_grad():
        for path, value in values.items():
            p = model.parameter(path)
            p.copy_(torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=p.dtype).reshape(p.shape))
    return model
