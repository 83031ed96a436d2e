"""``metrology zernike-export``: CSV and OpticStudio Zernike Standard / Fringe Phase files.

Round trips: the wavefront rebuilt from each exported file equals the one of the result JSON within
1e-6 waves. The OpticStudio files are checked against OpticStudio's own definition of its terms: the
formulas it prints in its "Zernike Standard Coefficients" and "Zernike Fringe Coefficients" listings
(p = normalised radius, A = angle from +x towards +y, +y up), evaluated here from those printed
strings, not from this project's Zernike code.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import re

import numpy as np
import pytest

from metrology.analysis.wavefront import grid_coordinates, wavefront_map
from metrology.cli import main
from metrology.orderings import noll_to_nm, zernike_family, zernike_name
from metrology.report.document import write_json_atomic
from metrology.report.zernike_files import opticstudio_terms
from tests.report_example import example_document

# OpticStudio's printed term definitions (Analyze > Wavefront > Zernike Standard / Fringe Coefficients).
OPTICSTUDIO_STANDARD = {
    1: "1", 2: "4^(1/2) (p) * COS (A)", 3: "4^(1/2) (p) * SIN (A)", 4: "3^(1/2) (2p^2 - 1)",
    5: "6^(1/2) (p^2) * SIN (2A)", 6: "6^(1/2) (p^2) * COS (2A)", 7: "8^(1/2) (3p^3 - 2p) * SIN (A)",
    8: "8^(1/2) (3p^3 - 2p) * COS (A)", 9: "8^(1/2) (p^3) * SIN (3A)", 10: "8^(1/2) (p^3) * COS (3A)",
    11: "5^(1/2) (6p^4 - 6p^2 + 1)", 12: "10^(1/2) (4p^4 - 3p^2) * COS (2A)",
    13: "10^(1/2) (4p^4 - 3p^2) * SIN (2A)", 14: "10^(1/2) (p^4) * COS (4A)", 15: "10^(1/2) (p^4) * SIN (4A)",
    16: "12^(1/2) (10p^5 - 12p^3 + 3p) * COS (A)", 17: "12^(1/2) (10p^5 - 12p^3 + 3p) * SIN (A)",
    18: "12^(1/2) (5p^5 - 4p^3) * COS (3A)", 19: "12^(1/2) (5p^5 - 4p^3) * SIN (3A)",
    20: "12^(1/2) (p^5) * COS (5A)", 21: "12^(1/2) (p^5) * SIN (5A)", 22: "7^(1/2) (20p^6 - 30p^4 + 12p^2 - 1)",
}
OPTICSTUDIO_FRINGE = {
    1: "1", 2: "(p) * COS (A)", 3: "(p) * SIN (A)", 4: "(2p^2 - 1)", 5: "(p^2) * COS (2A)",
    6: "(p^2) * SIN (2A)", 7: "(3p^2 - 2) p * COS (A)", 8: "(3p^2 - 2) p * SIN (A)", 9: "(6p^4 - 6p^2 + 1)",
    10: "(p^3) * COS (3A)", 11: "(p^3) * SIN (3A)", 12: "(4p^2 - 3) p^2 * COS (2A)",
    13: "(4p^2 - 3) p^2 * SIN (2A)", 14: "(10p^4 - 12p^2 + 3) p * COS (A)",
    15: "(10p^4 - 12p^2 + 3) p * SIN (A)", 16: "(20p^6 - 30p^4 + 12p^2 - 1)", 17: "(p^4) * COS (4A)",
    18: "(p^4) * SIN (4A)", 19: "(5p^2 - 4) p^3 * COS (3A)", 20: "(5p^2 - 4) p^3 * SIN (3A)",
}


def _listing_term(text: str, p: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Evaluate one printed OpticStudio term (``8^(1/2) (3p^3 - 2p) * SIN (A)``) at ``(p, A)``."""
    expr = text.replace("^", "**").replace("COS", "np.cos").replace("SIN", "np.sin")
    expr = re.sub(r"(\d)([pA])", r"\1*\2", expr)  # 2p -> 2*p, 3A -> 3*A
    expr = re.sub(r"\)\s*([(p])", r")*\1", expr)  # ") (" and ") p" are products
    return eval(expr, {"np": np, "p": p, "A": a}) * np.ones_like(p)  # noqa: S307 (the test's own strings)


@pytest.fixture()
def result(tmp_path):
    doc = example_document("FAIL")
    path = tmp_path / "result.json"
    write_json_atomic(path, doc)
    return doc, path


def _export(args, capsys):
    rc = main(["zernike-export", *map(str, args)])
    return rc, capsys.readouterr()


