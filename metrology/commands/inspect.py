"""``metrology inspect``: the QA station command.

Loads and validates everything first, reconstructs, analyses, decides, and writes
``<serial>_<UTC time>.pdf`` and ``.json`` into ``--out`` (default ``reports/``). Prints a
one-line verdict on stdout; exit code 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input or usage.
"""

from __future__ import annotations

import argparse

from metrology.commands.options import EXIT_CODES, add_device_option, check_device


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="inspect a lens from a capture: reconstruct, judge against its spec, write PDF + JSON",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("capture", metavar="CAPTURE", help="capture TIFF (docs/formats.md)")
    p.add_argument("--station", required=True, metavar="STATION.toml", help="station description")
    p.add_argument("--spec", required=True, metavar="SPEC.toml", help="lens specification (docs/spec.md)")
    p.add_argument("--reference", default=None, metavar="SAMPLE",
                   help="reference sample: catalogue ID[:seed=N] or a .npy map (default: from the capture)")
    p.add_argument("--serial", default=None, metavar="ID", help="lens serial (default: from the capture)")
    p.add_argument("--operator", default="", metavar="NAME", help="operator name for the report")
    p.add_argument("--out", default="reports", metavar="DIR", help="output folder (default reports/)")
    p.add_argument("--audit-db", default=None, metavar="PATH",
                   help="audit store (default $METROLOGY_AUDIT_DB or $METROLOGY_SITE_DIR/audit.sqlite; none if unset)")
    p.add_argument("--mode", choices=("known", "prior", "blind"), default="known",
                   help="reference sample known (default), used as a prior, or unknown")
    p.add_argument("--max-iterations", type=int, default=None, metavar="N", help="solver iterations (default per mode)")
    add_device_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.inspection import run_inspection
    from metrology.progress import ProgressBar

    check_device(args)  # an unusable device fails now, before anything is read or fitted

    with ProgressBar(0, "reconstructing") as bar:
        outcome = run_inspection(
            args.capture, args.station, args.spec, reference=args.reference, serial=args.serial,
            operator=args.operator, out_dir=args.out, audit_db=args.audit_db, mode=args.mode,
            max_iterations=args.max_iterations, progress=lambda i, n, loss: bar(i, n), device=args.device,
        )
    print(one_line(outcome))
    return outcome.exit_code


def one_line(outcome) -> str:
    doc = outcome.document
    rms = doc["figures_of_merit"]["rms_waves"]
    v = doc["verdict"]
    why = "" if v["overall"] == "PASS" else f" ({v['reasons'][0]})" if v["reasons"] else ""
    return (f"{v['overall']} {doc['lens']['serial']}: RMS {rms['value']:.4f} +/- {rms['U']:.4f} waves (k=2)"
            f"{why} -> {outcome.pdf_path}")
