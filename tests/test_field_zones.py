"""Field zones of the specification ([[zone]]) and the verdict per zone (metrology/analysis/zones.py):
parsing and its errors, and the worst case over a zone on synthetic field models (no fit: fast).
The end-to-end zone verdicts on a simulated full-frame capture are in tests/test_full_field.py."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from metrology.analysis.field import TileData, fit_field_model
from metrology.analysis.spec import Zone, load_spec
from metrology.analysis.verdict import FAIL, INCONCLUSIVE, PASS
from metrology.analysis.zones import judge_zone, zone_points
from metrology.errors import InputError
from metrology.field_terms import design_matrix, field_basis

ROOT = Path(__file__).resolve().parents[1]
HEAD = 'format_version = 1\n[lens]\nmodel = "4x"\nwavelength_nm = 520\nna = 0.1\n'
ZONE = '[[zone]]\nname = "full field"\nh_max = 1.0\nrms_waves_max = 0.05\n'
K = 11
GRID = [(x, y) for y in (-0.7, 0.0, 0.7) for x in (-0.7, 0.0, 0.7)]
W222_COLUMN = 0.02  # astigmatism magnitude (Noll 5/6, waves) at |H| = 1: 0.02 |H|^2


def _spec(tmp_path, text, name="zones.toml"):
    path = tmp_path / name
    top, _, tables = text.rpartition("|")  # "top-level keys|tables"
    path.write_text(top + HEAD + tables, encoding="utf-8")
    return path


def test_fixture_zones_parse():
    spec = load_spec(ROOT / "fixtures/specs/plan-4x-010-field.toml")
    inner, full = spec.zones
    assert (inner.name, inner.h_max, full.name, full.h_max) == ("0-0.7 field", 0.7, "full field", 1.0)
    assert inner.family_max == {"astigmatism": 0.015, "coma": 0.03} and inner.term_max == {11: 0.01}
    assert full.distortion_percent_max == 0.1 and full.field_curvature_um_max == 15.0
    assert spec.to_dict()["zones"][0]["term_max"] == {"11": 0.01}
    # the demo ships copies of the fixtures
    for name in ("plan-4x-010-field.toml", "bench-4x-fullfield.toml", "field-4x.toml"):
        sub = "specs" if name.startswith("plan") else "stations" if name.startswith("bench") else "lenses"
        assert (ROOT / "metrology/data" / name).read_bytes() == (ROOT / "fixtures" / sub / name).read_bytes(), name


def test_zone_mtf_limits_parse(tmp_path):
    text = (ZONE + "[[zone.mtf]]\nfrequency_cyc_per_mm = 150\nmin = 0.3\n"
            '[[zone]]\nname = "inner"\nh_max = 0.5\nmtf = [{ frequency_cyc_per_mm = 100, min = 0.45 }]\n'
            "[[limits.mtf]]\nfrequency_cyc_per_mm = 100\nmin = 0.5\n")
    spec = load_spec(_spec(tmp_path, text))
    full, inner = spec.zones
    assert [(m.frequency_cyc_per_mm, m.min) for m in full.mtf] == [(150.0, 0.3)]
    assert inner.mtf[0].min == 0.45 and inner.has_limits() and inner.rms_waves_max is None  # MTF alone is a limit
    assert spec.mtf_frequencies() == [100.0, 150.0]
    assert spec.to_dict()["zones"][1]["mtf"] == [{"frequency_cyc_per_mm": 100.0, "min": 0.45}]
    assert load_spec(_spec(tmp_path, ZONE)).mtf_frequencies() == [192.3]  # none stated: half the cut-off


def test_annular_zone_with_pv_and_strehl_parses(tmp_path):
    text = ZONE + '[[zone]]\nname = "outer"\nh_min = 0.7\nh_max = 1.0\npv_waves_max = 0.2\nstrehl_min = 0.8\n'
    full, outer = load_spec(_spec(tmp_path, text)).zones
    assert (full.h_min, full.pv_waves_max, full.strehl_min) == (0.0, None, None)
    assert (outer.h_min, outer.h_max, outer.pv_waves_max, outer.strehl_min) == (0.7, 1.0, 0.2, 0.8)
    assert outer.has_limits() and outer.rms_waves_max is None  # PV or Strehl alone is a limit
    assert (full.describe(), outer.describe()) == ("|H| <= 1", "0.7 <= |H| <= 1")


def test_zones_alone_are_a_specification(tmp_path):
    spec = load_spec(_spec(tmp_path, ZONE))
    assert spec.rms_waves_max is None and spec.zones[0].rms_waves_max == 0.05
    old = load_spec(ROOT / "fixtures/specs/plan-4x-010.toml")
    assert old.zones == []  # specs without zones are unchanged


@pytest.mark.parametrize("text, fragment", [
    (ZONE.replace("h_max = 1.0", "h_max = 0"), "'zone[0].h_max' must be in (0, 1]"),
    (ZONE.replace("h_max = 1.0", "h_max = 1.2"), "'zone[0].h_max' must be in (0, 1]"),
    (ZONE.replace("h_max = 1.0", 'h_max = "all"'), "'zone[0].h_max' must be a finite number"),
    (ZONE.replace("h_max = 1.0\n", ""), "missing key 'zone[0].h_max'"),
    (ZONE + ZONE.replace("h_max = 1.0", "h_max = 0.7"), "'zone[1].name' repeats the zone name 'full field'"),
    (ZONE + "colour = 1\n", "unknown key 'zone[0].colour'"),
    (ZONE + "strehl_min = 1.3\n", "'zone[0].strehl_min' must be in (0, 1]"),
    (ZONE + "pv_waves_max = -0.1\n", "'zone[0].pv_waves_max' must be > 0"),
    (ZONE + "h_min = 1.0\n", "'zone[0].h_min' must satisfy 0 <= h_min < h_max = 1"),
    (ZONE + "h_min = -0.2\n", "'zone[0].h_min' must satisfy 0 <= h_min < h_max = 1"),
    (ZONE + "strehl = 0.8\n", "unknown key 'zone[0].strehl'"),
    (ZONE + "family = { trefoyl = 0.1 }\n", "unknown key 'zone[0].family.trefoyl'"),
    (ZONE + 'term = { "4" = 0.1 }\n', "'zone[0].term.4' is an alignment term"),
    (ZONE + "distortion_percent_max = -1\n", "'zone[0].distortion_percent_max' must be > 0"),
    (ZONE.replace("rms_waves_max = 0.05\n", ""), "'zone[0]' (full field) holds no limit"),
    (ZONE.replace('name = "full field"\n', ""), "'zone[0].name' must be a non-empty string"),
    ("zone = 3\n|[limits]\nrms_waves_max = 0.1\n", "'zone' must be an array of tables"),
    (ZONE + "mtf = [{ frequency_cyc_per_mm = 500, min = 0.3 }]\n",
     "'zone[0].mtf[0].frequency_cyc_per_mm' must be in (0, 384.6) cycles/mm"),
    (ZONE + "mtf = [{ frequency_cyc_per_mm = 100, min = 1.3 }]\n", "'zone[0].mtf[0].min' must be in [0, 1]"),
    (ZONE + "mtf = [{ frequency_cyc_per_mm = 100 }]\n", "missing key 'zone[0].mtf[0].min'"),
    (ZONE + "mtf = [{ frequency_cyc_per_mm = 100, minimum = 0.3 }]\n", "unknown key 'zone[0].mtf[0].minimum'"),
    (ZONE + "mtf = 0.3\n", "'zone[0].mtf' must be an array of tables ([[zone[0].mtf]])"),
    (ZONE + "mtf = [0.3]\n", "'zone[0].mtf[0]' must be a table"),
])
def test_bad_zones_give_one_line_errors_naming_the_file(tmp_path, text, fragment):
    path = _spec(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message, message


def _field(w222=W222_COLUMN, u=1e-4, tiles=GRID, scatter=None, n_terms=K):
    """A fitted field model of synthetic tiles: constant Z11 0.01, astigmatism ``w222 |H|^2``,
    each tile's terms with standard uncertainty ``u`` (noise-free values)."""
    cols = field_basis(n_terms)
    theta = np.zeros(len(cols))
    theta[[c.name for c in cols].index("W222")] = w222
    theta[[c.name for c in cols].index("const.Z11")] = 0.01
    h = np.array(tiles, dtype=float)
    lens = design_matrix(cols, h, n_terms) @ theta
    data = [TileData(f"t{i}", tuple(hh), np.concatenate([np.zeros(4), c]), np.eye(n_terms) * u**2, np.zeros(2),
                     np.ones(2), 0.0, 1.0) for i, (hh, c) in enumerate(zip(h, lens))]
    model = fit_field_model(data, n_terms)
    if scatter is not None:
        model = replace(model, scatter_waves=scatter)
    return SimpleNamespace(tiles=[SimpleNamespace(name=d.name, h=d.h) for d in data], model=model, distortion=None,
                           curvature=None, notes=[], central=4)


