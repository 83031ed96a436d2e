"""Benchmark: our solver against PtyLab (0.3.7) on the same simulated captures.

Run (in an environment with the optional ``bench`` extra, ``pip install -e '.[bench]'``)::

    python benchmarks/bench_ptylab.py            # both cases, one table
    python benchmarks/bench_ptylab.py --quick    # the 11x11 case only

For each case the literal simulator (:func:`metrology.simulate.simulate_capture`) makes one
capture with a misaligned LED board, about 0.2 waves RMS of aberration and Poisson/read noise;
PtyLab and our solver (known reference, and blind when available) reconstruct the same frames in
the same process. The table gives the lens-pupil phase error (waves RMS inside the pupil, piston,
tilt and defocus removed by least squares from the difference to the truth), the RMS LED position
error (mm), wall times, and the ratios ours / PtyLab; plus the time our solver first reaches
PtyLab's final pupil error. See ``docs/ptylab-comparison.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import ptylab_adapter as pa  # noqa: E402  (numpy only; PtyLab and h5py are imported when a run starts)
from common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

STATION_FILE = ROOT / "fixtures" / "stations" / "bench-4x-15x15.toml"
CASES = {
    # name: (board LEDs per side, frame px, PtyLab iterations)
    "11x11 LEDs, 64 px": (11, 64, 200),  # PtyLab's FPM tutorial runs qNewton for 200 iterations
    "15x15 LEDs, 128 px": (15, 128, 100),  # converged (flat) by 50-100 iterations; keeps the budget
}
TRUTH = {
    "illumination.shift_mm": [0.30, -0.20],
    "illumination.rotation_deg": 1.5,
}
"""LED board misalignment of every case (a few tenths of a mm, 1.5 deg)."""
ABERRATION_RMS_WAVES = 0.2
ABERRATION_TERMS = 15  # Noll 5..15 carry the aberration


# ---------------------------------------------------------------------------- metric
class PupilMetric:
    """Pupil phase error on the centred frequency grid of the frame.

    Pixels with ``|f| < NA / lambda`` (nominal) are compared; Noll 1-4 (piston, tilt, defocus)
    are removed from the difference by unweighted least squares over those pixels; the result is
    the RMS of the remainder in waves.

    Parameters
    ----------
    station : StationDescription
    truth_waves : array-like
        True Noll coefficients (waves).
    n_terms : int
        Number of Noll terms of the basis (>= every coefficient vector compared).
    """

    def __init__(self, station, truth_waves, n_terms: int):
        from zernike import RZern

        n = station.frame_px
        pixel_um = station.camera_pixel_um / station.magnification
        df = 1.0 / (n * pixel_um)
        cutoff = station.na / (station.wavelength_nm * 1e-3)
        u = (np.arange(n) - n // 2) * df
        fx, fy = np.meshgrid(u, u)  # x along columns, y along rows
        self.mask = np.hypot(fx, fy) < cutoff
        rho = np.hypot(fx, fy)[self.mask] / cutoff
        theta = np.arctan2(fy, fx)[self.mask]
        order = 1
        while (order + 1) * (order + 2) // 2 < n_terms:
            order += 1
        rz = RZern(order)
        self.basis = np.stack([rz.Zk(k, rho, theta) for k in range(n_terms)], axis=1)  # (M, K)
        low = self.basis[:, :4]
        self.low_pinv = np.linalg.pinv(low)
        self.low = low
        t = np.zeros(n_terms)
        tw = np.asarray(truth_waves, dtype=np.float64)[:n_terms]
        t[: len(tw)] = tw
        self.truth_phase = self.basis @ t  # waves, on the masked pixels

    def _remove_low(self, w: np.ndarray) -> np.ndarray:
        return w - self.low @ (self.low_pinv @ w)

    def of_coefficients(self, waves) -> float:
        """Error of a Zernike pupil (Noll coefficients, waves)."""
        c = np.zeros(self.basis.shape[1])
        cw = np.asarray(waves, dtype=np.float64)[: len(c)]
        c[: len(cw)] = cw
        d = self._remove_low(self.basis @ c - self.truth_phase)
        return float(np.sqrt(np.mean(d**2)))

    def of_pixel_map(self, pupil: np.ndarray) -> float:
        """Error of a free complex pupil map (n, n) in our frame (centred grid).

        The wrapped difference ``angle(P conj(P_true))`` is unwrapped by fitting Noll 1-4 to the
        complex field iteratively (a tilt of many waves is found first by the peak of a padded
        FFT), so a large tilt or defocus never wraps the residual.
        """
        z = np.asarray(pupil)[self.mask] * np.exp(-2j * math.pi * self.truth_phase)
        z = z / np.maximum(np.abs(z), 1e-30)
        n = self.mask.shape[0]
        # coarse tilt: peak of the zero-padded FFT of the unit-modulus difference
        full = np.zeros(self.mask.shape, dtype=complex)
        full[self.mask] = z
        pad = 8
        spec = np.abs(np.fft.fft2(full, s=(pad * n, pad * n)))
        iy, ix = np.unravel_index(np.argmax(spec), spec.shape)
        fx = ((ix + pad * n // 2) % (pad * n) - pad * n // 2) / (pad * n)  # cycles per pixel
        fy = ((iy + pad * n // 2) % (pad * n) - pad * n // 2) / (pad * n)
        rows, cols = np.nonzero(self.mask)
        model = (fx * cols + fy * rows)  # waves
        for _ in range(6):
            r = np.angle(z * np.exp(-2j * math.pi * model)) / (2 * math.pi)
            model = model + self.low @ (self.low_pinv @ r)
        r = np.angle(z * np.exp(-2j * math.pi * model)) / (2 * math.pi)
        d = self._remove_low(r)
        return float(np.sqrt(np.mean(d**2)))


def led_rms_error_mm(xy_a: np.ndarray, xy_b: np.ndarray) -> float:
    """RMS over LEDs of the lateral position difference (mm)."""
    d = np.asarray(xy_a, dtype=np.float64) - np.asarray(xy_b, dtype=np.float64)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=-1))))


# ---------------------------------------------------------------------------- cases
def make_case(station_path: Path, leds_per_side: int, frame_px: int, seed: int = 0):
    """Station, LED list, aberration and one noisy capture of a misaligned station.

    The board keeps the fixture's 4 mm pitch and 90 mm distance; the central
    ``leds_per_side x leds_per_side`` LEDs are used. Aberration: Noll 5..15, Gaussian draw
    scaled to :data:`ABERRATION_RMS_WAVES`.
    """
    from metrology.io.station_file import load_station
    from metrology.simulate import simulate_capture

    station = load_station(str(station_path))
    if frame_px != station.frame_px:
        station = station.replace(frame_px=frame_px)
    half = leds_per_side // 2
    r0, c0 = int(station.led_center_row), int(station.led_center_col)
    leds = [(r, c) for r in range(r0 - half, r0 + half + 1) for c in range(c0 - half, c0 + half + 1)]
    rng = np.random.default_rng([seed, 11])
    z = np.zeros(ABERRATION_TERMS)
    z[4:] = rng.normal(0.0, 1.0, ABERRATION_TERMS - 4)
    z[4:] *= ABERRATION_RMS_WAVES / np.sqrt(np.sum(z[4:] ** 2))
    capture, truth = simulate_capture(station, z, dict(TRUTH), seed=seed + 1, leds=leds)
    return station, leds, capture, truth


def true_led_xy_mm(station, leds, truth) -> np.ndarray:
    """True LED positions ``(x, y)`` relative to the tile centre (mm)."""
    from metrology.simulate import check_misalignment
    from metrology.simulate_optics import led_positions_mm

    p = led_positions_mm(station, leds, check_misalignment(
        {k: v for k, v in truth.items() if k.startswith("illumination.")}, len(leds)))
    return p[:, :2] - np.asarray(station.tile_center_mm)[None, :]


# ---------------------------------------------------------------------------- ours
def run_ours(station, leds, capture, truth, metric: PupilMetric, mode: str, max_iterations=None,
             device: str = "cpu") -> dict:
    """Our solver from the nominal station (never the truth model).

    ``mode``: "known" (reference map known, its pose fitted) or "blind" (sample unknown).
    Records ``(seconds, pupil error)`` after every iteration through ``progress``.
    """
    import torch

    from metrology.physics import StationModel
    from metrology.references import catalogue_over_field
    from metrology.solver import NoiseModel, default_schedule, reconstruct

    geometry = station.geometry(leds)
    transmission = None
    if mode in ("known", "prior"):
        transmission = catalogue_over_field(truth["reference_sample"], station.fov_um, geometry,
                                            seed=truth["reference_seed"])
    # as metrology.pipeline does: float32 model, the camera's noise (read noise + quantisation)
    model = StationModel(geometry, transmission=transmission, exposure=truth["relative_exposure"],
                         dtype=torch.float32).to(device)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    trace = []
    t0, c0 = time.perf_counter(), time.process_time()

    def observe(zernike_waves):  # the lens estimate the solver holds now (projections, then iterations)
        trace.append((time.perf_counter() - t0, metric.of_coefficients(zernike_waves.detach().cpu().double().numpy())))

    def progress(iteration, maximum, loss):
        observe(model.pupil.zernike_waves)

    out = {"mode": mode}
    try:
        res = reconstruct(model, capture.frames, noise, default_schedule(mode, geometry.zernike_terms, max_iterations),
                          progress=progress, observe=observe)
    except Exception as exc:  # report, do not hide: the blind mode may not exist yet
        out.update(error=f"{type(exc).__name__}: {exc}", wall_s=time.perf_counter() - t0)
        return out
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        xy = model.illumination.led_positions_mm()[:, :2].double().cpu().numpy()
    xy = xy - np.asarray(station.tile_center_mm)[None, :]
    out.update(
        wall_s=wall, cpu_s=cpu, pupil_err=metric.of_coefficients(model.pupil.zernike_waves.detach().double().cpu().numpy()),
        led_xy_mm=xy, trace=trace, message=res.message, iterations=res.iterations,
        reduced_chi2=res.reduced_chi2, state=model.station_state(),
    )
    return out


def time_to_reach(trace, target: float):
    """First time (s) at which the traced pupil error is <= ``target``; None if never."""
    for t, e in trace:
        if e <= target:
            return t
    return None


def check_metric(iterations: int = 200, log=print) -> float:
    """PtyLab on a noise-free, aligned 11x11 / 64 px capture: the pupil error must become small.

    Guards the metric (point reflection, centring, unwrapping) against unfairness to PtyLab.
    """
    from metrology.simulate import simulate_capture

    station, leds, _, truth = make_case(STATION_FILE, 11, 64, 0)
    capture, truth = simulate_capture(station, truth["pupil.zernike_waves"], {}, leds=leds, noise=False)
    metric = PupilMetric(station, truth["pupil.zernike_waves"], station.zernike_terms)
    with tempfile.TemporaryDirectory(prefix="bench_ptylab_") as tmp:
        h5 = Path(tmp) / "aligned.hdf5"
        pa.write_ptylab_input(h5, station, leds, capture.frames, station.background_counts, truth["relative_exposure"])
        r = pa.run_ptylab(h5, engine="qNewton", iterations=iterations, calibrate=False)
    err = metric.of_pixel_map(r["pupil"])
    log(f"metric check (noise-free, aligned, PtyLab qNewton {iterations} it, no calibration): pupil error "
        f"{err:.4f} waves (truth {metric.of_coefficients([]):.4f} waves RMS); without the point reflection "
        f"{metric.of_pixel_map(pa.pupil_in_our_frame(r['pupil'])):.4f}")
    return err


# ---------------------------------------------------------------------------- CPU seconds
CPU_CASE = (15, 64, 200)
"""The CPU-seconds comparison (issue 18): 15 x 15 LEDs, 64 px frames, PtyLab qNewton 200 iterations
(its FPM tutorial's count for 64 px frames)."""
SPEC_FILE = ROOT / "fixtures" / "specs" / "plan-4x-010.toml"


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) plus its waited-for children."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def inspect_cpu(station, capture, metric: PupilMetric, mode: str, workdir: Path) -> dict:
    """A full inspection (``metrology.inspect``: load, fit, Gauss-Newton polish, uncertainty with the
    GUM budget, verdict; no report file) of ``capture``, with its wall and CPU seconds."""
    from metrology import inspect
    from metrology.io import write_capture

    cap_path, st_path = workdir / f"capture-{mode}.tif", workdir / f"station-{mode}.toml"
    write_capture(cap_path, capture)
    st_path.write_text(station.to_toml())
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = inspect(cap_path, st_path, SPEC_FILE, mode=mode, device="cpu", audit_db=workdir / "no-store.sqlite")
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    m = res.measurement
    return dict(label=f"ours, full inspection ({mode})", wall_s=wall, cpu_s=cpu,
                pupil_err=metric.of_coefficients(m.zernike_waves), converged=m.solver.converged,
                message=m.solver.message, verdict=res.document["verdict"]["overall"],
                fit_s=res.document["timings_s"]["reconstruct"])


