"""End-to-end time of ``metrology inspect`` on a standard 225-frame 128x128 capture (issue 5).

Simulates the capture (not timed), then runs the inspection and prints the split load /
reconstruct / analyse / report and the total. Targets on the 2-core machine: < 60 s (issue 5),
<= 15 s (issue 18; not met: 144 s at stop 26, docs/solver.md "The Jacobian's camera part"; 134 s wall,
251 CPU-s on 2026-12-02 00:38 UTC, main 7cc9f65; on a 2-core Intel Xeon 69.1 s before and 54.3 s
after the closed-form phase columns, docs/solver.md).
Run: ``python benchmarks/bench_inspect.py [--frame 128]``. Prints wall and CPU time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, simulate, standard_lens, standard_misalignment, standard_station


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frame", type=int, default=128)
    args = ap.parse_args()
    from metrology.inspection import run_inspection
    from metrology.io import write_capture

    st = standard_station(args.frame)
    truth = standard_misalignment(1, len(st.led_list()))
    cap, _ = simulate(st, standard_lens(1, rms=0.04), truth, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_capture(tmp / "capture.tif", cap)
        (tmp / "station.toml").write_text(st.to_toml())
        t0, c0 = time.perf_counter(), time.process_time()
        out = run_inspection(tmp / "capture.tif", tmp / "station.toml", ROOT / "fixtures" / "specs" / "plan-4x-010.toml",
                             serial="BENCH-1", out_dir=tmp / "out")
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    t = out.document["timings_s"]
    print(f"machine: {machine()}")
    print(f"inspect, 225 frames {args.frame}x{args.frame}: load {t['load']:.1f} s, reconstruct {t['reconstruct']:.1f} s, "
          f"analyse {t['analyse']:.1f} s, report {t['report']:.1f} s; total {total:.1f} s (issue 18 target <= 15 s), "
          f"CPU {cpu:.1f} s; "
          f"verdict {out.document['verdict']['overall']}, iterations {out.document['solver']['iterations']}")
    print("reasons:", "; ".join(out.document["verdict"]["reasons"]) or "none")


if __name__ == "__main__":
    main()
