"""Full-field lens qualification at the 2-core machine's scale (issue 16, first slice).

Each trial simulates a full-frame capture of ``fixtures/stations/bench-4x-fullfield.toml`` (96 x 96
sensor, 3 x 3 tiles of 32 px, 25 LEDs) through ``fixtures/lenses/field-4x.toml`` (W040 0.05,
W131 0.08, W222 0.10, W220 0.05 waves, a constant nodal coma) with a random misalignment
(shift +/-1 mm, rotation +/-3 deg, distance +/-3 mm, tilt +/-1 deg) and per-field Zernike noise
(``--per-field-noise`` waves on every lens term of every tile), and inspects it in known mode
(per-tile fits, field model by generalised least squares). Two parts:

* ``--part separation``: ONE lens (its per-field noise drawn once) under ``--trials`` random
  misalignments: the spread (standard deviation over the trials) of every field column, and beside
  it the spread with the station frozen at nominal (the leak); the error of every column against
  the noise-free lens; the Hopkins coefficients, W220, distortion at the edge (truth 0);
* ``--part calibration``: a new lens (new per-field noise) and misalignment in every trial:
  RMS(error / u) and the coverage of U = 2u of the field columns against the noise-free lens
  (the per-field noise is what the field model cannot explain: the Birge-scaled u must cover it).

* ``--part vignetting``: the lens with a second aperture across the field (``--vignetting R S``,
  default 1.2 and 0.5 pupil radii: ``vignetting_at``, a hard edge in the simulator) under
  ``--trials`` random misalignments, each capture fitted twice: with the aperture modelled (the
  station's ``field.vignetting`` started 0.05 off in both numbers) and with the stop alone. Prints
  each field column's error (mean and max over the trials) both ways, and the recovered ``(r, s)``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_full_field.py --part separation --trials 8``,
``--part calibration --trials 20`` and ``--part vignetting --trials 8 --per-field-noise 0`` (about
75 s per inspection on an idle 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from common import machine
from metrology.analysis.field import w220_from_curvature
from metrology.field_terms import ASTIGMATISM_PER_W222, COMA_PER_W131, SPHERICAL_PER_W040, field_basis
from metrology.io import write_capture
from metrology.io.lens_file import load_lens
from metrology.io.station_file import load_station
from metrology.pipeline import load_inputs
from metrology.pipeline_field import measure_field
from metrology.simulate import draw_misalignment
from metrology.simulate_field import simulate_full_frame

ROOT = Path(__file__).resolve().parent.parent
STATION = ROOT / "fixtures/stations/bench-4x-fullfield.toml"
LENS = ROOT / "fixtures/lenses/field-4x.toml"
GEOMETRY = ("illumination.shift_mm", "illumination.rotation_deg", "illumination.distance_error_mm",
            "illumination.tilt_deg")


def true_columns(lens, n_terms: int) -> dict:
    """The noise-free lens in the field model's columns (Zernike waves at |H| = 1)."""
    f = lens.field_terms
    out = {c.name: 0.0 for c in field_basis(n_terms)}
    for j, v in lens.zernike_waves.items():
        if 5 <= j <= n_terms:
            out[f"const.Z{j}"] += v
    out["const.Z11"] += f.get("W040", 0.0) * SPHERICAL_PER_W040
    out["W131"] += f.get("W131", 0.0) * COMA_PER_W131
    out["W222"] += f.get("W222", 0.0) * ASTIGMATISM_PER_W222
    cx, cy = f.get("coma_constant", (0.0, 0.0))
    out["const.Z8"] += cx
    out["const.Z7"] += cy
    return out


def trial(station, lens, seed: int, noise: float, lens_seed: int, frozen=(), fitted_as=None):
    """Simulate one capture and fit it (``fitted_as``: the station the tool is given, default
    ``station``; a list of them: one fit each, returned as a list)."""
    mis = draw_misalignment(np.random.default_rng([seed, 1]), n_leds=len(station.led_list()))
    cap, _truth = simulate_full_frame(station, lens, mis, seed=seed, per_field_noise_waves=noise,
                                      per_field_noise_seed=lens_seed)
    fits = []
    for given in fitted_as if isinstance(fitted_as, list) else [fitted_as or station]:
        with tempfile.TemporaryDirectory() as tmp:
            write_capture(Path(tmp) / "c.tif", cap)
            (Path(tmp) / "s.toml").write_text(given.to_toml(), encoding="utf-8")
            loaded = load_inputs(Path(tmp) / "c.tif", Path(tmp) / "s.toml", None, None, mode="known")
            t0 = time.perf_counter()
            fm = measure_field(loaded, "known", frozen=frozen)
        fits.append((fm, time.perf_counter() - t0))
    if isinstance(fitted_as, list):
        return fits, mis
    return fits[0][0], fits[0][1], mis