def _zone(**limits):
    return Zone("full field", 1.0, **limits)


def _judge(zone, field):
    rows, summary = judge_zone(zone, field, 520.0, 0.1, n_draws=400)
    return rows, summary


def test_zone_points_cover_the_zone():
    h = zone_points(0.7, np.array(GRID))
    r = np.hypot(h[:, 0], h[:, 1])
    assert r.max() == pytest.approx(0.7) and (r <= 0.7 + 1e-9).all() and r.min() == 0
    assert any(np.allclose(p, (0.0, 0.7)) for p in h)  # the tiles inside: the edge tiles
    assert not any(np.allclose(p, (0.7, 0.7)) for p in h)  # the corner tiles (|H| 0.99) are outside


def test_annular_zone_points_lie_in_the_annulus():
    h = zone_points(1.0, np.array(GRID), h_min=0.7)
    r = np.hypot(h[:, 0], h[:, 1])
    assert (r >= 0.7 - 1e-9).all() and (r <= 1.0 + 1e-9).all()
    assert r.min() == pytest.approx(0.7) and r.max() == pytest.approx(1.0)  # both edges are judged
    assert not any(np.allclose(p, (0.0, 0.0)) for p in h)  # not the axis
    assert any(np.allclose(p, (0.7, 0.7)) for p in h) and any(np.allclose(p, (0.0, 0.7)) for p in h)  # the tiles
    assert not any(np.allclose(p, (0.0, 0.0)) for p in zone_points(1.0, np.array(GRID), h_min=0.5))


