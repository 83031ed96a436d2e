"""Capture files: one multi-page TIFF, one page per frame, JSON metadata in page 0.

Layout (full specification in ``docs/formats.md``): page ``j`` holds frame ``j`` (``uint8`` or
``uint16`` counts, or ``float32`` for HDR-merged data), all pages of the same size (square for a
one-tile station, the full sensor frame of a full-field station); the first page's ``ImageDescription`` tag holds ASCII JSON::

    {"format": "metrology-capture", "format_version": 1, "station_id": ..., "lens_serial": ...,
     "lens_model": ..., "reference_sample": ..., "wavelength_nm": ..., "created_utc": ...,
     "frames": [{"led_row": r, "led_col": c, "exposure_s": t}, ...], ...extra keys...}

``frames[j]`` describes page ``j``.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile

from metrology.errors import InputError
from metrology.io.files import atomic_write_bytes, read_bounded
from metrology.limits import (
    MAX_CAPTURE_BYTES, MAX_CAPTURE_FILE_BYTES, MAX_CAPTURE_FRAMES, MAX_COMPRESSION_RATIO, MAX_EXPOSURE_S,
    MAX_FRAME_PX, MAX_JSON_DEPTH, MAX_LED_SIDE, MAX_METADATA_CHARS, MAX_NAME_CHARS, MAX_SERIAL_CHARS, check_text,
    json_depth_exceeds,
)

FORMAT_NAME = "metrology-capture"
FORMAT_VERSION = 1
FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_STANDARD_KEYS = (
    "format", "format_version", "station_id", "lens_serial", "lens_model", "reference_sample",
    "wavelength_nm", "created_utc", "frames",
)
_FRAME_KEYS = ("led_row", "led_col", "exposure_s")
COMPRESSIONS = (1, 8, 32946, 50013, 34925)
"""TIFF compressions read: none, Deflate (8, 32946, 50013) and LZMA (34925)."""


def _now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Capture:
    """One station capture: frames, their LEDs and exposures, and who/what was measured.

    Attributes
    ----------
    frames : ndarray, shape (J, rows, cols), uint8, uint16 or float32 (square unless full-field)
        Frame ``j`` in counts.
    leds : list of (int, int)
        Board ``(row, col)`` of the LED lit for each frame.
    exposure_s : ndarray, shape (J,), float64
        Exposure time of each frame (s).
    station_id, lens_serial, lens_model, reference_sample : str
    wavelength_nm : float or None
    created_utc : str
        ISO 8601 UTC time stamp (filled with "now" when empty).
    extra : dict
        Any further JSON metadata (kept verbatim).
    sha256 : str
        SHA-256 of the file's bytes as read (empty for a capture made in memory).
    """

    frames: np.ndarray
    leds: list
    exposure_s: np.ndarray
    station_id: str
    lens_serial: str = ""
    lens_model: str = ""
    reference_sample: str = ""
    wavelength_nm: float | None = None
    created_utc: str = ""
    extra: dict = field(default_factory=dict)
    sha256: str = field(default="", compare=False)

    def __post_init__(self):
        self.leds = [(int(r), int(c)) for r, c in self.leds]
        self.exposure_s = np.asarray(self.exposure_s, dtype=np.float64).reshape(-1)
        if not self.created_utc:
            self.created_utc = _now_utc()

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_px(self) -> int:
        return int(self.frames.shape[-1])

    def metadata(self) -> dict:
        """The JSON metadata object written to page 0."""
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "station_id": self.station_id,
            "lens_serial": self.lens_serial,
            "lens_model": self.lens_model,
            "reference_sample": self.reference_sample,
            "wavelength_nm": self.wavelength_nm,
            "created_utc": self.created_utc,
            "frames": [
                {"led_row": r, "led_col": c, "exposure_s": float(t)}
                for (r, c), t in zip(self.leds, self.exposure_s)
            ],
        }
        for key, value in self.extra.items():
            if key in meta:
                raise ValueError(f"extra metadata key {key!r} clashes with a standard key")
            meta[key] = value
        return meta

    def __eq__(self, other) -> bool:
        if not isinstance(other, Capture):
            return NotImplemented
        return (
            self.frames.dtype == other.frames.dtype
            and np.array_equal(self.frames, other.frames)
            and np.array_equal(self.exposure_s, other.exposure_s)
            and self.metadata() == other.metadata()
        )


def relative_exposure(capture: Capture) -> np.ndarray:
    """Exposure of each frame divided by the median exposure, shape (J,)."""
    t = np.asarray(capture.exposure_s, dtype=np.float64)
    return t / np.median(t)


def _validate(source, frames: np.ndarray, leds, exposure) -> None:
    if frames.ndim != 3:
        raise InputError(source, f"frames must be a stack (J, n, n), got shape {frames.shape}")
    j, h, w = frames.shape
    if j == 0:
        raise InputError(source, "no frames")
    if frames.dtype not in FRAME_DTYPES:
        raise InputError(source, f"frame dtype must be uint8, uint16 or float32, got {frames.dtype}")
    if len(leds) != j:
        raise InputError(source, f"{j} frames but {len(leds)} LEDs in the metadata frame list")
    if len(exposure) != j:
        raise InputError(source, f"{j} frames but {len(exposure)} exposure times")
    if not np.all(np.isfinite(exposure)) or np.any(np.asarray(exposure) <= 0):
        raise InputError(source, "every exposure_s must be a finite number > 0")
    if frames.dtype.kind == "f":
        bad = ~np.isfinite(frames)
        if bad.any():
            k = int(np.argmax(bad.reshape(j, -1).any(axis=1)))
            raise InputError(source, f"frame {k} contains NaN or inf ({int(bad.sum())} values in all)")
    if not frames.any():
        raise InputError(source, "all frames are zero (blank capture)")


def write_capture(path, capture: Capture) -> Path:
    """Write ``capture`` to ``path`` atomically (multi-page TIFF, metadata JSON in page 0).

    Raises
    ------
    InputError
        If the capture is malformed (same checks as :func:`read_capture`).
    """
    path = Path(path)
    frames = np.asarray(capture.frames)
    _validate(path, frames, capture.leds, capture.exposure_s)
    description = json.dumps(capture.metadata(), ensure_ascii=True, allow_nan=False)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tw:
        for j in range(frames.shape[0]):
            tw.write(
                np.ascontiguousarray(frames[j]),
                photometric="minisblack",
                description=description if j == 0 else None,
                metadata=None,
                software="metrology",
            )
    return atomic_write_bytes(path, buffer.getvalue())


def _parse_metadata(source, description):
    if not description:
        raise InputError(source, "no capture metadata: page 0 has no ImageDescription JSON")
    if len(description) > MAX_METADATA_CHARS:
        raise InputError(source, f"capture metadata is {len(description)} characters long (at most {MAX_METADATA_CHARS})")
    try:
        meta = json.loads(description)
    except json.JSONDecodeError as exc:
        raise InputError(source, f"capture metadata is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(source, "capture metadata nests too deeply") from None
    if not isinstance(meta, dict):
        raise InputError(source, "capture metadata must be a JSON object")
    if json_depth_exceeds(meta):
        raise InputError(source, f"capture metadata nests objects/arrays more than {MAX_JSON_DEPTH} deep")
    if meta.get("format") != FORMAT_NAME:
        raise InputError(source, f"capture metadata 'format' must be {FORMAT_NAME!r}, got {meta.get('format')!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(source, f"capture format_version {meta.get('format_version')!r} is not supported (expected 1)")
    if not isinstance(meta.get("station_id"), str) or not meta["station_id"]:
        raise InputError(source, "capture metadata 'station_id' must be a non-empty string")
    for key, limit in (("station_id", MAX_NAME_CHARS), ("lens_serial", MAX_SERIAL_CHARS),
                       ("lens_model", MAX_NAME_CHARS), ("reference_sample", MAX_NAME_CHARS),
                       ("created_utc", MAX_NAME_CHARS)):
        if not isinstance(meta.get(key, ""), str):
            raise InputError(source, f"capture metadata '{key}' must be a string")
        check_text(meta.get(key, ""), source, f"capture metadata '{key}'", limit)
    wl = meta.get("wavelength_nm")
    if wl is not None and (isinstance(wl, bool) or not isinstance(wl, (int, float)) or not 0 < wl < math.inf):
        raise InputError(source, f"capture metadata 'wavelength_nm' must be a number > 0, got {wl!r}")
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise InputError(source, "capture metadata 'frames' must be a list")
    if len(frames) > MAX_CAPTURE_FRAMES:
        raise InputError(source, f"capture metadata lists {len(frames)} frames (at most {MAX_CAPTURE_FRAMES})")
    leds, exposure = [], []
    for j, entry in enumerate(frames):
        if not isinstance(entry, dict):
            raise InputError(source, f"frames[{j}] must be an object")
        unknown = set(entry) - set(_FRAME_KEYS)
        if unknown:
            raise InputError(source, f"frames[{j}]: unknown key '{sorted(unknown)[0]}'")
        for key in _FRAME_KEYS:
            if key not in entry:
                raise InputError(source, f"frames[{j}]: missing '{key}'")
        r, c, t = entry["led_row"], entry["led_col"], entry["exposure_s"]
        if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_LED_SIDE for v in (r, c)):
            raise InputError(source, f"frames[{j}]: led_row and led_col must be integers in 0..{MAX_LED_SIDE - 1}")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= MAX_EXPOSURE_S:
            raise InputError(source, f"frames[{j}]: exposure_s must be a number in (0, {MAX_EXPOSURE_S:g}] s, got {t!r}")
        leds.append((r, c))
        exposure.append(float(t))
    return meta, leds, np.asarray(exposure, dtype=np.float64)


def _read_once(path: Path) -> bytes:
    """The file's bytes, read once (the capture is parsed and hashed from the same bytes)."""
    data = read_bounded(path, "capture", MAX_CAPTURE_FILE_BYTES)
    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise InputError(path, "not a TIFF file")
    return data


