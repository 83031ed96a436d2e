"""Full-field stations: the ``[field]`` section, tiles with exact centres, the full-frame simulator and
an inspection end to end (3 x 3 tiles of 32 px, 25 LEDs, fitted in one process per core: 60-150 s on
the 2-core machine, by load) judged per field zone."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from metrology.cli import main
from metrology.errors import InputError
from metrology.field_terms import COMA_PER_W131
from metrology.io.field_layout import tile_reference
from metrology.io.lens_file import load_lens
from metrology.io.station_file import load_station, parse_station
from metrology.physics.illumination import Illumination
from metrology.pipeline import load_inputs
from metrology.references import reference_transmission
from metrology.report.document import document_errors
from metrology.misalignment import nominal_misalignment
from metrology.simulate_optics import illumination_frequencies, led_positions_mm

ROOT = Path(__file__).resolve().parent.parent
STATION = ROOT / "fixtures/stations/bench-4x-fullfield.toml"
LENS = ROOT / "fixtures/lenses/field-4x.toml"
SPEC = ROOT / "fixtures/specs/plan-4x-010-field.toml"  # on-axis limits and field zones
FIELD = "[field]\nsensor_px = [96, 100]\ntile_px = 32\ngrid = [3, 3]\nfield_radius_mm = 0.1\n"


def _single_tile_text():
    return load_station(ROOT / "fixtures/stations/bench-4x-15x15.toml").to_toml().replace("frame_px = 64\n", "")


def test_field_section_round_trip_and_tiles():
    st = parse_station(_single_tile_text() + FIELD + "tiles = [[1, 1], [0, 2]]\noverlap_px = 4\n", "s.toml")
    assert st.frame_px == 32 and st.field_layout.tile_px == 32
    assert parse_station(st.to_toml()) == st
    centre, corner = st.tiles()
    # the 3 x 3 grid (pitch 28 px) is centred on the 96 x 100 sensor; the centre tile sits on the axis
    assert centre.origin_px == (32, 34) and centre.center_mm == pytest.approx((0.0, 0.0))
    assert corner.origin_px == (4, 62)
    pixel_mm = 6.5 / 4.0 * 1e-3
    assert corner.center_mm == pytest.approx(((62 + 16 - 50) * pixel_mm, (4 + 16 - 48) * pixel_mm))
    assert corner.h == pytest.approx((corner.center_mm[0] / 0.1, corner.center_mm[1] / 0.1))
    tile_st = st.tile_station(corner)
    assert tile_st.field_layout is None and tile_st.tile_center_mm == corner.center_mm
    frames = np.arange(2 * 96 * 100).reshape(2, 96, 100)
    np.testing.assert_array_equal(st.field_layout.cut(frames, corner), frames[:, 4:36, 62:94])
    # a station without [field] is one tile, as before
    assert load_station(ROOT / "fixtures/stations/bench-4x-15x15.toml").tiles() == []


@pytest.mark.parametrize("extra, fragment", [
    ("colour = 1\n", "unknown key 'field.colour'"),
    ("tiles = [[3, 0]]\n", "field.tiles: [3, 0] is off the 3x3 grid"),
    ("tiles = [[0, 0], [0, 0]]\n", "lists a tile twice"),
    ("overlap_px = 32\n", "field.overlap_px must be an integer in 0..31"),
])
def test_field_section_errors_name_the_file(extra, fragment):
    with pytest.raises(InputError, match="^s.toml: .*" + fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_station(_single_tile_text() + FIELD + extra, "s.toml")


@pytest.mark.parametrize("field, fragment", [
    (FIELD.replace("grid = [3, 3]", "grid = [4, 3]"), "span 128 px, more than the sensor's 96 rows"),
    (FIELD.replace("field_radius_mm = 0.1", "field_radius_mm = -1"), "field.field_radius_mm must be a number > 0"),
    (FIELD.replace("tile_px = 32", "tile_px = 33"), "field.tile_px must be even"),
    (FIELD.replace("sensor_px = [96, 100]\n", ""), "missing required key 'field.sensor_px'"),
])
def test_field_layout_errors(field, fragment):
    with pytest.raises(InputError, match="^s.toml: .*" + fragment.replace("[", r"\[")):
        parse_station(_single_tile_text() + field, "s.toml")
    with pytest.raises(InputError, match="camera.frame_px .* field.tile_px"):
        parse_station(load_station(ROOT / "fixtures/stations/bench-4x-15x15.toml").to_toml() + FIELD, "s.toml")


def test_lens_field_terms(tmp_path):
    lens = load_lens(LENS)
    assert lens.field_terms["W131"] == 0.08 and lens.field_terms["coma_constant"] == (0.008, -0.005)
    z = lens.field_coefficients(np.array([[0.5, 0.0], [0.0, 0.0]]), 15)
    assert z[0, 7] - z[1, 7] == pytest.approx(0.08 * COMA_PER_W131 * 0.5)  # coma grows linearly with Hx
    assert z[1, 8] == pytest.approx(0.006)  # the constant Zernike terms stay
    bad = tmp_path / "bad.toml"
    bad.write_text(LENS.read_text(encoding="utf-8") + "W999 = 1\n", encoding="utf-8")
    with pytest.raises(InputError, match="unknown key 'field.W999'"):
        load_lens(bad)


def test_each_tile_has_exact_illumination_from_its_own_centre():
    st = load_station(STATION)
    corner = st.tiles()[0]
    geometry = st.tile_station(corner).geometry()
    assert geometry.tile_center_mm == corner.center_mm
    with torch.no_grad():
        k_model = Illumination(geometry, dtype=torch.float64).spatial_frequencies().numpy()
    leds = st.led_list()
    k_exact = illumination_frequencies(st.tile_station(corner), led_positions_mm(st, leds, nominal_misalignment(len(leds))))
    np.testing.assert_allclose(k_model, k_exact, rtol=1e-9, atol=1e-12)
    k_axis = illumination_frequencies(st, led_positions_mm(st, leds, nominal_misalignment(len(leds))))
    shift = k_exact - k_axis  # not a common (paraxial) shift: it changes from LED to LED (by 5 % here)
    assert np.ptp(shift[:, 0]) > 0.03 * np.abs(shift[:, 0]).mean() and np.abs(shift).max() > 1e-3


def test_tile_reference_is_the_sample_the_tile_sees():
    st = load_station(STATION)
    t = reference_transmission("random-broadband", st.fov_um, 64, seed=0)
    tile = st.tiles()[5]  # r1c2, origin (32, 64): whole periods of the 32-px sample
    np.testing.assert_array_equal(tile_reference(t, tile, 32), t)
    shifted = st.field_layout.tile_at((0, 0), (3, 5), 6.5 / 4)
    assert tile_reference(t, shifted, 32)[0, 0] == t[6, 10]


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    """A full-frame capture of the fixture lens (random misalignment), inspected with the API."""
    # lazy: the API facade loads the application layer by name
    import metrology

    out = tmp_path_factory.mktemp("ff")
    assert main(["simulate", "--station", str(STATION), "--lens", str(LENS), "--out", str(out),
                 "--misalignment", "random", "--seed", "3"]) == 0
    result = metrology.inspect(out / "capture.tif", out / "station.toml", SPEC, device="cpu")
    return result, json.loads((out / "truth.json").read_text(encoding="utf-8")), out


def test_full_field_inspection_recovers_the_lens_across_the_field(inspected):
    result, truth, _ = inspected
    f = result.document["field"]
    assert document_errors(result.document) == []
    assert f["notes"] == [] and len(f["tiles"]) == 9 and f["central_tile"] == "r1c1"
    seidel = f["model"]["seidel_waves"]
    for key in ("W040", "W131", "W222"):  # within U and within 0.006 waves of the truth
        assert abs(seidel[key]["value"] - truth["field.lens_terms"][key]) < max(seidel[key]["U"], 1e-3), key
        assert abs(seidel[key]["value"] - truth["field.lens_terms"][key]) < 0.006, key
    cols = {c["name"]: c for c in f["model"]["columns"]}
    assert cols["const.Z8"]["value"] == pytest.approx(0.008, abs=0.001)  # nodal constant coma
    assert cols["const.Z7"]["value"] == pytest.approx(-0.005, abs=0.001)
    assert cols["const.Z9"]["value"] == pytest.approx(0.006, abs=0.001)
    assert f["model"]["chi2"] / f["model"]["dof"] < 3
    w220 = f["field_curvature"]["W220_waves"]
    assert abs(w220["value"] - 0.05) < max(w220["U"], 0.005)
    assert f["field_curvature"]["curvature_um"]["value"] < 0  # W222 / 2 + W220 > 0: the focus moves towards -z


def test_full_field_distortion_and_magnification(inspected):
    result, truth, _ = inspected
    d = result.document["field"]["distortion"]
    assert abs(d["distortion_percent_edge"]["value"]) < max(d["distortion_percent_edge"]["U"], 0.01)  # no W311
    # W131's tilt part (W131 H / 3 of Noll 2/3) moves each tile's image: a sample shift of
    # -2 c2 / (NA / lambda) um, linear in H: the magnification error the fit reports
    c2_per_h = truth["field.lens_terms"]["W131"] / 3
    expected = -2 * c2_per_h / (0.1 / 0.52) / 75.0
    assert d["magnification_error"]["value"] == pytest.approx(expected, abs=max(d["magnification_error"]["U"], 2e-4))
    assert d["calibrated_magnification"]["value"] == pytest.approx(4.0 * (1 + d["magnification_error"]["value"]))


def test_full_field_station_estimates(inspected):
    result, truth, _ = inspected
    station = {s["name"]: s for s in result.document["field"]["station"]}
    for name, value in (("illumination.shift_mm[0]", truth["illumination.shift_mm"][0]),
                        ("illumination.shift_mm[1]", truth["illumination.shift_mm"][1]),
                        ("illumination.rotation_deg", truth["illumination.rotation_deg"])):
        assert abs(station[name]["value"] - value) < max(4 * station[name]["u"], 0.01), name
    assert "sample.position_um[0]" not in station  # the pose varies across the field
    assert math.isfinite(result.document["field"]["tiles"][0]["sample_defocus_um"]["value"])


def test_full_field_pdf_page_rendered_and_read(inspected, tmp_path):
    # lazy: the API facade loads the application layer by name
    import shutil
    import subprocess

    import metrology

    if shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None:
        pytest.skip("pdftotext/pdftoppm (poppler-utils) are not installed")
    result, _, _ = inspected
    pdf, json_file = metrology.write_report(result, tmp_path)
    assert document_errors(json.loads(Path(json_file).read_text(encoding="utf-8"))) == []
    text = subprocess.run(["pdftotext", "-f", "5", "-l", "5", str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout
    text = " ".join(text.split())
    assert "Lens across the field" in text and "page 5 of 5" in text
    for fragment in ("Hopkins W131", "Hopkins W220", "Distortion at |H| = 1", "Calibrated magnification", "r0c0", "r2c2",
                     "Verdict per field zone (overall FAIL)", "0-0.7 field (|H| <= 0.7): PASS",
                     "full field (|H| <= 1): FAIL", "MTF at 100 cycles/mm (sagittal and tangential)",
                     "MTF directions: at field point H the tangential MTF has its frequency vector along H",
                     "Focus: image plane through the axis's best focus",
                     "Station across the tiles: largest scatter / uncertainty"):
        assert fragment in text, fragment
    assert re.search(r"\d+\.\d \([A-Za-z ]+\): agree", text), text
    w222 = result.document["field"]["model"]["seidel_waves"]["W222"]
    assert f"{w222['value']:.3f}"[:4] in text  # the table prints the fitted W222
    subprocess.run(["pdftoppm", "-f", "5", "-l", "5", "-r", "30", "-png", str(pdf), str(tmp_path / "p")], check=True)
    (page,) = sorted(tmp_path.glob("p*.png"))
    # lazy: matplotlib reads the page back
    from matplotlib.image import imread

    img = imread(page)
    assert img.shape[0] > img.shape[1] > 200 and img[..., :3].std() > 0.05  # an A4 page with a drawn figure


def test_zernike_export_at_a_field_point(inspected, tmp_path, capsys):
    result, truth, _ = inspected
    doc_path = tmp_path / "r.json"
    doc_path.write_text(json.dumps(result.document), encoding="utf-8")
    corner = result.document["field"]["tiles"][8]["h"]  # r2c2
    out = tmp_path / "z.csv"
    assert main(["zernike-export", str(doc_path), "--format", "csv", "--field", f"{corner[0]},{corner[1]}",
                 "--out", str(out)]) == 0
    rows = {int(r.split(",")[0]): r.split(",") for r in out.read_text().splitlines() if r[:1].isdigit()}
    # the model at the corner tile: near the simulated lens there (0.02 waves of nothing unmodelled)
    true_corner = next(b for b in truth["field.blocks"] if b["origin_px"] == [64, 64])["zernike_waves"]
    for noll in (5, 6, 7, 8, 11):
        assert float(rows[noll][7]) == pytest.approx(true_corner[noll - 1], abs=max(2 * float(rows[noll][9]), 2e-3))
    assert f"tile_center_mm: ({corner[0] * 0.075:g}" in out.read_text()
    assert main(["zernike-export", str(doc_path), "--format", "csv", "--field", "3,0"]) == 2
    assert "extrapolates beyond the measured tiles" in capsys.readouterr().err
    single = dict(result.document)
    del single["field"]
    doc_path.write_text(json.dumps(single), encoding="utf-8")
    assert main(["zernike-export", str(doc_path), "--format", "csv", "--field", "0,0"]) == 2
    assert "has no full-field model" in capsys.readouterr().err


def _strip_zones(text: str) -> str:
    """The spec without its [[zone]] tables (the specification as it was before field zones)."""
    head, _, rest = text.partition("\n[[zone]]")
    return head + rest[rest.index("[validity]"):]


def test_zone_verdict_fails_the_outer_field_where_the_axis_passes(inspected, tmp_path):
    """The fixture lens passes every on-axis limit and the 0-0.7 zone, and fails the full-field zone
    on astigmatism (W222 0.10 waves: about 0.021 waves of Noll 5/6 at |H| = 1 against 0.015). Judged
    on the axial tile alone (a spec without zones: what main did for every spec) it PASSes."""
    # lazy: the analysis facade is what the application calls
    from metrology.analysis.spec import load_spec
    from metrology.analysis.zones import judge_field

    result, _, _ = inspected
    v = result.document["verdict"]
    assert document_errors(result.document) == [] and v["valid"]
    assert v["overall"] == "FAIL" and result.exit_code == 1
    on_axis = [r for r in v["limits"] if not r["name"].startswith("zone ")]
    assert len(on_axis) == 5 and all(r["verdict"] == "PASS" for r in on_axis)
    inner, full = v["zones"]
    assert inner["name"] == "0-0.7 field" and inner["verdict"] == "PASS"
    assert full["name"] == "full field" and full["verdict"] == "FAIL"
    (failed,) = [f for f in full["figures"] if f["verdict"] == "FAIL"]
    assert failed["key"] == "family.astigmatism" and math.hypot(*failed["h"]) > 0.95
    assert failed["value"] - failed["U"] > failed["limit"] and failed["points"] > 60
    assert v["reasons"][0] == f"zone 'full field' (|H| <= 1): astigmatism magnitude: {failed['reason']}"
    for zone, limit in ((inner, 0.55), (full, 0.50)):  # the MTF rows: tangential at the zone's edge decides
        (mtf,) = [f for f in zone["figures"] if f["key"] == "mtf[0]"]
        assert mtf["verdict"] == "PASS" and mtf["limit"] == limit and mtf["direction"] == "tangential"
        assert math.hypot(*mtf["h"]) == pytest.approx(zone["h_max"], abs=0.05) and mtf["value"] - mtf["U"] > limit
    assert all(r.startswith("warning: ") for r in v["reasons"][1:])
    old = tmp_path / "old.toml"
    old.write_text(_strip_zones(SPEC.read_text(encoding="utf-8")), encoding="utf-8")
    axial = judge_field(result.measurement, load_spec(old), result.status, result.field_measurement)
    assert axial.overall == "PASS" and axial.zones == []
    assert any("no field zones" in w and "only tile r1c1" in w for w in axial.warnings)


def _zoned(tmp_path, zones: str):
    # lazy: the analysis facade is what the application calls
    from metrology.analysis.spec import load_spec

    path = tmp_path / "zones.toml"
    text = SPEC.read_text(encoding="utf-8")
    path.write_text(text[: text.index("\n[[zone]]") + 1] + zones + text[text.index("[validity]"):], encoding="utf-8")
    return load_spec(path)


def test_zone_verdict_passes_everywhere_and_is_inconclusive_within_u(inspected, tmp_path):
    # lazy: the analysis facade is what the application calls
    from metrology.analysis.zones import judge_field

    result, _, _ = inspected
    fm = result.field_measurement
    args = (result.measurement,)
    relaxed = ("[[zone]]\nname = \"full field\"\nh_max = 1.0\nrms_waves_max = 0.04\n"
               "family = { astigmatism = 0.03, coma = 0.03 }\ndistortion_percent_max = 0.1\n"
               "field_curvature_um_max = 15.0\n")
    passed = judge_field(*args, _zoned(tmp_path, relaxed), result.status, fm)
    assert passed.overall == "PASS" and [z["verdict"] for z in passed.zones] == ["PASS"]
    astig = next(f for f in passed.zones[0]["figures"] if f["key"] == "family.astigmatism")
    limit = astig["value"] + 0.5 * astig["U"]  # the worst point lies within U of this limit
    tight = judge_field(*args, _zoned(tmp_path, relaxed.replace("astigmatism = 0.03", f"astigmatism = {limit!r}")),
                        result.status, fm)
    assert tight.overall == "INCONCLUSIVE" and [z["verdict"] for z in tight.zones] == ["INCONCLUSIVE"]
    assert tight.reasons == [f"zone 'full field' (|H| <= 1): astigmatism magnitude: worst of {astig['points']} field "
                             f"points at H = ({astig['h'][0]:+.2f}, {astig['h'][1]:+.2f}): "
                             f"{astig['value']:.4g} +/- {astig['U']:.2g} straddles the limit {limit:g}"]


def test_annular_zone_judges_strehl_and_pv_on_its_outer_edge(inspected, tmp_path):
    """An annulus 0.7 <= |H| <= 1 with Strehl and PV limits on the fixture lens (astigmatism growing as
    |H|^2): every judged point lies in the annulus, both figures are decided on its outer edge, and a
    Strehl limit above the worst point's value + U fails there; the report's zone table names the annulus."""
    # lazy: the analysis facade is what the application calls
    from metrology.analysis.zones import judge_field
    from metrology.report.page_field import zone_rows

    result, _, _ = inspected
    fm = result.field_measurement
    zones = '[[zone]]\nname = "outer"\nh_min = 0.7\nh_max = 1.0\nstrehl_min = 0.5\npv_waves_max = 0.6\n'
    v = judge_field(result.measurement, _zoned(tmp_path, zones), result.status, fm, n_draws=400)
    (zone,) = v.zones
    by_key = {f["key"]: f for f in zone["figures"]}
    strehl, pv = by_key["strehl_min"], by_key["pv_waves_max"]
    for f in (strehl, pv):
        assert math.hypot(*f["h"]) == pytest.approx(1.0, abs=0.05), f
    assert zone["verdict"] == "PASS" and (zone["h_min"], zone["h_max"]) == (0.7, 1.0)
    assert 0.5 < strehl["value"] - strehl["U"] and strehl["value"] + strehl["U"] < 1.0
    assert pv["value"] + pv["U"] < 0.6 and pv["value"] > 0
    rows = zone_rows({"verdict": {"zones": v.zones}})
    assert rows[1][0] == "outer (0.7 <= |H| <= 1): PASS" and rows[2][4] == ">= 0.5"
    limit = round(strehl["value"] + 1.5 * strehl["U"], 4)
    tight = judge_field(result.measurement, _zoned(tmp_path, zones.replace("strehl_min = 0.5", f"strehl_min = {limit}")),
                        result.status, fm, n_draws=400)
    assert tight.overall == "FAIL" and tight.zones[0]["verdict"] == "FAIL"
    assert tight.reasons[0].startswith("zone 'outer' (0.7 <= |H| <= 1): Strehl ratio: worst of ")


def test_mtf_across_the_field_matches_the_simulated_lens(inspected):
    """Sagittal and tangential MTF at 100 cycles/mm (the spec's frequency) at every tile against the
    simulated lens's own Zernikes there, in the image plane through the axis's best focus: the
    fixture's W222 0.10 + W220 0.05 waves put the tangential focus farther from that plane than the
    sagittal one, so the tangential MTF of the outer tiles is the lower, by far more than U."""
    # lazy: the analysis facade is what the application calls
    from metrology.analysis.figures import cutoff_cyc_per_mm, mtf_diffraction_limited
    from metrology.analysis.field_mtf import FOCUS_IMAGE_PLANE
    from metrology.analysis.propagation import mtf_batch
    from metrology.conventions import MTF_DIRECTIONS_TEXT

    result, truth, _ = inspected
    m = result.document["field"]["mtf"]
    nu = 100.0 / cutoff_cyc_per_mm(520.0, 0.1)
    assert m["frequencies_cyc_per_mm"] == [100.0] and m["focus"] == FOCUS_IMAGE_PLANE
    assert m["directions"] == MTF_DIRECTIONS_TEXT and m["diffraction_limited"] == [pytest.approx(mtf_diffraction_limited(nu))]
    tiles = [p for p in m["points"] if p["source"].startswith("tile ")]
    assert [p["source"] for p in tiles] == [f"tile {t['name']}" for t in result.document["field"]["tiles"]]
    assert len(m["points"]) > 100  # and the zones' polar grids
    axis = np.array(next(b for b in truth["field.blocks"] if not any(b["h"]))["zernike_waves"])
    for p, block in zip(tiles, truth["field.blocks"]):
        assert p["h"] == pytest.approx(block["h"])
        c = np.array(block["zernike_waves"])
        c[3] -= axis[3]  # the true focus at this point, from the plane through the axis's best focus
        az = math.degrees(math.atan2(p["h"][1], p["h"][0])) if any(p["h"]) else 0.0
        for d, a in (("tangential", az), ("sagittal", az + 90.0)):
            true = mtf_batch(c[None], nu, (a,), keep_defocus=True)[0]
            q = p[d][0]
            assert abs(q["value"] - true) < max(2 * q["U"], 0.003), (p["source"], d, q, true)
            assert 0 < q["u"] and q["value"] <= m["diffraction_limited"][0] + 1e-9
        if p["abs_h"] > 0.9:
            t, s = p["tangential"][0], p["sagittal"][0]
            assert s["value"] - t["value"] > 0.02 > 3 * (s["U"] + t["U"]), p["source"]


def test_mtf_plot_of_the_full_field_page(inspected):
    """Page 5's MTF panel: per spec frequency the tangential and sagittal MTF of every point against
    |H| and the diffraction limit as a dashed line."""
    # lazy: the report's figure code is only needed here
    from metrology.report.page_field import _mtf_plot
    from metrology.report.plots import figure

    result, _, _ = inspected
    m = result.document["field"]["mtf"]
    ax = figure(60, 60).add_subplot(1, 1, 1)
    _mtf_plot(ax, result.document)
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(m["diffraction_limited"][0])
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["T 100 c/mm", "S 100 c/mm"]
    points = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert [len(ln.get_xdata()) for ln in points] == [len(m["points"])] * 2
    empty = figure(60, 60).add_subplot(1, 1, 1)
    _mtf_plot(empty, {"field": {"mtf": None}})
    assert not empty.axison


def test_zone_mtf_limit_end_to_end(inspected, tmp_path):
    """An MTF limit in a zone is judged at its worst field point and direction: the fixture's
    tangential MTF at the edge of the field."""
    # lazy: the analysis facade is what the application calls
    from metrology.analysis.zones import judge_field

    result, _, _ = inspected
    zone = "[[zone]]\nname = \"full field\"\nh_max = 1.0\nmtf = [{{ frequency_cyc_per_mm = 100, min = {} }}]\n"
    v = judge_field(result.measurement, _zoned(tmp_path, zone.format(0.5)), result.status, result.field_measurement)
    (fig,) = v.zones[0]["figures"]
    assert v.overall == "PASS" and fig["verdict"] == "PASS" and fig["kind"] == "min"
    assert fig["direction"] == "tangential" and math.hypot(*fig["h"]) > 0.95
    tiles = [p for p in result.document["field"]["mtf"]["points"] if p["source"].startswith("tile ")]
    assert fig["value"] <= min(p["tangential"][0]["value"] for p in tiles) + 1e-9  # no better than any tile
    v = judge_field(result.measurement, _zoned(tmp_path, zone.format(0.66)), result.status, result.field_measurement)
    assert v.overall == "FAIL" and v.reasons[0].startswith(
        "zone 'full field' (|H| <= 1): MTF at 100 cycles/mm (sagittal and tangential): worst of ")
    assert ", tangential: does not conform" in v.reasons[0]


def test_zone_verdict_checks_every_tile(inspected, tmp_path):
    """A tile off the axis whose fit did not converge makes the zoned verdict INCONCLUSIVE (the
    FAIL is not trusted); without zones only the axial tile counts, as before."""
    # lazy: the analysis facade is what the application calls
    import copy

    from metrology.analysis.spec import load_spec
    from metrology.analysis.zones import judge_field

    result, _, _ = inspected
    fm = copy.copy(result.field_measurement)
    fm.measurements = list(fm.measurements)
    bad = fm.measurements[0]
    fm.measurements[0] = replace(bad, solver=replace(bad.solver, converged=False, message="stopped"))
    v = judge_field(result.measurement, load_spec(SPEC), result.status, fm)
    assert v.overall == "INCONCLUSIVE" and not v.valid
    assert "measurement not valid: tile r0c0: solver did not converge: stopped" in v.reasons
    assert any("would fail on valid data" in r and "zone 'full field'" in r for r in v.reasons)
    other = tmp_path / "530.toml"  # a finding every tile shares is stated once, not per tile
    other.write_text(SPEC.read_text(encoding="utf-8").replace("wavelength_nm = 520.0", "wavelength_nm = 530.0"),
                     encoding="utf-8")
    v = judge_field(result.measurement, load_spec(other), result.status, result.field_measurement)
    assert v.overall == "INCONCLUSIVE" and sum("wavelength 520 nm is outside" in r for r in v.reasons) == 1


def test_distortion_grid_of_the_full_field_page():
    """Page 5's distortion grid: the ideal grid over the tiles' extent and the grid moved by the
    fitted third-order distortion, a point at H to H (1 + k D |H|^2) with the printed exaggeration k;
    each tile's own radial distortion as a dot on that scale; without a distortion fit, a sentence."""
    # lazy: the report's figure code is only needed here
    from metrology.report.page_field import GRID_LINES, _distortion_grid, distortion_exaggeration
    from metrology.report.plots import figure

    def q(value, u=0.0):
        return {"value": value, "U": 2 * u}

    tiles = [{"h": [hx, hy], "distortion_percent": None if hx == hy == 0 else q(0.4 * (hx * hx + hy * hy))}
             for hx in (-0.5, 0.0, 0.5) for hy in (-0.5, 0.0, 0.5)]
    doc = {"field": {"tiles": tiles, "distortion": {"distortion_percent_edge": q(0.4, 0.01)}}}  # U 0.02 %
    k = distortion_exaggeration(0.004, 0.0002, 0.5)
    assert k == 30.0  # 0.004 x (0.5 sqrt 2)^3 = 0.0014 of displacement at the corner; 0.08 x 0.5 / 0.0014 = 28 -> 3e1
    assert distortion_exaggeration(0.2, 0.0, 0.5) == 1.0 and distortion_exaggeration(0.0, 0.0, 0.5) == 1.0
    # a distortion well inside its U is scaled by the U: it stays small on the grid
    assert distortion_exaggeration(0.0001, 0.004, 0.5) == k
    ax = figure(60, 60).add_subplot(1, 1, 1)
    _distortion_grid(ax, doc)
    grey = [ln for ln in ax.get_lines() if ln.get_color() == "0.75"]
    moved = [ln for ln in ax.get_lines() if ln.get_color() == "C0"]
    assert len(grey) == len(moved) == 2 * GRID_LINES
    corner = max(np.hypot(ln.get_xdata(), ln.get_ydata()).max() for ln in moved)
    assert corner == pytest.approx(0.5 * math.sqrt(2) * (1 + k * 0.004 * 0.5), rel=1e-9)  # pincushion: outwards
    (dots,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    r = np.hypot(dots.get_xdata(), dots.get_ydata())
    assert len(r) == 8 and r.max() == pytest.approx(0.5 * math.sqrt(2) * (1 + k * 0.004 * 0.5), rel=1e-9)
    assert "x30" in ax.get_title() and "%" in ax.get_title()
    empty = figure(60, 60).add_subplot(1, 1, 1)
    _distortion_grid(empty, {"field": {"tiles": tiles, "distortion": None}})
    assert not empty.axison


def test_tile_fits_in_processes_equal_the_fits_in_this_process(inspected, monkeypatch):
    """The tiles' fits spread over 2 spawned processes give the same numbers, to the last bit, as
    the same fits one after the other in this process (both with TILE_THREADS threads); 3 tiles,
    3 iterations each. A process count is clipped to the tiles; the default is one per core."""
    from metrology.pipeline_field import TILE_THREADS, measure_field, tile_processes

    _, _, out = inspected
    text = (out / "station.toml").read_text(encoding="utf-8")
    assert "\n[field]\n" in text
    station = out / "three-tiles.toml"
    station.write_text(text.replace("\n[field]\n", "\n[field]\ntiles = [[1, 1], [0, 2], [2, 0]]\n"), encoding="utf-8")
    loaded = load_inputs(out / "capture.tif", station, SPEC)
    assert tile_processes(5, 3) == 3 and tile_processes(1, 3) == 1
    monkeypatch.setattr("metrology.pipeline_field.os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert tile_processes(None, 3) == 3 and tile_processes(None, 9) == 4
    monkeypatch.setattr("metrology.pipeline_field.os.sched_getaffinity", lambda pid: {0}, raising=False)
    threads = torch.get_num_threads()
    here = measure_field(loaded, "known", 3, workers=None)  # one core: this process, TILE_THREADS threads
    assert torch.get_num_threads() == threads and TILE_THREADS == 1
    spread = measure_field(loaded, "known", 3, workers=2)
    assert [t.name for t in spread.tiles] == ["r1c1", "r0c2", "r2c0"] and spread.central == 0
    for a, b in zip(here.measurements, spread.measurements):
        np.testing.assert_array_equal(a.zernike_waves, b.zernike_waves)
        np.testing.assert_array_equal(a.zernike_cov, b.zernike_cov)
        assert [(s.name, s.value, s.u) for s in a.station] == [(s.name, s.value, s.u) for s in b.station]
    assert [f.chi2 for f in here.fits] == [f.chi2 for f in spread.fits]
    assert here.station == spread.station


def test_tile_groups_are_contiguous_and_cover_every_tile_once():
    from metrology.pipeline_field import tile_groups

    assert tile_groups(9, 2) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert tile_groups(2, 16) == [[0], [1]]
    assert tile_groups(5, 1) == [[0, 1, 2, 3, 4]]
    for n, slots in ((64, 6), (9, 4), (1, 3)):
        groups = tile_groups(n, slots)
        assert sum(groups, []) == list(range(n)) and len(groups) == min(n, slots)
        assert max(map(len, groups)) - min(map(len, groups)) <= 1
