"""Drift monitoring of station parameters and golden-lens terms (statistical process control).

Charts, per series (one station parameter, or one golden-lens Zernike term):

* **Shewhart individuals chart**: centre ``mu0`` and ``sigma`` from a baseline (the first
  ``n_baseline`` points, default 20, or the first calibration period); ``sigma = MRbar / 1.128``
  (average moving range over ``d2`` for n = 2); alarm when ``|x_i - mu0| > 3 sigma``.
* **EWMA** (slow drift): ``z_i = lam x_i + (1 - lam) z_{i-1}``, ``z_{-1} = mu0``, with the exact
  time-varying limits ``mu0 +/- L sigma sqrt(lam / (2 - lam) (1 - (1 - lam)^(2 (i + 1))))``;
  defaults ``lam = 0.2``, ``L = 3.0`` (in-control ARL about 1000 points at known sigma).
* **CUSUM** (optional rule ``"cusum"``): ``C+_i = max(0, C+_{i-1} + (x_i - mu0)/sigma - k)``,
  ``C-`` likewise, alarm when either exceeds ``h``; defaults ``k = 0.5``, ``h = 5``.

Golden-lens terms have a known target: the certified value. Their centre is the certified value
and their sigma the combined standard uncertainty ``sqrt(u_meas^2 + u_cert^2)`` (median over the
calibrations), so they are charted from the first calibration on.

Everything here works on plain floats and audit records; no physics, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from metrology.conventions import COVERAGE_FACTOR
from metrology.parameters import TRACKED, element_names

D2 = 1.128
"""``d2`` for moving ranges of two points."""

DEFAULT_RULES = ("shewhart", "ewma")
STATION_PARAMETERS = tuple(name for path in TRACKED for name in element_names(path))
"""Station parameters charted first, in the registry's order (:data:`metrology.parameters.TRACKED`);
any other name found in the records is charted after them."""


@dataclass(frozen=True)
class Alarm:
    """One out-of-control point.

    ``index`` is the 0-based position in the series; ``rule`` is ``"shewhart"``, ``"ewma"`` or
    ``"cusum"``; ``side`` is ``"high"`` or ``"low"``. ``value`` is the chart statistic (the
    observation, the EWMA, or the CUSUM sum in sigma units), ``limit`` the limit it crossed,
    ``observation`` the raw value, ``centre`` and ``sigma`` the chart's.
    """

    index: int
    rule: str
    value: float
    limit: float
    observation: float
    centre: float
    sigma: float
    side: str


@dataclass
class Chart:
    """A series with its control limits and alarms (for the PDF)."""

    values: np.ndarray
    start: int
    centre: float | None
    sigma: float | None
    ewma: np.ndarray | None = None
    ewma_upper: np.ndarray | None = None
    ewma_lower: np.ndarray | None = None
    alarms: list = field(default_factory=list)
    note: str = ""


def baseline_limits(values) -> tuple:
    """``(centre, sigma)`` of a baseline: mean, and average moving range / 1.128."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError("a baseline needs at least 2 points")
    return float(x.mean()), float(np.mean(np.abs(np.diff(x))) / D2)


def ewma(values, centre: float, sigma: float, lam: float = 0.2, L: float = 3.0):
    """EWMA statistic and its exact time-varying limits.

    Returns
    -------
    z, upper, lower : ndarray, shape (N,)
    """
    x = np.asarray(values, dtype=float)
    z = np.empty_like(x)
    prev = centre
    for i, xi in enumerate(x):
        prev = lam * xi + (1.0 - lam) * prev
        z[i] = prev
    i = np.arange(1, x.size + 1)
    half = L * sigma * np.sqrt(lam / (2.0 - lam) * (1.0 - (1.0 - lam) ** (2 * i)))
    return z, centre + half, centre - half


def cusum(values, centre: float, sigma: float, k: float = 0.5):
    """Tabular CUSUM sums ``(C+, C-)`` in units of sigma, shape (N,) each."""
    x = (np.asarray(values, dtype=float) - centre) / sigma
    hi, lo = np.zeros_like(x), np.zeros_like(x)
    sh = sl = 0.0
    for i, xi in enumerate(x):
        sh = max(0.0, sh + xi - k)
        sl = max(0.0, sl - xi - k)
        hi[i], lo[i] = sh, sl
    return hi, lo


