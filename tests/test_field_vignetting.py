"""Vignetting across the field (issue 16): the lens's second aperture whose centre moves with the
field vector, ``c(H) = s H`` (metrology/field_terms.py). The station file states it as the fit's
start, the lens file as the simulator's truth; each off-axis tile fits its own aperture and the
field fit recovers ``(r, s)``. End to end on two tiles of the full-field fixture (an edge and a
corner tile, ~20-40 s): with the model the tiles' apertures and Zernike terms come back; without it
the same capture's astigmatism is biased."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from metrology.analysis.station_agreement import DISAGREEMENT_RATIO
from metrology.cli import main
from metrology.errors import InputError
from metrology.field_terms import VIGNETTING_MARGIN, vignetting_at
from metrology.io.lens_file import load_lens
from metrology.io.station_file import parse_station
from metrology.report.document import document_errors
from metrology.simulate_optics import HardPupil

ROOT = Path(__file__).resolve().parent.parent
STATION = ROOT / "fixtures/stations/bench-4x-fullfield.toml"
LENS = ROOT / "fixtures/lenses/field-4x.toml"
SPEC = ROOT / "fixtures/specs/plan-4x-010-field.toml"
TRUE = (1.2, 0.5)  # the lens's second aperture: radius, centre shift per unit H (pupil radii)


def test_vignetting_at_a_field_point_and_where_it_does_not_reach_the_stop():
    assert vignetting_at(None, (0.5, 0.5)) is None
    assert vignetting_at((1.2, 0.5), (0.6, -0.8)) == pytest.approx((1.2, 0.3, -0.4))
    assert vignetting_at((1.2, -0.5), (0.6, 0.0)) == pytest.approx((1.2, -0.3, 0.0))  # s < 0: towards -H
    # on the axis a circle larger than the stop does not cut it; within the margin it is modelled
    assert vignetting_at((1.2, 0.5), (0.0, 0.0)) is None
    assert vignetting_at((1.0 + VIGNETTING_MARGIN / 2, 0.5), (0.0, 0.0)) is not None


def test_station_and_lens_files_state_the_field_vignetting(tmp_path):
    text = STATION.read_text(encoding="utf-8") + "vignetting = [1.25, 0.45]\n"
    st = parse_station(text, "s.toml")
    assert st.field_layout.vignetting == (1.25, 0.45)
    assert parse_station(st.to_toml(), "again.toml").field_layout == st.field_layout
    tiles = {t.name: t for t in st.tiles()}
    corner, centre = tiles["r2c2"], tiles["r1c1"]
    assert st.tile_station(corner).vignetting == pytest.approx((1.25, 0.45 * corner.h[0], 0.45 * corner.h[1]))
    assert st.tile_station(corner).geometry().vignetting == pytest.approx(st.tile_station(corner).vignetting)
    assert st.tile_station(centre).vignetting is None  # the circle does not reach the stop there
    for bad, fragment in (("[1.25]", "must be a list \\[radius, shift\\]"), ("[0, 0.4]", "radius must be in"),
                          ("[1.2, 9]", "\\|shift\\| <= 5")):
        with pytest.raises(InputError, match="^s.toml: field.vignetting" + ".*" + fragment):
            parse_station(STATION.read_text(encoding="utf-8") + f"vignetting = {bad}\n", "s.toml")
    lens = tmp_path / "lens.toml"
    lens.write_text(LENS.read_text(encoding="utf-8") + "vignetting = [1.2, 0.5]\n", encoding="utf-8")
    assert load_lens(lens).field_vignetting == (1.2, 0.5) and load_lens(LENS).field_vignetting is None
    lens.write_text(LENS.read_text(encoding="utf-8") + "vignetting = 1.2\n", encoding="utf-8")
    with pytest.raises(InputError, match="lens.toml: field.vignetting must be a list"):
        load_lens(lens)


def test_the_simulators_pupil_is_the_stop_inside_the_second_aperture():
    na, wl = 0.1, 0.52
    cut = na / wl
    pupil = HardPupil(na, wl, np.zeros(4), vignetting=(1.1, 0.4, 0.0))
    x = np.array([-0.95, -0.65, 0.0, 0.9, 0.5]) * cut
    y = np.array([0.0, 0.0, 0.0, 0.0, 0.95]) * cut
    inside = np.abs(pupil(x, y)) > 0
    # (-0.95, 0) is 1.35 from the circle's centre (0.4, 0): cut; (-0.65, 0) is 1.05: kept; (0.5, 0.95) is outside the stop
    np.testing.assert_array_equal(inside, [False, True, True, True, False])


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    """An edge and a corner tile of a full-frame capture through a lens with a second aperture,
    inspected with the aperture modelled (start 1.25, 0.45), and the same two without it."""
    # lazy: the API facade loads the application layer by name
    import metrology

    out = tmp_path_factory.mktemp("vig")
    lens = out / "lens.toml"
    lens.write_text(LENS.read_text(encoding="utf-8") + f"vignetting = [{TRUE[0]}, {TRUE[1]}]\n", encoding="utf-8")
    tiles = "tiles = [[1, 2], [2, 2]]\n"
    assert main(["simulate", "--station", str(STATION), "--lens", str(lens), "--out", str(out / "cap"),
                 "--misalignment", "random", "--seed", "3"]) == 0
    truth = json.loads((out / "cap" / "truth.json").read_text(encoding="utf-8"))
    results = {}
    for name, extra in (("model", tiles + "vignetting = [1.25, 0.45]\n"), ("none", tiles)):
        station = out / f"station-{name}.toml"
        station.write_text(STATION.read_text(encoding="utf-8") + extra, encoding="utf-8")
        results[name] = metrology.inspect(out / "cap" / "capture.tif", station, SPEC, device="cpu")
    return results, truth


def _tile_errors(doc, truth) -> dict:
    """Noll 5..11 error (waves) of each tile against the simulated block it sees."""
    blocks = {tuple(b["origin_px"]): b for b in truth["field.blocks"]}
    out = {}
    for row in doc["field"]["tiles"]:
        z_true = np.array(blocks[tuple(row["origin_px"])]["zernike_waves"])
        z = {c["noll"]: c["value"] for c in row["zernike"]}
        out[row["name"]] = np.array([z[j] - z_true[j - 1] for j in range(5, 12)])
    return out


def test_each_tile_fits_its_second_aperture_and_the_field_fit_recovers_it(two_tiles):
    docs, truth = {k: r.document for k, r in two_tiles[0].items()}, two_tiles[1]
    assert document_errors(docs["model"]) == [] and document_errors(docs["none"]) == []
    f = docs["model"]["field"]
    assert truth["field.vignetting"] == list(TRUE)
    for row in f["tiles"]:
        r, cx, cy = vignetting_at(TRUE, row["h"])
        v = row["vignetting"]
        assert row["converged"], row["name"]
        for key, expected in (("radius", r), ("center_x", cx), ("center_y", cy)):
            assert abs(v[key]["value"] - expected) < max(2 * v[key]["U"], 0.01), (row["name"], key, v[key])
    fv = f["vignetting"]
    assert fv["tiles"] == 2
    assert abs(fv["radius"]["value"] - TRUE[0]) < max(fv["radius"]["U"], 0.01), fv
    assert abs(fv["shift_per_h"]["value"] - TRUE[1]) < max(fv["shift_per_h"]["U"], 0.01), fv
    # the single-tile part of the document (the tile nearest the axis, r1c2) lists its own aperture
    assert [r["name"] for r in docs["model"]["vignetting"]] == [
        "pupil.vignetting_radius", "pupil.vignetting_center[0]", "pupil.vignetting_center[1]"]
    assert "vignetting" not in docs["none"]
    assert docs["none"]["field"]["vignetting"] is None
    assert all(row["vignetting"] is None for row in docs["none"]["field"]["tiles"])


def test_without_the_aperture_the_off_axis_astigmatism_is_biased(two_tiles):
    """The same capture fitted with the stop alone: the cut pupil leaks into the tiles' Zernike terms
    (astigmatism above all); with the aperture modelled the terms come back."""
    docs, truth = {k: r.document for k, r in two_tiles[0].items()}, two_tiles[1]
    with_model, without = _tile_errors(docs["model"], truth), _tile_errors(docs["none"], truth)
    corner_with, corner_without = with_model["r2c2"], without["r2c2"]
    assert np.abs(corner_with).max() < 0.003, corner_with
    assert np.abs(corner_without).max() > 0.006 and np.abs(corner_without).max() > 3 * np.abs(corner_with).max()


def test_tiles_that_disagree_on_the_station_flag_the_undeclared_aperture(two_tiles):
    """Without the aperture the corner tile bends its LED geometry to absorb the cut pupil while its
    own fit looks good; the two tiles then disagree on the station they share far beyond their
    uncertainty, and the verdict says so first among the tiles' findings. With the aperture
    modelled they agree."""
    docs = {k: r.document for k, r in two_tiles[0].items()}
    agree = {s["name"]: s for s in docs["model"]["field"]["station"]}
    apart = {s["name"]: s for s in docs["none"]["field"]["station"]}
    assert not any(s["disagrees"] for s in agree.values()), agree
    assert max(s["birge_ratio"] for s in agree.values()) < DISAGREEMENT_RATIO / 2
    shift = [apart[f"illumination.shift_mm[{i}]"] for i in (0, 1)]
    assert max(s["birge_ratio"] for s in shift) > 1.5 * DISAGREEMENT_RATIO, shift
    assert all(s["dof"] == 1 and s["tiles"] == 2 for s in apart.values())
    reasons = docs["none"]["verdict"]["reasons"]
    assert docs["none"]["verdict"]["overall"] == "INCONCLUSIVE"
    first = next(i for i, r in enumerate(reasons) if "tiles disagree on the one station" in r)
    assert "[field] vignetting" in reasons[first]
    assert all("tile r2c2:" not in r for r in reasons[:first]), reasons
    assert not any("tiles disagree" in r for r in docs["model"]["verdict"]["reasons"])


def test_the_full_field_page_prints_the_fitted_aperture(two_tiles, tmp_path):
    # lazy: the API facade loads the application layer by name
    import shutil
    import subprocess

    import metrology

    if shutil.which("pdftotext") is None or shutil.which("pdfinfo") is None:
        pytest.skip("pdftotext/pdfinfo (poppler-utils) are not installed")
    result = two_tiles[0]["model"]
    pdf, _ = metrology.write_report(result, tmp_path)
    pages = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    last = int(next(line.split()[-1] for line in pages.splitlines() if line.startswith("Pages:")))
    text = " ".join(subprocess.run(["pdftotext", "-f", str(last), "-l", str(last), str(pdf), "-"], check=True,
                                   capture_output=True, text=True).stdout.split())
    radius = result.document["field"]["vignetting"]["radius"]
    assert "Lens across the field" in text and "Vignetting: second aperture radius" in text, text[:400]
    every = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout.split())
    assert "Vignetting aperture radius" in every  # the station table of the tile nearest the axis
    assert f"{radius['value']:.3f}"[:4] in text


def test_the_full_field_page_and_page_one_say_the_tiles_disagree(two_tiles, tmp_path):
    # lazy: the API facade loads the application layer by name
    import shutil
    import subprocess

    import metrology

    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    pdf, _ = metrology.write_report(two_tiles[0]["none"], tmp_path)
    every = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout.split())
    assert "Station across the tiles: largest scatter / uncertainty (Birge ratio; > 8 disagrees)" in every
    assert re.search(r"\d+\.\d \(LED array shift [xy]\): DISAGREE \(tile r\dc\d", every), every[-1500:]
    assert "the tiles disagree on the one station they share (LED array shift" in every
