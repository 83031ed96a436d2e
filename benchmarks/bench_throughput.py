"""Throughput of a QA line: captures per hour with 1 process, ``--jobs 2`` and Ray (local).

The same captures (default 16, small: 32x32-px frames, 7x7 LEDs of the fixture 4x bench, four lens
levels) are inspected end to end (fit, uncertainty, verdict, PDF + JSON, SQLite audit record) by
each executor in turn, each capture with one torch thread. Prints, per executor: wall time,
captures per hour, seconds per capture, the peak memory of each worker process, and whether the
result documents equal those of the 1-process run (compared as JSON without timings, time stamps,
the report id and the audit record).
The fits run on the CPU by default (``--device cpu``); ``--device cuda`` runs every fit on a GPU
(each worker process its own CUDA context on the one GPU), ``jobsN`` any number of local workers.

    python benchmarks/bench_throughput.py                 # 16 captures, all three executors
    python benchmarks/bench_throughput.py --captures 4 --executors local,jobs2
    python benchmarks/bench_throughput.py --device cuda --executors local,jobs2,jobs4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections import defaultdict

import numpy as np

from common import ROOT, machine

OUT = ROOT / "benchmarks" / "out" / "throughput"
SPEC = ROOT / "fixtures" / "specs" / "plan-4x-010.toml"
LEVELS = (0.02, 0.04, 0.06, 0.12)  # lens RMS waves: PASS, PASS, near the 0.07 limit, FAIL


def make_captures(n: int, frame_px: int, leds_per_side: int):
    """``n`` simulated captures of the fixture bench (``frame_px`` frames, central LEDs) with random
    misalignments; returns (folder, station path)."""
    from metrology.io import write_capture
    from metrology.simulate import draw_misalignment, simulate_capture
    from tests.sim_cases import bench_station, centre_leds, lens_coefficients

    folder = OUT / "captures"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    station = bench_station(frame_px)
    station_path = OUT / "station.toml"
    station_path.write_text(station.to_toml())
    leds = centre_leds(leds_per_side)
    for i in range(n):
        truth = draw_misalignment(np.random.default_rng([i, 1]), n_leds=len(leds))
        capture, _ = simulate_capture(station, lens_coefficients(LEVELS[i % len(LEVELS)], i), truth, seed=i,
                                      leds=leds)
        write_capture(folder / f"lens-{i:03d}.tif", dataclasses.replace(capture, lens_serial=f"LENS-{i:03d}"))
    return folder, station_path


def run(name: str, executor, folder, station_path, device: str = "cpu"):
    """Inspect every capture on ``executor``; return (wall s, outcomes, documents by serial)."""
    from metrology.batch import Job, collect_jobs, run_batch

    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = Job(index=0, capture="", station=str(station_path), spec=str(SPEC), out_dir=str(out),
               device=device, audit_db=str(out / "audit.sqlite"), threads=1)
    jobs = collect_jobs([str(folder)], None, base=base)
    t0 = time.perf_counter()
    outcomes = run_batch(jobs, executor, resume=False, report=lambda line: print(f"  {name}: {line}", flush=True))
    wall = time.perf_counter() - t0
    docs = {}
    for o in outcomes:
        if o.json_path:
            doc = json.loads(open(o.json_path).read())
            doc.pop("timings_s"), doc.pop("created_utc")
            # the report id carries the time stamp; the audit record names the executor's own store and
            # chains to whichever capture that store recorded before (the order workers finish in)
            doc.get("report", {}).pop("id", None), doc.pop("audit_record", None)
            docs[doc["lens"]["serial"]] = doc
    return wall, outcomes, docs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--captures", type=int, default=16)
    p.add_argument("--frame-px", type=int, default=32)
    p.add_argument("--leds", type=int, default=7, help="LEDs per side (centre of the 15x15 board)")
    p.add_argument("--executors", default="local,jobs2,ray", help="comma list of local, jobsN (N workers), ray")
    p.add_argument("--device", default="cpu", help="where every fit runs: cpu (default), cuda, cuda:N")
    args = p.parse_args(argv)
    from metrology.batch.executors import make_executor

    print(f"machine: {machine()}")
    if args.device == "cpu":
        print("GPU: none used (every fit on the CPU, --device cpu)")
    else:
        import torch

        print(f"GPU: every fit on {args.device} ({torch.cuda.get_device_name(torch.device(args.device))})")
    t0 = time.perf_counter()
    folder, station_path = make_captures(args.captures, args.frame_px, args.leds)
    print(f"{args.captures} captures: {args.leds}x{args.leds} LEDs, {args.frame_px}x{args.frame_px} px frames, "
          f"lens RMS levels {LEVELS} waves (simulated in {time.perf_counter() - t0:.1f} s)", flush=True)
    results = {}
    for name in args.executors.split(","):
        spec = ("local", 1) if name == "local" else ("ray", None) if name == "ray" else ("local", int(name[4:]))
        executor = make_executor(*spec, threads=1)
        results[name] = (executor.description,) + run(name, executor, folder, station_path, args.device)
    reference = next(iter(results.values()))[3]
    rows = []
    for name, (description, wall, outcomes, docs) in results.items():
        peak = defaultdict(float)
        for o in outcomes:
            peak[o.worker] = max(peak[o.worker], o.peak_rss_mb)
        verdicts = "/".join(str(sum(o.status == s for o in outcomes)) for s in ("PASS", "FAIL", "INCONCLUSIVE", "ERROR"))
        same = json.dumps(docs, sort_keys=True) == json.dumps(reference, sort_keys=True)
        per = sum(o.seconds for o in outcomes) / max(1, len(outcomes))
        rows.append((description, wall, 3600.0 * len(outcomes) / wall, per, len(peak),
                     " ".join(f"{v:.0f}" for v in sorted(peak.values())), verdicts, same))
    print()
    print(f"{'executor':<22} {'wall s':>7} {'captures/h':>10} {'s/capture':>9} {'workers':>7}  peak RSS per worker MB"
          f"   PASS/FAIL/INC/ERR  identical to first")
    for r in rows:
        print(f"{r[0]:<22} {r[1]:7.1f} {r[2]:10.0f} {r[3]:9.1f} {r[4]:7d}  {r[5]:<22} {r[6]:>17}  {r[7]}")
    print(f"\nmachine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
