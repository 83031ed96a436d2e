"""Figures of merit from Noll coefficients: RMS, PV, PVr, Strehl, PSF, MTF.

All functions take Noll 1..K coefficients in waves and leave out the alignment terms
(:data:`metrology.conventions.ALIGNMENT_NOLL`, piston/tilt/defocus) unless told otherwise.

Pupil sampling for the PSF and MTF: ``n_pupil`` pixels across the pupil diameter (standard grid
of :mod:`metrology.analysis.wavefront`), anti-aliased edge (each edge pixel weighted by the
fraction of it inside the disk, 4 x 4 sub-samples), phase evaluated at the pixel centres.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

from metrology.conventions import ALIGNMENT_NOLL
from metrology.analysis.wavefront import grid_coordinates, pv_basis, remove_terms, zernike_basis

# ----------------------------------------------------------------------------- scalar figures


def rms_waves(coeffs, remove=ALIGNMENT_NOLL) -> float:
    """RMS wavefront error ``sqrt(sum c_j^2)`` over the kept terms (orthonormal basis), waves."""
    c = remove_terms(coeffs, remove)
    return float(np.sqrt(np.sum(c**2)))


def rms_nm(coeffs, wavelength_nm: float, remove=ALIGNMENT_NOLL) -> float:
    """RMS wavefront error in nm of optical path at ``wavelength_nm``."""
    return rms_waves(coeffs, remove) * float(wavelength_nm)


def pv_waves(coeffs, n_px: int = 256, remove=ALIGNMENT_NOLL) -> float:
    """Peak-to-valley, waves: the pixel centres of the ``n_px`` map inside the disk
    (:func:`~metrology.analysis.wavefront.wavefront_map`) plus ``4 n_px`` points on the rim."""
    c = remove_terms(coeffs, remove)
    w = pv_basis(n_px, c.size) @ c
    return float(w.max() - w.min())


PVR_NOLL_TERMS = 36
"""Zernike terms (Noll 1..36) whose fitted surface gives the PV part of PVr."""


def pvr_waves(coeffs, residual_rms: float, n_px: int = 256, remove=ALIGNMENT_NOLL) -> float:
    """Evans' robust peak-to-valley, waves.

    ``PVr = PV(Zernike fit, Noll 1..36, alignment removed) + 3 * RMS(fit residual)``
    (C. Evans, 2009; Evans used 36 Fringe terms, we use Noll 1..36).

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll coefficients, waves (terms beyond 36 are ignored).
    residual_rms : float
        RMS of the map minus its Zernike fit, waves.
    """
    c = np.asarray(coeffs, dtype=float)[:PVR_NOLL_TERMS]
    return pv_waves(c, n_px, remove) + 3.0 * float(residual_rms)


def strehl_mahajan(sigma_waves) -> float | np.ndarray:
    """Extended Marechal approximation (Mahajan): ``exp(-(2 pi sigma)^2)``, ``sigma`` in waves."""
    return np.exp(-((2.0 * np.pi * np.asarray(sigma_waves)) ** 2))


# ----------------------------------------------------------------------------- pupil


@lru_cache(maxsize=8)
def _pupil_geometry(n_pupil: int, n_terms: int):
    """Coverage (n, n), flat indices of covered pixels (C order), basis there (P, n_terms)."""
    x, y = grid_coordinates(n_pupil)
    half = 1.0 / n_pupil  # half a pixel in pupil radii
    sub = (np.arange(4) + 0.5) / 4.0 * 2 * half - half
    cover = np.zeros((n_pupil, n_pupil))
    for dy in sub:
        for dx in sub:
            cover += ((x + dx) ** 2 + (y + dy) ** 2 <= 1.0)
    cover /= 16.0
    idx = np.flatnonzero(cover.ravel() > 0)
    basis = zernike_basis(n_terms, x.ravel()[idx], y.ravel()[idx])
    for a in (cover, idx, basis):
        a.setflags(write=False)
    return cover, idx, basis


def _resample(amplitude, n_pupil: int) -> np.ndarray:
    a = np.asarray(amplitude, dtype=float)
    if a.shape == (n_pupil, n_pupil):
        return a
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"amplitude must be a square 2-D array, got shape {a.shape}")
    # both grids use pixel centres at (i - (N-1)/2) / (N/2): map target centres to source indices
    p = a.shape[0]
    u = (np.arange(n_pupil) - (n_pupil - 1) / 2.0) / (n_pupil / 2.0)
    src = u * (p / 2.0) + (p - 1) / 2.0
    rr, cc = np.meshgrid(src, src, indexing="ij")
    return ndimage.map_coordinates(np.nan_to_num(a), [rr, cc], order=1, mode="nearest")


def pupil_field(coeffs, amplitude=None, n_pupil: int = 128, remove=ALIGNMENT_NOLL) -> np.ndarray:
    """Complex pupil ``A exp(i 2 pi W)`` on ``n_pupil`` pixels across the diameter.

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll coefficients, waves.
    amplitude : ndarray, shape (P, P), optional
        Pupil amplitude on a square grid covering the unit disk (resampled bilinearly);
        uniform if omitted. Multiplied by the anti-aliased disk.

    Returns
    -------
    ndarray, shape (n_pupil, n_pupil), complex128
    """
    c = remove_terms(coeffs, remove)
    cover, idx, basis = _pupil_geometry(int(n_pupil), max(c.size, 1))
    amp = cover if amplitude is None else cover * _resample(amplitude, n_pupil)
    field = np.zeros(n_pupil * n_pupil, dtype=complex)
    w = basis @ c if c.size else 0.0
    field[idx] = amp.ravel()[idx] * np.exp(2j * np.pi * w)
    return field.reshape(n_pupil, n_pupil)


def strehl_on_axis(coeffs, amplitude=None, n_pupil: int = 128, remove=ALIGNMENT_NOLL) -> float:
    """Intensity at the paraxial image point relative to the unaberrated pupil.

    ``|sum A exp(i 2 pi W)|^2 / (sum A)^2``. A lower bound of the peak Strehl ratio (the peak
    may sit off-axis, e.g. with coma).
    """
    p = pupil_field(coeffs, amplitude, n_pupil, remove)
    a = np.abs(p).sum()
    return float(np.abs(p.sum()) ** 2 / a**2)


def psf(coeffs, amplitude=None, n_pupil: int = 128, pad: int = 4, remove=ALIGNMENT_NOLL):
    """Incoherent point spread function.

    Returns
    -------
    psf : ndarray, shape (n_pupil * pad, n_pupil * pad)
        Normalised so the unaberrated pupil of the same amplitude has peak 1; centred at
        ``[N // 2, N // 2]``; ``x`` along columns, ``y`` along rows.
    pixel_lambda_over_na : float
        Image-side pixel in units of ``lambda / NA`` (equals ``1 / (2 pad)``).
    """
    p = pupil_field(coeffs, amplitude, n_pupil, remove)
    n = int(n_pupil) * int(pad)
    big = np.zeros((n, n), dtype=complex)
    o = (n - n_pupil) // 2
    big[o : o + n_pupil, o : o + n_pupil] = p
    field = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(big)))
    ref = np.abs(p).sum() ** 2
    return np.abs(field) ** 2 / ref, 1.0 / (2.0 * pad)


def strehl_psf(coeffs, amplitude=None, n_pupil: int = 128, pad: int = 4, remove=ALIGNMENT_NOLL) -> float:
    """Strehl ratio as the peak of :func:`psf` (unaberrated peak = 1)."""
    return float(psf(coeffs, amplitude, n_pupil, pad, remove)[0].max())


# ----------------------------------------------------------------------------- MTF


def mtf_diffraction_limited(nu) -> np.ndarray:
    """Analytic MTF of a clear circular pupil, ``nu`` in units of the cut-off ``2 NA / lambda``.

    ``(2 / pi) (acos(nu) - nu sqrt(1 - nu^2))`` for ``0 <= nu <= 1``, 0 beyond.
    """
    nu = np.clip(np.abs(np.asarray(nu, dtype=float)), 0.0, 1.0)
    return (2.0 / np.pi) * (np.arccos(nu) - nu * np.sqrt(1.0 - nu**2))


def cutoff_cyc_per_mm(wavelength_nm: float, na: float) -> float:
    """Incoherent cut-off ``2 NA / lambda`` in cycles/mm (object side for an object-side NA)."""
    return 2.0 * float(na) / (float(wavelength_nm) * 1e-6)


def otf(coeffs, amplitude=None, n_pupil: int = 128, remove=ALIGNMENT_NOLL) -> np.ndarray:
    """Optical transfer function, the normalised pupil autocorrelation.

    Returns
    -------
    ndarray, shape (2 n_pupil, 2 n_pupil), complex
        Centred at ``[n_pupil, n_pupil]`` (zero frequency, value 1); one pixel is
        ``1 / n_pupil`` of the cut-off ``2 NA / lambda``; columns = ``x`` frequency.
    """
    p = pupil_field(coeffs, amplitude, n_pupil, remove)
    n = 2 * int(n_pupil)
    big = np.zeros((n, n), dtype=complex)
    big[:n_pupil, :n_pupil] = p
    f = np.fft.fft2(big)
    ac = np.fft.ifft2(np.abs(f) ** 2)  # circular = linear autocorrelation (2x padding)
    ac = np.fft.fftshift(ac)
    return ac / ac[n_pupil, n_pupil]


def _sample_mtf(o: np.ndarray, n_pupil: int, nu, azimuth_deg: float) -> np.ndarray:
    nu = np.atleast_1d(np.asarray(nu, dtype=float))
    a = math.radians(azimuth_deg)
    col = n_pupil + nu * n_pupil * math.cos(a)
    row = n_pupil + nu * n_pupil * math.sin(a)
    out = ndimage.map_coordinates(np.abs(o), [row, col], order=1, mode="constant", cval=0.0)
    out[nu >= 1.0] = 0.0
    return out


def mtf(coeffs, frequencies_norm, azimuth_deg: float = 0.0, amplitude=None, n_pupil: int = 128,
        remove=ALIGNMENT_NOLL) -> np.ndarray:
    """MTF ``|OTF|`` (1 at zero frequency) along one azimuth.

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll coefficients, waves.
    frequencies_norm : array_like, shape (F,)
        Spatial frequencies in units of the cut-off ``2 NA / lambda`` (convert cycles/mm with
        :func:`cutoff_cyc_per_mm`).
    azimuth_deg : float
        Direction of the frequency vector, from +x towards +y (0: bars varying along x).

    Returns
    -------
    ndarray, shape (F,)
    """
    o = otf(coeffs, amplitude, n_pupil, remove)
    return _sample_mtf(o, int(n_pupil), frequencies_norm, azimuth_deg)


def mtf_curve(coeffs, wavelength_nm: float | None = None, na: float | None = None, n_points: int = 101,
              amplitude=None, n_pupil: int = 128, remove=ALIGNMENT_NOLL) -> dict:
    """Full MTF curves along x (azimuth 0) and along y (azimuth 90 deg), not a radial average.

    Returns
    -------
    dict
        ``nu`` (F,) normalised frequency, ``mtf_x``, ``mtf_y``, ``mtf_diffraction_limited`` (F,),
        and ``frequency_cyc_per_mm`` (F,) when ``wavelength_nm`` and ``na`` are given.
    """
    nu = np.linspace(0.0, 1.0, int(n_points))
    o = otf(coeffs, amplitude, n_pupil, remove)
    out = dict(
        nu=nu,
        mtf_x=_sample_mtf(o, int(n_pupil), nu, 0.0),
        mtf_y=_sample_mtf(o, int(n_pupil), nu, 90.0),
        mtf_diffraction_limited=mtf_diffraction_limited(nu),
    )
    if wavelength_nm is not None and na is not None:
        out["frequency_cyc_per_mm"] = nu * cutoff_cyc_per_mm(wavelength_nm, na)
    return out


def mtf_azimuths(coeffs, frequencies_norm, azimuths_deg=(0.0, 45.0, 90.0, 135.0), amplitude=None,
                 n_pupil: int = 128, remove=ALIGNMENT_NOLL) -> np.ndarray:
    """MTF along several azimuths from one OTF (the judged MTF is their minimum, ``docs/spec.md``).

    Parameters
    ----------
    coeffs : array_like, shape (K,)
        Noll coefficients, waves.
    frequencies_norm : array_like, shape (F,)
        Frequencies in units of the cut-off ``2 NA / lambda``.
    azimuths_deg : sequence of float, length A
        Directions of the frequency vector, from +x towards +y.

    Returns
    -------
    ndarray, shape (A, F)
    """
    o = otf(coeffs, amplitude, n_pupil, remove)
    return np.stack([_sample_mtf(o, int(n_pupil), frequencies_norm, float(a)) for a in azimuths_deg])
