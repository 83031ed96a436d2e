"""Real data (UConn blood smear): foreign reader, axis mapping evidence, a quick blind fit.

Skipped when ../shared/data/uconn-bloodsmear is absent (a fresh clone has no data).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from metrology.errors import InputError
from metrology.io.foreign import (
    bright_field_mismatch, defocus_shift_matrix, load_description, load_foreign, square_spiral,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "uconn-bloodsmear"
DESCRIPTION = ROOT / "fixtures" / "foreign" / "uconn-bloodsmear.toml"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} absent")


def test_spiral_matches_their_sequence_rules():
    order = square_spiral(15)
    assert len(order) == 225 and len(set(order)) == 225
    assert order[:10] == [(0, 0), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (2, -1)]
    assert max(max(abs(x), abs(y)) for x, y in order) == 7


def test_description_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(DESCRIPTION.read_text().replace('their_x = "+col"', 'their_x = "+row"'))
    with pytest.raises(InputError, match="bad.toml.*mapping"):
        load_description(bad)
    with pytest.raises(InputError, match="not a readable MATLAB"):
        junk = tmp_path / "junk.mat"
        junk.write_bytes(b"not a mat file at all" * 10)
        load_foreign(junk, DESCRIPTION)


@needs_data
def test_sequence_csv_and_reader_round_trip(tmp_path):
    rows = list(csv.DictReader(open(DATA / "led_sequence.csv")))
    assert [(int(r["xi_rel"]), int(r["yi_rel"])) for r in rows] == square_spiral(15)
    capture, station = load_foreign(DATA / "bloodsmear_blue.mat", DESCRIPTION)
    assert capture.n_frames == 225 and capture.frame_px == 128
    assert capture.frames.dtype == np.float32
    assert [list(map(int, (r["led_abs_x"], r["led_abs_y"]))) for r in rows] == capture.extra["their_led_index"]
    # identity mapping: their (xi, yi) -> board (row, col) = (7 + yi, 7 + xi); first LED on axis
    assert capture.leds[:3] == [(7, 7), (7, 8), (8, 8)]
    assert station.tile_center_mm == pytest.approx((0.0, -0.65))
    assert station.slide_thickness_mm == 1.0 and station.led_distance_mm == pytest.approx(91.88)
    assert station.wavelength_nm == pytest.approx(475.0)
    assert capture.extra["known_defocus_um_theirs"] == pytest.approx(-15.0)
    station.check_capture(capture)
    # our capture format holds it
    from metrology.io.capture import read_capture, write_capture

    back = read_capture(write_capture(tmp_path / "blue.tif", capture))
    assert back == capture


@needs_data
@pytest.mark.parametrize("colour", ["red", "green", "blue"])
def test_bright_field_set_matches_mapping(colour):
    capture, station = load_foreign(DATA / f"bloodsmear_{colour}.mat", DESCRIPTION)
    ev = bright_field_mismatch(capture, station, margin_na=0.005)
    assert ev["measured"].sum() in (20, 21)
    assert ev["n_mismatched"] == 0
    # pseudo-counts: bright frames are thousands of counts, dark-field frames above the offset
    means = capture.frames.mean(axis=(1, 2))
    assert 1e3 < means.max() < 1e5 and means.min() > 1


@needs_data
def test_offset_sign_from_edge_brightness():
    """Blue: first LED 0.65 mm off the patch centre along their +y. LEDs at yi = +2 must be
    darker (further out) than those at yi = -2; the opposite offset sign predicts the reverse."""
    capture, _ = load_foreign(DATA / "bloodsmear_blue.mat", DESCRIPTION)
    mean = capture.frames.mean(axis=(1, 2))
    order = square_spiral(15)
    plus = np.mean([mean[order.index((x, 2))] for x in (-1, 1)])
    minus = np.mean([mean[order.index((x, -2))] for x in (-1, 1)])
    assert plus < 0.5 * minus


@needs_data
def test_defocus_shift_matrix_has_no_axis_swap():
    capture, station = load_foreign(DATA / "bloodsmear_red.mat", DESCRIPTION)
    a, rms = defocus_shift_matrix(capture.frames, square_spiral(15), bright_field_mismatch(capture, station)["measured"])
    # their x moves the image along columns, their y along rows, with the same sign
    assert a[0, 0] > 3 * abs(a[0, 1]) and a[1, 1] > 3 * abs(a[1, 0])
    assert a[0, 0] > 0 and a[1, 1] > 0
    # geometric defocus: shift = -defocus * tan(angle); 1.845 um pixels, 4 mm / 91.88 mm per step
    defocus = -np.mean(np.diag(a)) * 1.845 / (4.0 / 91.88)
    assert -45 < defocus < -30


def _bench():
    spec = importlib.util.spec_from_file_location("bench_real_data", ROOT / "benchmarks" / "bench_real_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="module")
def quick_fits():
    """Blind fits of the three colours on a 32-px patch (all 225 LEDs, 5 iterations and one settle
    round of the free sample: quick, truncated fits; ~7 s each on an idle 2-core machine before the
    float64 finish), computed once for the tests below."""
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} absent")
    bench = _bench()
    return bench, {c: bench.reconstruct_colour(c, crop_px=32, iterations=5, settle_rounds=1) for c in ("red", "green", "blue")}


@needs_data
@pytest.mark.slow
def test_quick_blind_red_defocus_sign_and_size(quick_fits):
    bench, fits = quick_fits
    r = fits["red"]
    # the data put the red sample 25-35 um above focus (ours -35, PtyLab -25 from any start; both
    # return -55 on a simulated control at -55), the dataset says 55 um (docs/real-data.md): check
    # the sign and the size the data support
    assert r["defocus_um"] < 0
    assert -42 < r["defocus_um"] < -28
    # resolution from a measure the reconstruction's texture cannot fake (spectral SNR against the
    # floor beyond the synthetic aperture): above zero, never beyond the aperture
    res = bench.resolution(r)
    print(f"\nred, 32 px, 5 iterations: {res}")
    assert 0 < res["snr_cpum"] <= res["cutoff_cpum"]


@needs_data
@pytest.mark.slow
def test_quick_blind_green_defocus_sign_and_size(quick_fits):
    """Green: stated +10 um; tolerance +/-10 um, the largest difference between two independent
    solvers on these captures (ours and PtyLab, docs/real-data.md), neither biased on a simulated
    control (0.4 um)."""
    _, fits = quick_fits
    assert 0 < fits["green"]["defocus_um"] < 20


@needs_data
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known gap (issue 7): blue's stated defocus is -15 um; our blind fit gives 0 to +3 um, PtyLab "
    "+6 um from any start, and both return -15 on a simulated control at -15 (docs/real-data.md); "
    "remove this marker when the fit lands within the tolerance of the stated value"))
def test_quick_blind_blue_defocus_sign_and_size(quick_fits):
    """Blue: stated -15 um, tolerance +/-10 um as for green (sign and size together: the quick fit
    lands near 0, where a test of the sign alone would be a coin toss)."""
    _, fits = quick_fits
    assert -25 < fits["blue"]["defocus_um"] < -5


@needs_data
@pytest.mark.slow
def test_pipeline_sees_blues_stated_defocus_on_a_simulated_control():
    """Control for the gap above: a simulated capture of blue's station (same LEDs, slide, NA,
    pixel; 32-px patch) with the sample at the stated -15 um is recovered at -15 um by the same
    blind pipeline, so the +3 um on the real data is what the data hold, not a blind spot of the
    solver or of the reader's geometry. Tolerance 1.5 um (a tenth of the stated value; the
    benchmark's 64-px control and PtyLab both land within 0.4 um). One settle test instead of the
    schedule's 24: the defocus is -15.04 um after one (11 s) and -14.97 after the full loop (45 s)."""
    bench = _bench()
    station, leds, capture, truth, known = bench.control_capture("blue", 32, np.zeros(15))
    assert known == pytest.approx(-15.0)
    defocus = bench.blind_defocus(station, leds, capture, truth, iterations=5, settle_rounds=1)
    assert defocus == pytest.approx(-15.0, abs=1.5)


@needs_data
@pytest.mark.slow
def test_three_colours_see_one_lens(quick_fits):
    """One lens: Noll 5-15 in nm of OPD agree between colours within 5 nm RMS (lambda/100 of red)."""
    _, fits = quick_fits
    nm = {c: r["zernike_waves"][4:15] * r["wavelength_nm"] for c, r in fits.items()}
    for a, b in (("red", "green"), ("red", "blue"), ("green", "blue")):
        assert np.sqrt(np.mean((nm[a] - nm[b]) ** 2)) < 5.0, (a, b)
