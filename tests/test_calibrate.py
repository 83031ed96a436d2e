"""``metrology calibrate``: golden-lens closure on simulated stations, recording, bad input.

Three reconstructions (~20-40 s each on 2 cores), shared through module fixtures and
:func:`tests.calibration_cases.cached_measure`:

* the golden lens on a well-aligned station, misalignment free in the model: closure passes;
* the golden lens on a clearly misaligned station (LED board shifted 0.58 mm, rotated 2 deg,
  2 mm too far), misalignment free: closure still passes (the model separates station and lens);
* the same misaligned capture with the LED geometry frozen at nominal in the model: the lens
  estimate absorbs the misalignment and closure fails.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from metrology.audit.status import station_status
from metrology.audit.canonical import parse_utc
from metrology.audit.store import AuditStore
from metrology.calibration import one_line, run_calibration
from metrology.cli import main
from metrology.errors import InputError
from metrology.solver.schedule import GEOMETRY_PATHS
from tests.calibration_cases import CERTIFIED, GOLDEN_FIXTURE, certificate_text, patch_measure, write_case

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("calibrate"))


@pytest.fixture(scope="module")
def cached():
    with pytest.MonkeyPatch.context() as mp:
        patch_measure(mp)
        yield


@pytest.fixture(scope="module")
def cli_run(case, cached, tmp_path_factory):
    """``metrology calibrate`` on the aligned capture through the CLI (real time stamps)."""
    folder = tmp_path_factory.mktemp("cli")
    db, out = folder / "audit.sqlite", folder / "out"
    argv = ["calibrate", str(case["aligned"]), "--station", str(case["station"]), "--golden",
            str(case["golden"]), "--operator", "alice", "--audit-db", str(db), "--out", str(out)]
    buf = io.StringIO()
    before = datetime.now(timezone.utc)
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return {"code": code, "stdout": buf.getvalue(), "db": db, "out": out, "before": before}


@pytest.fixture(scope="module")
def frozen_run(case, cached, tmp_path_factory):
    db = tmp_path_factory.mktemp("frozen") / "audit.sqlite"
    outcome = run_calibration(case["misaligned"], case["station"], case["golden"], operator="bob", audit_db=db,
                              frozen=GEOMETRY_PATHS, now=T0)
    return outcome, db


# ------------------------------------------------------------------ closure passes / fails
def test_aligned_station_passes_closure_via_cli(cli_run):
    assert cli_run["code"] == 0, cli_run["stdout"]
    lines = cli_run["stdout"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CLOSURE PASSED station bench-4x-15x15 with golden-4x-010")
    with AuditStore(cli_run["db"], create=False) as store:
        cal = store.last_calibration("bench-4x-15x15")
        assert store.verify().ok
    c = cal.content
    assert c["passed"] is True and c["operator"] == "alice" and c["golden_lens_id"] == "golden-4x-010"
    terms = c["closure"]["per_term"]
    assert [t["noll"] for t in terms] == sorted(CERTIFIED)
    for t in terms:
        assert t["En"] <= 1.0 and t["pass"]
        assert t["certified"] == CERTIFIED[t["noll"]][0]
        # measured within U of the truth (the simulated lens has exactly the certified values)
        assert abs(t["measured"] - t["certified"]) <= max(t["U_meas"], 2e-3)
    # the validity period comes from the station (30 days)
    assert c["validity_days"] == 30.0
    assert parse_utc(c["valid_until"]) - parse_utc(cal.utc) == timedelta(days=30)
    assert parse_utc(cal.utc) >= cli_run["before"] - timedelta(seconds=1)
    # the station state measured during the calibration is the reference for the drift check
    mis = c["misalignment"]
    for name in ("illumination.shift_mm[0]", "illumination.rotation_deg", "illumination.distance_error_mm"):
        assert name in mis and abs(mis[name]["value"]) < 0.1 and mis[name]["U"] > 0
    assert set(c["inputs"]) == {"capture", "station", "golden"}


def test_cli_summary_json(cli_run, case):
    files = list(cli_run["out"].glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("calibration_bench-4x-15x15_")
    assert not list(cli_run["out"].glob(".*.tmp"))
    doc = json.loads(files[0].read_text())
    assert doc["closure"]["passed"] is True and doc["exit_code"] == 0
    assert doc["calibration"]["seq"] == 1 and doc["calibration"]["valid_until"]
    assert {i["role"] for i in doc["inputs"]} == {"capture", "station", "golden"}
    assert str(files[0]) in cli_run["stdout"]


def test_misaligned_station_free_model_passes_closure(case, cached, tmp_path):
    out = run_calibration(case["misaligned"], case["station"], case["golden"], audit_db=tmp_path / "a.sqlite",
                          now=T0)
    assert out.exit_code == 0 and out.closure.passed, [t.En for t in out.closure.per_term]
    est = {s.name: s.value for s in out.measurement.station}
    assert est["illumination.rotation_deg"] == pytest.approx(2.0, abs=0.1)
    assert est["illumination.distance_error_mm"] == pytest.approx(2.0, abs=0.3)
    assert est["illumination.shift_mm[0]"] == pytest.approx(0.5, abs=0.05)
    assert out.status["status"] == "passed" and out.record.content["valid_until"]


def test_misalignment_frozen_at_nominal_fails_closure(frozen_run, case):
    outcome, db = frozen_run
    assert outcome.exit_code == 1
    cl = outcome.closure
    assert not cl.passed and cl.failed_terms
    assert cl.max_En > 1.0
    # the frozen geometry leaks into astigmatism / coma
    assert set(cl.failed_terms) & {5, 6, 7, 8}
    assert one_line(outcome).startswith("CLOSURE FAILED station bench-4x-15x15")
    assert "recorded as failed calibration seq 1" in one_line(outcome)
    with AuditStore(db, create=False) as store:
        cal = store.last_calibration("bench-4x-15x15")
        status = station_status(store, "bench-4x-15x15", T0 + timedelta(hours=1), {}, {})
    assert cal.content["passed"] is False and cal.content["valid_until"] is None
    assert cal.content["extra"]["frozen_at_nominal"] == list(GEOMETRY_PATHS)
    assert status["status"] == "failed" and "closure" in status["reason"]
    # no LED-geometry estimate when it is frozen
    assert not any(s.name.startswith("illumination.shift") for s in outcome.measurement.station)


# ------------------------------------------------------------------ bad input (no fit)
def test_every_command_shares_one_audit_store_default(tmp_path, monkeypatch, capsys):
    """calibrate no longer needs --audit-db: calibrate, inspect and audit resolve the same default
    store, which ``metrology audit init`` creates (issue 17)."""
    from metrology.audit.store import default_db_path
    from metrology.pipeline import audit_store_path

    monkeypatch.delenv("METROLOGY_AUDIT_DB", raising=False)
    monkeypatch.delenv("METROLOGY_SITE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    store = tmp_path / ".metrology" / "audit.sqlite"
    assert audit_store_path(None) == default_db_path() == store
    assert main(["audit", "verify"]) == 2 and "audit.sqlite" in capsys.readouterr().err  # not created yet
    assert main(["audit", "init"]) == 0 and f"created audit store {store}" in capsys.readouterr().out
    assert main(["audit", "verify"]) == 0
    assert main(["audit", "init"]) == 0 and "already exists: 0 records" in capsys.readouterr().out
    monkeypatch.setenv("METROLOGY_SITE_DIR", str(tmp_path / "site"))
    assert audit_store_path(None) == tmp_path / "site" / "audit.sqlite"


def test_env_audit_store_is_used(case, tmp_path, monkeypatch):
    from metrology.pipeline import audit_store_path

    monkeypatch.setenv("METROLOGY_AUDIT_DB", str(tmp_path / "env.sqlite"))
    assert audit_store_path(None) == tmp_path / "env.sqlite"


@pytest.mark.parametrize("wavelength_nm, na, field", [(530.0, 0.1, "wavelength_nm"), (520.0, 0.12, "na")])
def test_certificate_must_match_station(case, tmp_path, capsys, wavelength_nm, na, field):
    cert = tmp_path / "other.toml"
    cert.write_text(certificate_text(wavelength_nm=wavelength_nm, na=na))
    db = tmp_path / "audit.sqlite"
    with pytest.raises(InputError) as err:
        run_calibration(case["aligned"], case["station"], cert, audit_db=db)
    assert err.value.source == str(cert) and field in err.value.problem
    code = main(["calibrate", str(case["aligned"]), "--station", str(case["station"]), "--golden", str(cert),
                 "--audit-db", str(db)])
    assert code == 2 and str(cert) in capsys.readouterr().err
    assert not db.exists()  # nothing recorded, no store created


def test_certificate_for_another_wavelength_is_refused(case, tmp_path):
    other = tmp_path / "golden-530.toml"
    other.write_text(GOLDEN_FIXTURE.read_text().replace("wavelength_nm = 520.0", "wavelength_nm = 530.0"))
    with pytest.raises(InputError, match="530 nm") as err:
        run_calibration(case["aligned"], case["station"], other, audit_db=tmp_path / "a.sqlite")
    assert err.value.source == str(other)


def test_certified_term_beyond_fitted_terms(case, tmp_path):
    cert = tmp_path / "deep.toml"
    cert.write_text(certificate_text(certified={5: (0.03, 0.003), 22: (0.01, 0.003)}))
    with pytest.raises(InputError, match="Noll 22 beyond"):
        run_calibration(case["aligned"], case["station"], cert, audit_db=tmp_path / "a.sqlite")


def test_missing_and_malformed_inputs(case, tmp_path, capsys):
    db = tmp_path / "audit.sqlite"
    base = ["calibrate", str(case["aligned"]), "--station", str(case["station"]), "--audit-db", str(db)]
    assert main(base + ["--golden", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: golden certificate file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(certificate_text().replace("[zernike]", "[zernike]\n4 = { value = 0.1, U = 0.01 }"))
    assert main(base + ["--golden", str(bad)]) == 2
    assert "alignment term" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "nope.tif"), "--station", str(case["station"]), "--golden",
                 str(case["golden"]), "--audit-db", str(db)]) == 2
    assert "capture file not found" in capsys.readouterr().err
    foreign = tmp_path / "foreign.sqlite"
    foreign.write_text("not a database")
    assert main(["calibrate", str(case["aligned"]), "--station", str(case["station"]), "--golden",
                 str(case["golden"]), "--audit-db", str(foreign)]) == 2
    assert str(foreign) in capsys.readouterr().err
    assert not db.exists()


def test_help_lists_calibrate(capsys):
    assert main(["calibrate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--golden" in text and "closure" in text


def test_golden_fixture_capture_is_ready_for_calibrate():
    """fixtures/captures/golden-4x is the certificate's lens on the 4x bench (issue 17: `calibrate`
    can be tried from the README): inputs and certificate load and match, no fit needed here."""
    from metrology.audit.golden import load_certificate
    from metrology.calibration import check_certificate
    from metrology.pipeline import load_inputs

    root = Path(__file__).resolve().parents[1]
    folder = root / "fixtures" / "captures" / "golden-4x"
    cert_path = root / "fixtures" / "golden" / "golden-4x-010.toml"
    cert = load_certificate(cert_path)
    loaded = load_inputs(folder / "capture.tif", folder / "station.toml")
    check_certificate(cert, loaded.station, cert_path)
    assert loaded.capture.lens_serial == cert.serial
    truth = json.loads((folder / "truth.json").read_text())
    lens = dict(enumerate(truth["pupil.zernike_waves"], start=1))
    for j, (value, _) in cert.coefficients.items():
        assert lens[j] == pytest.approx(value, abs=1e-12), j
