"""``metrology demo``: a whole inspection on the embedded default.

Simulates a capture of the reference sample through the demo lens on the demo station (files
shipped in metrology/data/, copies of fixtures/), inspects it against the demo spec and writes the
report to --out (default reports/), printing where it is. The inspection is recorded in
DIR/demo-audit.sqlite unless --audit-db names another store. With --full-field: a full-frame
capture of a lens with field-dependent aberrations on the full-field bench (3 x 3 tiles), judged
per field zone; the PDF gains the full-field page.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from metrology.commands.options import add_device_option, check_device

DATA = Path(__file__).resolve().parent.parent / "data"
DEMO_FILES = {
    "station": "bench-4x-15x15.toml",
    "lens": "good-4x.toml",
    "spec": "plan-4x-010.toml",
}
FULL_FIELD_FILES = {
    "station": "bench-4x-fullfield.toml",
    "lens": "field-4x.toml",
    "spec": "plan-4x-010-field.toml",
}
"""The full-field demo (``--full-field``): copies of the fixtures of ``docs/full-field.md``; the lens
passes on axis and fails the spec's "full field" zone on astigmatism."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="simulate a capture and inspect it (the embedded default)",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--out", default="reports", metavar="DIR", help="output folder (default reports/)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated capture (default 1)")
    p.add_argument("--lens", default=None, metavar="L.toml", help="another lens description")
    p.add_argument("--full-field", action="store_true",
                   help="a full-field capture (3 x 3 tiles, field-dependent lens, a spec with field zones): the "
                        "PDF gains the full-field page")
    p.add_argument("--audit-db", default=None, metavar="PATH",
                   help="audit store for the demo's record (default DIR/demo-audit.sqlite: a demo never "
                        "writes into the station's store)")
    add_device_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.batch.run import verdict_line
    from metrology.inspection import run_inspection
    from metrology.io import write_capture
    from metrology.io.lens_file import load_lens
    from metrology.io.station_file import load_station
    from metrology.pipeline import check_output_dir
    from metrology.progress import Progress
    from metrology.simulate import draw_misalignment, simulate_capture
    from metrology.simulate_field import simulate_full_frame

    check_device(args)
    check_output_dir(args.out)
    files = FULL_FIELD_FILES if args.full_field else DEMO_FILES
    station_path = DATA / files["station"]
    lens = load_lens(args.lens or DATA / files["lens"])
    station = load_station(station_path)
    truth = draw_misalignment(np.random.default_rng([args.seed, 1]), n_leds=len(station.led_list()))
    audit_db = args.audit_db or Path(args.out) / "demo-audit.sqlite"
    with Progress("demo") as progress:
        if station.field_layout is not None:
            progress.stage("simulating full frames (one block of the field at a time)",
                           len(station.field_layout.blocks(station.fov_um / station.frame_px)))
            capture, _ = simulate_full_frame(station, lens, truth, seed=args.seed, progress=progress)
        else:
            progress.stage("simulating the capture", len(station.led_list()))
            capture, _ = simulate_capture(station, lens.coefficients(), truth, seed=args.seed, lens=lens,
                                          progress=progress)
        with tempfile.TemporaryDirectory() as tmp:
            cap_path = Path(tmp) / "demo-capture.tif"
            write_capture(cap_path, capture)
            outcome = run_inspection(cap_path, station_path, DATA / files["spec"], out_dir=args.out,
                                     operator="demo", progress=progress, device=args.device, audit_db=audit_db)
    print(verdict_line(outcome.document, outcome.pdf_path))
    print(f"report: {outcome.pdf_path}\nresult: {outcome.json_path}")
    return outcome.exit_code
