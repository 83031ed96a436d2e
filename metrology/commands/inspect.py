"""``metrology inspect``: the QA station command.

Loads and validates everything first, reconstructs, analyses, decides, and writes
<station>_<serial>_<UTC time>_<token>.pdf and .json into --out (default reports/) together with the
audit record (one unit: all or nothing). Prints a one-line verdict on stdout and its progress
(stage, iteration, ETA) on stderr; exit code 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input or usage, 4
internal error.

Batch: several captures, a folder of captures or --manifest CSV run as a batch (--jobs N local
processes, or --executor ray): one verdict line per capture as it finishes, a summary table, and the
worst outcome as exit code (2 any capture not inspected > 3 any INCONCLUSIVE > 1 any FAIL > 0 all
PASS). Captures whose result already exists in --out with the same input hashes are skipped
(docs/batch.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from metrology.commands.options import EXIT_CODES, add_audit_option, add_device_option, check_device

BATCH_EXIT_CODES = """batch exit code (the worst capture, worst first):
  2  a capture could not be inspected (its line names the file and the problem)
  3  else an INCONCLUSIVE
  1  else a FAIL
  0  every capture PASSed
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="inspect lenses from captures: reconstruct, judge against the spec, write PDF + JSON",
        description=" ".join(part.replace("\n", " ") for part in __doc__.split("\n\n")[1:3]),
        epilog=EXIT_CODES + BATCH_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("capture", metavar="CAPTURE", nargs="*",
                   help="capture TIFF (docs/formats.md); several files or folders make a batch")
    p.add_argument("--station", default=None, metavar="STATION.toml",
                   help="station description (required unless every manifest row names one)")
    p.add_argument("--spec", default=None, metavar="SPEC.toml", help="lens specification (docs/spec.md)")
    p.add_argument("--reference", default=None, metavar="SAMPLE",
                   help="reference sample: catalogue ID[:seed=N] or a .npy map (default: from the capture)")
    p.add_argument("--serial", default=None, metavar="ID", help="lens serial (default: from the capture)")
    p.add_argument("--operator", default="", metavar="NAME", help="operator name for the report")
    p.add_argument("--out", default="reports", metavar="DIR", help="output folder (default reports/)")
    add_audit_option(p)
    p.add_argument("--mode", choices=("known", "prior", "blind"), default="known",
                   help="reference sample known (default), used as a prior, or unknown")
    p.add_argument("--max-iterations", type=int, default=None, metavar="N", help="solver iterations (default per mode)")
    p.add_argument("--export-sample", choices=("tif", "h5"), default=None,
                   help="also write the reconstructed sample with its pixel size (<stem>_sample.tif or .h5)")
    add_device_option(p)
    p.add_argument("--tile-jobs", type=int, default=None, metavar="N",
                   help="a full-field capture: processes fitting its tiles (default one per CPU core, at most "
                        "one per tile; same result for any N). One capture only: a batch fits each capture's tiles in "
                        "its worker")
    b = p.add_argument_group("batch")
    b.add_argument("--manifest", default=None, metavar="CSV",
                   help="CSV of captures (columns capture, station, spec, serial, operator, reference, mode)")
    b.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="captures inspected at once (local: processes, default 1; Ray: tasks in flight, "
                        "default the cluster's CPUs)")
    b.add_argument("--executor", default="local", metavar="local|ray|ray://HOST:PORT",
                   help="where a batch runs: local processes (default), Ray on this machine, or a Ray cluster")
    b.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads per capture (default 1; a Ray task reserves N CPUs). Results are "
                        "bit-identical across executors for the same N")
    b.add_argument("--no-resume", action="store_true",
                   help="inspect every capture again, even those with a result of the same inputs in --out")
    p.set_defaults(func=run)


def _is_batch(args) -> bool:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from pathlib import Path

    return (len(args.capture) != 1 or args.manifest is not None or Path(args.capture[0]).is_dir()
            or (args.jobs or 1) > 1 or args.executor != "local")


def run(args) -> int:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.errors import InputError

    check_device(args)  # an unusable device fails now, before anything is read or fitted
    if args.tile_jobs is not None and args.tile_jobs < 1:
        raise InputError("--tile-jobs", f"must be at least 1, got {args.tile_jobs}")
    if not args.capture and args.manifest is None:
        raise InputError("CAPTURE", "no capture given (capture files, folders, or --manifest CSV)")
    if args.station is None and args.manifest is None:
        raise InputError("--station", "required (the station description of the captures)")
    if _is_batch(args):
        if args.tile_jobs is not None:
            raise InputError("--tile-jobs", "applies to one capture (a batch fits each capture's tiles in its worker)")
        return run_batch(args)
    # lazy: a single capture loads neither the batch executors nor Ray
    from metrology.batch.run import verdict_line
    from metrology.inspection import run_inspection
    from metrology.progress import Progress

    with Progress("inspect") as progress:
        outcome = run_inspection(
            args.capture[0], args.station, args.spec, reference=args.reference, serial=args.serial,
            operator=args.operator, out_dir=args.out, audit_db=args.audit_db, mode=args.mode,
            max_iterations=args.max_iterations, progress=progress, device=args.device,
            export_sample=args.export_sample, notify=_notify,
            tile_jobs=args.tile_jobs,
        )
    print(verdict_line(outcome.document, outcome.pdf_path))
    return outcome.exit_code


def _notify(line: str) -> None:
    """What the run tells its user besides the progress: a line on standard error."""
    print(f"metrology: {line}", file=sys.stderr, flush=True)


def _absolute(path):
    """Absolute path (the workers of a cluster may run in another folder); None and URLs unchanged."""
    return path if not path or "://" in str(path) else os.path.abspath(path)


def run_batch(args) -> int:
    """Many captures: collect, check the shared inputs once, run on the executor, summarise."""
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.audit.store import AuditStore
    from metrology.batch import Job, collect_jobs, run_batch as run_jobs
    from metrology.batch.executors import make_executor
    from metrology.batch.run import summary_table, worst_exit_code
    from metrology.errors import InputError
    from metrology.pipeline import audit_store_path, check_output_dir

    if args.serial is not None:
        raise InputError("--serial", "names one lens: give serials of a batch in a manifest's 'serial' column")
    executor = make_executor(args.executor, args.jobs, args.threads, notify=_notify)
    check_output_dir(args.out)
    store = audit_store_path(args.audit_db)
    if store is not None:
        AuditStore(store).close()  # created once here; a foreign store stops the batch before it starts
    reference = _absolute(args.reference) if args.reference and os.path.isfile(args.reference) else args.reference
    base = Job(index=0, capture="", station=_absolute(args.station), spec=_absolute(args.spec),
               out_dir=_absolute(args.out), reference=reference, operator=args.operator, mode=args.mode,
               max_iterations=args.max_iterations, device=args.device,
               audit_db=None if store is None else str(_absolute(store)), threads=args.threads)
    jobs = collect_jobs(args.capture, args.manifest, base=base)
    print(f"{len(jobs)} capture(s) on {executor.description}", flush=True)
    try:
        outcomes = run_jobs(jobs, executor, resume=not args.no_resume, report=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("metrology: interrupted; the captures reported above are complete, the others left nothing "
              "(run the same command again to continue)", file=sys.stderr)
        return 130
    print()
    print(summary_table(outcomes))
    return worst_exit_code(outcomes)
