"""Drift monitoring: control-chart arithmetic, slow LED-array drift detection, alarm recording.

Simulated station (numbers stated once): the LED array shift estimate ``illumination.shift_mm[0]``
scatters with sigma 0.010 mm around an offset of 0.050 mm (run-to-run repeatability of the
estimate); from run 25 (1-based) the board creeps by +0.005 mm per run (half a sigma per run,
e.g. a loosening mount), so at run 32 it has moved 0.040 mm = 4 sigma. Baseline: runs 1-20.
"""

import math

import numpy as np
import pytest

from metrology.audit.drift import (D2, baseline_limits, check_and_record, cusum, evaluate_series, ewma,
                                   station_history)
from metrology.audit.store import AuditStore

SIGMA_MM = 0.010
OFFSET_MM = 0.050
RATE_MM_PER_RUN = 0.005
DRIFT_START_RUN = 25
N_RUNS = 40
SEEDS = range(8)


def history(seed, rate=RATE_MM_PER_RUN):
    rng = np.random.default_rng(seed)
    runs = np.arange(1, N_RUNS + 1)
    drift = np.where(runs >= DRIFT_START_RUN, (runs - DRIFT_START_RUN + 1) * rate, 0.0)
    return OFFSET_MM + rng.normal(0.0, SIGMA_MM, N_RUNS) + drift


def test_baseline_uses_average_moving_range():
    x = [1.0, 3.0, 2.0, 2.0, 5.0]
    centre, sigma = baseline_limits(x)
    assert centre == pytest.approx(2.6)
    assert sigma == pytest.approx((2 + 1 + 0 + 3) / 4 / 1.128)
    assert D2 == 1.128


def test_shewhart_flags_a_point_beyond_three_sigma_only():
    x = [0.0] * 25
    alarms = evaluate_series(x, centre=0.0, sigma=1.0, rules=("shewhart",))
    assert alarms == []
    x[22], x[23] = 2.99, -3.01
    alarms = evaluate_series(x, centre=0.0, sigma=1.0, rules=("shewhart",))
    assert [(a.index, a.rule, a.side) for a in alarms] == [(23, "shewhart", "low")]
    assert alarms[0].limit == pytest.approx(-3.0) and alarms[0].value == pytest.approx(-3.01)


def test_ewma_exact_time_varying_limits():
    lam, L, c, s = 0.2, 3.0, 1.0, 0.5
    z, up, lo = ewma([2.0, 1.0, 1.0], c, s, lam, L)
    assert z[0] == pytest.approx(0.2 * 2.0 + 0.8 * 1.0)
    assert z[1] == pytest.approx(0.2 * 1.0 + 0.8 * z[0])
    for i in range(3):
        half = L * s * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * (i + 1))))
        assert up[i] == pytest.approx(c + half) and lo[i] == pytest.approx(c - half)
    # first-point limit is lam * L * sigma (the exact formula, not the asymptotic one)
    assert up[0] - c == pytest.approx(lam * L * s)


def test_cusum_sums():
    hi, lo = cusum([1.0, 1.0, -3.0], 0.0, 1.0, k=0.5)
    assert list(hi) == pytest.approx([0.5, 1.0, 0.0])
    assert list(lo) == pytest.approx([0.0, 0.0, 2.5])
    alarms = evaluate_series([1.2] * 12, centre=0.0, sigma=1.0, rules=("cusum",), h=5.0)
    assert alarms and alarms[0].index == 7  # 0.7 per point exceeds 5 at the 8th point


def test_no_limits_before_the_baseline_is_complete():
    assert evaluate_series([0.0, 10.0, -10.0, 100.0], n_baseline=20) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_slow_led_shift_drift_is_detected_within_8_runs(seed):
    alarms = evaluate_series(history(seed), n_baseline=20)
    first_drift_index = DRIFT_START_RUN - 1  # 0-based index of run 25
    assert [a for a in alarms if a.index < first_drift_index] == []  # no false alarm before run 25
    after = [a.index for a in alarms if a.index >= first_drift_index]
    assert after and after[0] - first_drift_index < 8, after
    # the EWMA alone catches the slow drift too
    ew = [a.index for a in evaluate_series(history(seed), rules=("ewma",)) if a.index >= first_drift_index]
    assert ew and ew[0] - first_drift_index < 8


def test_no_alarm_without_drift_for_the_chosen_seeds():
    for seed in SEEDS:
        assert evaluate_series(history(seed, rate=0.0)[:DRIFT_START_RUN - 1]) == []


def test_rates_over_many_seeds():
    """Statistical check of the design (200 seeds): detection within 8 runs of the drift start in
    >= 99% of histories; a false alarm somewhere in runs 1-24 (baseline included, sigma estimated
    from 20 points) in about 11% of histories, checked < 20%."""
    detected = false = 0
    n = 200
    for seed in range(1000, 1000 + n):
        idx = [a.index for a in evaluate_series(history(seed))]
        false += any(i < DRIFT_START_RUN - 1 for i in idx)
        after = [i for i in idx if i >= DRIFT_START_RUN - 1]
        detected += bool(after) and after[0] - (DRIFT_START_RUN - 1) < 8
    assert detected / n >= 0.99
    assert false / n < 0.20


def _fill(store, values, station="st-4x-01", kind="inspection"):
    for i, v in enumerate(values):
        store.append(kind, station, {"misalignment": {
            "illumination.shift_mm[0]": {"value": float(v), "U": 0.02, "unit": "mm"}}},
            utc=f"2025-02-01T{i // 60:02d}:{i % 60:02d}:00Z")


def test_check_and_record_appends_alarms_once(tmp_path):
    values = history(0)
    with AuditStore(tmp_path / "a.sqlite") as s:
        _fill(s, values[:30])
        first = check_and_record(s, "st-4x-01")
        assert first, "drift from run 25 should have raised alarms by run 30"
        assert all(r.kind == "alarm" for r in first)
        assert min(r.content["record_seq"] for r in first) >= DRIFT_START_RUN
        assert all(r.content["parameter"] == "illumination.shift_mm[0]" for r in first)
        assert "ALARM" in first[0].content["message"]
        assert check_and_record(s, "st-4x-01") == []  # nothing new
        _fill(s, values[30:31])
        again = check_and_record(s, "st-4x-01")
        keys = {(r.content["rule"], r.content["record_seq"]) for r in first}
        assert all((r.content["rule"], r.content["record_seq"]) not in keys for r in again)
        assert s.verify().ok
        # alarm records do not enter the series
        assert len(station_history(s, "st-4x-01")["illumination.shift_mm[0]"].values) == 31


def test_golden_terms_are_charted_against_the_certificate(tmp_path):
    with AuditStore(tmp_path / "a.sqlite") as s:
        for i, m in enumerate([0.032, 0.033, 0.031, 0.05]):
            s.append("calibration", "st", {"closure": {"golden_lens_id": "g1", "per_term": [
                {"noll": 5, "measured": m, "U_meas": 0.004, "certified": 0.032, "U_cert": 0.003,
                 "En": 0.0, "pass": True}]}, "passed": True}, utc=f"2025-03-0{i + 1}T00:00:00Z")
        hist = station_history(s, "st")
        g = hist["golden.g1.Z5"]
        assert g.centre == 0.032 and g.sigma == pytest.approx(0.0025)
        new = check_and_record(s, "st")
        assert [(r.content["parameter"], r.content["rule"], r.content["record_seq"]) for r in new
                if r.content["rule"] == "shewhart"] == [("golden.g1.Z5", "shewhart", 4)]