def checked_pages(source, tf, n_pages: int, file_size: int, dtypes=FRAME_DTYPES) -> list:
    """The pages of the open TIFF ``tf``, checked from their headers alone (nothing decoded).

    Their number must be ``n_pages`` (at most ``n_pages + 1`` are walked, however many the file
    chains); every page a 2-D grey image of the same size (at most :data:`MAX_FRAME_PX` a side) and
    sample type (one of ``dtypes``), compressed in a way this reader supports, with data inside the
    file and not shared with another page; the decoded size of all pages within
    :data:`MAX_CAPTURE_BYTES` and :data:`MAX_COMPRESSION_RATIO` times ``file_size``.
    """
    pages = []
    tf.pages.cache = False  # one page object at a time
    for page in tf.pages:
        if len(pages) == n_pages:
            raise InputError(source, f"more than {n_pages} frames but {n_pages} LEDs in the metadata frame list")
        pages.append(page)
    if len(pages) != n_pages:
        raise InputError(source, f"{len(pages)} frames but {n_pages} LEDs in the metadata frame list")
    first = pages[0]
    if len(first.shape) != 2:
        raise InputError(source, f"each page must be a 2-D grey frame, got shape {first.shape}")
    h, w = first.shape
    if max(h, w) > MAX_FRAME_PX:
        raise InputError(source, f"frames are {h}x{w} px (at most {MAX_FRAME_PX} a side)")
    if first.dtype not in dtypes:
        raise InputError(source, f"frame dtype must be {' or '.join(map(str, dtypes))}, got {first.dtype}")
    _check_page_data(source, pages, file_size)
    decoded = len(pages) * h * w * first.dtype.itemsize
    if decoded > MAX_CAPTURE_BYTES:
        raise InputError(source, f"{len(pages)} frames of {h}x{w} px are {decoded} bytes (at most {MAX_CAPTURE_BYTES})")
    if decoded > MAX_COMPRESSION_RATIO * file_size:
        raise InputError(source, f"{file_size} bytes claim {decoded} bytes of frames: compression ratio "
                                 f"{decoded / file_size:.0f} > {MAX_COMPRESSION_RATIO:g}")
    return pages