def vignetting_part(station, lens, args, truth) -> None:
    """The field columns with and without the second aperture modelled (``--part vignetting``)."""
    r, sh = args.vignetting
    lens = replace(lens, field_vignetting=(r, sh))
    layout = station.field_layout
    modelled = station.replace(field_layout=replace(layout, vignetting=(r + 0.05, sh - 0.05)))
    names = list(truth)
    err = {"modelled": [], "stop alone": []}
    recovered = []
    for i in range(args.trials):
        fits, _ = trial(station, lens, 100 + i, args.per_field_noise, 0, fitted_as=[modelled, station])
        for (fm, seconds), key in zip(fits, err):
            err[key].append([dict(zip(fm.model.fit.names, fm.model.fit.values))[n] - truth[n] for n in names])
            print(f"trial {i} {key}: {seconds:.0f} s, field chi2/dof {fm.model.chi2 / fm.model.dof:.2f}"
                  + ("" if fm.vignetting is None else
                     f", r {fm.vignetting.value('radius')[0]:.4f} +/- {fm.vignetting.value('radius')[1]:.4f}, "
                     f"s {fm.vignetting.value('shift_per_h')[0]:.4f} +/- {fm.vignetting.value('shift_per_h')[1]:.4f}"),
                  flush=True)
        fm = fits[0][0]
        recovered.append((fm.vignetting.value("radius")[0], fm.vignetting.value("shift_per_h")[0]))
    print(f"\nsecond aperture r = {r}, s = {sh} (pupil radii); per-field noise {args.per_field_noise} waves")
    print(f"{'column':<14} {'truth':>8} {'modelled: mean err':>19} {'max |err|':>10} {'stop alone: mean err':>21} "
          f"{'max |err|':>10}")
    a, b = np.array(err["modelled"]), np.array(err["stop alone"])
    for i, n in enumerate(names):
        print(f"{n:<14} {truth[n]:>8.4f} {a[:, i].mean():>19.5f} {np.abs(a[:, i]).max():>10.5f} "
              f"{b[:, i].mean():>21.5f} {np.abs(b[:, i]).max():>10.5f}")
    rec = np.array(recovered)
    print(f"largest |mean error| over the columns: modelled {np.abs(a.mean(axis=0)).max():.5f}, stop alone "
          f"{np.abs(b.mean(axis=0)).max():.5f} waves; r recovered {rec[:, 0].mean():.4f} (spread "
          f"{rec[:, 0].std(ddof=1) if len(rec) > 1 else 0:.4f}), s {rec[:, 1].mean():.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("separation", "calibration", "vignetting"), default="separation")
    ap.add_argument("--vignetting", type=float, nargs=2, default=(1.2, 0.5), metavar=("R", "S"),
                    help="--part vignetting: the lens's second aperture (pupil radii)")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--per-field-noise", type=float, default=0.02, help="waves (default 0.02, as the issue)")
    ap.add_argument("--out", default=None, help="JSON file for the raw figures")
    args = ap.parse_args()
    station, lens = load_station(STATION), load_lens(LENS)
    truth = true_columns(lens, station.zernike_terms)
    print(machine())
    print(f"full-field bench ({args.part}): {station.field_layout.grid[0]}x{station.field_layout.grid[1]} tiles of "
          f"{station.frame_px} px, {len(station.led_list())} LEDs, per-field noise {args.per_field_noise} waves")
    if args.part == "vignetting":
        vignetting_part(station, lens, args, truth)
        return
    rows, frozen_rows = [], []
    for i in range(args.trials):
        lens_seed = 0 if args.part == "separation" else 1000 + i
        fm, seconds, mis = trial(station, lens, 100 + i, args.per_field_noise, lens_seed)
        rows.append(_row(fm, station, seconds, mis))
        print(f"trial {i}: {seconds:.0f} s, chi2/dof {rows[-1]['chi2'] / rows[-1]['dof']:.2f}, "
              f"scatter {rows[-1]['scatter_waves']:.4f} w, "
              f"W040 {rows[-1]['seidel']['W040'][0]:.4f} W131 {rows[-1]['seidel']['W131'][0]:.4f} "
              f"W222 {rows[-1]['seidel']['W222'][0]:.4f} W220 {rows[-1]['w220'][0]:.4f}", flush=True)
        if args.part == "separation":
            fz, seconds, _ = trial(station, lens, 100 + i, args.per_field_noise, lens_seed, frozen=GEOMETRY)
            frozen_rows.append(dict(zip(fz.model.fit.names, fz.model.fit.values.tolist())) if fz.model else {})
            print(f"  frozen at nominal: {seconds:.0f} s", flush=True)
    report(rows, frozen_rows, truth)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "frozen": frozen_rows, "truth": truth}, indent=1))


LED_GEOMETRY = {"illumination.shift_mm[0]": ("illumination.shift_mm", 0), "illumination.shift_mm[1]":
                ("illumination.shift_mm", 1), "illumination.rotation_deg": ("illumination.rotation_deg", None),
                "illumination.distance_error_mm": ("illumination.distance_error_mm", None)}


