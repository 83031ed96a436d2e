"""File formats: captures (multi-page TIFF + JSON), station and lens descriptions (TOML).

The formats are specified in ``docs/formats.md``. Every reader raises
:class:`metrology.errors.InputError` naming the file and the problem; every writer is atomic
(:mod:`metrology.io.files`: temporary file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

from metrology.io.files import atomic_write_bytes, atomic_write_text, file_sha256, safe_file_name
from metrology.io.capture import Capture, read_capture, relative_exposure, write_capture
from metrology.io.lens_file import LensDescription, load_lens
from metrology.io.station_file import StationDescription, load_station

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "safe_file_name",
    "Capture",
    "read_capture",
    "write_capture",
    "relative_exposure",
    "StationDescription",
    "load_station",
    "LensDescription",
    "load_lens",
]
