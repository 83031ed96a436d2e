"""The ``metrology`` command.

Exit codes (also in the README and ``--help``)::

    0  PASS (inspect) / success (other commands)
    1  FAIL
    2  bad input or usage (missing or malformed file, invalid option, unwritable output)
    3  INCONCLUSIVE

Each sub-command lives in its own module exposing ``add_parser(subparsers)``; the parser's
``func(args) -> int`` does the work. Input errors are raised as :class:`metrology.errors.InputError`
and printed here as one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import sys

from metrology import __version__
from metrology.commands import audit, calibrate, demo, inspect, simulate, zernike_export
from metrology.commands.options import EXIT_CODES
from metrology.errors import InputError

COMMANDS = (simulate, inspect, demo, zernike_export, calibrate, audit)
"""The sub-command modules, in ``--help`` order (each imports its heavy modules only when it runs)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metrology",
        description="Lens metrology on LED-array QA stations (uncertainty-aware Fourier ptychography).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"metrology {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"metrology: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metrology: interrupted; nothing was written", file=sys.stderr)
        return 130
