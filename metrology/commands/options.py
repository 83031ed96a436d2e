"""Options and texts shared by several sub-commands."""

from __future__ import annotations

EXIT_CODES = """exit codes:
  0  PASS (inspect) or success
  1  FAIL
  2  bad input or usage (the message names the file and the problem)
  3  INCONCLUSIVE
  4  internal error (nothing half-done is left; the message says what happened)
"""


def add_device_option(parser) -> None:
    """``--device``: where the fit runs (:func:`metrology.solver.device.compute_device`)."""
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="where the fit runs: auto (a CUDA GPU when torch sees one, default), cpu, cuda[:N]")


def check_device(args) -> None:
    """Fail now (input error, exit 2) on an unusable ``--device``, before anything is read or fitted."""
    from metrology.solver.device import compute_device  # lazy: torch, start-up time of every command

    compute_device(args.device)


AUDIT_HELP = ("audit store: SQLite file or postgresql:// URL; default $METROLOGY_AUDIT_DB, else "
              "$METROLOGY_SITE_DIR/audit.sqlite, else ~/.metrology/audit.sqlite (the same for every command; "
              "'metrology audit init' creates it)")


def add_audit_option(parser) -> None:
    """``--audit-db``: the audit store, with the one default every command shares."""
    parser.add_argument("--audit-db", default=None, metavar="PATH|URL", help=AUDIT_HELP)
