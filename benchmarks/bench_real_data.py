"""Benchmark on real data: the UConn blood smear in three colours (issue 7).

Run from the repository root (the data live outside the project, ../shared/data/uconn-bloodsmear)::

    python benchmarks/bench_real_data.py [--crop 64] [--iterations 25] [--colours red green blue]

Prints, per colour: the axis-mapping evidence (bright-field set, defocus-shift matrix), the blind
reconstruction's sample defocus against the dataset's known defocus, the lens Zernikes (Noll 5..K,
waves and nm) and their differences between colours, the resolution before (bright-field frame)
and after (reconstruction), and the machine. See docs/real-data.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "uconn-bloodsmear"
DESCRIPTION = ROOT / "fixtures" / "foreign" / "uconn-bloodsmear.toml"
COLOURS = ("red", "green", "blue")
ZERNIKE_TERMS = 15


# ------------------------------------------------------------------------------ resolution
def radial_power(image: np.ndarray, pixel_um: float):
    """Radially averaged power spectrum of a mean-removed, Hann-windowed square image.

    Returns ``(f, p)``: ring centre frequencies (cycles/um) and mean power per ring.
    """
    n = image.shape[0]
    w = np.hanning(n)
    x = (image - image.mean()) * w[:, None] * w[None, :]
    p = np.abs(np.fft.fftshift(np.fft.fft2(x))) ** 2
    u = np.arange(n) - n // 2
    r = np.hypot(u[:, None], u[None, :])
    ring = np.round(r).astype(int)
    keep = ring < n // 2
    sums = np.bincount(ring[keep], weights=p[keep])
    counts = np.bincount(ring[keep])
    f = np.arange(len(sums)) / (n * pixel_um)
    return f, sums / np.maximum(counts, 1)


def spectral_support(image: np.ndarray, pixel_um: float, factor: float = 10.0, floor_power: float | None = None) -> float:
    """Spectral support radius (cycles/um): the highest ring whose power exceeds ``factor`` x floor.

    ``floor_power`` defaults to the median power of the outer 15 % of rings (noise). Comparing two
    images, pass the same absolute floor (e.g. that of the reconstruction) so both see one threshold.
    """
    f, p = radial_power(image, pixel_um)
    floor = np.median(p[int(0.85 * len(p)) :]) if floor_power is None else floor_power
    above = np.nonzero(p[1:] > factor * floor)[0]
    return float(f[1 + above.max()]) if above.size else 0.0


def edge_width_um(image: np.ndarray, pixel_um: float) -> float:
    """Median 10-90 % width (um) of the sharpest edges: contrast / steepest slope.

    ``width = 0.8 * (p95 - p5) / g`` with ``g`` the 99th percentile of the gradient magnitude
    (intensity per um); a blurred image has shallower slopes for the same contrast.
    """
    gy, gx = np.gradient(image.astype(np.float64), pixel_um)
    g = np.percentile(np.hypot(gx, gy), 99)
    lo, hi = np.percentile(image, [5, 95])
    return float(0.8 * (hi - lo) / max(g, 1e-30))


def fourier_upsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited interpolation by zero-padding the spectrum (same field of view)."""
    n = image.shape[0]
    m = n * factor
    s = np.fft.fftshift(np.fft.fft2(image))
    big = np.zeros((m, m), dtype=complex)
    c = (m - n) // 2
    big[c : c + n, c : c + n] = s
    return np.fft.ifft2(np.fft.ifftshift(big)).real * factor**2


# ------------------------------------------------------------------------------ reconstruction
def minimal_upsampling(geometry):
    from metrology.physics.illumination import max_nominal_illumination_na

    for u in range(1, 17):
        g = dataclasses.replace(geometry, upsampling=u)
        try:
            g.check_sampling(max_nominal_illumination_na(g))
            return g
        except ValueError:
            continue
    raise ValueError("no upsampling up to 16 holds the illumination")


def reconstruct_colour(colour: str, crop_px: int = 64, iterations: int = 25, n_leds: int | None = None,
                       zernike_terms: int = ZERNIKE_TERMS, defocus_start_um: float = 0.0) -> dict:
    """Blind reconstruction of one colour on the centre ``crop_px`` patch; plain results dict."""
    from metrology.io.foreign import foreign_noise, load_foreign
    from metrology.physics import StationModel
    from metrology.solver import default_schedule, reconstruct

    capture, station = load_foreign(DATA / f"bloodsmear_{colour}.mat", DESCRIPTION, crop_px=crop_px)
    leds = capture.leds if n_leds is None else capture.leds[:n_leds]
    frames = capture.frames[: len(leds)]
    geometry = minimal_upsampling(station.replace(zernike_terms=zernike_terms).geometry(leds))
    model = StationModel(geometry)
    with torch.no_grad():
        model.sample.defocus_um.fill_(defocus_start_um)
    schedule = default_schedule("blind", zernike_terms, max_iterations=iterations)
    noise = foreign_noise(capture)
    t0 = time.perf_counter()
    res = reconstruct(model, frames, noise, schedule)
    wall = time.perf_counter() - t0
    t = model.sample.transmission().detach().cpu().numpy()
    bf_amp = np.sqrt(np.clip(frames[0] - capture.extra["hdr_offset_units"] / capture.extra["hdr_units_per_count"], 0, None))
    return {
        "colour": colour,
        "wavelength_nm": station.wavelength_nm,
        "known_defocus_um": capture.extra["known_defocus_um_theirs"],
        "defocus_um": float(model.sample.defocus_um.detach()),
        "zernike_waves": model.pupil.zernike_waves.detach().cpu().numpy().astype(float),
        "reduced_chi2": res.reduced_chi2,
        "message": res.message,
        "iterations": res.iterations,
        "wall_s": wall,
        "transmission": t,
        "object_pixel_um": geometry.object_pixel_um,
        "pixel_um": geometry.pixel_um,
        "upsampling": geometry.upsampling,
        "bright_field_amplitude": bf_amp,
        "init": "sqrt of the mean bright-field frame, then alternating projections",
        "station_state": model.station_state(),
        "n_leds": len(leds),
    }


