"""Capture files: one multi-page TIFF, one page per frame, JSON metadata in page 0.

Layout (full specification in ``docs/formats.md``): page ``j`` holds frame ``j`` (``uint16``
counts, or ``float32`` for HDR-merged data), all pages square and of the same size; the first
page's ``ImageDescription`` tag holds ASCII JSON::

    {"format": "metrology-capture", "format_version": 1, "station_id": ..., "lens_serial": ...,
     "lens_model": ..., "reference_sample": ..., "wavelength_nm": ..., "created_utc": ...,
     "frames": [{"led_row": r, "led_col": c, "exposure_s": t}, ...], ...extra keys...}

``frames[j]`` describes page ``j``.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile

from metrology.errors import InputError
from metrology.io.files import atomic_write_bytes

FORMAT_NAME = "metrology-capture"
FORMAT_VERSION = 1
FRAME_DTYPES = (np.dtype(np.uint16), np.dtype(np.float32))
_STANDARD_KEYS = (
    "format", "format_version", "station_id", "lens_serial", "lens_model", "reference_sample",
    "wavelength_nm", "created_utc", "frames",
)
_FRAME_KEYS = ("led_row", "led_col", "exposure_s")


def _now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Capture:
    """One station capture: frames, their LEDs and exposures, and who/what was measured.

    Attributes
    ----------
    frames : ndarray, shape (J, n, n), uint16 or float32
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
    if h != w:
        raise InputError(source, f"frames must be square, got {h}x{w}")
    if frames.dtype not in FRAME_DTYPES:
        raise InputError(source, f"frame dtype must be uint16 or float32, got {frames.dtype}")
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
    try:
        meta = json.loads(description)
    except json.JSONDecodeError as exc:
        raise InputError(source, f"capture metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise InputError(source, "capture metadata must be a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise InputError(source, f"capture metadata 'format' must be {FORMAT_NAME!r}, got {meta.get('format')!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(source, f"capture format_version {meta.get('format_version')!r} is not supported (expected 1)")
    if not isinstance(meta.get("station_id"), str) or not meta["station_id"]:
        raise InputError(source, "capture metadata 'station_id' must be a non-empty string")
    for key in ("lens_serial", "lens_model", "reference_sample", "created_utc"):
        if not isinstance(meta.get(key, ""), str):
            raise InputError(source, f"capture metadata '{key}' must be a string")
    wl = meta.get("wavelength_nm")
    if wl is not None and (isinstance(wl, bool) or not isinstance(wl, (int, float)) or not wl > 0):
        raise InputError(source, f"capture metadata 'wavelength_nm' must be a number > 0, got {wl!r}")
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise InputError(source, "capture metadata 'frames' must be a list")
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
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (r, c)):
            raise InputError(source, f"frames[{j}]: led_row and led_col must be integers >= 0")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
            raise InputError(source, f"frames[{j}]: exposure_s must be a number > 0, got {t!r}")
        leds.append((r, c))
        exposure.append(float(t))
    return meta, leds, np.asarray(exposure, dtype=np.float64)


def read_capture(path) -> Capture:
    """Read and validate a capture file.

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
        different from the LED list, non-square or mismatched frames, NaN/inf values, every frame
        zero. (A single all-zero frame is accepted: the solver flags it as a data-quality issue.)
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "capture file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a capture file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(path, f"cannot read capture file: {exc.strerror or exc}") from None
    if magic not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise InputError(path, "not a TIFF file")
    try:
        with tifffile.TiffFile(path) as tf:
            pages = list(tf.pages)
            if not pages:
                raise InputError(path, "TIFF has no pages")
            description = pages[0].description
            arrays = []
            for j, page in enumerate(pages):
                end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
                if end > size:
                    raise InputError(path, f"truncated TIFF: page {j} data ends past the end of the file")
                arrays.append(page.asarray())
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(path, f"corrupt or truncated TIFF ({type(exc).__name__}: {exc})") from None
    meta, leds, exposure = _parse_metadata(path, description)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InputError(path, f"frames have different shapes: {sorted(shapes)}")
    if arrays[0].ndim != 2:
        raise InputError(path, f"each page must be a 2-D grey frame, got shape {arrays[0].shape}")
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise InputError(path, f"frames have different dtypes: {sorted(map(str, dtypes))}")
    frames = np.stack(arrays)
    if frames.dtype not in FRAME_DTYPES:
        raise InputError(path, f"frame dtype must be uint16 or float32, got {frames.dtype}")
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
    )