def chart_series(values, n_baseline: int = 20, start: int = 0, centre=None, sigma=None,
                 rules=DEFAULT_RULES, lam: float = 0.2, L: float = 3.0, k: float = 0.5,
                 h: float = 5.0) -> Chart:
    """Evaluate the charts of one series; see :func:`evaluate_series` for the parameters."""
    x = np.asarray(values, dtype=float)
    chart = Chart(values=x, start=start, centre=None, sigma=None)
    seg = x[start:]
    if centre is None or sigma is None:
        if seg.size < max(n_baseline, 2):
            chart.note = f"baseline incomplete ({seg.size} of {n_baseline} points); no limits yet"
            return chart
        c0, s0 = baseline_limits(seg[:n_baseline])
        centre = c0 if centre is None else centre
        sigma = s0 if sigma is None else sigma
    centre, sigma = float(centre), float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        sigma = max(abs(centre), 1.0) * 1e-12  # constant baseline: any change is out of control
    chart.centre, chart.sigma = centre, sigma
    alarms = []
    if "shewhart" in rules:
        for i, xi in enumerate(seg):
            if abs(xi - centre) > 3.0 * sigma:
                side = "high" if xi > centre else "low"
                lim = centre + (3.0 if side == "high" else -3.0) * sigma
                alarms.append(Alarm(start + i, "shewhart", float(xi), lim, float(xi), centre, sigma, side))
    z, up, lo = ewma(seg, centre, sigma, lam, L)
    chart.ewma, chart.ewma_upper, chart.ewma_lower = z, up, lo
    if "ewma" in rules:
        for i in range(seg.size):
            if z[i] > up[i] or z[i] < lo[i]:
                side = "high" if z[i] > up[i] else "low"
                lim = up[i] if side == "high" else lo[i]
                alarms.append(Alarm(start + i, "ewma", float(z[i]), float(lim), float(seg[i]), centre,
                                    sigma, side))
    if "cusum" in rules:
        hi, lo_ = cusum(seg, centre, sigma, k)
        for i in range(seg.size):
            for side, s in (("high", hi[i]), ("low", lo_[i])):
                if s > h:
                    alarms.append(Alarm(start + i, "cusum", float(s), float(h), float(seg[i]), centre,
                                        sigma, side))
    chart.alarms = sorted(alarms, key=lambda a: (a.index, a.rule))
    return chart


def evaluate_series(values, n_baseline: int = 20, start: int = 0, centre=None, sigma=None,
                    rules=DEFAULT_RULES, lam: float = 0.2, L: float = 3.0, k: float = 0.5,
                    h: float = 5.0) -> list:
    """Alarms of one series.

    Parameters
    ----------
    values : sequence of float, shape (N,)
        In time order (the unit of the parameter).
    n_baseline : int
        Baseline length (points from ``start``) for centre and sigma when they are not given.
        With fewer points than that, no limits exist yet and no alarm is raised.
    start : int
        First point charted (the baseline starts here).
    centre, sigma : float, optional
        Known centre and standard deviation (e.g. a certified value), overriding the baseline.
    rules : sequence of str
        Any of ``"shewhart"``, ``"ewma"``, ``"cusum"``.
    lam, L : float
        EWMA weight and limit width (sigma units).
    k, h : float
        CUSUM reference value and decision interval (sigma units).

    Returns
    -------
    list of Alarm
        Sorted by index, each with ``index, rule, value, limit``.
    """
    return chart_series(values, n_baseline, start, centre, sigma, rules, lam, L, k, h).alarms


# --------------------------------------------------------------------------- station history
@dataclass
class Series:
    """A station parameter or golden-lens term over the station's records."""

    name: str
    unit: str
    seqs: list
    utcs: list
    values: list
    centre: float | None = None
    sigma: float | None = None
    start: int = 0