def resolution(result: dict) -> dict:
    """Resolution before (bright-field amplitude) and after (reconstructed amplitude)."""
    ups = result["upsampling"]
    after = np.abs(result["transmission"])
    before = fourier_upsample(result["bright_field_amplitude"], ups)
    px = result["object_pixel_um"]
    f_after, p_after = radial_power(after / after.mean(), px)
    floor = np.median(p_after[int(0.85 * len(p_after)) :])
    return {
        "support_before": spectral_support(before / before.mean(), px, floor_power=floor),
        "support_after": spectral_support(after / after.mean(), px, floor_power=floor),
        "edge_before_um": edge_width_um(before, px),
        "edge_after_um": edge_width_um(after, px),
    }


# ------------------------------------------------------------------------------ evidence
def mapping_evidence(colour: str) -> dict:
    """Bright-field rank agreement per candidate mapping and the defocus-shift matrix."""
    from metrology.io.foreign import (
        bright_field_mismatch, candidate_mappings, defocus_shift_matrix, load_foreign, square_spiral,
    )

    capture, station = load_foreign(DATA / f"bloodsmear_{colour}.mat", DESCRIPTION)
    a, rms = defocus_shift_matrix(capture.frames, square_spiral(15), bright_field_mismatch(capture, station)["measured"])
    return {"shift_matrix": a, "shift_rms_px": rms, "offset_sign": offset_sign_evidence(capture, station), "candidates": len(candidate_mappings())}


def offset_sign_evidence(capture, station) -> dict:
    """Rank correlation of frame mean vs predicted NA over the LEDs near the pupil edge, for the
    stated offset (LED minus patch centre) and for the opposite sign."""
    from scipy.stats import kendalltau

    from metrology.io.foreign import predicted_illumination_na

    mean = capture.frames.mean(axis=(1, 2))
    out = {}
    for name, sign in (("as stated", 1.0), ("opposite", -1.0)):
        tile = tuple(sign * v for v in station.tile_center_mm)
        na = predicted_illumination_na(station.replace(tile_center_mm=tile), capture.leds)
        ring = (np.abs(na - station.na) < 0.01) & (mean > 0.2 * np.median(np.sort(mean)[-5:]))
        tau = kendalltau(na[ring], mean[ring]).statistic if ring.sum() > 2 else float("nan")
        out[name] = float(tau)
    return out


def machine() -> str:
    return (f"{platform.node()} {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
            f"torch={torch.__version__} threads={torch.get_num_threads()} python={platform.python_version()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--colours", nargs="+", default=list(COLOURS))
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"data folder {DATA} absent: nothing to benchmark")
        return 0
    print("machine:", machine())
    results = {}
    for colour in args.colours:
        ev = mapping_evidence(colour)
        a = ev["shift_matrix"]
        print(f"\n[{colour}] defocus-shift matrix (px per LED step; rows: their x, y; cols: our x=col, y=row):")
        print(np.array2string(a, precision=3), f"rms residual {ev['shift_rms_px']:.2f} px")
        print(f"  edge-LED brightness vs predicted NA, Kendall tau: {ev['offset_sign']}")
        r = reconstruct_colour(colour, args.crop, args.iterations)
        results[colour] = r
        res = resolution(r)
        r["resolution"] = res
        print(f"  blind ({r['init']}), {r['n_leds']} LEDs, {args.crop}px crop, {r['iterations']} it, {r['wall_s']:.0f} s: "
              f"{r['message']}; reduced chi2 {r['reduced_chi2']:.2f}")
        print(f"  defocus recovered {r['defocus_um']:+.1f} um   known (theirs) {r['known_defocus_um']:+.1f} um")
        print(f"  spectral support: bright field {res['support_before']:.3f} -> reconstruction {res['support_after']:.3f} cycles/um "
              f"(NA/lambda = {0.1 / (r['wavelength_nm'] * 1e-3):.3f})")
        print(f"  edge width (10-90 %): bright field {res['edge_before_um']:.2f} um -> reconstruction {res['edge_after_um']:.2f} um")
        print(f"  station: {r['station_state']}")
    print("\nLens Zernikes (Noll 5..%d; defocus, tilt, piston removed), nm of OPD:" % ZERNIKE_TERMS)
    nm = {c: r["zernike_waves"][4:] * r["wavelength_nm"] for c, r in results.items()}
    print("  Noll " + " ".join(f"{j:>6d}" for j in range(5, ZERNIKE_TERMS + 1)))
    for c, v in nm.items():
        print(f"  {c:5s}" + " ".join(f"{x:6.1f}" for x in v))
    cs = list(nm)
    for i in range(len(cs)):
        for k in range(i + 1, len(cs)):
            d = nm[cs[i]] - nm[cs[k]]
            print(f"  {cs[i]}-{cs[k]}: " + " ".join(f"{x:6.1f}" for x in d) + f"   RMS diff {np.sqrt(np.mean(d**2)):.1f} nm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
