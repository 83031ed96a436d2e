"""Time of one forward + backward pass of the station model (issue 2).

225 LEDs, 128x128 camera frames, 4x upsampling, 36 Zernike terms, float32. Target: < 150 ms on
2 CPU cores. Run: ``python benchmarks/bench_forward.py [--frame 128] [--repeat 10]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import machine

import torch

from metrology.physics import StationGeometry, StationModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frame", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    leds = [(r, c) for r in range(15) for c in range(15)]
    g = StationGeometry(wavelength_nm=520, na=0.1, magnification=4, camera_pixel_um=6.5, frame_px=args.frame,
                        upsampling=4, led_pitch_mm=4, led_distance_mm=90, led_center_row=7, led_center_col=7,
                        leds=leds, zernike_terms=36)
    gen = torch.Generator().manual_seed(0)
    n = g.object_px
    t = torch.polar(1 + 0.1 * torch.rand(n, n, generator=gen), torch.randn(n, n, generator=gen))
    model = StationModel(g, t).to(args.device)
    with torch.no_grad():
        model.pupil.zernike_waves[4:15] = 0.03
        target = model() * 1.01
    for p in model.parameters():
        p.requires_grad_(True)
    times = []
    for i in range(args.repeat + 2):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.zero_grad()
        loss = ((model() - target) ** 2).mean()
        loss.backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up excluded
            times.append(time.perf_counter() - t0)
    print(f"machine: {machine()}; device {args.device}")
    print(f"forward + backward, {g.n_leds} LEDs, {args.frame}x{args.frame} frames, upsampling {g.upsampling} "
          f"({n}x{n} object), all parameters free: median {1e3 * statistics.median(times):.1f} ms, "
          f"min {1e3 * min(times):.1f} ms over {len(times)} runs (target < 150 ms on 2 cores)")


if __name__ == "__main__":
    main()
