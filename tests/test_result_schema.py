"""The inspection result document's JSON Schema and its validators (jsonschema and the fallback)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from metrology.errors import InputError
from metrology.report.document import (
    SCHEMA_PATH,
    document_errors,
    load_schema,
    read_document,
    validate_document,
    write_json_atomic,
)
from tests.report_example import example_document

jsonschema = pytest.importorskip("jsonschema")

VALIDATORS = [pytest.param(True, id="jsonschema"), pytest.param(False, id="fallback")]
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")


@pytest.fixture(scope="module")
def docs():
    return {v: example_document(v) for v in VERDICTS}


def test_schema_is_valid_draft_2020_12():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["additionalProperties"] is False
    # optional blocks: results written before issue 17 (report ID, audit record, covariance, further
    # outputs) still validate; the field block belongs to full-field inspections only (issue 16), the
    # fitted second aperture to stations that model one, the lens's fitted scalars to modes that fit them
    optional = {"extensions", "report", "audit_record", "zernike_covariance", "outputs", "field", "vignetting",
                "lens_parameters"}
    assert set(schema["required"]) == set(schema["properties"]) - optional
    assert SCHEMA_PATH.name == "inspection_result.schema.json"


@pytest.mark.parametrize("use_js", VALIDATORS)
@pytest.mark.parametrize("verdict", VERDICTS)
def test_example_documents_validate(docs, verdict, use_js):
    doc = docs[verdict]
    assert document_errors(doc, use_jsonschema=use_js) == []
    validate_document(doc, use_jsonschema=use_js)
    assert doc["verdict"]["overall"] == verdict
    json.dumps(doc, allow_nan=False)  # strict JSON


@pytest.mark.parametrize("verdict", VERDICTS)
def test_example_limits_follow_the_decision_rule(docs, verdict):
    for lim in docs[verdict]["verdict"]["limits"]:
        v, U, t = lim["value"], lim["U"], lim["limit"]
        assert U == pytest.approx(2 * lim["u"])
        if lim["kind"] == "max":
            expected = "PASS" if v + U <= t else "FAIL" if v - U > t else "INCONCLUSIVE"
        else:
            expected = "PASS" if v - U >= t else "FAIL" if v + U < t else "INCONCLUSIVE"
        assert lim["verdict"] == expected, lim
    assert bool(docs[verdict]["verdict"]["reasons"]) == (verdict != "PASS")


def _mutations():
    """(id, function mutating a document in place) pairs that must each make it invalid."""
    out = [(f"missing-{key}", lambda d, k=key: d.pop(k)) for key in load_schema()["required"]]
    out += [
        ("bad-overall-verdict", lambda d: d["verdict"].__setitem__("overall", "OK")),
        ("bad-limit-verdict", lambda d: d["verdict"]["limits"][0].__setitem__("verdict", "pass")),
        ("missing-limit-U", lambda d: d["verdict"]["limits"][0].pop("U")),
        ("missing-zernike-noll", lambda d: d["zernike"][0].pop("noll")),
        ("missing-calibration-status", lambda d: d["station"]["calibration"].pop("status")),
        ("bad-calibration-status", lambda d: d["station"]["calibration"].__setitem__("status", "ok")),
        ("extra-top-level-key", lambda d: d.__setitem__("verdict_text", "PASS")),
        ("bad-schema-version", lambda d: d.__setitem__("schema_version", "2.0")),
        ("bad-sha256", lambda d: d["inputs"][0].__setitem__("sha256", "abc")),
        ("bad-role", lambda d: d["inputs"][0].__setitem__("role", "other")),
        ("bad-created-utc", lambda d: d.__setitem__("created_utc", "26/11/2026")),
        ("negative-U", lambda d: d["figures_of_merit"]["rms_waves"].__setitem__("U", -0.1)),
        ("string-number", lambda d: d.__setitem__("wavelength_nm", "530")),
        ("bool-as-number", lambda d: d["solver"].__setitem__("iterations", True)),
        ("nan-value", lambda d: d["figures_of_merit"]["strehl"].__setitem__("value", float("nan"))),
        ("tile-center-one-value", lambda d: d.__setitem__("tile_center_mm", [0.0])),
        ("bad-solver-mode", lambda d: d["solver"].__setitem__("mode", "auto")),
        ("bad-severity", lambda d: d["data_quality"]["flags"].append({"code": "X", "message": "", "severity": "info"})),
        ("coverage-factor-3", lambda d: d["conventions"].__setitem__("coverage_factor", 3)),
    ]
    return out


MUTATIONS = _mutations()


@pytest.mark.parametrize("use_js", VALIDATORS)
@pytest.mark.parametrize("name,mutate", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_invalid_documents_fail(docs, name, mutate, use_js):
    doc = copy.deepcopy(docs["PASS"])
    mutate(doc)
    errors = document_errors(doc, use_jsonschema=use_js)
    assert errors, name
    with pytest.raises(InputError) as info:
        validate_document(doc, source="result.json", use_jsonschema=use_js)
    assert info.value.source == "result.json"
    assert "schema" in info.value.problem


@pytest.mark.parametrize("use_js", VALIDATORS)
def test_error_names_the_field(docs, use_js):
    doc = copy.deepcopy(docs["PASS"])
    doc["verdict"]["overall"] = "MAYBE"
    (err,) = document_errors(doc, use_jsonschema=use_js)
    assert err.startswith("$.verdict.overall:") and "MAYBE" in err


def test_extensions_and_nested_extra_keys_are_allowed(docs):
    doc = copy.deepcopy(docs["PASS"])
    doc["extensions"] = {"site": {"line": 4}}
    doc["lens"]["batch"] = "B17"
    assert document_errors(doc, use_jsonschema=True) == []
    assert document_errors(doc, use_jsonschema=False) == []


def test_write_and_read_round_trip(tmp_path, docs):
    path = tmp_path / "result.json"
    write_json_atomic(path, docs["FAIL"])
    assert read_document(path) == docs["FAIL"]
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_write_refuses_nan_and_leaves_nothing(tmp_path, docs):
    doc = copy.deepcopy(docs["PASS"])
    doc["figures_of_merit"]["strehl"]["value"] = float("nan")
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "result.json", doc)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,problem", [(None, "not found"), ("{", "not valid JSON"),
                                             ('{"schema_version": "1.0"}', "schema")])
def test_read_document_bad_files(tmp_path, content, problem):
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as info:
        read_document(path)
    assert info.value.source == str(path) and problem in info.value.problem


def test_report_layer_imports_no_torch_physics_or_solver():
    code = ("import sys, metrology.report, metrology.report.pdf, metrology.report.plots, "
            "metrology.report.result, metrology.commands.zernike_export\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('metrology.physics', "
            "'metrology.solver'))]\n"
            "heavy = [m for m in ('matplotlib', 'reportlab') if m in sys.modules]\n"
            "assert not bad, bad\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
