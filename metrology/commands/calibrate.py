"""``metrology calibrate``: calibrate a station with a certified golden lens.

Measures the golden lens from CAPTURE on the station, estimating the station misalignment;
checks closure on every certified Zernike term (En = |measured - certified| / sqrt(U_meas^2 +
U_cert^2) <= 1); records the calibration, with its validity period, in the audit store. Prints
a one-line result; with --out also writes a JSON summary there. Exit code 0 closure passed,
1 closure failed (recorded as a failed calibration), 2 bad input or usage (nothing recorded).
"""

from __future__ import annotations

import argparse

from metrology.commands.options import add_audit_option, add_device_option, check_device

EXIT_CODES_CALIBRATE = """exit codes:
  0  closure passed (calibration recorded, valid for the station's validity_days)
  1  closure failed (recorded as a failed calibration: inspect is INCONCLUSIVE until recalibrated)
  2  bad input or usage (the message names the file and the problem; nothing recorded)
  4  internal error (e.g. the audit store locked or failing; the message says what happened)
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate a station with a golden lens: closure check (En <= 1), recorded in the audit store",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog=EXIT_CODES_CALIBRATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("capture", metavar="CAPTURE", help="capture TIFF of the golden lens (docs/formats.md)")
    p.add_argument("--station", required=True, metavar="STATION.toml", help="station description")
    p.add_argument("--golden", required=True, metavar="CERT.toml",
                   help="golden lens certificate (docs/calibration.md)")
    p.add_argument("--operator", default="", metavar="NAME", help="operator name (recorded)")
    add_audit_option(p)
    p.add_argument("--reference", default=None, metavar="SAMPLE",
                   help="reference sample: catalogue ID[:seed=N] or a .npy map (default: from the capture)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the JSON summary (optional)")
    add_device_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.calibration import one_line, run_calibration
    from metrology.progress import Progress

    check_device(args)  # an unusable device fails now, before anything is read or fitted

    with Progress("calibrate") as progress:
        outcome = run_calibration(
            args.capture, args.station, args.golden, operator=args.operator, audit_db=args.audit_db,
            out_dir=args.out, reference=args.reference, progress=progress, device=args.device,
        )
    print(one_line(outcome))
    return outcome.exit_code
