"""The ``metrology`` command.

Exit codes (also in the README and ``--help``)::

    0  PASS (inspect) / success (other commands)
    1  FAIL
    2  bad input or usage (missing or malformed file, invalid option, unwritable output)
    3  INCONCLUSIVE
    4  internal error (the run could not complete: a locked or failing audit store, a full disk, a
       bug); nothing half-done is left, the message says what happened

Each sub-command lives in its own module exposing ``add_parser(subparsers)``; the parser's
``func(args) -> int`` does the work. Input errors are raised as :class:`metrology.errors.InputError`
and printed here as one line naming the file and the problem; any other exception is an internal
error, printed as one line (never a traceback) with exit code 4, which no verdict uses: a crash never
reads as FAIL.
"""

from __future__ import annotations

import argparse
import sys

from metrology import __version__
from metrology.commands import audit, calibrate, demo, inspect, simulate, wavefront_export, zernike_export
from metrology.commands.options import EXIT_CODES
from metrology.errors import InputError
from metrology.limits import one_line

EXIT_INTERNAL = 4
"""Exit code of an internal error (distinct from every verdict)."""

COMMANDS = (simulate, inspect, demo, zernike_export, wavefront_export, calibrate, audit)
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
        print(f"metrology: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metrology: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the top-level handler: one line and exit 4, never a traceback
        print(f"metrology: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (any line break or control character shown as ``?``)."""
    return one_line(" ".join(str(exc).split()) or "(no message)")