def station_history(store, station_id: str) -> dict:
    """Every charted series of ``station_id``: name -> :class:`Series`, in display order.

    Station parameters come from the ``misalignment`` of inspection and calibration records;
    golden-lens terms (``golden.<lens id>.Z<noll>``) from the closure of calibration records.
    """
    recs = [r for r in store.records(station_id=station_id) if r.kind in ("inspection", "calibration")]
    params: dict = {}
    for r in recs:
        for name, entry in (r.content.get("misalignment") or {}).items():
            v = entry.get("value") if isinstance(entry, dict) else entry
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            unit = entry.get("unit", "") if isinstance(entry, dict) else ""
            s = params.setdefault(name, Series(name, unit, [], [], []))
            s.seqs.append(r.seq)
            s.utcs.append(r.utc)
            s.values.append(v)
    order = [p for p in STATION_PARAMETERS if p in params] + sorted(set(params) - set(STATION_PARAMETERS))
    out = {p: params[p] for p in order}
    golden: dict = {}
    spreads: dict = {}
    for r in recs:
        if r.kind != "calibration":
            continue
        closure = r.content.get("closure") or {}
        lens = closure.get("golden_lens_id", "golden")
        for t in closure.get("per_term", []):
            name = f"golden.{lens}.Z{int(t['noll'])}"
            s = golden.setdefault(name, Series(name, "waves", [], [], [], centre=float(t["certified"])))
            s.seqs.append(r.seq)
            s.utcs.append(r.utc)
            s.values.append(float(t["measured"]))
            spreads.setdefault(name, []).append(
                math.hypot(float(t["U_meas"]), float(t["U_cert"])) / COVERAGE_FACTOR)
    for name in sorted(golden, key=lambda n: (n.rsplit(".Z", 1)[0], int(n.rsplit(".Z", 1)[1]))):
        golden[name].sigma = float(np.median(spreads[name]))
        out[name] = golden[name]
    return out


def _calibration_start(store, station_id, series: Series):
    """(start index, baseline length) of the first calibration period of a series, or None."""
    cals = [r.seq for r in store.records(station_id=station_id, kind="calibration")]
    if not cals:
        return None
    first = cals[0]
    stop = cals[1] if len(cals) > 1 else None
    idx = [i for i, s in enumerate(series.seqs) if s >= first and (stop is None or s < stop)]
    if len(idx) < 8 or stop is None:
        return None
    return idx[0], len(idx)


def station_charts(store, station_id: str, n_baseline: int = 20, baseline: str = "count",
                   rules=DEFAULT_RULES, **kw) -> dict:
    """name -> (Series, Chart) for every series of the station.

    ``baseline="calibration"`` takes the first closed calibration period (records from the first
    calibration up to the second, at least 8) as baseline, falling back to the first ``n_baseline``.
    """
    out = {}
    for name, s in station_history(store, station_id).items():
        start, n = 0, n_baseline
        if baseline == "calibration" and s.centre is None:
            cal = _calibration_start(store, station_id, s)
            if cal:
                start, n = cal
        out[name] = (s, chart_series(s.values, n, start, s.centre, s.sigma, rules, **kw))
    return out


def alarm_message(name: str, a: Alarm, seq: int) -> str:
    """One line describing an alarm."""
    what = {"shewhart": "value", "ewma": "EWMA", "cusum": "CUSUM sum (sigma units)"}[a.rule]
    rel = "above upper" if a.side == "high" else "below lower"
    return (f"ALARM {a.rule.upper()} {name} at record seq {seq}: {what} {a.value:.6g} {rel} limit "
            f"{a.limit:.6g} (observation {a.observation:.6g}, centre {a.centre:.6g}, sigma {a.sigma:.3g})")


def check_and_record(store, station_id: str, n_baseline: int = 20, baseline: str = "count",
                     rules=DEFAULT_RULES, utc=None, **kw) -> list:
    """Evaluate the station's history and append an ``alarm`` record for each new alarm.

    An alarm is identified by (parameter, rule, triggering record seq); alarms already recorded
    are not recorded again. Returns the new alarm records (list of :class:`Record`).
    """
    seen = {(r.content.get("parameter"), r.content.get("rule"), r.content.get("record_seq"))
            for r in store.records(station_id=station_id, kind="alarm")}
    new = []
    for name, (series, chart) in station_charts(store, station_id, n_baseline, baseline, rules,
                                                **kw).items():
        for a in chart.alarms:
            seq = series.seqs[a.index]
            if (name, a.rule, seq) in seen:
                continue
            seen.add((name, a.rule, seq))
            content = {
                "parameter": name, "unit": series.unit, "rule": a.rule, "side": a.side,
                "record_seq": seq, "record_utc": series.utcs[a.index], "index": a.index,
                "value": a.value, "limit": a.limit, "observation": a.observation,
                "centre": a.centre, "sigma": a.sigma, "n_baseline": n_baseline,
                "message": alarm_message(name, a, seq),
            }
            new.append(store.append("alarm", station_id, content, utc=utc))
    return new