def _check_page_data(source, pages: list, file_size: int) -> None:
    """Same shape and type on every page, a supported compression, data inside the file and not
    shared between pages."""
    first = pages[0]
    ranges = []
    for j, page in enumerate(pages):
        if page.shape != first.shape:
            raise InputError(source, f"frames have different shapes: page 0 is {first.shape}, page {j} is {page.shape}")
        if page.dtype != first.dtype:
            raise InputError(source, f"frames have different dtypes: page 0 is {first.dtype}, page {j} is {page.dtype}")
        if int(page.compression) not in COMPRESSIONS:
            raise InputError(source, f"page {j}: TIFF compression {int(page.compression)} is not supported "
                                     "(uncompressed, Deflate or LZMA)")
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if offset < 0 or count < 0 or offset + count > file_size:
                raise InputError(source, f"truncated TIFF: page {j} data ends past the end of the file")
            ranges.append((offset, count, j))
    ranges.sort()
    for (o1, n1, j1), (o2, _n2, j2) in zip(ranges, ranges[1:]):
        if o1 + n1 > o2:
            raise InputError(source, f"pages {j1} and {j2} share image data (a TIFF that is not a capture)")


def _decompressed_size_ok(raw: bytes, compression: int, limit: int) -> bool:
    """Whether ``raw`` decompresses to at most ``limit`` bytes (decompressing no more than that)."""
    if compression in (8, 32946, 50013):
        out = zlib.decompressobj().decompress(raw, limit + 1)
    else:  # 34925, LZMA
        out = lzma.LZMADecompressor().decompress(raw, max_length=limit + 1)
    return len(out) <= limit


