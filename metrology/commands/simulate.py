"""``metrology simulate``: a synthetic capture from a station and a lens description.

Writes ``DIR/capture.tif``, ``DIR/station.toml`` and ``DIR/truth.json`` (each atomically).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from metrology.errors import InputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a capture (literal simulator, not the solver's model)",
        description="Simulate a station capture of a reference sample through a lens. Writes "
        "DIR/capture.tif, DIR/station.toml and DIR/truth.json (formats: docs/formats.md).",
    )
    p.add_argument("--station", required=True, metavar="S.toml", help="station description")
    p.add_argument("--lens", required=True, metavar="L.toml", help="lens description (the truth)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--seed", type=int, default=0, help="seed of noise and random misalignment (default 0)")
    p.add_argument("--misalignment", default="none", metavar="random|none|FILE.json",
                   help="station misalignment: 'random' (drawn from the default ranges), 'none', or a JSON "
                   "file of model paths, e.g. {\"illumination.shift_mm\": [0.2, -0.1]} (default none)")
    p.add_argument("--reference", default="random-broadband", help="reference sample ID (default random-broadband)")
    p.add_argument("--frame-px", type=int, default=None, metavar="N", help="override the station's frame size")
    p.add_argument("--photons", type=float, default=2e4, metavar="P",
                   help="photo-electrons per pixel for unit intensity (default 2e4)")
    p.add_argument("--hot-pixels", type=float, default=0.0, metavar="FRAC", help="fraction of hot pixels (default 0)")
    p.add_argument("--stray-light", type=float, default=0.0, metavar="F",
                   help="each frame's uniform haze of its LED's light (flare), clear-pupil intensity: F times a "
                   "log-uniform factor in [1/3, 3] per LED, seeded (default 0: none; the station's "
                   "lens.stray_light frees the model's term)")
    p.set_defaults(func=run)


def _misalignment(arg: str, n_leds: int, seed: int) -> dict:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.simulate import check_misalignment, draw_misalignment

    if arg == "none":
        return {}
    if arg == "random":
        return draw_misalignment(np.random.default_rng([seed, 1]), n_leds=n_leds)
    path = Path(arg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "misalignment file not found (use random, none or a JSON file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read misalignment JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(path, "misalignment JSON must be an object of model paths")
    return check_misalignment(data, n_leds, source=path)


def truth_json(truth: dict) -> str:
    """``truth.json`` text: one top-level key per line, values compact."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in truth.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def run(args) -> int:
    # lazy: the command's modules load only when it runs (start-up time of the CLI)
    from metrology.io import atomic_write_text, write_capture
    from metrology.io.lens_file import load_lens
    from metrology.io.station_file import load_station
    from metrology.progress import Progress
    from metrology.references import CATALOGUE
    from metrology.simulate import simulate_capture, stray_light_levels
    from metrology.simulate_field import simulate_full_frame

    station = load_station(args.station)
    lens = load_lens(args.lens)
    if args.frame_px is not None:
        if station.field_layout is not None:
            raise InputError("--frame-px", "a full-field station's tile size is its field.tile_px (edit the station file)")
        if args.frame_px < 8 or args.frame_px % 2:
            raise InputError("--frame-px", f"must be even and >= 8, got {args.frame_px}")
        station = station.replace(frame_px=args.frame_px)
    if args.reference not in CATALOGUE:
        raise InputError("--reference", f"unknown reference sample {args.reference!r}; known: {', '.join(CATALOGUE)}")
    if not args.photons > 0:
        raise InputError("--photons", f"must be > 0, got {args.photons}")
    if not 0 <= args.hot_pixels < 1:
        raise InputError("--hot-pixels", f"must be in [0, 1), got {args.hot_pixels}")
    if not (np.isfinite(args.stray_light) and args.stray_light >= 0):
        raise InputError("--stray-light", f"must be >= 0 (clear-pupil intensity), got {args.stray_light}")
    leds = station.led_list()
    truth_in = _misalignment(args.misalignment, len(leds), args.seed)
    try:
        coeffs = lens.coefficients(max(station.zernike_terms, lens.max_noll), wavelength_nm=station.wavelength_nm)
    except ValueError as exc:
        raise InputError(args.lens, str(exc)) from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create output folder: {exc.strerror or exc}") from None
    with Progress("simulate") as bar:
        if station.field_layout is not None:  # a full sensor frame, the pupil changing across the field
            if args.hot_pixels or args.stray_light:
                raise InputError("--hot-pixels" if args.hot_pixels else "--stray-light",
                                 "not available for full-field stations yet")
            bar.stage("simulating full frames (one block of the field at a time)",
                      len(station.field_layout.blocks(station.fov_um / station.frame_px)))
            capture, truth = simulate_full_frame(station, lens, truth_in, seed=args.seed, reference=args.reference,
                                                 photons=args.photons, leds=leds, progress=bar)
        else:
            bar.stage("simulating frames", len(leds))
            capture, truth = simulate_capture(
                station, coeffs, truth_in, seed=args.seed, reference=args.reference, photons=args.photons,
                hot_pixel_fraction=args.hot_pixels, progress=bar, lens=lens, leds=leds,
                stray_light=(stray_light_levels(args.stray_light, len(leds), np.random.default_rng([args.seed, 3]))
                             if args.stray_light else None),
            )
    try:
        write_capture(out / "capture.tif", capture)
        atomic_write_text(out / "station.toml", station.to_toml())
        atomic_write_text(out / "truth.json", truth_json(truth))
    except OSError as exc:
        raise InputError(out, f"cannot write output: {exc.strerror or exc}") from None
    saturated = int((capture.frames >= station.camera.full_scale).sum())
    rows, cols = capture.frames.shape[-2:]
    print(f"wrote {out / 'capture.tif'} ({capture.n_frames} frames of {rows}x{cols}), "
          f"{out / 'station.toml'}, {out / 'truth.json'}")
    if saturated:
        print(f"note: {saturated} saturated pixels", file=sys.stderr)
    return 0
