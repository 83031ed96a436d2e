"""Resolution of a reconstruction from measures that artefact texture cannot fake.

An edge width or a "spectral support against the image's own outer rings" rewards any fine texture,
and a blind reconstruction makes texture where the data say nothing (the sample values beyond the
synthetic aperture are set by the start and the regulariser, not by a frame). Two measures here
only credit detail the data can carry:

* **Known target** (:func:`grating_resolution`): for each grating patch of known period, orientation
  and place, the lock-in modulation at exactly its frequency vector, against a floor measured with
  the same lock-in where there is no grating (blank patches at the same vector, the patch itself at
  rotated vectors), with the phase consistent across the patch's two halves. Texture at other
  frequencies or orientations does not count; texture everywhere raises the floor with it.
* **Unknown sample** (:func:`spectral_snr_resolution`, :func:`frc_resolution`): the highest
  frequency band, in a contiguous run from the low frequencies, whose power stands above a floor
  measured where the data cannot carry signal: beyond the synthetic-aperture cutoff
  ``(NA_obj + NA_illumination_max) / lambda`` of the same image, or the disagreement of two
  reconstructions from interleaved LED halves (Fourier ring correlation, half-bit threshold). The
  claim is never beyond the synthetic aperture.

numpy only; frequencies in cycles/um, lengths in um, images indexed ``[row, col] = [y, x]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def synthetic_aperture_cutoff(na: float, illumination_na_max: float, wavelength_um: float) -> float:
    """Highest object frequency (cycles/um) any frame of an FPM capture carries:
    ``(NA + NA_illumination_max) / lambda``; the smallest resolvable period is its inverse."""
    if not (na > 0 and illumination_na_max >= 0 and wavelength_um > 0):
        raise ValueError("na and wavelength_um must be > 0, illumination_na_max >= 0")
    return (na + illumination_na_max) / wavelength_um


# ---------------------------------------------------------------------------------- known target
@dataclass(frozen=True)
class GratingPatch:
    """One grating of a known target.

    Parameters
    ----------
    period_um : float
        Period (um per line pair).
    angle_deg : float
        Direction of the grating vector from +x (columns) towards +y (rows); 0: vertical bars.
    center_um : (float, float)
        Patch centre ``(x, y)`` (um from the centre of pixel ``[0, 0]``).
    half_size_um : float
        Half side of the square patch (um).
    """

    period_um: float
    angle_deg: float
    center_um: tuple
    half_size_um: float

    def frequency(self, rotate_deg: float = 0.0) -> np.ndarray:
        """Grating vector ``(fx, fy)`` (cycles/um), optionally rotated."""
        a = math.radians(self.angle_deg + rotate_deg)
        return np.array([math.cos(a), math.sin(a)]) / self.period_um

    def moved(self, center_um) -> "GratingPatch":
        """The same patch at another place (a blank window for the floor)."""
        return GratingPatch(self.period_um, self.angle_deg, tuple(center_um), self.half_size_um)


def grating_target(n_px: int, pixel_um: float, periods_um, angles_deg=(0.0, 90.0), contrast: float = 0.8,
                   blanks: int = 3, supersample: int = 4):
    """A USAF-like amplitude target: square-wave bar patches of known period and orientation on a
    grid of cells, some cells left blank (the floor of :func:`grating_resolution`).

    Parameters
    ----------
    n_px : int
        Image side (px).
    pixel_um : float
        Pixel (um).
    periods_um : sequence of float
        Periods, each drawn at every angle of ``angles_deg``.
    contrast : float
        Bars transmit ``1 - contrast``, the background 1.
    blanks : int
        Cells left empty.
    supersample : int
        Points per pixel side averaged (the bars are area-sampled).

    Returns
    -------
    (ndarray float64 (n_px, n_px), list of GratingPatch, list of (x, y) blank centres in um)
    """
    cells = [(p, a) for p in periods_um for a in angles_deg]
    side = math.ceil(math.sqrt(len(cells) + blanks))
    cell_um = n_px * pixel_um / side
    s = (np.arange(n_px * supersample) + 0.5) / supersample - 0.5
    x = s[None, :] * pixel_um
    y = s[:, None] * pixel_um
    image = np.ones((n_px * supersample,) * 2)
    patches, blank = [], []
    for i in range(side * side):
        centre = ((i % side + 0.5) * cell_um, (i // side + 0.5) * cell_um)
        if i >= len(cells):
            blank.append(centre)
            continue
        p = GratingPatch(cells[i][0], cells[i][1], centre, 0.4 * cell_um)
        fx, fy = p.frequency()
        inside = (np.abs(x - centre[0]) <= p.half_size_um) & (np.abs(y - centre[1]) <= p.half_size_um)
        bar = np.mod((x - centre[0]) * fx + (y - centre[1]) * fy, 1.0) < 0.5
        image = np.where(inside & bar, 1.0 - contrast, image)
        patches.append(p)
    image = image.reshape(n_px, supersample, n_px, supersample).mean(axis=(1, 3))
    return image, patches, blank[: max(blanks, 0)]


def _lock_in(image, pixel_um, patch: GratingPatch, f) -> tuple[complex, complex, complex, float]:
    """Hann-windowed lock-in ``sum w (I - <I>) exp(-2 pi i f.x) / sum w`` over the patch, and over
    its two halves along ``f``; with the windowed mean ``<I>``."""
    n_r, n_c = image.shape
    x = np.arange(n_c) * pixel_um - patch.center_um[0]
    y = np.arange(n_r) * pixel_um - patch.center_um[1]
    h = patch.half_size_um
    wx = np.where(np.abs(x) <= h, np.cos(np.pi * x / (2 * h)) ** 2, 0.0)
    wy = np.where(np.abs(y) <= h, np.cos(np.pi * y / (2 * h)) ** 2, 0.0)
    w = wy[:, None] * wx[None, :]
    if w.sum() <= 0:
        raise ValueError("a grating patch lies outside the image")
    mean = float((w * image).sum() / w.sum())
    phase = np.exp(-2j * np.pi * (f[0] * x[None, :] + f[1] * y[:, None]))
    z = w * (image - mean) * phase
    side = (f[0] * x[None, :] + f[1] * y[:, None]) >= 0
    half = w.sum() / 2
    return complex(z.sum() / w.sum()), complex(z[side].sum() / half), complex(z[~side].sum() / half), mean


@dataclass(frozen=True)
class PatchResult:
    """One patch: relative modulation ``2 |c| / <I>``, the floor (RMS of the same statistic where no
    grating is), the half-to-half phase coherence ``|c1 + c2| / (|c1| + |c2|)`` and the decision."""

    patch: GratingPatch
    modulation: float
    floor: float
    coherence: float
    within_aperture: bool
    resolved: bool


@dataclass(frozen=True)
class GratingResolution:
    """Result of :func:`grating_resolution`: the smallest period such that every patch of that
    period or coarser is resolved (None: not even the coarsest), and each patch's figures."""

    resolved_period_um: float | None
    theoretical_period_um: float | None
    patches: tuple