def test_annulus_strehl_and_pv_are_judged_at_their_worst_point():
    """Astigmatism 0.02 |H|^2 and Z11 0.01 everywhere: the Strehl ratio falls and the PV grows outwards,
    so an annulus 0.5-1 is decided on its outer edge, a disc |H| <= 0.5 on its rim; the figures at the
    deciding point equal the single-point figures of the lens the field model gives there."""
    from metrology.analysis.propagation import derived_figures

    field = _field()
    at_edge = derived_figures(*[a[0] for a in field.model.lens_at(np.array([[1.0, 0.0]]))], 520.0, 0.1,
                              n_draws=400)
    strehl_edge, pv_edge = at_edge["strehl"].value, at_edge["pv_waves"].value
    rms_edge = math.hypot(W222_COLUMN, 0.01)
    assert strehl_edge == pytest.approx(math.exp(-(2 * math.pi * rms_edge) ** 2), abs=0.003)  # Marechal
    limit_s, limit_pv = strehl_edge + 0.003, pv_edge - 0.01  # both fail at the edge only
    outer = Zone("outer", 1.0, h_min=0.5, strehl_min=limit_s, pv_waves_max=limit_pv)
    rows, summary = _judge(outer, field)
    by_key = {f["key"]: f for f in summary["figures"]}
    assert summary["verdict"] == FAIL and summary["h_min"] == 0.5
    for key, value in (("strehl_min", strehl_edge), ("pv_waves_max", pv_edge)):
        fig = by_key[key]
        assert fig["verdict"] == FAIL and math.hypot(*fig["h"]) == pytest.approx(1.0), key
        assert fig["value"] == pytest.approx(value, rel=1e-3), key
    assert by_key["strehl_min"]["kind"] == "min" and by_key["pv_waves_max"]["kind"] == "max"
    assert rows[0].name.startswith("zone 'outer' (0.5 <= |H| <= 1): PV wavefront error")
    assert rows[1].name.startswith("zone 'outer' (0.5 <= |H| <= 1): Strehl ratio")
    _, inner = _judge(Zone("inner", 0.5, strehl_min=limit_s, pv_waves_max=limit_pv), field)
    assert inner["verdict"] == PASS
    assert all(math.hypot(*f["h"]) == pytest.approx(0.5) for f in inner["figures"])  # the rim decides


