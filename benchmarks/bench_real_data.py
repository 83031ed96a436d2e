"""Benchmark on real data: the UConn blood smear in three colours (issue 7).

Run from the repository root (the data live outside the project, ../shared/data/uconn-bloodsmear)::

    python benchmarks/bench_real_data.py [--crop 64] [--iterations 25] [--colours red green blue]
    python benchmarks/bench_real_data.py --cross-check   # + PtyLab and a simulated control (bench extra)
    python benchmarks/bench_real_data.py --ablation --crop 32   # issue-14 physics on/off + residual analysis
    python benchmarks/bench_real_data.py --crops --crop 32      # LED geometry of two crops vs their U

Prints, per colour: the axis-mapping evidence (bright-field set, defocus-shift matrix), the blind
reconstruction's sample defocus against the dataset's known defocus, the lens Zernikes (Noll 5..K,
waves and nm) and their differences between colours, the resolution (bright-field NA / lambda, the
synthetic aperture, and what the reconstruction carries above a floor it cannot fake:
:func:`resolution`; two more fits per colour on the interleaved LED halves unless ``--no-halves``),
and the machine. ``--ablation`` and ``--crops``: :mod:`real_data_studies`. ``--cross-check`` adds, per colour, the defocus an
independent solver (PtyLab 0.3.7, free pixel pupil, several starting defocus values) settles at on
the same patch, and a control: a simulated capture of this very station with the sample at the
dataset's known defocus, reconstructed by both solvers. See docs/real-data.md for what the numbers
mean.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import ptylab_adapter as pa  # noqa: E402  (numpy only; PtyLab and h5py are imported when a run starts)

from metrology.analysis import resolution as ra  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "uconn-bloodsmear"
DESCRIPTION = ROOT / "fixtures" / "foreign" / "uconn-bloodsmear.toml"
COLOURS = ("red", "green", "blue")
ZERNIKE_TERMS = 15
CROSS_CHECK_STARTS = (-55.0, -15.0, 10.0, 0.0)  # um; PtyLab's starting pupil defocus (the last is reported)


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
                       zernike_terms: int = ZERNIKE_TERMS, defocus_start_um: float = 0.0,
                       hold_defocus_um: float | None = None, led_parity: int | None = None,
                       settle_rounds: int | None = None) -> dict:
    """Blind reconstruction of one colour on the centre ``crop_px`` patch; plain results dict.

    ``settle_rounds``: the free sample's settle rounds (default: the schedule's); a quick, truncated
    fit (few ``iterations``) uses 1 to bound its time (its convergence is then rarely claimed).

    ``hold_defocus_um``: hold the sample defocus at this value (not fitted) for a misfit profile.
    ``led_parity``: fit only the LEDs whose board ``row + col`` has this parity (0 or 1: the two
    interleaved halves, each spanning the whole synthetic aperture, for :func:`resolution`).
    """
    from metrology.pipeline import foreign_noise
    from metrology.physics import StationModel
    from metrology.solver import default_schedule, reconstruct

    capture, station, _ = real_patch(colour, crop_px)
    keep = list(range(len(capture.leds) if n_leds is None else n_leds))
    if led_parity is not None:
        keep = [i for i in keep if sum(capture.leds[i]) % 2 == led_parity]
    leds = [capture.leds[i] for i in keep]
    frames = capture.frames[keep]
    geometry = minimal_upsampling(station.replace(zernike_terms=zernike_terms).geometry(leds))
    model = StationModel(geometry)
    with torch.no_grad():
        model.sample.defocus_um.fill_(defocus_start_um if hold_defocus_um is None else hold_defocus_um)
    schedule = default_schedule("blind", zernike_terms, max_iterations=iterations)
    if settle_rounds is not None:
        schedule = dataclasses.replace(schedule, settle_rounds=settle_rounds)
    if hold_defocus_um is not None:
        schedule = schedule.without("sample.defocus_um")
    noise = foreign_noise(capture)
    t0 = time.perf_counter()
    res = reconstruct(model, frames, noise, schedule)
    wall = time.perf_counter() - t0
    t = model.sample.transmission().detach().cpu().numpy()
    with torch.no_grad():
        illumination_na = model.illumination.spatial_frequencies().double().norm(dim=-1) * geometry.wavelength_um
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
        "na": geometry.na,
        "illumination_na_max": float(illumination_na.max()),
        "init": "sqrt of the mean bright-field frame, then alternating projections",
        "station_state": model.station_state(),
        "n_leds": len(leds),
        "at_bounds": list(res.at_bounds),
    }


def resolution(result: dict, halves: tuple | None = None) -> dict:
    """Resolution of a blind reconstruction from measures its artefact texture cannot fake
    (:mod:`metrology.analysis.resolution`), on the amplitude (a blind fit's phase carries a linear
    ramp it trades with the LED shift, different in each half): the spectral SNR against
    the floor beyond the synthetic aperture ``(NA + NA_illumination_max) / lambda``, and, given the
    two reconstructions from interleaved LED halves (:func:`reconstruct_colour` with
    ``led_parity`` 0 and 1), their Fourier ring correlation (half-bit). The bright field's coherent
    cutoff ``NA / lambda`` is the "before" (its camera grid has no room beyond it for a floor).
    (Issue 7 printed a 10-90 % edge width here: it read the reconstruction's texture as resolution.)
    """
    lam = result["wavelength_nm"] * 1e-3
    cutoff = ra.synthetic_aperture_cutoff(result["na"], result["illumination_na_max"], lam)
    px = result["object_pixel_um"]
    amplitude = np.abs(result["transmission"])  # a blind fit's phase carries a ramp it trades with the LED shift
    try:
        snr = ra.spectral_snr_resolution(amplitude, px, cutoff).frequency_cpum
    except ValueError as exc:  # the grid has no room beyond the aperture for the floor
        print(f"  spectral SNR not measured: {exc}")
        snr = 0.0
    out = {"bright_field_cpum": result["na"] / lam, "cutoff_cpum": cutoff, "snr_cpum": snr, "frc_cpum": None}
    if halves is not None:
        out["frc_cpum"] = ra.frc_resolution(np.abs(halves[0]["transmission"]), np.abs(halves[1]["transmission"]), px,
                                            cutoff).frequency_cpum
    return out


# ------------------------------------------------------------------------------ cross-check
def illumination_frequencies(station, leds) -> np.ndarray:
    """Nominal illumination frequencies ``k_j`` (cycles/um, (J, 2)), refracted through the slide."""
    from metrology.physics.illumination import Illumination

    with torch.no_grad():
        return Illumination(station.geometry(leds), dtype=torch.float64).spatial_frequencies().numpy()


def ptylab_defocus(station, leds, frames, background_counts: float, exposure=None, start_um: float = 0.0,
                   iterations: int = 100) -> dict:
    """PtyLab (qNewton, free pupil, nominal refracted LED positions) from a pupil defocused by
    ``start_um``; the sample defocus and Noll 5..15 of its final pupil (:func:`fit_defocus_um`)."""
    import tempfile

    encoder = pa.encoder_from_frequencies(illumination_frequencies(station, leds), station.wavelength_nm,
                                          station.led_distance_mm)
    with tempfile.TemporaryDirectory(prefix="bench_real_ptylab_") as tmp:
        h5 = Path(tmp) / "capture.hdf5"
        pa.write_ptylab_input(h5, station, leds, frames, background_counts, exposure, encoder=encoder)
        r = pa.run_ptylab(h5, engine="qNewton", iterations=iterations, calibrate=False, initial_defocus_um=start_um)
    defocus, zernike = pa.fit_defocus_um(r["pupil"], r["df"], station.wavelength_nm * 1e-3, station.na, ZERNIKE_TERMS)
    return {"start_um": start_um, "defocus_um": defocus, "zernike_waves": zernike, "wall_s": r["wall_s"],
            "error": r["error"][-1], "settings": r["settings"]}


def real_patch(colour: str, crop_px: int):
    """The real capture of one colour (centre patch), its station and its HDR background (counts)."""
    from metrology.io.foreign import load_foreign

    capture, station = load_foreign(DATA / f"bloodsmear_{colour}.mat", DESCRIPTION, crop_px=crop_px)
    return capture, station, capture.extra["hdr_offset_units"] / capture.extra["hdr_units_per_count"]


def ptylab_real(colour: str, crop_px: int, starts) -> list[dict]:
    """PtyLab on the real patch of one colour from each starting defocus."""
    capture, station, background = real_patch(colour, crop_px)
    return [ptylab_defocus(station, capture.leds, capture.frames, background, start_um=z0) for z0 in starts]


def description_variants(station) -> dict:
    """Other readings of the dataset description (offset sign and axis, the 90.88 mm without the
    slide, no slide, the NA the bright-field set suggests for blue): does any move the defocus?"""
    x, y = station.tile_center_mm
    return {
        "offset y flipped": station.replace(tile_center_mm=(x, -y)),
        "offset zero": station.replace(tile_center_mm=(0.0, 0.0)),
        "offset on the other axis": station.replace(tile_center_mm=(y, x)),
        "distance 90.88 mm": station.replace(led_distance_mm=90.88),
        "no slide": station.replace(slide_thickness_mm=0.0),
        "NA 0.104": station.replace(na=0.104),
    }


def ptylab_variants(colour: str, crop_px: int) -> dict:
    """PtyLab's defocus (started at the known value) for each :func:`description_variants`."""
    capture, station, background = real_patch(colour, crop_px)
    start = capture.extra["known_defocus_um_theirs"]
    return {name: ptylab_defocus(v, capture.leds, capture.frames, background, start_um=start)["defocus_um"]
            for name, v in description_variants(station).items()}


def control_capture(colour: str, crop_px: int, lens_zernike_waves, seed: int = 1):
    """A simulated capture of this colour's station (same LEDs, slide, NA, pixel) imaging a
    phase-and-amplitude reference with the sample at the dataset's known defocus.

    Returns ``(station, leds, capture, truth, known_defocus_um)``.
    """
    from metrology.io.foreign import load_foreign
    from metrology.simulate import simulate_capture

    real, station = load_foreign(DATA / f"bloodsmear_{colour}.mat", DESCRIPTION, crop_px=crop_px)
    station = station.replace(zernike_terms=ZERNIKE_TERMS)
    known = real.extra["known_defocus_um_theirs"]
    capture, truth = simulate_capture(station, lens_zernike_waves, {"sample.defocus_um": known}, seed=seed,
                                      leds=real.leds, reference="random-broadband")
    return station, real.leds, capture, truth, known


def blind_defocus(station, leds, capture, truth, iterations: int = 25, settle_rounds: int | None = None) -> float:
    """Our blind fit of a simulated capture (the camera's noise model); the sample defocus (um).
    ``settle_rounds``: the schedule's settle tests (None: the default; the test's control uses
    fewer, as it asks for the defocus only, not for a converged sample)."""
    from metrology.physics import StationModel
    from metrology.solver import NoiseModel, default_schedule, reconstruct

    model = StationModel(minimal_upsampling(station.geometry(leds)), exposure=truth["relative_exposure"],
                         dtype=torch.float32)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    schedule = default_schedule("blind", ZERNIKE_TERMS, iterations)
    if settle_rounds is not None:
        schedule = dataclasses.replace(schedule, settle_rounds=int(settle_rounds))
    reconstruct(model, capture.frames, noise, schedule)
    return float(model.sample.defocus_um.detach())


def simulated_control(colour: str, crop_px: int, lens_zernike_waves, iterations: int = 25) -> dict:
    """:func:`control_capture` reconstructed blind by our solver and by PtyLab: both must return
    the known defocus if the pipeline can see it on this station."""
    station, leds, capture, truth, known = control_capture(colour, crop_px, lens_zernike_waves)
    ours = blind_defocus(station, leds, capture, truth, iterations)
    theirs = ptylab_defocus(station, leds, capture.frames, station.background_counts, truth["relative_exposure"])
    return {"known_um": known, "ours_um": ours, "ptylab_um": theirs["defocus_um"]}


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


def _period(f_cpum: float) -> str:
    return f"period {1 / f_cpum:.2f} um" if f_cpum > 0 else "nothing above the floor"


def machine() -> str:
    return (f"{platform.node()} {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
            f"torch={torch.__version__} threads={torch.get_num_threads()} python={platform.python_version()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--colours", nargs="+", default=list(COLOURS))
    ap.add_argument("--no-halves", action="store_true",
                    help="skip the two interleaved-LED-half fits (the FRC resolution) per colour")
    ap.add_argument("--crops", action="store_true",
                    help="only the LED geometry of two crops of each capture (blind) against their combined U")
    ap.add_argument("--margin", type=int, default=None, help="--crops: modelled margin (camera px; default crop / 8, >= 4)")
    ap.add_argument("--ablation", action="store_true",
                    help="only the physics ablation (each issue-14 term on/off) and the all-on fit's residual analysis")
    ap.add_argument("--cross-check", action="store_true",
                    help="also PtyLab on the same patches and a simulated control at the known defocus (bench extra)")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"data folder {DATA} absent: nothing to benchmark")
        return 0
    print("machine:", machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.ablation:
        return ablation(args.colours, args.crop, args.iterations)
    if args.crops:
        import real_data_studies as rs  # lazy: the studies import this module

        for colour in args.colours:
            rs.crop_agreement(colour, args.crop, args.iterations, margin_px=args.margin)
        return 0
    results = {}
    for colour in args.colours:
        ev = mapping_evidence(colour)
        a = ev["shift_matrix"]
        print(f"\n[{colour}] defocus-shift matrix (px per LED step; rows: their x, y; cols: our x=col, y=row):")
        print(np.array2string(a, precision=3), f"rms residual {ev['shift_rms_px']:.2f} px")
        print(f"  edge-LED brightness vs predicted NA, Kendall tau: {ev['offset_sign']}")
        r = reconstruct_colour(colour, args.crop, args.iterations)
        results[colour] = r
        halves = None if args.no_halves else tuple(reconstruct_colour(colour, args.crop, args.iterations, led_parity=p)
                                                   for p in (0, 1))
        res = resolution(r, halves)
        r["resolution"] = res
        print(f"  blind ({r['init']}), {r['n_leds']} LEDs, {args.crop}px crop, {r['iterations']} it, {r['wall_s']:.0f} s: "
              f"{r['message']}; reduced chi2 {r['reduced_chi2']:.2f}")
        print(f"  defocus recovered {r['defocus_um']:+.1f} um   known (theirs) {r['known_defocus_um']:+.1f} um")
        frc = "not run" if res["frc_cpum"] is None else f"{res['frc_cpum']:.3f} cycles/um ({_period(res['frc_cpum'])})"
        print(f"  resolution: bright field NA/lambda {res['bright_field_cpum']:.3f} cycles/um ({_period(res['bright_field_cpum'])}); "
              f"synthetic aperture {res['cutoff_cpum']:.3f} ({_period(res['cutoff_cpum'])}); measured: spectral SNR >= 3 "
              f"over the floor beyond the aperture {res['snr_cpum']:.3f} ({_period(res['snr_cpum'])}), "
              f"FRC of interleaved LED halves {frc}")
        print(f"  station: {r['station_state']}")
        print(f"  on a search bound: {len(r['at_bounds'])} ({', '.join(r['at_bounds'][:4])}{' ...' if len(r['at_bounds']) > 4 else ''})")
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
    if args.cross_check:
        cross_check(results, args.crop, args.iterations)
    return 0


def ablation(colours, crop_px: int, iterations: int) -> int:
    """Print the ablation table and the all-on fit's residual analysis per colour
    (:mod:`real_data_studies`)."""
    import real_data_studies as rs

    for colour in colours:
        rows = rs.ablation_rows(colour, crop_px, iterations)
        rs.print_ablation(colour, rows, crop_px, rows[0]["capture"].wavelength_nm)
        rs.print_residuals(colour, rs.residual_analysis(rows[0]["model"], rows[0]["fit"], rows[0]["capture"].frames))
    return 0


def cross_check(results: dict, crop_px: int, iterations: int) -> None:
    """Print PtyLab's defocus on the real patches and the simulated control, per colour."""
    print("\nCross-check: PtyLab 0.3.7 (qNewton, 100 iterations, free pupil, nominal refracted LED positions)")
    print("on the same patches, from several starting defocus values; then a simulated control of each")
    print("colour's station with the sample at the known defocus (our blind fit and PtyLab).")
    print("Reduced chi2 of our blind fit with the defocus free / held at the known value / held at PtyLab's.")
    print("  colour  known   ours   PtyLab from " + " ".join(f"{z:+5.0f}" for z in CROSS_CHECK_STARTS)
          + "   control: ours  PtyLab   chi2: free  known  PtyLab's")
    for colour, r in results.items():
        rows = ptylab_real(colour, crop_px, CROSS_CHECK_STARTS)
        chi2 = [reconstruct_colour(colour, crop_px, iterations, hold_defocus_um=v)["reduced_chi2"]
                for v in (r["known_defocus_um"], rows[-1]["defocus_um"])]
        lens = np.concatenate([[0.0] * 4, r["zernike_waves"][4:]])
        control = simulated_control(colour, crop_px, lens, iterations)
        print(f"  {colour:6s} {r['known_defocus_um']:+5.0f} {r['defocus_um']:+6.1f}               "
              + " ".join(f"{row['defocus_um']:+5.1f}" for row in rows)
              + f"   {control['ours_um']:+12.1f} {control['ptylab_um']:+7.1f}"
              + f"   {r['reduced_chi2']:11.2f} {chi2[0]:6.2f} {chi2[1]:6.2f}")
        z = rows[-1]["zernike_waves"] * r["wavelength_nm"]
        d = z - r["zernike_waves"][4:ZERNIKE_TERMS] * r["wavelength_nm"]
        print(f"  {colour:6s} PtyLab Noll 5..{ZERNIKE_TERMS} (nm, from 0 um): " + " ".join(f"{x:5.1f}" for x in z)
              + f"   RMS diff to ours {np.sqrt(np.mean(d**2)):.1f} nm ({rows[-1]['wall_s']:.0f} s per PtyLab run)")
        variants = ptylab_variants(colour, crop_px)
        print(f"  {colour:6s} PtyLab under other readings of the description: "
              + ", ".join(f"{k} {v:+.1f}" for k, v in variants.items()))


if __name__ == "__main__":
    sys.exit(main())