def decode_pages(source, pages: list, data: bytes) -> np.ndarray:
    """Decode the checked pages into one preallocated stack (J, n, n); a compressed segment is first
    decompressed with its page's size as the limit, so that no segment can expand beyond it."""
    first = pages[0]
    frames = np.empty((len(pages),) + tuple(first.shape), dtype=first.dtype)
    for j, page in enumerate(pages):
        compression = int(page.compression)
        if compression != 1:
            limit = int(np.prod(page.chunks)) * first.dtype.itemsize
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                if not _decompressed_size_ok(data[offset : offset + count], compression, limit):
                    raise InputError(source, f"page {j}: compressed data expands beyond the page's {limit} bytes")
        frames[j] = page.asarray()
    return frames


def read_capture(path) -> Capture:
    """Read and validate a capture file.

    The file is read once: its SHA-256 (``Capture.sha256``) is of the very bytes parsed. The TIFF
    structure is checked from its headers before any frame is decoded (page count against the
    metadata's frame list, frame size, sample type, compression, data ranges, decoded size and
    compression ratio: :mod:`metrology.limits`), so an oversized or hostile file fails in
    milliseconds.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Capture

    Raises
    ------
    InputError
        Missing file, not a TIFF, truncated or corrupt TIFF, missing/invalid metadata, frame count
        different from the LED list, mismatched frames, a limit exceeded, NaN/inf
        values, every frame zero. (A single all-zero frame is accepted: the solver flags it as a
        data-quality issue.)
    """
    path = Path(path)
    data = _read_once(path)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            meta, leds, exposure = _parse_metadata(path, tf.pages[0].description)
            if not leds:
                raise InputError(path, "no frames")
            frames = decode_pages(path, checked_pages(path, tf, len(leds), len(data)), data)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(path, f"corrupt or truncated TIFF ({type(exc).__name__}: {exc})") from None
    del data
    _validate(path, frames, leds, exposure)
    extra = {k: v for k, v in meta.items() if k not in _STANDARD_KEYS}
    wl = meta.get("wavelength_nm")
    return Capture(
        frames=frames,
        leds=leds,
        exposure_s=exposure,
        station_id=meta["station_id"],
        lens_serial=meta.get("lens_serial", ""),
        lens_model=meta.get("lens_model", ""),
        reference_sample=meta.get("reference_sample", ""),
        wavelength_nm=None if wl is None else float(wl),
        created_utc=meta.get("created_utc", "") or "",
        extra=extra,
        sha256=sha256,
    )