def test_outer_zone_fails_where_the_inner_zone_passes():
    field = _field()
    limit = 0.015  # astigmatism 0.02 |H|^2: 0.0098 at |H| = 0.7, 0.02 at |H| = 1
    rows, inner = _judge(replace(_zone(family_max={"astigmatism": limit}), name="inner", h_max=0.7), field)
    assert inner["verdict"] == PASS and rows[0].value == pytest.approx(W222_COLUMN * 0.49, rel=0.02)
    rows, full = _judge(_zone(family_max={"astigmatism": limit}), field)
    (fig,) = full["figures"]
    assert full["verdict"] == FAIL and fig["verdict"] == FAIL and math.hypot(*fig["h"]) == pytest.approx(1.0)
    assert fig["value"] == pytest.approx(W222_COLUMN, rel=0.02)
    assert rows[0].name.startswith("zone 'full field' (|H| <= 1): astigmatism") and "H = (" in rows[0].reason


def test_limit_within_u_of_the_worst_point_is_inconclusive():
    field = _field()
    _, full = _judge(_zone(rms_waves_max=1.0), field)
    worst = full["figures"][0]
    rows, zone = _judge(_zone(rms_waves_max=worst["value"] + 0.5 * worst["U"]), field)
    assert zone["verdict"] == INCONCLUSIVE and rows[0].verdict == INCONCLUSIVE
    assert "straddles the limit" in rows[0].reason and rows[0].name.startswith("zone 'full field'")
    _, generous = _judge(_zone(rms_waves_max=worst["value"] + 1.5 * worst["U"]), field)
    assert generous["verdict"] == PASS


def test_point_uncertainty_is_the_model_covariance_plus_the_per_field_scatter():
    field = _field(u=1e-3, scatter=0.004)
    _, zone = _judge(_zone(term_max={6: 0.1}), field)
    (fig,) = zone["figures"]
    h = np.array(fig["h"])[None, :]
    a = design_matrix(field.model.columns, h, K)[0][6 - 5]
    expected = math.sqrt(a @ field.model.fit.cov_scaled @ a + 0.004**2)
    assert fig["u"] == pytest.approx(expected, rel=1e-9)
    _, no_scatter = _judge(_zone(term_max={6: 0.1}), _field(u=1e-3))
    assert no_scatter["figures"][0]["u"] < 0.5 * fig["u"]


def test_zone_not_measured_is_inconclusive_and_says_why():
    zone = _zone(rms_waves_max=0.05, term_max={22: 0.01}, distortion_percent_max=0.1)
    rows, summary = _judge(zone, _field())
    by_key = {f["key"]: f for f in summary["figures"]}
    assert by_key["rms_waves_max"]["verdict"] == PASS
    assert "beyond the field model's Noll 5..11" in by_key["term.22"]["reason"]
    assert "no distortion fit" in by_key["distortion_percent_max"]["reason"]
    assert summary["verdict"] == INCONCLUSIVE
    inner_tiles = [(x / 2, y / 2) for x, y in GRID]  # tiles up to |H| = 0.5: a full-field zone extrapolates
    _, far = _judge(zone, _field(tiles=inner_tiles))
    assert far["verdict"] == INCONCLUSIVE and "beyond the measured tiles" in far["figures"][0]["reason"]
    rows, single = _judge(zone, None)
    assert single["verdict"] == INCONCLUSIVE and "single-tile capture" in rows[0].reason