def _station_errors(fm, mis) -> dict:
    """|error| of the LED geometry: the tiles combined, and the central tile alone (one-tile fit);
    each with its error / u (``z_combined``, ``z_central``) and the tiles' Birge ratio."""
    central = {e.name: e for e in fm.measurements[fm.central].station}
    out = {}
    for name, (path, i) in LED_GEOMETRY.items():
        true = float(np.asarray(mis[path]).reshape(-1)[0 if i is None else i])
        comb = fm.station[name]
        out[name] = {"combined": abs(comb.value - true), "central": abs(central[name].value - true),
                     "z_combined": (comb.value - true) / comb.u, "z_central": (central[name].value - true) / central[name].u,
                     "birge": comb.birge_ratio}
    return out


def _row(fm, station, seconds, mis) -> dict:
    fit = fm.model.fit
    curv = w220_from_curvature(fm.curvature.value("curvature_um"), fm.model.seidel["W222"], station.na,
                               station.wavelength_nm)
    return {"values": dict(zip(fit.names, fit.values.tolist())), "u": dict(zip(fit.names, fit.u.tolist())),
            "chi2": fm.model.chi2, "dof": fm.model.dof, "seidel": fm.model.seidel, "w220": curv,
            "distortion_edge": fm.distortion["distortion_percent_edge"], "seconds": seconds,
            "station": {k: asdict(v) for k, v in fm.station.items()}, "scatter_waves": fm.model.scatter_waves,
            "station_errors": _station_errors(fm, mis),
            "tiles": [{"name": t.name, "zernike": m.zernike_waves.tolist(), "u": m.zernike_u.tolist(),
                       "converged": bool(m.solver.converged)} for t, m in zip(fm.tiles, fm.measurements)]}


def report(rows, frozen_rows, truth):
    names = list(truth)
    vals = np.array([[r["values"][n] for n in names] for r in rows])
    us = np.array([[r["u"][n] for n in names] for r in rows])
    err = vals - np.array([truth[n] for n in names])
    print(f"\n{'column':<22} {'truth':>8} {'mean err':>9} {'spread':>8} {'spread frozen':>14} {'mean u':>8}")
    fro = np.array([[r.get(n, np.nan) for n in names] for r in frozen_rows]) if frozen_rows else None
    for i, n in enumerate(names):
        fs = f"{fro[:, i].std(ddof=1):>14.5f}" if fro is not None and len(fro) > 1 else f"{'n/a':>14}"
        print(f"{n:<22} {truth[n]:>8.4f} {err[:, i].mean():>9.5f} {vals[:, i].std(ddof=1):>8.5f} {fs} {us[:, i].mean():>8.5f}")
    z = (err / us).ravel()
    print(f"\nmax spread over the trials: {vals.std(axis=0, ddof=1).max():.5f} waves"
          + (f", frozen at nominal {fro.std(axis=0, ddof=1).max():.5f} waves" if fro is not None and len(fro) > 1 else ""))
    print(f"calibration over {len(rows)} trials x {len(names)} columns: RMS(error/u) {np.sqrt(np.mean(z**2)):.2f}, "
          f"coverage of U = 2u {np.mean(np.abs(z) <= 2):.1%}")
    for key, true in (("W040", 0.05), ("W131", 0.08), ("W222", 0.10)):
        v = np.array([r["seidel"][key][0] for r in rows])
        print(f"{key}: truth {true:.3f}, mean {v.mean():.4f}, max |error| {np.abs(v - true).max():.4f}, spread {v.std(ddof=1):.4f}")
    w = np.array([r["w220"][0] for r in rows])
    print(f"W220: truth 0.050, mean {w.mean():.4f}, max |error| {np.abs(w - 0.05).max():.4f}")
    d = np.array([r["distortion_edge"][0] for r in rows])
    print(f"distortion at the edge (truth 0 %): mean {d.mean():.4f} %, max |value| {np.abs(d).max():.4f} %")
    print(f"time per trial (inspection, 9 tiles): {np.mean([r['seconds'] for r in rows]):.0f} s")
    if rows and "station_errors" in rows[0]:
        print("LED geometry, RMS error over the trials: tiles combined vs the central tile alone")
        for name in LED_GEOMETRY:
            comb = np.sqrt(np.mean([r["station_errors"][name]["combined"] ** 2 for r in rows]))
            cent = np.sqrt(np.mean([r["station_errors"][name]["central"] ** 2 for r in rows]))
            zc = np.array([r["station_errors"][name]["z_combined"] for r in rows])
            z1 = np.array([r["station_errors"][name]["z_central"] for r in rows])
            birge = [r["station_errors"][name]["birge"] for r in rows]
            print(f"  {name:<32} combined {comb:.5f}  central tile {cent:.5f}; RMS(err/u) combined "
                  f"{np.sqrt(np.mean(zc**2)):.2f} (coverage {100 * np.mean(np.abs(zc) <= 2):.0f} %), central "
                  f"{np.sqrt(np.mean(z1**2)):.2f} ({100 * np.mean(np.abs(z1) <= 2):.0f} %); tiles' Birge ratio "
                  f"median {np.median(birge):.2f}, max {max(birge):.2f}")


if __name__ == "__main__":
    main()
