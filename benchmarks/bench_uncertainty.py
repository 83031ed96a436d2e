"""Calibration of the reported uncertainty (issue 4).

Over N synthetic trials (default 20; each a new lens, misalignment and noise, simulated by the
literal simulator, not the solver's model), prints per Noll coefficient the RMS of error / u
(target 0.7-1.4) and the fraction of trials where +/- U covers the truth (target >= 90 %).
Run: ``python benchmarks/bench_uncertainty.py [--trials 20] [--frame 32 --leds 9]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import fit, machine, simulate, standard_lens, standard_misalignment, standard_station

MAX_REDUCED_CHI2 = 4.0
"""The fixture specs' validity limit on the fit residual (``[validity] max_reduced_chi2``)."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--frame", type=int, default=32)
    ap.add_argument("--leds", type=int, default=9, help="side of the centred LED square")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    st = standard_station(args.frame)
    h = args.leds // 2
    leds = [(r, c) for r in range(7 - h, 8 + h) for c in range(7 - h, 8 + h)]
    z_err, z_u, covered, valid = [], [], [], []
    t0 = time.perf_counter()
    for k in range(args.trials):
        truth = standard_misalignment(500 + k, len(leds))
        lens = standard_lens(500 + k)
        cap, tr = simulate(st, lens, truth, 500 + k, leds=leds)
        res, meas = fit(st, cap, tr)
        e = meas.zernike_waves[4:15] - lens[4:15]
        u = meas.zernike_u[4:15]
        z_err.append(e)
        z_u.append(u)
        covered.append(np.abs(e) <= 2 * u)
        valid.append(res.converged and res.reduced_chi2 <= MAX_REDUCED_CHI2)
        print(f"  trial {k}: converged={res.converged} chi2r={res.reduced_chi2:.3f} RMS(err/u)={np.sqrt(np.mean((e / u) ** 2)):.2f}")
    z_err, z_u, covered, valid = np.array(z_err), np.array(z_u), np.array(covered), np.array(valid)
    print(f"\n{args.trials} trials, {args.frame}x{args.frame} frames, {len(leds)} LEDs, {time.perf_counter() - t0:.0f} s")
    for label, sel in (("all trials", np.ones(len(valid), bool)),
                       (f"valid measurements (converged, reduced chi2 <= {MAX_REDUCED_CHI2:g}: the verdict judges only these)", valid)):
        if not sel.any():
            continue
        e, u, c = z_err[sel], z_u[sel], covered[sel]
        ratio = np.sqrt(np.mean((e / u) ** 2, axis=0))
        print(f"\n{label}: {int(sel.sum())} of {len(sel)}")
        print(f"{'Noll':>4} {'RMS(err/u)':>11} {'coverage of U':>14} {'median u':>10}")
        for i, j in enumerate(range(5, 16)):
            print(f"{j:>4} {ratio[i]:>11.2f} {100 * c[:, i].mean():>13.0f}% {np.median(u[:, i]):>10.5f}")
        print(f"all: RMS(err/u) {np.sqrt(np.mean((e / u) ** 2)):.2f} (target 0.7-1.4), coverage "
              f"{100 * c.mean():.0f} % (target >= 90 %)")


if __name__ == "__main__":
    main()
