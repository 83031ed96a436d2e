"""``inspect`` and the station's calibration status: valid, expired, failed, drifted.

The lens inspected is the golden lens itself, judged against ``plan-4x-010`` with the spherical
and RMS limits opened (:func:`tests.calibration_cases.spec_text`), so on a validly calibrated
station it PASSes, and any INCONCLUSIVE below comes from the calibration status. Reconstructions
are shared with ``test_calibrate.py`` through :func:`tests.calibration_cases.cached_measure` (the
same seeded captures): three fits when this file runs alone, none extra after ``test_calibrate``.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from metrology.audit.canonical import parse_utc
from metrology.audit.store import AuditStore
from metrology.calibration import run_calibration
from metrology.inspection import run_inspection
from metrology.solver.schedule import GEOMETRY_PATHS
from tests.calibration_cases import patch_measure, write_case

T0 = parse_utc("2025-03-01T08:00:00Z")
STATION_ID = "bench-4x-15x15"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("inspect-calibration"))


@pytest.fixture(scope="module", autouse=True)
def cached():
    with pytest.MonkeyPatch.context() as mp:
        patch_measure(mp)
        yield


def calibrate(case, db, capture="aligned", frozen=(), now=T0):
    return run_calibration(case[capture], case["station"], case["golden"], operator="cal", audit_db=db,
                           frozen=frozen, now=now)


def inspect(case, db, out, now, capture="aligned"):
    return run_inspection(case[capture], case["station"], case["spec"], serial="GL4X-2024-0010", operator="qa",
                          out_dir=out, audit_db=db, now=now)


def last_inspection(db):
    with AuditStore(db, create=False) as store:
        assert store.verify().ok
        return store.records(STATION_ID, kind="inspection")[-1]


def test_expired_calibration_makes_inspect_inconclusive(case, tmp_path):
    db = tmp_path / "audit.sqlite"
    cal = calibrate(case, db)
    validity = timedelta(days=cal.status["validity_days"])
    out = inspect(case, db, tmp_path / "reports", T0 + validity + timedelta(days=1))
    doc = out.document
    calib = doc["station"]["calibration"]
    assert calib["status"] == "expired"
    assert "expired" in calib["reason"] and cal.record.content["valid_until"] in calib["reason"]
    assert doc["verdict"]["overall"] == "INCONCLUSIVE" and out.exit_code == 3
    assert any("station calibration expired" in r for r in doc["verdict"]["reasons"]), doc["verdict"]["reasons"]
    saved = json.loads(out.json_path.read_text())
    assert saved["verdict"]["overall"] == "INCONCLUSIVE" and saved["station"]["calibration"]["status"] == "expired"
    rec = last_inspection(db)
    assert rec.content["verdict"] == "INCONCLUSIVE" and rec.content["station_status"]["status"] == "expired"


def test_failed_calibration_makes_inspect_inconclusive_until_recalibrated(case, tmp_path):
    db = tmp_path / "audit.sqlite"
    cal = calibrate(case, db, capture="misaligned", frozen=GEOMETRY_PATHS)
    assert cal.exit_code == 1
    out = inspect(case, db, tmp_path / "reports", T0 + timedelta(days=1))
    doc = out.document
    assert doc["station"]["calibration"]["status"] == "failed"
    assert doc["verdict"]["overall"] == "INCONCLUSIVE" and out.exit_code == 3
    reason = next(r for r in doc["verdict"]["reasons"] if "station calibration failed" in r)
    assert "golden-lens closure" in reason and f"Noll {cal.closure.failed_terms[0]}" in reason
    # a later passing calibration restores the station: the verdict on the same data now stands,
    # up to the last hour of the validity period
    t1 = T0 + timedelta(days=2)
    cal2 = calibrate(case, db, now=t1)
    assert cal2.exit_code == 0
    out = inspect(case, db, tmp_path / "reports2", t1 + timedelta(days=cal2.status["validity_days"], hours=-1))
    doc = out.document
    assert doc["station"]["calibration"]["status"] == "valid", doc["station"]["calibration"]
    assert doc["station"]["calibration"]["valid_until"] == cal2.record.content["valid_until"]
    assert doc["verdict"]["overall"] == "PASS" and out.exit_code == 0, doc["verdict"]["reasons"]
    rec = last_inspection(db)
    assert rec.content["station_status"]["status"] == "valid"
    assert rec.content["station_status"]["calibration_seq"] == cal2.record.seq


def test_drift_since_calibration_makes_inspect_inconclusive(case, tmp_path):
    db = tmp_path / "audit.sqlite"
    calibrate(case, db)  # aligned station
    # the LED board then moved: rotated 2 deg (limit 0.1), 2 mm further (limit 0.3), shifted 0.58 mm
    out = inspect(case, db, tmp_path / "reports", T0 + timedelta(days=1), capture="misaligned")
    doc = out.document
    calib = doc["station"]["calibration"]
    assert calib["status"] == "drifted", calib
    assert "drifted" in calib["reason"]
    assert "illumination.rotation_deg" in calib["reason"] and "illumination.distance_error_mm" in calib["reason"]
    assert doc["verdict"]["overall"] == "INCONCLUSIVE" and out.exit_code == 3
    assert any("station calibration drifted" in r for r in doc["verdict"]["reasons"])
    # the lens itself is still measured right (the model follows the moved board)
    z = {t["noll"]: t["value_waves"] for t in doc["zernike"]}
    assert z[11] == pytest.approx(0.045, abs=0.003)


def test_shift_only_drift_is_detected(tmp_path):
    from types import SimpleNamespace

    from metrology.audit.golden import ClosureResult
    from metrology.audit.status import record_calibration
    from metrology.measurement import StationEstimate
    from metrology.pipeline import station_status
    from tests.calibration_cases import small_station

    def state(dx):
        return [StationEstimate("illumination.shift_mm[0]", "LED shift x", "mm", dx, 0.005),
                StationEstimate("illumination.shift_mm[1]", "LED shift y", "mm", 0.0, 0.005),
                StationEstimate("illumination.rotation_deg", "LED rotation", "deg", 0.0, 0.01)]

    db = tmp_path / "audit.sqlite"
    with AuditStore(db) as store:
        record_calibration(store, STATION_ID, "cal", ClosureResult(per_term=[], passed=True), state(0.0), 30,
                           {}, "test", now=T0)
    loaded = SimpleNamespace(station=small_station())
    status = station_status(db, loaded, SimpleNamespace(station=state(0.5)), T0 + timedelta(days=1))
    assert status["status"] == "drifted"  # 0.5 mm > shift limit 0.05 mm


# ------------------------------------------------------------------ a tampered store (issue 15)
def _tamper(db, seq, edit, rehash=False):
    """Edit record ``seq``'s content in the SQLite file as an attacker with write access would;
    ``rehash``: also recompute its content and chain hashes (the next record's link then breaks)."""
    import sqlite3

    from metrology.audit.canonical import canonical_json, chain_hash, sha256_hex

    con = sqlite3.connect(db)
    text, prev = con.execute("SELECT content, prev_sha256 FROM audit_records WHERE seq = ?", (seq,)).fetchone()
    env = json.loads(text)
    edit(env["data"])
    new = canonical_json(env)
    con.execute("UPDATE audit_records SET content = ? WHERE seq = ?", (new, seq))
    if rehash:
        c = sha256_hex(new)
        con.execute("UPDATE audit_records SET content_sha256 = ?, chain_sha256 = ? WHERE seq = ?",
                    (c, chain_hash(prev, c), seq))
    con.commit()
    con.close()


def _pass_until_2099(content):
    content["passed"] = True
    content["valid_until"] = "2099-01-01T00:00:00.000000Z"


@pytest.mark.parametrize("rehash", [False, True])
def test_tampered_calibration_record_makes_inspect_inconclusive(case, tmp_path, rehash):
    """A failed golden-lens calibration edited to passed, valid until 2099, never gives PASS: the
    chain is verified before the record is trusted (on main: PASS, exit 0, status 'valid')."""
    db = tmp_path / "audit.sqlite"
    cal = calibrate(case, db, capture="misaligned", frozen=GEOMETRY_PATHS)
    assert cal.exit_code == 1
    if rehash:  # a later record, so that a rewrite with recomputed hashes breaks its link
        with AuditStore(db) as store:
            store.append("alarm", STATION_ID, {"text": "maintenance"}, utc=T0 + timedelta(hours=1))
    _tamper(db, cal.record.seq, _pass_until_2099, rehash=rehash)
    out = inspect(case, db, tmp_path / "reports", T0 + timedelta(days=1))
    calib = out.document["station"]["calibration"]
    assert calib["status"] == "untrusted", calib
    assert "integrity check" in calib["reason"] and f"seq {cal.record.seq}" in calib["reason"]
    assert out.document["verdict"]["overall"] == "INCONCLUSIVE" and out.exit_code == 3
    assert any("station calibration untrusted" in r for r in out.document["verdict"]["reasons"])


def test_checkpointed_verification_reads_only_new_records_and_still_checks_the_calibration(case, tmp_path):
    """After an inspection the verified head is the checkpoint: the next check reads only the
    records after it, and the calibration record before it is still checked on its own."""
    from metrology.pipeline import prepare_audit_store

    db = tmp_path / "audit.sqlite"
    cal = calibrate(case, db)
    with AuditStore(db) as store:
        for i in range(50):
            store.append("alarm", STATION_ID, {"i": i}, utc=T0 + timedelta(minutes=i + 1))
    prepare_audit_store(db)  # what inspect does before the fit: verify, then save the checkpoint
    with AuditStore(db) as store:
        assert store.checkpoint()[0] == len(store) == 51
        store.append("alarm", STATION_ID, {"i": 50}, utc=T0 + timedelta(hours=2))
        result = store.verify(incremental=True)
        assert result.ok and result.n_records == 1  # only the record after the checkpoint
        record, check = store.verified_last_calibration(STATION_ID)
        assert check.ok and record.seq == cal.record.seq
    _tamper(db, cal.record.seq, lambda c: c.update(valid_until="2099-01-01T00:00:00.000000Z"), rehash=True)
    with AuditStore(db) as store:
        assert store.verify(incremental=True).ok  # the records after the checkpoint are intact ...
        record, check = store.verified_last_calibration(STATION_ID)
        assert not check.ok and any(f"seq {cal.record.seq + 1}" in p for p in check.problems), check.problems
    out = inspect(case, db, tmp_path / "reports", T0 + timedelta(days=1))  # ... but the record is not trusted
    assert out.document["station"]["calibration"]["status"] == "untrusted" and out.exit_code == 3
