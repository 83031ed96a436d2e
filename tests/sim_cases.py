"""Simulated captures shared by the solver and inspection tests (written to temporary folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metrology.io import write_capture
from metrology.io.station_file import load_station
from metrology.simulate import draw_misalignment, simulate_capture

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def bench_station(frame_px=64):
    """The fixture 4x/0.1 bench (15x15 LEDs, 4 mm pitch, 90 mm), optionally with smaller frames."""
    st = load_station(FIXTURES / "stations" / "bench-4x-15x15.toml")
    return st if frame_px == st.frame_px else st.replace(frame_px=frame_px)


def centre_leds(side: int, centre: int = 7):
    h = side // 2
    return [(r, c) for r in range(centre - h, centre + h + 1) for c in range(centre - h, centre + h + 1)]


def lens_coefficients(rms_waves: float, seed: int, first: int = 5, last: int = 15, n_terms: int = 36):
    """Random Noll ``first..last`` coefficients scaled to ``rms_waves`` RMS."""
    rng = np.random.default_rng([seed, 99])
    z = np.zeros(n_terms)
    z[first - 1 : last] = rng.normal(0, 1, last - first + 1)
    return z * rms_waves / np.sqrt((z**2).sum())


def misaligned_capture(frame_px: int, leds_per_side: int, seed: int, rms_waves: float = 0.1):
    """A capture of the fixture bench (central LEDs, smaller frames) with a random misalignment and
    ``rms_waves`` RMS over Noll 5-15; returns (station, leds, capture, truth, coefficients)."""
    station = bench_station(frame_px)
    leds = centre_leds(leds_per_side)
    truth = draw_misalignment(np.random.default_rng([seed, 1]), n_leds=len(leds))
    coeffs = lens_coefficients(rms_waves, seed=seed)
    capture, truth = simulate_capture(station, coeffs, truth, seed=seed, leds=leds)
    return station, leds, capture, truth, coeffs


def simulate_to(folder, station, coeffs, *, seed=0, leds=None, misalignment="random", **kw):
    """Simulate a capture into ``folder``; returns (capture_path, station_path, truth)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    leds = leds or station.led_list()
    if misalignment == "random":
        truth = draw_misalignment(np.random.default_rng([seed, 1]), n_leds=len(leds))
    elif misalignment is None:
        truth = {}
    else:
        truth = misalignment
    capture, truth = simulate_capture(station, coeffs, truth, seed=seed, leds=leds, **kw)
    cap_path = folder / "capture.tif"
    st_path = folder / "station.toml"
    write_capture(cap_path, capture)
    st_path.write_text(station.to_toml(), encoding="utf-8")
    return cap_path, st_path, truth
