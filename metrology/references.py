"""Reference samples: analytic complex transmissions over a periodic field of view.

Every sample is defined over a square field of view of side ``fov_um`` (um) and is periodic over
it (it tiles the plane), so the simulator (fine grid) and the station model (reconstruction
grid) can evaluate the *same* object on different grids. Grid pixel ``(row, col)`` of an
``n_px`` grid sits at ``x = col * fov_um / n_px``, ``y = row * fov_um / n_px`` (x along columns,
y along rows, see :mod:`metrology.conventions`).

Catalogue (:data:`CATALOGUE`):

``random-broadband``
    Exactly band-limited: a finite Fourier series on the lattice ``k / fov_um`` with
    ``|f| <= cutoff_cpum`` (default 1.2 cycles/um). Amplitude roughly in [0.6, 1], phase roughly
    +/- 1 rad, flat (broad) spectrum. Identical on every grid with ``n_px > 2 cutoff fov`` (on a
    coarser grid the components above its Nyquist frequency are dropped, never aliased).
``siemens-star``
    Binary amplitude/phase star (36 spoke periods) centred on the field; clear outside.
``usaf-bars``
    USAF-style groups of three bars, horizontal and vertical, periods from 8 um down to 1 um.

:func:`load_reference_file` reads a measured/designed transmission from ``.npy`` or ``.tif``.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import tifffile

from metrology.errors import InputError
from metrology.io.capture import checked_pages, decode_pages
from metrology.io.files import read_bounded

CATALOGUE = {
    "random-broadband": "band-limited random complex transmission (amplitude 0.6-1, phase +/-1 rad)",
    "siemens-star": "binary amplitude/phase Siemens star, 36 spoke periods",
    "usaf-bars": "USAF-style three-bar groups, periods 8 um to 1 um",
}
"""Known reference sample IDs and what they are."""

DEFAULT_SEED = 0
DEFAULT_CUTOFF_CPUM = 1.2


def _lattice_index(n: int) -> np.ndarray:
    """DFT frequency indices of an ``n`` grid (numpy ``fftfreq`` order, integers)."""
    return np.fft.fftfreq(n, 1.0 / n).round().astype(int)


def broadband_coefficients(fov_um: float, cutoff_cpum: float = DEFAULT_CUTOFF_CPUM, seed: int | None = None):
    """Fourier coefficients of ``random-broadband`` on the lattice ``(kx, ky) / fov_um``.

    The amplitude and phase are random fields with a flat spectrum up to ``cutoff_cpum``;
    ``a exp(i phi)`` is formed on a canonical grid, projected onto ``|f| <= cutoff_cpum`` and scaled
    so that ``|t| <= 1`` on that grid; the result is exactly band-limited and depends only on
    ``(fov_um, cutoff_cpum, seed)``.

    Returns
    -------
    kx, ky : ndarray of int, shape (M,)
        Lattice indices (cycles per field of view).
    coeff : ndarray complex128, shape (M,)
        ``t(x, y) = sum coeff exp(i 2 pi (kx x + ky y) / fov_um)``.
    """
    rng = np.random.default_rng(DEFAULT_SEED if seed is None else seed)
    kmax = int(math.floor(cutoff_cpum * fov_um))
    m = 1 << int(math.ceil(math.log2(4 * kmax + 8)))  # canonical grid: room for the harmonics
    k = _lattice_index(m)
    kx, ky = np.meshgrid(k, k)
    radius = np.hypot(kx, ky)

    def field(std):
        spec = (rng.standard_normal((m, m)) + 1j * rng.standard_normal((m, m))) * (radius <= kmax)
        spec[0, 0] = 0.0
        f = np.fft.ifft2(spec).real
        return f * (std / max(f.std(), 1e-300))

    amplitude = np.clip(0.8 + field(0.08), 0.55, 1.0)
    phase = np.clip(field(0.45), -1.3, 1.3)
    spectrum = np.fft.fft2(amplitude * np.exp(1j * phase)) / m**2
    keep = radius <= cutoff_cpum * fov_um
    spectrum = np.where(keep, spectrum, 0.0)
    peak = np.abs(np.fft.ifft2(spectrum) * m**2).max()  # passive sample: |t| <= 1
    return kx[keep], ky[keep], spectrum[keep] / max(peak, 1.0)


def _synthesise(kx, ky, coeff, n_px: int) -> np.ndarray:
    """Evaluate a Fourier series on an ``n_px`` grid (components above its Nyquist dropped)."""
    keep = (np.abs(kx) < n_px / 2) & (np.abs(ky) < n_px / 2)
    spec = np.zeros((n_px, n_px), dtype=np.complex128)
    spec[ky[keep] % n_px, kx[keep] % n_px] = coeff[keep]
    return np.fft.ifft2(spec) * n_px**2


def _supersampled(fn, fov_um: float, n_px: int, sub: int = 4) -> np.ndarray:
    """Average ``fn(x, y)`` (um) over ``sub x sub`` points symmetric about each pixel centre."""
    step = fov_um / n_px
    offsets = (np.arange(sub) - (sub - 1) / 2) * step / sub
    base = np.arange(n_px) * step
    out = np.zeros((n_px, n_px), dtype=np.complex128)
    for oy in offsets:
        for ox in offsets:
            x, y = np.meshgrid(base + ox, base + oy)
            out += fn(x, y)
    return out / sub**2


def _siemens_star(fov_um: float, n_px: int, spokes: int = 36) -> np.ndarray:
    c = fov_um / 2
    r_max = 0.45 * fov_um
    dark = 0.35 * np.exp(1j * 0.8)

    def fn(x, y):
        dx, dy = x - c, y - c
        theta = np.arctan2(dy, dx)
        inside = np.hypot(dx, dy) <= r_max
        on = np.cos(spokes * theta) >= 0
        return np.where(inside & ~on, dark, 1.0 + 0j)

    return _supersampled(fn, fov_um, n_px)


def _usaf_bars(fov_um: float, n_px: int) -> np.ndarray:
    periods = (8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.2, 1.0)  # um per line pair
    cells = math.ceil(math.sqrt(len(periods)))
    cell = fov_um / cells
    chrome = 0.05 + 0j

    def fn(x, y):
        out = np.ones_like(x, dtype=np.complex128)
        for i, p in enumerate(periods):
            cx0, cy0 = (i % cells) * cell, (i // cells) * cell
            u, v = x - cx0 - 0.1 * cell, y - cy0 - 0.1 * cell
            length = min(5 * p, 0.38 * cell)
            w = p / 2
            # three vertical bars (period p along x), then three horizontal bars beside them
            for b in range(3):
                vert = (u >= b * p) & (u < b * p + w) & (v >= 0) & (v < length)
                horiz = (v >= b * p) & (v < b * p + w) & (u >= 0.45 * cell) & (u < 0.45 * cell + length)
                out = np.where(vert | horiz, chrome, out)
        return out

    return _supersampled(fn, fov_um, n_px)


def reference_transmission(sample_id: str, fov_um: float, n_px: int, seed: int | None = None,
                           cutoff_cpum: float = DEFAULT_CUTOFF_CPUM) -> np.ndarray:
    """Complex transmission of a catalogued reference sample on an ``n_px x n_px`` grid.

    Parameters
    ----------
    sample_id : str
        One of :data:`CATALOGUE`.
    fov_um : float
        Field of view (um); pixel = ``fov_um / n_px``.
    n_px : int
        Grid side.
    seed : int, optional
        Seed of ``random-broadband`` (default 0); ignored by the deterministic targets.
    cutoff_cpum : float
        Band limit of ``random-broadband`` (cycles/um).

    Returns
    -------
    ndarray complex128, shape (n_px, n_px)
    """
    if sample_id not in CATALOGUE:
        raise InputError(sample_id, f"unknown reference sample; known: {', '.join(CATALOGUE)}")
    if not fov_um > 0 or n_px < 2:
        raise ValueError("fov_um must be > 0 and n_px >= 2")
    if sample_id == "random-broadband":
        return _synthesise(*broadband_coefficients(fov_um, cutoff_cpum, seed), n_px)
    if sample_id == "siemens-star":
        return _siemens_star(fov_um, n_px)
    return _usaf_bars(fov_um, n_px)


def continued_periodically(transmission, offset_px: int) -> np.ndarray:
    """A catalogue map over the frame (N, N) continued ``offset_px`` grid pixels beyond each side by
    its own periodic continuation, shape (N + 2 offset, N + 2 offset): every catalogue sample repeats
    with the field of view, so this is the sample a model with a margin
    (:attr:`metrology.physics.StationGeometry.margin_px`) sees beyond the frame."""
    t = np.asarray(transmission)
    return np.pad(t, int(offset_px), mode="wrap") if offset_px else t


def catalogue_over_field(sample_id: str, fov_um: float, geometry, seed: int | None = None) -> np.ndarray:
    """A catalogue sample over a model's whole field (the frame and its margin), on its grid:
    drawn over the frame's field of view ``fov_um`` at ``frame_px * upsampling`` samples, then
    :func:`continued_periodically` by ``geometry.frame_offset_px``; shape ``(object_px, object_px)``."""
    inner = reference_transmission(sample_id, fov_um, geometry.frame_px * geometry.upsampling, seed=seed)
    return continued_periodically(inner, geometry.frame_offset_px)


def fourier_resample(image: np.ndarray, n_px: int) -> np.ndarray:
    """Resample a periodic square image to ``n_px x n_px`` by zero-padding/cropping its spectrum.

    Keeps the mean value; the Nyquist row/column of an even grid is split symmetrically.
    """
    m = image.shape[0]
    spec = np.fft.fftshift(np.fft.fft2(image))
    out = np.zeros((n_px, n_px), dtype=np.complex128)
    k = min(m, n_px)
    h = k // 2
    src = slice(m // 2 - h, m // 2 - h + k)
    dst = slice(n_px // 2 - h, n_px // 2 - h + k)
    out[dst, dst] = spec[src, src]
    if k % 2 == 0 and m != n_px:  # the Nyquist line of the smaller grid
        if n_px > m:  # split it between -N/2 and +N/2
            lo = n_px // 2 - h
            out[lo, :] *= 0.5
            out[:, lo] *= 0.5
            out[lo + k, dst] = out[lo, dst]
            out[dst, lo + k] = out[dst, lo]
            out[lo + k, lo + k] = out[lo, lo]
        else:  # fold +N/2 onto -N/2
            hi = m // 2 + h
            out[0, :] += spec[hi, src]
            out[:, 0] += spec[src, hi]
            out[0, 0] += spec[hi, hi]
    return np.fft.ifft2(np.fft.ifftshift(out)) * (n_px / m) ** 2


MAX_REFERENCE_FILE_BYTES = 1024**3
"""Size of a reference map file (bytes)."""


def _npy_image(path, raw: bytes) -> np.ndarray:
    """The array of ``.npy`` bytes, its header checked against the bytes before anything is allocated."""
    fh = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read_header(fh)
    except Exception as exc:  # noqa: BLE001 - any damaged header is bad input
        raise InputError(path, f"cannot read reference file ({type(exc).__name__}: {exc})") from None
    if len(shape) != 2:
        raise InputError(path, f"reference image must be 2-D, got shape {shape}")
    if dtype.kind not in "uifc":
        raise InputError(path, f"reference image must be numeric, got {dtype}")
    if min(shape) < 2:
        raise InputError(path, f"reference image is {shape[1]}x{shape[0]} px (at least 2x2)")
    if shape[0] * shape[1] * dtype.itemsize > len(raw) - fh.tell():
        raise InputError(path, f"reference file holds fewer bytes than its {shape[1]}x{shape[0]} {dtype} header says")
    fh.seek(0)
    return np.load(fh, allow_pickle=False)


def _tif_image(path, raw: bytes) -> np.ndarray:
    """The single page of TIFF bytes, checked from its header before it is decoded."""
    dtypes = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.float32, np.float64))
    with tifffile.TiffFile(io.BytesIO(raw)) as tf:
        return decode_pages(path, checked_pages(path, tf, 1, len(raw), dtypes), raw)[0]


def read_reference_image(path) -> tuple[np.ndarray, str]:
    """The image of a reference file (``.npy``: complex or real; ``.tif``: amplitude, one square page),
    read once, and the SHA-256 of the bytes read.

    Raises
    ------
    InputError
        Missing, too large, unreadable or damaged file; not 2-D, not numeric, smaller than 2 x 2.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff"):
        raise InputError(path, "reference file must be .npy or .tif")
    raw = read_bounded(path, "reference", MAX_REFERENCE_FILE_BYTES)
    try:
        data = np.asarray(_npy_image(path, raw) if suffix == ".npy" else _tif_image(path, raw))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy and tifffile raise many types for damaged files
        raise InputError(path, f"cannot read reference file ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2:
        raise InputError(path, f"reference image must be 2-D, got shape {data.shape}")
    if data.dtype.kind not in "uifc":
        raise InputError(path, f"reference image must be numeric, got {data.dtype}")
    return data, hashlib.sha256(raw).hexdigest()


def reference_from_image(data: np.ndarray, pixel_um: float, fov_um: float, n_px: int, source="reference") -> np.ndarray:
    """The central ``round(fov_um / pixel_um)`` pixels of ``data`` as one period of the sample,
    Fourier-resampled to ``n_px`` (pixel ``fov_um / n_px``); complex128, shape (n_px, n_px)."""
    if not pixel_um > 0:
        raise InputError(source, f"pixel size must be > 0 um, got {pixel_um!r}")
    data = np.asarray(data).astype(np.complex128)
    if not np.all(np.isfinite(data)):
        raise InputError(source, "reference image contains NaN or inf")
    m = int(round(fov_um / pixel_um))
    if m < 2 or m > min(data.shape):
        raise InputError(source, f"image {data.shape[1]}x{data.shape[0]} px of {pixel_um:g} um does not cover the "
                                 f"{fov_um:g} um field of view ({m} px needed)")
    r0, c0 = (data.shape[0] - m) // 2, (data.shape[1] - m) // 2
    return fourier_resample(data[r0 : r0 + m, c0 : c0 + m], n_px)


def load_reference_file(path, pixel_um: float, fov_um: float, n_px: int) -> np.ndarray:
    """Load a reference transmission from ``.npy`` (complex or real) or ``.tif`` (amplitude).

    The central ``round(fov_um / pixel_um)`` pixels are taken as one period of the sample and
    Fourier-resampled to ``n_px`` (pixel ``fov_um / n_px``): :func:`read_reference_image`, then
    :func:`reference_from_image`.

    Parameters
    ----------
    path : str or Path
    pixel_um : float
        Pixel size of the file's image in the sample plane (um).
    fov_um : float
        Field of view to cover (um).
    n_px : int
        Output grid side.

    Returns
    -------
    ndarray complex128, shape (n_px, n_px)
    """
    if not pixel_um > 0:
        raise InputError(path, f"pixel size must be > 0 um, got {pixel_um!r}")
    return reference_from_image(read_reference_image(path)[0], pixel_um, fov_um, n_px, path)