def cpu_comparison(workdir: Path, seed: int = 0, modes=("known", "blind"), log=print) -> list:
    """PtyLab's calibrated qNewton ("best found" settings) and our full inspection, back to back on
    one 15 x 15 x 64^2 capture, one thread each; CPU seconds and the ratios ours / PtyLab."""
    side, px, iters = CPU_CASE
    station, leds, capture, truth = make_case(STATION_FILE, side, px, seed)
    metric = PupilMetric(station, truth["pupil.zernike_waves"], station.zernike_terms)
    h5 = workdir / "cpu_case.hdf5"
    from metrology.solver.quality import estimate_background

    pa.write_ptylab_input(h5, station, leds, capture.frames, estimate_background(np.asarray(capture.frames, float)),
                          truth["relative_exposure"])
    c0 = cpu_seconds()
    r = pa.run_ptylab(h5, engine="qNewton", iterations=iters, calibration_mode="EuclideanTransform", seed=seed)
    rows = [dict(label=f"PtyLab qNewton {iters} it, calibrated (EuclideanTransform)", wall_s=r["wall_s"],
                 cpu_s=cpu_seconds() - c0, pupil_err=metric.of_pixel_map(r["pupil"]))]
    log(f"[cpu] {rows[0]['label']}: pupil {rows[0]['pupil_err']:.4f} waves, wall {rows[0]['wall_s']:.1f} s, "
        f"CPU {rows[0]['cpu_s']:.1f} s (from HDF5 read to the end; adapter's own span {r['cpu_s']:.1f} s)")
    for mode in modes:
        o = inspect_cpu(station, capture, metric, mode, workdir)
        rows.append(o)
        log(f"[cpu] {o['label']}: pupil {o['pupil_err']:.4f} waves, wall {o['wall_s']:.1f} s (fit {o['fit_s']:.1f} s), "
            f"CPU {o['cpu_s']:.1f} s, verdict {o['verdict']}, {o['message']}")
    return rows


