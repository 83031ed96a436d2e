"""The lens wavefront map made from a result document (``metrology wavefront-export``).

The map is ``W = sum_j c_j Z_j`` over the lens terms (Noll 5..K; the alignment terms 1-4 removed)
on the standard grid of :mod:`metrology.analysis.wavefront`: ``N x N`` pixels over the unit disk,
pixel centres at ``u_i = (i - (N - 1) / 2) / (N / 2)``, ``x = u[column]``, ``y = u[row]`` (row 0 at
the top: **+y down**), in waves at the measurement wavelength; outside the pupil ``NaN``
(``mask = 0``). The normalisation radius ``rho = 1`` is the pupil edge at the NA,
``|f| = NA / lambda`` (cycles/um in the sample plane).

``h5``
    HDF5 (h5py, the ``hdf5`` extra): datasets ``wavefront_waves`` (N, N) float64, ``mask`` (N, N)
    uint8 (1 inside the pupil), ``x``, ``y`` (N,) normalised pupil coordinates, ``zernike_noll`` and
    ``zernike_waves`` (the coefficients it was made from); file attributes: ``units``,
    ``wavelength_nm``, ``na``, ``normalisation_radius``, ``axes``, ``zernike``, ``alignment_removed``,
    ``conventions``, ``lens_serial``, ``report_id``, ``created_utc``, ``source_sha256`` (of the result).
``csv``
    ``#`` metadata lines (as the attributes), then ``x, y, wavefront_waves`` for every pixel inside
    the pupil (row by row).
``npy``
    The (N, N) float64 map (NaN outside) as a plain ``.npy``; its metadata in ``<file>.json``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from metrology.analysis.wavefront import grid_coordinates, wavefront_map
from metrology.conventions import CONVENTIONS_TEXT
from metrology.io.files import atomic_write_bytes, atomic_write_text
from metrology.limits import one_line
from metrology.report.sample_files import h5_bytes
from metrology.report.zernike_files import noll_vector

WAVEFRONT_FORMATS = ("h5", "csv", "npy")
AXES = ("x = u[column], y = u[row], u_i = (i - (N - 1) / 2) / (N / 2) in pupil radii; row 0 at the top "
        "(+y down); theta from +x towards +y")


def wavefront_metadata(doc: dict, n_px: int, source_sha256: str = "") -> dict:
    """Attributes of a wavefront export (JSON-able)."""
    return {
        "format": "metrology-wavefront", "format_version": 1, "shape": [int(n_px), int(n_px)],
        "units": "waves", "wavelength_nm": float(doc["wavelength_nm"]), "na": float(doc["na"]),
        "normalisation_radius": "rho = 1 at the pupil edge, |f| = NA / lambda (cycles/um, sample plane)",
        "axes": AXES, "zernike": "Noll ordering and normalisation; lens terms only",
        "alignment_removed": "Noll 1-4 (piston, tilt, defocus)", "mask": "1 inside the pupil, 0 outside (NaN)",
        "conventions": CONVENTIONS_TEXT, "lens_serial": doc["lens"]["serial"],
        "report_id": (doc.get("report") or {}).get("id", ""), "created_utc": doc["created_utc"],
        "source_sha256": source_sha256,
    }


def wavefront_arrays(doc: dict, n_px: int = 256) -> dict:
    """``wavefront_waves`` (N, N), ``mask``, ``x``, ``y``, ``zernike_noll``, ``zernike_waves``."""
    c = noll_vector(doc)
    w = wavefront_map(np.nan_to_num(c), int(n_px))
    u = grid_coordinates(int(n_px))[0][0]
    return {"wavefront_waves": w, "mask": np.isfinite(w).astype(np.uint8), "x": u, "y": u.copy(),
            "zernike_noll": np.arange(1, c.size + 1), "zernike_waves": c}


def write_wavefront(doc: dict, path, fmt: str, n_px: int = 256, source_sha256: str = "") -> list[Path]:
    """Write the wavefront map of ``doc`` to ``path`` in ``fmt``; returns the files written."""
    if fmt not in WAVEFRONT_FORMATS:
        raise ValueError(f"format must be one of {WAVEFRONT_FORMATS}, got {fmt!r}")
    path = Path(path)
    arrays = wavefront_arrays(doc, n_px)
    meta = wavefront_metadata(doc, n_px, source_sha256)
    if fmt == "h5":
        return [atomic_write_bytes(path, h5_bytes(arrays, meta, "wavefront-export --format h5"))]
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, arrays["wavefront_waves"], allow_pickle=False)
        side = path.with_name(path.name + ".json")
        return [atomic_write_bytes(path, buf.getvalue()), atomic_write_text(side, json.dumps(meta, indent=1) + "\n")]
    return [atomic_write_text(path, wavefront_csv(arrays, meta))]


def wavefront_csv(arrays: dict, meta: dict) -> str:
    """CSV text: ``# key: value`` lines, then ``x, y, wavefront_waves`` inside the pupil."""
    buf = io.StringIO()
    for key, value in meta.items():
        buf.write(f"# {key}: {json.dumps(value) if isinstance(value, list) else one_line(value)}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["x", "y", "wavefront_waves"])
    wf = arrays["wavefront_waves"]
    rows, cols = np.nonzero(arrays["mask"])
    for r, c in zip(rows, cols):
        w.writerow([repr(float(arrays["x"][c])), repr(float(arrays["y"][r])), repr(float(wf[r, c]))])
    return buf.getvalue()

