"""Capture, station and lens file formats: round trips and every documented error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metrology.errors import InputError
from metrology.io import Capture, file_sha256, read_capture, relative_exposure, write_capture
from metrology.io.lens_file import load_lens
from metrology.io.station_file import load_station, parse_station

ROOT = Path(__file__).resolve().parents[1]
STATION_4X = ROOT / "fixtures/stations/bench-4x-15x15.toml"
STATION_10X = ROOT / "fixtures/stations/bench-10x-9x9.toml"
LENSES = ROOT / "fixtures/lenses"
CAPTURE = ROOT / "fixtures/captures/bench-4x-good/capture.tif"


def small_capture(dtype=np.uint16, j=5, n=16, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 4096, size=(j, n, n)).astype(dtype)
    leds = [(r, c) for r in range(3) for c in range(3)][:j]
    return Capture(frames=frames, leds=leds, exposure_s=np.linspace(0.01, 0.05, j), station_id="bench-A",
                   lens_serial="SN-1", lens_model="Plan 4x", reference_sample="random-broadband",
                   wavelength_nm=520.0, extra={"operator": "test", "nested": {"a": [1, 2]}})


# ---------------------------------------------------------------- capture
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])  # uint8: 8-bit cameras (issue 17)
def test_capture_round_trip_is_exact(tmp_path, dtype):
    cap = small_capture(dtype)
    path = write_capture(tmp_path / "c.tif", cap)
    back = read_capture(path)
    assert back.frames.dtype == np.dtype(dtype)
    assert np.array_equal(back.frames, cap.frames)
    assert back.leds == cap.leds
    assert np.array_equal(back.exposure_s, cap.exposure_s)
    assert back.metadata() == cap.metadata()
    assert back == cap
    assert back.extra == {"operator": "test", "nested": {"a": [1, 2]}}
    assert len(file_sha256(path, "capture")) == 64
    np.testing.assert_allclose(relative_exposure(back), cap.exposure_s / np.median(cap.exposure_s))
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_capture_metadata_is_plain_json_in_page0(tmp_path):
    import tifffile

    path = write_capture(tmp_path / "c.tif", small_capture())
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 5
        meta = json.loads(tf.pages[0].description)
    assert meta["format"] == "metrology-capture" and meta["format_version"] == 1
    assert meta["frames"][1] == {"led_row": 0, "led_col": 1, "exposure_s": 0.02}


def test_fixture_capture_reads():
    cap = read_capture(CAPTURE)
    assert cap.frames.shape == (225, 64, 64) and cap.frames.dtype == np.uint16
    assert cap.station_id == "bench-4x-15x15"
    assert len(cap.leds) == 225


def write_raw(path, frames, meta):
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for j, f in enumerate(frames):
            tw.write(f, photometric="minisblack", metadata=None,
                     description=(json.dumps(meta) if j == 0 and meta is not None else None))
    return path


def good_meta(j):
    return {"format": "metrology-capture", "format_version": 1, "station_id": "s",
            "frames": [{"led_row": 0, "led_col": i, "exposure_s": 0.01} for i in range(j)]}


def expect_error(path, fragment):
    with pytest.raises(InputError) as err:
        read_capture(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_capture_frame_count_mismatch(tmp_path):
    frames = np.ones((3, 8, 8), np.uint16)
    expect_error(write_raw(tmp_path / "a.tif", frames, good_meta(4)), "3 frames but 4 LEDs")


def test_capture_not_a_tiff(tmp_path):
    path = tmp_path / "x.tif"
    path.write_text("hello, I am not an image")
    expect_error(path, "not a TIFF")


def test_capture_missing_file(tmp_path):
    expect_error(tmp_path / "missing.tif", "not found")


def test_capture_truncated(tmp_path):
    path = write_capture(tmp_path / "c.tif", small_capture(j=4, n=32))
    data = path.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_capture(bad)
    assert str(bad) in str(err.value) and ("truncated" in str(err.value) or "corrupt" in str(err.value))


def test_capture_nan_frames(tmp_path):
    frames = np.ones((3, 8, 8), np.float32)
    frames[1, 2, 3] = np.nan
    expect_error(write_raw(tmp_path / "n.tif", frames, good_meta(3)), "frame 1 contains NaN")


def test_capture_metadata_errors(tmp_path):
    frames = np.ones((2, 8, 8), np.uint16)
    expect_error(write_raw(tmp_path / "m0.tif", frames, None), "no capture metadata")
    meta = good_meta(2)
    meta["format"] = "other"
    expect_error(write_raw(tmp_path / "m1.tif", frames, meta), "'format'")
    meta = good_meta(2)
    meta["frames"][0]["exposure_s"] = -1
    expect_error(write_raw(tmp_path / "m2.tif", frames, meta), "exposure_s")


def test_capture_shapes(tmp_path):
    # a rectangular frame is a full-field capture: read, then refused by a one-tile station
    rect = read_capture(write_raw(tmp_path / "r.tif", np.ones((2, 8, 10), np.uint16), good_meta(2)))
    assert rect.frames.shape == (2, 8, 10)
    station = load_station(STATION_4X).replace(station_id="s")
    with pytest.raises(InputError, match="frames are 8x10 px, the station's camera.frame_px is 64"):
        station.check_capture(rect, "r.tif")
    import tifffile

    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.ones((8, 8), np.uint16), metadata=None, description=json.dumps(good_meta(2)))
        tw.write(np.ones((16, 16), np.uint16), metadata=None)
    expect_error(path, "different shapes")


def test_blank_frames(tmp_path):
    frames = np.ones((3, 8, 8), np.uint16)
    frames[1] = 0  # one blank frame is data, flagged later by the solver
    assert read_capture(write_raw(tmp_path / "one.tif", frames, good_meta(3))).frames[1].max() == 0
    expect_error(write_raw(tmp_path / "all.tif", np.zeros((3, 8, 8), np.uint16), good_meta(3)), "all frames are zero")


# ---------------------------------------------------------------- station
def test_station_fixtures_and_round_trip(tmp_path):
    for path in (STATION_4X, STATION_10X):
        st = load_station(path)
        again = parse_station(st.to_toml())
        assert again == st
        geometry = st.geometry()
        assert geometry.n_leds == st.led_rows * st.led_cols
        from metrology.physics.illumination import max_nominal_illumination_na

        geometry.check_sampling(max_nominal_illumination_na(geometry))
    st = load_station(STATION_4X)
    assert st.station_id == "bench-4x-15x15" and st.upsampling == 4 and st.fov_um == pytest.approx(104.0)
    assert st.led_list()[:2] == [(0, 0), (0, 1)]
    assert st.drift_limits["illumination.shift_mm"] == 0.05
    assert st.camera.full_scale == 4095
    spiral = load_station(STATION_10X).led_list()
    assert spiral[0] == (4, 4) and sorted(spiral) == sorted((r, c) for r in range(9) for c in range(9))


def _edited(tmp_path, old, new, name="s.toml"):
    text = STATION_4X.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    "old,new,fragment",
    [
        ("pitch_mm = 4.0", "pitch_mm = 4.0\nfoo = 1", "unknown key 'led_array.foo'"),
        ("pitch_mm = 4.0", "pitch_mm = -4", "led_array.pitch_mm must be > 0, got -4"),
        ("na = 0.1", "na = 1.0", "lens.na must be in (0, 1)"),
        ("frame_px = 64", "frame_px = 63", "camera.frame_px must be even"),
        ("pitch_mm = 4.0", "pitch_mm = \"4\"", "led_array.pitch_mm must be a number"),
        ("distance_mm = 90.0\n", "", "missing required key 'led_array.distance_mm'"),
        ("[slide]", "[slide]", None),
        ("[lens]", "[lenz]", "unknown section [lenz]"),
        ("pitch_mm = 4.0", "pitch_mm = = 4", "TOML syntax error"),
        ("upsampling = 4", "upsampling = 2", "reconstruction.upsampling"),
        ("shift_mm = 0.05", "shift_m = 0.05", "calibration.drift_limits.shift_m"),
        ("upsampling = 4", "upsampling = 4\nradius_refits = \"yes\"", "reconstruction.radius_refits must be true or false"),
        ("pitch_mm = 4.0", "pitch_mm = 4.0\nspectral_points = 9", "led_array.spectral_points must be in 1..7, got 9"),
    ],
)
def test_station_errors_name_file_and_key(tmp_path, old, new, fragment):
    if fragment is None:  # the fixture has no [slide]: check the default instead
        assert load_station(STATION_4X).slide_thickness_mm == 0.0
        return
    path = _edited(tmp_path, old, new)
    with pytest.raises(InputError) as err:
        load_station(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_radius_refits_defaults_on_and_can_be_turned_off(tmp_path):
    """``[reconstruction] radius_refits``: on unless the file says false; written back by ``to_toml``."""
    assert load_station(STATION_4X).radius_refits is True
    off = load_station(_edited(tmp_path, "upsampling = 4", "upsampling = 4\nradius_refits = false"))
    assert off.radius_refits is False and parse_station(off.to_toml()).radius_refits is False


def test_spectral_points_reach_the_model_and_are_written_back(tmp_path):
    """``[led_array] spectral_points``: the model's wavelengths across the LED spectrum (2 unless the
    file says otherwise), read, passed to the geometry and written back by ``to_toml``."""
    assert load_station(STATION_4X).geometry().spectral_points == 2
    three = load_station(_edited(tmp_path, "pitch_mm = 4.0", "pitch_mm = 4.0\nspectral_fwhm_nm = 25.0\nspectral_points = 3"))
    g = three.geometry()
    assert three.spectral_points == 3 and g.spectral_points == 3 and len(g.spectral_nodes()) == 3
    assert parse_station(three.to_toml()).spectral_points == 3


def test_station_checks_capture():
    st = load_station(STATION_4X)
    cap = read_capture(CAPTURE)
    st.check_capture(cap, CAPTURE)
    cap.leds[5] = (15, 0)
    with pytest.raises(InputError, match=r"frame 5: LED \(15, 0\) is not on the 15x15 board"):
        st.check_capture(cap, CAPTURE)
    with pytest.raises(InputError, match="not 'bench-10x-9x9'"):
        load_station(STATION_10X).check_capture(cap, CAPTURE)


def test_station_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_station(tmp_path / "nope.toml")


def test_station_replace_recomputes_upsampling():
    st = load_station(STATION_4X).replace(frame_px=32)
    assert st.frame_px == 32 and st.upsampling >= 4


# ---------------------------------------------------------------- lens
def test_lens_fixtures():
    rms = {name: load_lens(LENSES / f"{name}-4x.toml").rms_waves(5, 15) for name in ("good", "marginal", "bad")}
    assert rms["good"] == pytest.approx(0.04, abs=0.003)
    assert rms["marginal"] == pytest.approx(0.07, abs=0.005)
    assert rms["bad"] == pytest.approx(0.15, abs=0.01)
    lens = load_lens(LENSES / "good-4x.toml")
    c = lens.coefficients(36)
    assert c.shape == (36,) and c[4] == lens.zernike_waves[5] and c[:4].tolist() == [0, 0, 0, 0]
    assert lens.coefficients(36, wavelength_nm=1040.0)[4] == pytest.approx(c[4] / 2)


def test_lens_list_form_and_errors(tmp_path):
    p = tmp_path / "l.toml"
    p.write_text('model = "m"\nserial = "s"\nna = 0.2\nzernike_waves = [0, 0, 0, 0, 0.05]\n')
    assert load_lens(p).coefficients(6).tolist() == [0, 0, 0, 0, 0.05, 0]
    for body, fragment in [
        ('model = "m"\nserial = "s"\nna = 0.2\ncolour = 1\n', "unknown key 'colour'"),
        ('model = "m"\nserial = "s"\nna = 1.5\n', "na must be in (0, 1)"),
        ('model = "m"\nserial = "s"\nna = 0.2\n[zernike_waves]\n"x5" = 0.1\n', "zernike_waves.x5"),
        ('model = "m"\nserial = "s"\nna = 0.2\n[zernike_waves]\n"5" = "big"\n', "zernike_waves.5 must be a finite number"),
        ('model = "m"\nna = 0.2\n', "missing required key 'serial'"),
    ]:
        p.write_text(body)
        with pytest.raises(InputError) as err:
            load_lens(p)
        assert str(p) in str(err.value) and fragment in str(err.value), str(err.value)


def test_blind_mode_needs_no_reference_name(tmp_path):
    """A capture from another station may name no catalogue reference: blind mode does not use one
    (issue 17); known mode still needs it and says so."""
    from dataclasses import replace

    from metrology.pipeline import BLIND_REFERENCE_LABEL, load_inputs

    path = write_capture(tmp_path / "c.tif", replace(read_capture(CAPTURE), reference_sample=""))
    station = CAPTURE.parent / "station.toml"
    loaded = load_inputs(path, station, mode="blind")
    assert loaded.reference is None and loaded.reference_label == BLIND_REFERENCE_LABEL
    assert [i["role"] for i in loaded.inputs] == ["capture", "station"]
    with pytest.raises(InputError, match="reference"):
        load_inputs(path, station, mode="known")


def test_the_pupil_edge_model_term_is_off_unless_the_station_asks(tmp_path):
    """``[uncertainty] pupil_edge_model``: 0 (off) by default; a station's value is kept, written back,
    and a negative one is refused naming the key."""
    assert load_station(STATION_4X).uncertainty["pupil_edge_model"] == 0.0
    text = STATION_4X.read_text(encoding="utf-8")
    text += "" if "[uncertainty]" in text else "\n[uncertainty]\n"
    on = tmp_path / "on.toml"
    on.write_text(text.replace("[uncertainty]\n", "[uncertainty]\npupil_edge_model = 1.0\n"), encoding="utf-8")
    st = load_station(on)
    assert st.uncertainty["pupil_edge_model"] == 1.0
    again = tmp_path / "again.toml"
    again.write_text(st.to_toml(), encoding="utf-8")
    assert load_station(again).uncertainty["pupil_edge_model"] == 1.0
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[uncertainty]\n", "[uncertainty]\npupil_edge_model = -1.0\n"), encoding="utf-8")
    with pytest.raises(InputError, match="uncertainty.pupil_edge_model"):
        load_station(bad)