def cpu_table(rows) -> str:
    ref = rows[0]["cpu_s"]
    lines = ["| method | pupil error (waves RMS) | wall (s) | CPU (s) | CPU ours / PtyLab |", "|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        lines.append(f"| {r['label']} | {fmt(r['pupil_err'])} | {fmt(r['wall_s'], '.1f')} | {fmt(r['cpu_s'], '.1f')} | "
                     f"{'-' if i == 0 else fmt(ratio(r['cpu_s'], ref), '.2f')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- report
def machine_line() -> str:
    import torch

    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"machine: {machine()}{gpu}"


def fmt(v, spec=".4f"):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def run_case(name, leds_per_side, frame_px, ptylab_iterations, workdir: Path, modes, seed=0, log=print,
             max_iterations=None, device: str = "cpu", ptylab_runs: str = "all"):
    from metrology.solver.quality import estimate_background

    t = time.perf_counter()
    station, leds, capture, truth = make_case(STATION_FILE, leds_per_side, frame_px, seed)
    log(f"[{name}] simulated {len(leds)} frames of {frame_px} px in {time.perf_counter() - t:.1f} s")
    metric = PupilMetric(station, truth["pupil.zernike_waves"], station.zernike_terms)
    true_xy = true_led_xy_mm(station, leds, truth)
    nominal_xy = pa.nominal_led_xy_mm(station, leds)
    rows = []
    h5 = workdir / f"case_{leds_per_side}_{frame_px}.hdf5"
    pa.write_ptylab_input(h5, station, leds, capture.frames, estimate_background(np.asarray(capture.frames, float)),
                          truth["relative_exposure"])
    configs = [
        ("PtyLab qNewton, tutorial settings", dict(engine="qNewton", iterations=ptylab_iterations,
                                                  calibration_mode="SimilarityTransform", calibrate_radius=True)),
        ("PtyLab qNewton, best found", dict(engine="qNewton", iterations=ptylab_iterations,
                                           calibration_mode="EuclideanTransform")),
        # mqNewton costs ~7-13x qNewton per iteration here: its example's 50 iterations
        ("PtyLab mqNewton (example settings)", dict(engine="mqNewton", iterations=min(ptylab_iterations, 50),
                                                    calibration_mode="EuclideanTransform")),
        ("PtyLab mPIE", dict(engine="mPIE", iterations=ptylab_iterations, calibration_mode="EuclideanTransform")),
        ("PtyLab ePIE", dict(engine="ePIE", iterations=ptylab_iterations, calibration_mode="EuclideanTransform")),
        ("PtyLab qNewton + in-loop position corr.", dict(engine="qNewton", iterations=ptylab_iterations,
                                                         calibration_mode="EuclideanTransform",
                                                         position_correction=True)),
    ]
    if ptylab_runs == "reference":
        configs = [r for r in configs if r[0] == "PtyLab qNewton, best found"]
    for label, kw in configs:
        try:
            r = pa.run_ptylab(h5, seed=seed, gpu=device == "cuda", **kw)
        except Exception as exc:  # a failed calibration fit is a result too
            rows.append(dict(label=label, error=f"{type(exc).__name__}: {exc}"))
            log(f"[{name}] {label}: failed: {exc}")
            continue
        row = dict(label=label, pupil_err=metric.of_pixel_map(r["pupil"]), wall_s=r["wall_s"], cpu_s=r["cpu_s"],
                   led_err=led_rms_error_mm(r["led_xy_mm"], true_xy),
                   led_err_cal=led_rms_error_mm(r["led_xy_calibrated_mm"], true_xy), settings=r["settings"])
        rows.append(row)
        log(f"[{name}] {label}: pupil {row['pupil_err']:.4f} waves, LED {row['led_err']:.3f} mm "
            f"(after calibration {row['led_err_cal']:.3f}), {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s")
    valid = [r for r in rows if "pupil_err" in r]
    best = min(valid, key=lambda r: r["pupil_err"]) if valid else None
    reference = best  # the most demanding target: PtyLab's lowest pupil error in this run, any engine
    ours = []
    for mode in modes:
        o = run_ours(station, leds, capture, truth, metric, mode, max_iterations, device)
        if "error" in o:
            log(f"[{name}] ours ({mode}): FAILED after {o['wall_s']:.1f} s: {o['error']}")
        else:
            o["led_err"] = led_rms_error_mm(o["led_xy_mm"], true_xy)
            o["t_reach"] = time_to_reach(o["trace"], reference["pupil_err"]) if reference else None
            log(f"[{name}] ours ({mode}): pupil {o['pupil_err']:.4f} waves, LED {o['led_err']:.3f} mm, "
                f"{o['wall_s']:.1f} s, CPU {o['cpu_s']:.1f} s, {o['iterations']} it, {o['message']}")
        ours.append(o)
    return dict(name=name, n_leds=len(leds), frame_px=frame_px, ptylab=rows, reference=reference, ours=ours,
                nominal_led_err=led_rms_error_mm(nominal_xy, true_xy), zero_pupil_err=metric.of_coefficients([]),
                ptylab_iterations=ptylab_iterations)


def table(results) -> str:
    head = ("| case | method | pupil error (waves RMS) | LED RMS error (mm) | wall (s) | "
            "pupil ours/PtyLab | LED ours/PtyLab | time ours/PtyLab | ours: time to PtyLab's error (s) |")
    lines = [head, "|" + "---|" * 9]
    for c in results:
        case = f"{c['n_leds']} LEDs, {c['frame_px']} px"
        lines.append(f"| {case} | (no correction: nominal LEDs, zero pupil) | {fmt(c['zero_pupil_err'])} | "
                     f"{fmt(c['nominal_led_err'], '.3f')} | - | - | - | - | - |")
        for r in c["ptylab"]:
            if "error" in r:
                lines.append(f"| {case} | {r['label']} | failed: {r['error'][:80]} | - | - | - | - | - | - |")
                continue
            mark = " (reference)" if r is c["reference"] else ""
            lines.append(f"| {case} | {r['label']}{mark} | {fmt(r['pupil_err'])} | {fmt(r['led_err'], '.3f')} "
                         f"(calib. {fmt(r['led_err_cal'], '.3f')}) | {fmt(r['wall_s'], '.1f')} | - | - | - | - |")
        ref = c["reference"]
        for o in c["ours"]:
            label = f"ours ({o['mode']})"
            if "error" in o:
                lines.append(f"| {case} | {label} | failed: {o['error'][:80]} | - | {fmt(o['wall_s'], '.1f')} | "
                             "- | - | - | - |")
                continue
            rp = ratio(o["pupil_err"], ref["pupil_err"]) if ref else None
            rl = ratio(o["led_err"], ref["led_err"]) if ref else None
            rt = ratio(o["wall_s"], ref["wall_s"]) if ref else None
            reach = "never" if o["t_reach"] is None else fmt(o["t_reach"], ".1f")
            lines.append(f"| {case} | {label} | {fmt(o['pupil_err'])} | {fmt(o['led_err'], '.3f')} | "
                         f"{fmt(o['wall_s'], '.1f')} | {fmt(rp, '.2f')} | {fmt(rl, '.2f')} | {fmt(rt, '.1f')} | {reach} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 11x11 / 64 px case")
    ap.add_argument("--modes", default="known,blind", help="our solver's modes (comma separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iterations", type=int, default=None,
                    help="cap on our solver's outer iterations (default: the schedule's)")
    ap.add_argument("--no-metric-check", action="store_true", help="skip the noise-free metric check")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="both solvers on the CPU (default) or both on the GPU (ours on torch CUDA, PtyLab on CuPy)")
    ap.add_argument("--ptylab-runs", choices=("all", "reference"), default="all",
                    help="every PtyLab configuration (default) or only qNewton with the best settings found")
    ap.add_argument("--cpu", action="store_true",
                    help="only the CPU-seconds comparison: PtyLab's calibrated qNewton and our full inspection "
                         "(--modes) on one 15x15 LED / 64 px capture, back to back, one thread each")
    args = ap.parse_args(argv)
    try:
        import h5py  # noqa: F401
        import PtyLab  # noqa: F401
    except ImportError as exc:
        print(f"needs the optional bench extra (pip install -e '.[bench]'): {exc}", file=sys.stderr)
        return 2
    import importlib.metadata as md

    if args.cpu:  # one thread each: torch's and every BLAS/OpenMP pool numpy and scipy use
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)
    print(machine_line())
    print(f"ptylab {md.version('ptylab')}, numpy {np.__version__}; load average {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.cpu:
        with tempfile.TemporaryDirectory(prefix="bench_ptylab_cpu_") as tmp:
            rows = cpu_comparison(Path(tmp), args.seed, [m.strip() for m in args.modes.split(",") if m.strip()])
        print("\n" + cpu_table(rows))
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        return 0
    cases = list(CASES.items())[:1] if args.quick else list(CASES.items())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = []
    t0 = time.perf_counter()
    if not args.no_metric_check:
        check_metric()
    with tempfile.TemporaryDirectory(prefix="bench_ptylab_") as tmp:
        if args.device == "cuda":  # CUDA/cuFFT/CuPy start-up and kernel compilation stay out of the timings
            t = time.perf_counter()
            run_case("warm-up", 5, 32, 2, Path(tmp), modes, seed=args.seed, log=lambda s: None, max_iterations=2,
                     device=args.device, ptylab_runs="reference")
            print(f"GPU warm-up (not timed below): {time.perf_counter() - t:.1f} s", flush=True)
        for name, (side, px, iters) in cases:
            results.append(run_case(name, side, px, iters, Path(tmp), modes, seed=args.seed,
                                    log=lambda s: print(s, flush=True), max_iterations=args.max_iterations,
                                    device=args.device, ptylab_runs=args.ptylab_runs))
            print("\n" + table(results[-1:]) + "\n", flush=True)  # partial results survive an interrupt
    print("all cases:")
    print(table(results))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; reference row = PtyLab's lowest pupil error in this run (any engine); "
          "ratios < 1 favour ours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
