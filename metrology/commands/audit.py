"""``metrology audit``: create, verify and list the audit store, and write the audit PDF.

Actions: init (create the store; an existing store is left untouched and reported), verify (check
the hash chain), list (the history as a table, or --json), report (the audit PDF of a station). The
store is --audit-db if given (an SQLite file or a postgresql:// URL), else $METROLOGY_AUDIT_DB, else
$METROLOGY_SITE_DIR/audit.sqlite, else ~/.metrology/audit.sqlite: the same default as inspect and
calibrate. Only init creates a store: for the other actions a missing one is an input error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from metrology.audit.canonical import parse_utc
from metrology.audit.store import KINDS, AuditStore, resolve_db_path
from metrology.commands.options import add_audit_option
from metrology.errors import InputError
from metrology.tables import format_table


EXIT_CODES_AUDIT = """exit codes:
  0  success (verify: chain intact)
  1  verify found problems (each printed, naming the record seq)
  2  bad input (missing or foreign store, bad date, unwritable output folder)
"""


def _open(args) -> AuditStore:
    return AuditStore(resolve_db_path(args.audit_db), create=False)


def run_init(args) -> int:
    """Create the store (with its folder); an existing audit store is verified and left as it is."""
    path = resolve_db_path(args.audit_db)
    try:
        AuditStore(path, create=False).close()
        existed = True
    except InputError:  # none yet (a foreign or broken one fails again just below, with its reason)
        existed = False
    with AuditStore(path, create=True) as store:
        res = store.verify()
    if existed:
        print(f"audit store {path} already exists: {res.n_records} records, head seq {res.head_seq}"
              f"{'' if res.ok else ', CHAIN PROBLEMS (run metrology audit verify)'}")
    else:
        print(f"created audit store {path}")
    return 0


def _since(args):
    return parse_utc(args.since, "--since") if getattr(args, "since", None) else None


def _summary(rec) -> str:
    c = rec.content
    if rec.kind == "inspection":
        lens = c.get("lens") or {}
        return f"serial {lens.get('serial', '?')}: {c.get('verdict', lens.get('verdict', '?'))}"
    if rec.kind == "calibration":
        cl = c.get("closure") or {}
        verdict = "PASS" if c.get("passed") else "FAIL"
        until = c.get("valid_until") or "-"
        return (f"golden {cl.get('golden_lens_id', '?')}: closure {verdict}, max En "
                f"{float(cl.get('max_En', float('nan'))):.2f}, valid until {until[:19]}")
    if rec.kind == "alarm":
        return (f"{str(c.get('rule', '?')).upper()} {c.get('parameter', '?')} on record seq "
                f"{c.get('record_seq', '?')}: {float(c.get('value', float('nan'))):.6g} vs limit "
                f"{float(c.get('limit', float('nan'))):.6g}")
    return ""


def run_verify(args) -> int:
    with _open(args) as store:
        res = store.verify()
    if res.ok:
        print(f"audit store {store.location}: OK, {res.n_records} records, hash chain intact")
        print(f"head: seq {res.head_seq} chain SHA-256 {res.head_chain_sha256}")
        return 0
    print(f"audit store {store.location}: {len(res.problems)} problem(s) in {res.n_records} records")
    for p in res.problems:
        print(f"  {p}")
    return 1


def run_list(args) -> int:
    with _open(args) as store:
        recs = store.records(station_id=args.station, kind=args.kind, since=_since(args))
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in recs], indent=1, ensure_ascii=False))
        return 0
    rows = [["seq", "time (UTC)", "station", "kind", "operator", "summary"]]
    for r in recs:
        rows.append([r.seq, r.utc[:19].replace("T", " "), r.station_id, r.kind,
                     r.content.get("operator", "-") if r.kind != "alarm" else "-", _summary(r)])
    print(format_table(rows))
    print(f"{len(recs)} record(s)")
    return 0


def run_report(args) -> int:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.audit.report_pdf import write_audit_report

    since = _since(args)
    with _open(args) as store:
        if args.station not in store.stations():
            raise InputError("--station", f"no record of station {args.station!r} in {store.location}")
        path = write_audit_report(store, args.station, since=since, out_dir=args.out)
    print(path)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``metrology audit`` and its sub-commands ``verify``, ``list``, ``report``."""
    p = subparsers.add_parser(
        "audit", help="create, verify, list and report the calibration audit store",
        description=__doc__.split("\n\n", 1)[1], epilog=EXIT_CODES_AUDIT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION")

    i = sub.add_parser("init", help="create the audit store (the default one, or --audit-db)")
    add_audit_option(i)
    i.set_defaults(func=run_init)

    v = sub.add_parser("verify", help="check the hash chain; exit 1 naming each bad record")
    add_audit_option(v)
    v.set_defaults(func=run_verify)

    ls = sub.add_parser("list", help="print the history as a table")
    ls.add_argument("--station", metavar="ID", default=None, help="only this station")
    ls.add_argument("--since", metavar="DATE", default=None, help="from this date/time (UTC, ISO 8601)")
    ls.add_argument("--kind", choices=KINDS, default=None, help="only this record kind")
    ls.add_argument("--json", action="store_true",
                    help="print the records as a JSON array (seq, kind, station_id, utc, content and hashes)")
    add_audit_option(ls)
    ls.set_defaults(func=run_list)

    r = sub.add_parser("report", help="write the audit PDF of a station and print its path")
    r.add_argument("--station", metavar="ID", required=True, help="station id")
    r.add_argument("--since", metavar="DATE", default=None, help="from this date/time (UTC, ISO 8601)")
    r.add_argument("--out", metavar="DIR", required=True, help="output folder (created if missing)")
    add_audit_option(r)
    r.set_defaults(func=run_report)

    def _usage(args):
        p.print_help()
        return 2

    p.set_defaults(func=_usage)
    return p
