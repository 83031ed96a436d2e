"""The reconstructed sample as an array file with its pixel size (``inspect --export-sample``).

``tif``
    Two ``float32`` pages: page 0 the amplitude transmission (unitless), page 1 the phase (rad).
    The pixel pitch is in the resolution tags (``ResolutionUnit`` centimetre, ``XResolution`` =
    ``YResolution`` = pixels per cm) and, with everything else, in page 0's ``ImageDescription`` as
    JSON (``format: "metrology-sample"``, ``pixel_um``, ``pages``, ``axes``, units, the report ID, the
    lens serial).
``h5``
    HDF5 (h5py, the ``hdf5`` extra): datasets ``amplitude`` and ``phase_rad`` (N, N), ``x_um`` and
    ``y_um`` (N,) pixel-centre coordinates in the sample plane (centred on the tile), the same
    metadata as file attributes.

Frame: :mod:`metrology.conventions` (x along columns, y along rows, row 0 at the top: +y down).
Written atomically (temporary file in the same folder, then renamed).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from metrology.conventions import CONVENTIONS_TEXT
from metrology.errors import InputError
from metrology.io.files import atomic_write_bytes

SAMPLE_FORMATS = ("tif", "h5")
"""File formats of :func:`write_sample`."""

AXES = "x along columns, y along rows, row 0 at the top (+y down), pixel centres at (i - (N-1)/2) * pixel_um"


def check_sample_format(fmt: str) -> None:
    """Raise :class:`InputError` (before any work) for an unknown format or a missing h5py."""
    if fmt not in SAMPLE_FORMATS:
        raise InputError("--export-sample", f"must be one of {', '.join(SAMPLE_FORMATS)}, got {fmt!r}")
    if fmt == "h5":
        require_h5py("--export-sample h5")


def require_h5py(what: str):
    """The ``h5py`` module, or an :class:`InputError` saying how to install it."""
    try:
        # lazy: h5py is an optional extra, loaded only for an HDF5 export
        import h5py
    except ImportError:
        raise InputError(what, "needs h5py: pip install 'lens-metrology[hdf5]'") from None
    return h5py


def sample_metadata(arrays, doc: dict) -> dict:
    """Metadata of a sample export (JSON-able)."""
    n = np.asarray(arrays.sample_amplitude).shape[0]
    return {
        "format": "metrology-sample", "format_version": 1, "pages": ["amplitude", "phase_rad"],
        "pixel_um": float(arrays.sample_pixel_um), "shape": [int(n), int(n)],
        "units": {"amplitude": "1 (transmission)", "phase_rad": "rad", "pixel_um": "um, sample plane"},
        "axes": AXES, "tile_center_mm": list(doc["tile_center_mm"]), "wavelength_nm": doc["wavelength_nm"],
        "report_id": doc.get("report", {}).get("id", ""), "lens_serial": doc["lens"]["serial"],
        "station_id": doc["station"]["id"], "created_utc": doc["created_utc"], "conventions": CONVENTIONS_TEXT,
    }


def write_sample(path, arrays, doc: dict) -> Path:
    """Write ``arrays.sample_amplitude`` / ``sample_phase`` with their pixel size to ``path``
    (atomically). The format follows the suffix (``.tif`` or ``.h5``). Returns ``path``."""
    path = Path(path)
    return atomic_write_bytes(path, sample_bytes(path.suffix.lstrip("."), arrays, doc, source=path))


def sample_bytes(fmt: str, arrays, doc: dict, source="--export-sample") -> bytes:
    """The sample file (:data:`SAMPLE_FORMATS`) in memory (see the module docstring)."""
    if arrays.sample_amplitude is None or arrays.sample_phase is None:
        raise InputError(source, "no reconstructed sample to export")
    check_sample_format(fmt)
    meta = sample_metadata(arrays, doc)
    amp = np.asarray(arrays.sample_amplitude, dtype=np.float32)
    phase = np.asarray(arrays.sample_phase, dtype=np.float32)
    if fmt == "tif":
        return _tiff_bytes(amp, phase, meta)
    n = amp.shape[0]
    coords = (np.arange(n) - (n - 1) / 2.0) * meta["pixel_um"]
    data = {"amplitude": amp, "phase_rad": phase, "x_um": coords, "y_um": coords}
    return h5_bytes(data, meta, "--export-sample h5")


def h5_bytes(datasets: dict, attrs: dict, what: str) -> bytes:
    """An HDF5 file in memory: ``datasets`` (name -> array; 2-D ones gzip-compressed) and file
    attributes ``attrs`` (dicts and lists stored as JSON text). Written whole, then atomically."""
    h5py = require_h5py(what)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, value in datasets.items():
            value = np.asarray(value)
            f.create_dataset(name, data=value, compression="gzip" if value.ndim >= 2 else None)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return buf.getvalue()


def _tiff_bytes(amp, phase, meta) -> bytes:
    # lazy: tifffile loads only when a sample is exported (start-up time)
    import tifffile

    per_cm = 1e4 / meta["pixel_um"]
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for i, page in enumerate((amp, phase)):
            tw.write(page, photometric="minisblack", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                     metadata=None, description=json.dumps(meta) if i == 0 else None)
    return buf.getvalue()

