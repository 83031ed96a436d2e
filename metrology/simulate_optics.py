"""The literal simulator's optics: one tile's intensity on the camera, as a real station forms it.

The imaging half of :mod:`metrology.simulate` (which adds the reference sample, the camera's noise
and the capture files), kept apart from the solver's model (:mod:`metrology.physics`) to avoid the
inverse crime: numpy float64, its own code for every step (the conventions of
:mod:`metrology.conventions`):

* LED (and emitter sub-source) positions after misalignment and their exact, non-paraxial
  illumination frequencies, refraction through a slide included (:func:`led_positions_mm`,
  :func:`illumination_frequencies`);
* a **hard-edged** pupil ``|f| <= NA / lambda`` with the lens's Zernike phase from the ``zernike``
  package (RZern), defocus propagator and optional second aperture (:class:`HardPupil`);
* the field at the camera pixels from the sample's exact spectrum lattice moved by each LED's
  tilt (:func:`camera_field`), a finite emitter's incoherent average (:func:`emitter_intensity`),
  the pixel's area integration (:func:`pixel_average`);
* the LED spectrum's wavelengths (:func:`spectrum_samples`, :data:`SPECTRAL_NODES`) and the LEDs'
  angular emission (:func:`emission_law`); all of it per tile in :func:`simulate_intensity`.

See :mod:`metrology.simulate` for why the tilt is applied in the Fourier domain and for the
normalisation.
"""

from __future__ import annotations

import math

import numpy as np
from zernike import RZern

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
    lit = illumination_curvature(station, truth, transmission.shape[0])
    spectrum = fine_spectrum(transmission if lit is None else transmission * lit, station.fov_um,
                             truth["sample.position_um"])
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
        tilt = curvature_tilt(station, truth, lam_nm)
        ks = [illumination_frequencies(here, led_positions_mm(here, leds, truth, o)) + tilt for o in offsets]
        for j in range(len(leds)):
            inten = emitter_intensity(spectrum, [k[j] for k in ks], pupil, station.fov_um, n, sub=sub)
            # the pixel average is linear: once per LED, on the emitter points' summed intensity
            out[j] += weight * (pixel_average(inten, sub) if sub > 1 else inten) / len(ks)
            if progress is not None:
                progress(i * len(leds) + j + 1, len(leds) * len(lams))
    return out * emission_law(station, leds, truth)[:, None, None]


def illumination_curvature(station, truth: dict, n_fine: int):
    """The LEDs' common wavefront curvature ``exp(i pi |x|^2 / (lambda R))`` on the fine grid
    (``n_fine`` over the field of view, ``x`` from its centre) when the station states
    ``spherical_illumination``, else None: the same second-order spherical wave as the model's
    (:meth:`metrology.physics.StationModel.illumination_phase`; ``R`` the LED distance with the
    drawn distance error, a slide counting its thickness over its index). The sample is periodic
    here and so is the phase (its values match at opposite borders, its slope does not); the
    displaced sample's share is :func:`curvature_tilt`."""
    if not getattr(station, "spherical_illumination", False):
        return None
    x = (np.arange(n_fine) - n_fine / 2) * (station.fov_um / n_fine)
    r_um = _curvature_radius_um(station, truth)
    return np.exp(1j * math.pi * (x[None, :] ** 2 + x[:, None] ** 2) / (station.wavelength_nm * 1e-3 * r_um))


def _curvature_radius_um(station, truth: dict) -> float:
    """``R`` (um) of :func:`illumination_curvature`: the drawn LED distance, a slide counting ``t / n``."""
    t = station.slide_thickness_mm
    return 1e3 * (station.led_distance_mm + truth["illumination.distance_error_mm"] - t + t / station.slide_index)


def curvature_tilt(station, truth: dict, lam_nm: float) -> np.ndarray:
    """The shift of every LED's illumination frequency (cycles/um, ``(x, y)``) that keeps the waves'
    curvature on the tile while the sample is displaced by ``sample.position_um`` (the displacement
    is applied to the lit sample's spectrum): ``-s / (lambda R)``; zeros for plane waves (the
    model's :meth:`~metrology.physics.StationModel.curvature_tilt`)."""
    if not getattr(station, "spherical_illumination", False):
        return np.zeros(2)
    s = np.asarray(truth["sample.position_um"], dtype=float)
    return -s / (lam_nm * 1e-3 * _curvature_radius_um(station, truth))


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
