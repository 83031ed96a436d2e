"""Golden-lens certificate, En closure, recording calibrations, station calibration status."""

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from metrology.audit.golden import closure_check, load_certificate, measured_from_arrays
from metrology.audit.status import record_calibration, station_status
from metrology.audit.store import AuditStore
from metrology.errors import InputError
from metrology.measurement import StationEstimate

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "golden-4x-010.toml"
T0 = datetime(2025, 4, 1, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def cert():
    return load_certificate(FIXTURE)


def test_fixture_certificate(cert):
    assert cert.id == "golden-4x-010" and cert.wavelength_nm == 520.0 and cert.na == 0.10
    assert cert.date == "2024-11-05"
    assert set(cert.coefficients) == {5, 6, 7, 8, 11}
    for value, U in cert.coefficients.values():
        assert 0.015 <= abs(value) <= 0.05 and 0.002 <= U <= 0.005


def test_closure_within_uncertainty_passes_with_hand_computed_En(cert):
    measured = {5: (0.034, 0.004), 6: (-0.021, 0.004), 7: (0.016, 0.004), 8: (-0.025, 0.004),
                11: (0.048, 0.003), 22: (0.1, 0.01)}  # extra measured terms are ignored
    res = closure_check(measured, cert)
    assert res.passed and res.failed_terms == []
    en = {t.noll: t.En for t in res.per_term}
    assert en[5] == pytest.approx(0.002 / 0.005)  # sqrt(0.004^2 + 0.003^2) = 0.005
    assert en[6] == pytest.approx(0.0)
    assert en[7] == pytest.approx(0.4)
    assert en[11] == pytest.approx(0.003 / 0.005)
    assert res.max_En == pytest.approx(0.6)
    t = res.per_term[0]
    assert tuple(t) == (5, 0.034, 0.004, 0.032, 0.003, t.En, True)


def test_closure_off_by_three_U_fails(cert):
    measured = {j: (v, U) for j, (v, U) in cert.coefficients.items()}
    measured[8] = (-0.025 + 3 * 0.003, 0.003)  # off by 3 U_cert with U_meas = U_cert
    res = closure_check(measured, cert)
    assert not res.passed and res.failed_terms == [8]
    t8 = [t for t in res.per_term if t.noll == 8][0]
    assert t8.En == pytest.approx(3 * 0.003 / math.sqrt(2 * 0.003 ** 2))  # = 3 / sqrt(2) = 2.12
    assert not t8.passed
    assert all(t.passed for t in res.per_term if t.noll != 8)


def test_closure_boundary_and_inputs(cert):
    measured = {j: {"value": v, "U": 0.004} for j, (v, _) in cert.coefficients.items()}
    measured[5] = {"value": 0.032 + 0.005, "U": 0.004}  # exactly En = 1 -> pass
    assert closure_check(measured, cert).passed
    del measured[11]
    with pytest.raises(InputError, match="Noll 11 was not measured"):
        closure_check(measured, cert)
    with pytest.raises(InputError, match="wavelength"):
        closure_check({j: (v, U) for j, (v, U) in cert.coefficients.items()}, cert, wavelength_nm=633.0)
    arr = measured_from_arrays([0.0] * 11, [0.004] * 11)
    assert arr[11] == (0.0, 0.004) and len(arr) == 11


BASE = """id = "g"
serial = "s"
wavelength_nm = 530.0
na = 0.1
issuer = "lab"
date = 2024-01-02
[zernike]
5 = { value = 0.03, U = 0.003 }
"""


@pytest.mark.parametrize("text,match", [
    (BASE + 'colour = "red"\n', "zernike.colour: key must be a Noll index"),  # inside [zernike]
    ('colour = "red"\n' + BASE, "unknown key.*colour"),
    (BASE.replace("U = 0.003", "U = -0.003"), r"zernike.5.U: must be > 0"),
    (BASE.replace("U = 0.003", "U = 0.003, sigma = 1"), "unknown key.*sigma"),
    (BASE.replace("5 = {", "4 = {"), "alignment term"),
    (BASE.replace("na = 0.1", "na = 1.4"), "na: must be < 1"),
    (BASE.replace("wavelength_nm = 530.0", 'wavelength_nm = "green"'), "wavelength_nm: expected a number"),
    (BASE.replace('issuer = "lab"\n', ""), "missing key.*issuer"),
    (BASE.replace("date = 2024-01-02", 'date = "yesterday"'), "date: not an ISO date"),
    (BASE + "6 = { value = 0.01 }\n", "needs both value and U"),
    (BASE.replace("[zernike]", "[zernike"), "not valid TOML"),
    ('coverage_factor = 1.0\n' + BASE, "coverage_factor"),
], ids=["key-in-zernike", "unknown-top", "negative-U", "unknown-term-key", "noll-4", "na", "wavelength",
        "missing-issuer", "bad-date", "missing-U", "bad-toml", "coverage"])
def test_bad_certificates_name_file_and_key(tmp_path, text, match):
    path = tmp_path / "cert.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as exc:
        load_certificate(path)
    assert exc.value.source == str(path)


def test_missing_certificate_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_certificate(tmp_path / "nope.toml")


# ------------------------------------------------------------------ station status
CAL_STATE = [
    StationEstimate("illumination.shift_mm[0]", "LED shift x", "mm", 0.050, 0.005),
    StationEstimate("illumination.shift_mm[1]", "LED shift y", "mm", -0.020, 0.005),
    StationEstimate("illumination.rotation_deg", "rotation", "deg", 0.10, 0.01),
    StationEstimate("illumination.tilt_deg[0]", "tilt x", "deg", 0.0, 0.01),
    StationEstimate("sample.defocus_um", "defocus", "um", 1.0, 0.2),
]
LIMITS = {"shift_mm": 0.030, "rotation_deg": 0.05, "tilt_deg": 0.1, "defocus_um": 5.0}


def _current(**changes):
    cur = {e.name: e.value for e in CAL_STATE}
    cur.update({k.replace("__", "."): v for k, v in changes.items()})
    return cur


def _calibrate(store, cert, passed=True, when=T0, days=7):
    measured = {j: (v + (0.0 if passed else 0.02), 0.004) for j, (v, U) in cert.coefficients.items()}
    closure = closure_check(measured, cert)
    assert closure.passed is passed
    return record_calibration(store, "st-4x-01", "alice", closure, CAL_STATE, days,
                              {"golden.tif": "0" * 64}, "0.1.0", now=when)


def test_status_none(tmp_path):
    with AuditStore(tmp_path / "a.sqlite") as s:
        st = station_status(s, "st-4x-01", T0, _current(), LIMITS)
    assert st["status"] == "none" and st["calibration_seq"] is None


def test_record_calibration_content(tmp_path, cert):
    with AuditStore(tmp_path / "a.sqlite") as s:
        rec = _calibrate(s, cert)
        c = s.last_calibration("st-4x-01").content
    assert rec.kind == "calibration" and c["passed"] is True and c["golden_lens_id"] == "golden-4x-010"
    assert c["valid_until"] == "2025-04-08T08:00:00.000000Z"
    assert c["misalignment"]["illumination.shift_mm[0]"] == {"value": 0.05, "U": 0.01, "unit": "mm"}
    assert [t["noll"] for t in c["closure"]["per_term"]] == [5, 6, 7, 8, 11]
    assert c["operator"] == "alice" and c["software_version"] == "0.1.0"


def test_status_valid_then_expired(tmp_path, cert):
    with AuditStore(tmp_path / "a.sqlite") as s:
        rec = _calibrate(s, cert)
        st = station_status(s, "st-4x-01", T0 + timedelta(days=6), _current(), LIMITS)
        assert st["status"] == "valid" and st["calibration_seq"] == rec.seq
        assert st["valid_until"] == "2025-04-08T08:00:00.000000Z"
        st = station_status(s, "st-4x-01", "2025-04-08T08:00:01Z", _current(), LIMITS)
        assert st["status"] == "expired" and "expired" in st["reason"]


def test_status_failed(tmp_path, cert):
    with AuditStore(tmp_path / "a.sqlite") as s:
        _calibrate(s, cert)
        _calibrate(s, cert, passed=False, when=T0 + timedelta(days=1))
        st = station_status(s, "st-4x-01", T0 + timedelta(days=2), _current(), LIMITS)
    assert st["status"] == "failed" and "Noll 5" in st["reason"]
    assert st["valid_until"] is None


@pytest.mark.parametrize("changes,key,fragment", [
    ({"illumination__shift_mm[0]": 0.050 + 0.024, "illumination__shift_mm[1]": -0.020 + 0.024},
     "shift_mm", "LED array shift changed by (+0.024, +0.024) mm"),  # |change| 0.0339 > 0.03
    ({"illumination__rotation_deg": 0.10 - 0.06}, "rotation_deg", "illumination.rotation_deg changed by -0.06"),
    ({"illumination__tilt_deg[0]": 0.2}, "tilt_deg", "illumination.tilt_deg[0] changed by +0.2"),
])
def test_status_drifted_names_parameter_and_amount(tmp_path, cert, changes, key, fragment):
    with AuditStore(tmp_path / "a.sqlite") as s:
        _calibrate(s, cert)
        st = station_status(s, "st-4x-01", T0 + timedelta(days=1), _current(**changes), LIMITS)
    assert st["status"] == "drifted", st
    assert fragment in st["reason"] and f"limit {LIMITS[key]:g}" in st["reason"]
    assert [d["key"] for d in st["drift"]] == [key]


def test_status_within_drift_limits_is_valid(tmp_path, cert):
    with AuditStore(tmp_path / "a.sqlite") as s:
        _calibrate(s, cert)
        cur = _current(**{"illumination__shift_mm[0]": 0.07, "illumination__shift_mm[1]": -0.02})
        st = station_status(s, "st-4x-01", T0 + timedelta(days=1), cur, LIMITS)
    assert st["status"] == "valid", st  # shift change 0.020 mm < 0.030 mm
