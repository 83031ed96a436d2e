"""``metrology zernike-export``: CSV, Zemax Standard and Zemax Fringe exports of a result document."""

from __future__ import annotations

import copy
import csv
import io
import json
import math

import pytest

from metrology.orderings import noll_to_nm, zernike_family, zernike_name
from metrology.cli import main
from metrology.commands.zernike_export import fringe_coefficients
from metrology.report.document import write_json_atomic
from tests.report_example import example_document


@pytest.fixture()
def result(tmp_path):
    doc = example_document("FAIL")
    path = tmp_path / "result.json"
    write_json_atomic(path, doc)
    return doc, path


def _coefficient_lines(text):
    """``{index: value}`` of the ``Z<j> <value>`` lines; header lines must all be ``#`` comments."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, value = line.split()
        assert key.startswith("Z")
        out[int(key[1:])] = float(value)
    return out


def _export(args, capsys):
    rc = main(["zernike-export", *map(str, args)])
    return rc, capsys.readouterr()


def test_csv(result, capsys):
    doc, path = result
    rc, out = _export([path, "--format", "csv"], capsys)
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert list(rows[0]) == ["noll", "ansi", "fringe", "n", "m", "name", "value_waves", "U_waves", "value_nm"]
    assert len(rows) == len(doc["zernike"])
    by_noll = {int(r["noll"]): r for r in rows}
    # Noll 5 is (2, -2) astigmatism 45: ANSI 3, Fringe 6; Noll 11 is (4, 0): ANSI 12, Fringe 9
    assert (by_noll[5]["ansi"], by_noll[5]["fringe"], by_noll[5]["n"], by_noll[5]["m"]) == ("3", "6", "2", "-2")
    assert (by_noll[11]["ansi"], by_noll[11]["fringe"]) == ("12", "9")
    for t in doc["zernike"]:
        r = by_noll[t["noll"]]
        assert float(r["value_waves"]) == t["value_waves"]
        assert float(r["U_waves"]) == t["U_waves"]
        assert float(r["value_nm"]) == pytest.approx(t["value_waves"] * doc["wavelength_nm"], rel=1e-5)
        assert r["name"] == t["name"]


def test_zemax_standard(result, tmp_path, capsys):
    doc, path = result
    out_file = tmp_path / "standard.txt"
    rc, out = _export([path, "--format", "zemax-standard", "--out", out_file], capsys)
    assert rc == 0 and out.out == ""
    text = out_file.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("530 nm" in line for line in header)
    assert any("normalisation radius" in line and "NA 0.25" in line for line in header)
    assert any("Noll normalisation" in line for line in header)
    coeffs = _coefficient_lines(text)
    assert sorted(coeffs) == list(range(1, len(doc["zernike"]) + 1))
    for t in doc["zernike"]:
        assert coeffs[t["noll"]] == pytest.approx(t["value_waves"], abs=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "standard.txt"]  # no temp files


def test_zemax_fringe_hand_checked_terms(result, capsys):
    doc, path = result
    rc, out = _export([path, "--format", "zemax-fringe"], capsys)
    assert rc == 0
    coeffs = _coefficient_lines(out.out)
    assert sorted(coeffs) == list(range(1, 38))
    noll = {t["noll"]: t["value_waves"] for t in doc["zernike"]}
    # Fringe 9 = primary spherical (4, 0) = Noll 11, N = sqrt(5); FAIL example: -0.08 waves
    assert noll[11] == -0.08
    assert coeffs[9] == pytest.approx(-0.08 * math.sqrt(5), abs=1e-9)
    # Fringe 5 = astigmatism 0/90 (2, 2) = Noll 6, Fringe 6 = (2, -2) = Noll 5, N = sqrt(6)
    assert coeffs[5] == pytest.approx(noll[6] * math.sqrt(6), abs=1e-9)
    assert coeffs[6] == pytest.approx(noll[5] * math.sqrt(6), abs=1e-9)
    # Fringe 7 = coma x (3, 1) = Noll 8, N = sqrt(8)
    assert coeffs[7] == pytest.approx(noll[8] * math.sqrt(8), abs=1e-9)
    # Fringe 16 = secondary spherical (6, 0) = Noll 22, N = sqrt(7)
    assert coeffs[16] == pytest.approx(noll[22] * math.sqrt(7), abs=1e-9)
    # the example measures Noll 1..22; Fringe 21.. (n + |m| >= 8 but for 25 = (8, 0)) are not measured
    assert coeffs[37] == 0.0
    assert "# not measured (written as 0): Fringe 21," in out.out


def test_fringe_preserves_the_wavefront_rms():
    """Same wavefront: the RMS from Fringe coefficients (peak-normalised, RMS c/N) equals the Noll RMS."""
    doc = example_document("PASS")
    values, not_measured, dropped = fringe_coefficients(doc)
    from metrology.orderings import fringe_to_nm, noll_norm

    rms_fringe = math.sqrt(sum((v / noll_norm(*fringe_to_nm(f))) ** 2 for f, v in enumerate(values, 1)))
    rms_noll = math.sqrt(sum(t["value_waves"] ** 2 for t in doc["zernike"]))
    assert rms_fringe == pytest.approx(rms_noll, rel=1e-12)
    assert dropped == [] and 37 in not_measured


def test_fringe_lists_terms_beyond_37(tmp_path, capsys):
    doc = example_document("PASS")
    for j in range(len(doc["zernike"]) + 1, 46):  # up to Noll 45 = (8, -8): Fringe 66
        n, m = noll_to_nm(j)
        doc["zernike"].append({"noll": j, "n": n, "m": m, "name": zernike_name(n, m),
                               "family": zernike_family(n, m), "value_waves": 0.001, "u_waves": 0.0005,
                               "U_waves": 0.001, "alignment": False})
    path = tmp_path / "r.json"
    write_json_atomic(path, doc)
    rc, out = _export([path, "--format", "zemax-fringe"], capsys)
    assert rc == 0
    dropped_line = [line for line in out.out.splitlines() if "outside Fringe 1-37" in line]
    assert dropped_line and dropped_line[0].endswith("44, 45")
    assert len(_coefficient_lines(out.out)) == 37


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