def _json_wavefront(doc, n=64, skip=()):
    c = np.zeros(max(t["noll"] for t in doc["zernike"]))
    for t in doc["zernike"]:
        if not t["alignment"] and t["noll"] not in skip:
            c[t["noll"] - 1] = t["value_waves"]
    return wavefront_map(c, n)


def _polar(n=64):
    """Our pupil grid (+y down) as OpticStudio sees it: p, and A measured with +y up."""
    x, y = grid_coordinates(n)
    return np.hypot(x, y), np.arctan2(-y, x), np.arctan2(y, x)


def _read_dat(text):
    values = [float(v) for v in text.split()]
    n_terms, radius = int(values[0]), values[1]
    assert values[0] == n_terms and len(values) == n_terms + 2, "N, radius, then exactly Z1..ZN"
    return n_terms, radius, values[2:]


# ------------------------------------------------------------------ CSV
def _read_csv(text):
    meta = [line for line in text.splitlines() if line.startswith("#")]
    rows = list(csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#")))))
    return meta, rows


def test_csv_carries_metadata_u_and_marks_the_alignment_terms(result, capsys):
    doc, path = result
    rc, out = _export([path, "--format", "csv"], capsys)
    assert rc == 0
    meta, rows = _read_csv(out.out)
    head = "\n".join(meta)
    for text in (doc["lens"]["serial"], doc["station"]["id"], doc["created_utc"], doc["report"]["id"],
                 "wavelength_nm: 530", "combined standard uncertainty of the GUM budget", "U = k u with k = 2",
                 "+y down"):
        assert text in head, text
    assert list(rows[0]) == ["noll", "ansi", "fringe", "n", "m", "name", "status", "value_waves", "u_waves",
                             "U_waves", "value_nm", "U_nm", "largest_source"]
    by_noll = {int(r["noll"]): r for r in rows}
    assert by_noll[5]["largest_source"] == "Wavelength (LED centroid)"  # the example's budget of Noll 5
    assert (by_noll[5]["ansi"], by_noll[5]["fringe"], by_noll[5]["n"], by_noll[5]["m"]) == ("3", "6", "2", "-2")
    for t in doc["zernike"]:
        r = by_noll[t["noll"]]
        if t["alignment"]:  # removed from the pupil: not "measured 0 +/- 0"
            assert r["status"] == "alignment" and r["value_waves"] == r["u_waves"] == r["U_waves"] == ""
        else:
            assert r["status"] == "measured"
            assert (float(r["value_waves"]), float(r["u_waves"]), float(r["U_waves"])) == (
                t["value_waves"], t["u_waves"], t["U_waves"])
            assert float(r["value_nm"]) == pytest.approx(t["value_waves"] * 530.0, rel=1e-5)
            budget = next((b for b in doc["uncertainty_budget"]["zernike"] if b["noll"] == t["noll"]), None)
            want = "" if budget is None else next(x["label"] for x in budget["rows"] if x["source"] == budget["largest"])
            assert r["largest_source"] == want


def test_csv_round_trip_rebuilds_the_wavefront(result, capsys):
    doc, path = result
    _, out = _export([path, "--format", "csv"], capsys)
    _, rows = _read_csv(out.out)
    c = np.zeros(len(rows))
    for r in rows:
        if r["status"] == "measured":
            c[int(r["noll"]) - 1] = float(r["value_waves"])
    rebuilt = wavefront_map(c, 64)
    assert np.nanmax(np.abs(rebuilt - _json_wavefront(doc))) < 1e-6


# ------------------------------------------------------------------ OpticStudio
@pytest.mark.parametrize("y_axis", ["up", "down"])
def test_opticstudio_standard_against_its_term_listing(result, tmp_path, capsys, y_axis):
    doc, path = result
    out_file = tmp_path / "standard.dat"
    rc, out = _export([path, "--format", "opticstudio-standard", "--norm-radius-mm", 2.5, "--y-axis", y_axis,
                       "--out", out_file], capsys)
    assert rc == 0 and out.out == ""
    n_terms, radius, z_rad = _read_dat(out_file.read_text())
    assert (n_terms, radius) == (22, 2.5)
    p, a_up, a_down = _polar()
    a = a_up if y_axis == "up" else a_down
    inside = p <= 1
    w_os = sum(z / (2 * math.pi) * _listing_term(OPTICSTUDIO_STANDARD[i], p, a) for i, z in enumerate(z_rad, 1))
    want = _json_wavefront(doc)
    assert np.max(np.abs(w_os[inside] - want[inside])) < 1e-6  # radians -> waves, y -> -y undone
    notes = (tmp_path / "standard.txt").read_text()
    for text in ("Zernike Standard Phase", "Norm Radius = 2.5 mm", "radians", "530 nm",
                 "sine term (m < 0) negated" if y_axis == "up" else "not converted"):
        assert text in notes, text
    assert sorted(q.name for q in tmp_path.iterdir()) == ["result.json", "standard.dat", "standard.txt"]


def test_opticstudio_fringe_against_its_term_listing(result, tmp_path, capsys):
    doc, path = result
    out_file = tmp_path / "fringe.dat"
    rc, _ = _export([path, "--format", "opticstudio-fringe", "--norm-radius-mm", 1.25, "--out", out_file], capsys)
    assert rc == 0
    n_terms, radius, z_rad = _read_dat(out_file.read_text())
    # measured Noll 5..22: Fringe 1..20 are all measured, Fringe 21 = (6, 2) = Noll 24 is not
    assert (n_terms, radius) == (20, 1.25)
    p, a_up, _ = _polar()
    inside = p <= 1
    w_os = sum(z / (2 * math.pi) * _listing_term(OPTICSTUDIO_FRINGE[i], p, a_up) for i, z in enumerate(z_rad, 1))
    # Noll 20, 21 = (5, +-5) are Fringe 26, 27: beyond Z20, listed in the notes, never written as 0
    want = _json_wavefront(doc, skip=(20, 21))
    assert np.max(np.abs(w_os[inside] - want[inside])) < 1e-6
    notes = (tmp_path / "fringe.txt").read_text()
    assert "Zernike Fringe Phase" in notes and "not written, never replaced by 0): Noll 20, 21" in notes
    assert "sqrt(n + 1)" in notes


def test_fringe_preserves_the_wavefront_rms():
    """Peak-normalised Fringe coefficients divided by their norm give back the Noll RMS."""
    from metrology.orderings import fringe_to_nm, noll_norm

    doc = example_document("PASS")
    for t in doc["zernike"]:
        if t["noll"] in (20, 21):
            t["value_waves"] = 0.0
    values, dropped = opticstudio_terms(doc, "fringe", y_axis="down")
    rms_fringe = math.sqrt(sum((v / noll_norm(*fringe_to_nm(f))) ** 2 for f, v in enumerate(values, 1)))
    rms_noll = math.sqrt(sum(t["value_waves"] ** 2 for t in doc["zernike"]))
    assert rms_fringe == pytest.approx(rms_noll, rel=1e-12)
    assert dropped == [20, 21]


def test_opticstudio_needs_the_normalisation_radius(result, tmp_path, capsys):
    _, path = result
    rc, out = _export([path, "--format", "opticstudio-standard", "--out", tmp_path / "s.dat"], capsys)
    assert rc == 2 and "--norm-radius-mm" in out.err
    assert not (tmp_path / "s.dat").exists()


def test_standard_writes_every_measured_term_beyond_22(tmp_path, capsys):
    doc = example_document("PASS")
    for j in range(len(doc["zernike"]) + 1, 46):  # up to Noll 45
        n, m = noll_to_nm(j)
        doc["zernike"].append({"noll": j, "n": n, "m": m, "name": zernike_name(n, m),
                               "family": zernike_family(n, m), "value_waves": 0.001, "u_waves": 0.0005,
                               "U_waves": 0.001, "alignment": False})
    path = tmp_path / "r.json"
    write_json_atomic(path, doc)
    rc, out = _export([path, "--format", "opticstudio-standard", "--norm-radius-mm", 1], capsys)
    assert rc == 0
    n_terms, _, z_rad = _read_dat(out.out)
    assert n_terms == 45 and z_rad[44] == pytest.approx(2 * math.pi * 0.001 * (-1 if noll_to_nm(45)[1] < 0 else 1))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("case", ["missing", "not-json", "schema", "nan"])
def test_bad_result_file_exits_2(tmp_path, capsys, case):
    path = tmp_path / "result.json"
    doc = copy.deepcopy(example_document("PASS"))
    if case == "not-json":
        path.write_text("{ not json")
    elif case == "schema":
        del doc["zernike"][3]["noll"]
        path.write_text(json.dumps(doc))
    elif case == "nan":
        doc["zernike"][5]["value_waves"] = float("nan")
        path.write_text(json.dumps(doc))  # Python writes NaN; strict JSON readers would refuse it
    out_file = tmp_path / "out.csv"
    rc, out = _export([path, "--format", "csv", "--out", out_file], capsys)
    assert rc == 2
    assert str(path) in out.err
    assert not out_file.exists()


def test_unwritable_output_exits_2(result, tmp_path, capsys):
    _, path = result
    rc, out = _export([path, "--format", "csv", "--out", tmp_path / "no" / "such" / "dir.csv"], capsys)
    assert rc == 2 and "cannot write" in out.err


def test_bad_format_is_a_usage_error(result, capsys):
    _, path = result
    rc, _ = _export([path, "--format", "zemax"], capsys)
    assert rc == 2