def grating_resolution(image, pixel_um: float, patches, blank_centers_um, *, cutoff_cpum: float | None = None,
                       snr: float = 4.0, min_coherence: float = 0.7) -> GratingResolution:
    """Smallest resolved period of a known grating target in a reconstruction.

    A patch is resolved when its lock-in modulation at its own frequency vector exceeds ``snr`` x
    the floor, the phase agrees between its two halves (coherence >= ``min_coherence``: a grating,
    not a texture that happens to have power there), and its frequency is within the synthetic
    aperture (``1 / period <= cutoff_cpum`` when given). The floor is the RMS of the same statistic
    at the same vector in every blank window and at the vector rotated by 45, 90 and 135 degrees in
    the patch itself.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Real image (e.g. the reconstructed amplitude ``|t|``).
    pixel_um : float
        Its pixel (um).
    patches : sequence of GratingPatch
        Where the target's gratings are (:func:`grating_target`).
    blank_centers_um : sequence of (x, y)
        Centres of patch-sized windows without a grating (at least one).
    cutoff_cpum : float, optional
        Synthetic-aperture cutoff (:func:`synthetic_aperture_cutoff`).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise ValueError("image must be a finite 2-D array")
    if not blank_centers_um:
        raise ValueError("grating_resolution needs at least one blank window for the floor")
    rows = []
    for p in patches:
        c, c1, c2, mean = _lock_in(image, pixel_um, p, p.frequency())
        scale = 2.0 / max(abs(mean), 1e-12)
        controls = [_lock_in(image, pixel_um, p.moved(b), p.frequency())[0] for b in blank_centers_um]
        controls += [_lock_in(image, pixel_um, p, p.frequency(r))[0] for r in (45.0, 90.0, 135.0)]
        floor = scale * float(np.sqrt(np.mean(np.abs(controls) ** 2)))
        coherence = abs(c1 + c2) / max(abs(c1) + abs(c2), 1e-300)
        within = cutoff_cpum is None or 1.0 / p.period_um <= cutoff_cpum
        m = scale * abs(c)
        rows.append(PatchResult(p, m, floor, coherence, within, bool(within and m > snr * floor and coherence >= min_coherence)))
    resolved = None
    for period in sorted({r.patch.period_um for r in rows}, reverse=True):
        if not all(r.resolved for r in rows if r.patch.period_um == period):
            break
        resolved = period
    return GratingResolution(resolved, None if cutoff_cpum is None else 1.0 / cutoff_cpum, tuple(rows))


# ---------------------------------------------------------------------------------- unknown sample
def ring_spectrum(image, pixel_um: float, other=None):
    """Ring sums of a Hann-windowed, mean-removed square image's spectrum.

    Returns ``(f, power, cross, count)`` per integer ring out to the grid's corners (the rings beyond
    the Nyquist frequency are partial): ring frequency (cycles/um), mean ``|A|^2``,
    the sums ``(sum |A|^2, sum |B|^2, sum Re A B*)`` when ``other`` is given (else None), and cells.
    Complex images (a transmission) are allowed.
    """
    a = np.asarray(image)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError("ring_spectrum needs a square 2-D image")
    n = a.shape[0]
    w = np.hanning(n)[:, None] * np.hanning(n)[None, :]

    def spec(x):
        return np.fft.fftshift(np.fft.fft2((x - x.mean()) * w))

    fa = spec(a)
    u = np.arange(n) - n // 2
    ring = np.round(np.hypot(u[:, None], u[None, :])).astype(int)
    keep = ring >= 0  # every ring the grid holds, out to its corners (the outer ones partial)
    count = np.bincount(ring[keep])
    ring_sum = lambda v: np.bincount(ring[keep], weights=v[keep])  # noqa: E731
    power = ring_sum(np.abs(fa) ** 2) / np.maximum(count, 1)
    cross = None
    if other is not None:
        b = np.asarray(other)
        if b.shape != a.shape:
            raise ValueError("the two reconstructions differ in shape")
        fb = spec(b)
        cross = (ring_sum(np.abs(fa) ** 2), ring_sum(np.abs(fb) ** 2), ring_sum((fa * np.conj(fb)).real))
    return np.arange(len(count)) / (n * pixel_um), power, cross, count


def _contiguous_edge(f, ok, start_cpum: float) -> float:
    """Highest ``f`` of the run of ``ok`` rings that starts at the first ring at or above
    ``start_cpum`` (0 when that ring fails)."""
    i0 = int(np.searchsorted(f, start_cpum))
    edge = 0.0
    for i in range(i0, len(f)):
        if not ok[i]:
            break
        edge = float(f[i])
    return edge


@dataclass(frozen=True)
class SpectralResolution:
    """Highest frequency (cycles/um) carried above the floor, its period, and the evidence.

    ``measure``: ``"spectral SNR"`` (floor beyond the synthetic aperture) or ``"FRC half-bit"``
    (two interleaved-LED reconstructions); ``curve``: per ring ``(f, statistic, threshold)``.
    """

    frequency_cpum: float
    period_um: float | None
    cutoff_cpum: float
    measure: str
    floor: float | None
    curve: tuple


def spectral_snr_resolution(image, pixel_um: float, cutoff_cpum: float, *, snr: float = 3.0,
                            start_cpum: float | None = None) -> SpectralResolution:
    """Highest frequency band of ``image`` whose ring power stands ``snr`` x above the floor, the
    floor being the median ring power beyond the synthetic aperture (``1.05 cutoff`` to ``0.95``
    x the grid's corner frequency), where no frame carries signal and what is there is the
    reconstruction's own texture.

    The band counts only in a contiguous run from ``start_cpum`` (default 5 % of the cutoff) and
    never beyond ``cutoff_cpum``: texture beyond the aperture raises the floor and can only lower
    the claim.

    Raises
    ------
    ValueError
        When fewer than 3 rings lie beyond the aperture (the grid cannot show the floor).
    """
    f, power, _, _ = ring_spectrum(image, pixel_um)
    corner = 0.5 * math.sqrt(2.0) / pixel_um  # the grid's highest frequency (its corners)
    beyond = (f > 1.05 * cutoff_cpum) & (f < 0.95 * corner)
    if beyond.sum() < 3:
        raise ValueError(f"the grid (corner frequency {corner:.3f} cycles/um) has no room beyond the synthetic aperture "
                         f"({cutoff_cpum:.3f} cycles/um) to measure the floor; use a finer grid or the FRC of two halves")
    floor = float(np.median(power[beyond]))
    ratio = (power - floor) / max(floor, 1e-300)
    ok = (ratio >= snr) & (f <= cutoff_cpum)
    edge = _contiguous_edge(f, ok, 0.05 * cutoff_cpum if start_cpum is None else start_cpum)
    return SpectralResolution(edge, 1.0 / edge if edge > 0 else None, cutoff_cpum, "spectral SNR", floor,
                              tuple(zip(f.tolist(), ratio.tolist(), [snr] * len(f))))


def half_bit_threshold(count) -> np.ndarray:
    """Half-bit FRC threshold for rings of ``count`` cells (van Heel and Schatz 2005)."""
    s = 1.0 / np.sqrt(np.maximum(np.asarray(count, dtype=float), 1.0))
    return (0.2071 + 1.9102 * s) / (1.2071 + 0.9102 * s)


def frc_resolution(first, second, pixel_um: float, cutoff_cpum: float, *,
                   start_cpum: float | None = None) -> SpectralResolution:
    """Fourier ring correlation of two reconstructions of one field from disjoint data (e.g. the
    interleaved halves of the LEDs): the highest ring, in a contiguous run from ``start_cpum``
    (default 5 % of the cutoff), where the FRC stays above the half-bit threshold, never beyond
    ``cutoff_cpum``. Texture that the two fits invent independently does not correlate. The second
    image's global phase is aligned with the first's (blind transmissions carry an arbitrary one).
    """
    a = np.asarray(first)
    b = np.asarray(second)
    if np.iscomplexobj(a) or np.iscomplexobj(b):
        b = b * np.exp(1j * np.angle(np.vdot(b, a)))
    f, _, (saa, sbb, sab), count = ring_spectrum(a, pixel_um, b)
    frc = sab / np.sqrt(np.maximum(saa * sbb, 1e-300))
    threshold = half_bit_threshold(count)
    ok = (frc >= threshold) & (f <= cutoff_cpum)
    edge = _contiguous_edge(f, ok, 0.05 * cutoff_cpum if start_cpum is None else start_cpum)
    return SpectralResolution(edge, 1.0 / edge if edge > 0 else None, cutoff_cpum, "FRC half-bit", None,
                              tuple(zip(f.tolist(), frc.tolist(), threshold.tolist())))
