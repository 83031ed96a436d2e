"""``metrology wavefront-export``: the lens wavefront map of a result as an array file.

The map (waves, Noll 1-4 removed, NaN outside the pupil, +y down) is rebuilt from the result's
Zernike coefficients on an N x N grid over the pupil. Formats: h5 (datasets wavefront_waves, mask,
x, y and the coefficients; grid, units, conventions and the source as attributes; needs h5py),
csv (metadata lines, then x, y, wavefront_waves inside the pupil), npy (the map; metadata in
<file>.json). Written atomically to --out. Details: docs/report.md.
"""

from __future__ import annotations

import argparse

from metrology.errors import InputError
from metrology.io.files import file_sha256
from metrology.report.document import read_document
from metrology.report.sample_files import require_h5py
from metrology.report.wavefront_files import WAVEFRONT_FORMATS, write_wavefront


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``wavefront-export`` on the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "wavefront-export", help="export the lens wavefront map (HDF5, CSV or NPY)",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "))
    p.add_argument("result", metavar="RESULT.json", help="inspection result (schema 1.0)")
    p.add_argument("--format", required=True, choices=WAVEFRONT_FORMATS, help="output format")
    p.add_argument("--out", required=True, metavar="FILE", help="output file")
    p.add_argument("--n-px", type=int, default=256, metavar="N", help="grid size across the pupil (default 256)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Read, validate and export; 0 on success (``InputError`` -> exit 2)."""
    if not 8 <= args.n_px <= 4096:
        raise InputError("--n-px", f"must be in 8..4096, got {args.n_px}")
    if args.format == "h5":
        require_h5py("wavefront-export --format h5")
    doc = read_document(args.result)
    try:
        paths = write_wavefront(doc, args.out, args.format, args.n_px, file_sha256(args.result, "result"))
    except OSError as exc:
        raise InputError(args.out, f"cannot write: {exc.strerror or exc}") from None
    print(" ".join(str(p) for p in paths))
    return 0
