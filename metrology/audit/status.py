"""Station calibration status (printed by ``inspect``) and recording runs in the audit store.

Drift limits
------------
``station_status`` compares this run's station misalignment with the state measured at the last
calibration. A ``drift_limits`` key names a parameter of the registry (:mod:`metrology.parameters`)
by its path (``illumination.shift_mm``, as station files give them), its file key (``shift_mm``) or
one element (``sample.position_um[0]``). The change of a whole parameter is its magnitude
(:func:`metrology.parameters.station_magnitudes` of the change): the length of the vector change
for ``shift_mm`` and ``position_um``, the largest element change otherwise (``tilt_deg``: each
component). A limit is exceeded if the change is larger. Parameters missing from either side are
skipped.
"""

from __future__ import annotations

import math

from metrology.audit.golden import ClosureResult
from metrology.audit.canonical import parse_utc, plus_days, utc_now
from metrology.audit.store import AuditStore, Record
from metrology.conventions import COVERAGE_FACTOR
from metrology.errors import InputError
from metrology.io.files import file_sha256
from metrology.measurement import StationEstimate
from metrology.parameters import element_name, lookup, station_magnitudes


def misalignment_dict(estimates) -> dict:
    """Normalise station misalignment to ``{name: {"value", "U", "unit"}}``.

    Accepts a list of :class:`metrology.measurement.StationEstimate` (``U = k u``), a dict of such
    dicts, or a dict name -> float (U unknown: stored as NaN).
    """
    out = {}
    if isinstance(estimates, dict):
        for name, e in estimates.items():
            if isinstance(e, dict):
                out[str(name)] = {"value": float(e["value"]), "U": float(e.get("U", math.nan)),
                                  "unit": str(e.get("unit", ""))}
            elif isinstance(e, StationEstimate):
                out[str(name)] = {"value": float(e.value), "U": COVERAGE_FACTOR * float(e.u), "unit": e.unit}
            else:
                out[str(name)] = {"value": float(e), "U": math.nan, "unit": ""}
        return out
    for e in estimates or []:
        if not isinstance(e, StationEstimate):
            raise InputError("misalignment", f"expected StationEstimate items, got {type(e).__name__}")
        out[e.name] = {"value": float(e.value), "U": COVERAGE_FACTOR * float(e.u), "unit": e.unit}
    return out


def _number(x) -> float:
    """``float(x)``; a result document's ``null`` (nothing measured) as NaN."""
    return math.nan if x is None else float(x)


def _values(misalignment) -> dict:
    """name -> float from any form :func:`misalignment_dict` accepts."""
    return {k: v["value"] for k, v in misalignment_dict(misalignment).items()}


def _inputs(inputs) -> dict:
    """label -> sha256: a dict is taken as is; a list of paths is hashed."""
    if inputs is None:
        return {}
    if isinstance(inputs, dict):
        return {str(k): str(v) for k, v in inputs.items()}
    return {str(p): file_sha256(p) for p in inputs}


def drift_exceedances(current: dict, calibrated: dict, drift_limits: dict) -> list:
    """Drift limits exceeded: list of ``(key, change, limit, unit, detail)`` (see module doc).

    ``key`` is the parameter's file key (``shift_mm``) for a limit on a whole parameter, the key as
    given for a limit on one element or on a name the registry does not know.
    """
    out = []
    for key, limit in (drift_limits or {}).items():
        limit = float(limit)
        try:
            p, index = lookup(key)
        except KeyError:  # not a registry name: compare the element named so
            p, index = None, None
        if p is None:
            names = [key]
        elif index is not None or p.scalar:
            names = [element_name(p.path, index)]
        else:  # every element the run reports
            names = [element_name(p.path, i) for i in range(len(p.axes))] if p.axes else \
                sorted(n for n in current if n.startswith(p.path + "["))
        change = {n: current[n] - calibrated[n] for n in names if n in current and n in calibrated}
        if not change or (p is not None and p.magnitude == "norm" and index is None and len(change) < len(names)):
            continue
        if p is None or index is not None:
            size, worst = abs(change[names[0]]), names[0]
        else:
            key = p.key or p.path
            worst = max(change, key=lambda n: abs(change[n]))
            size = station_magnitudes(change, keys=[p.path]).get(p.key, abs(change[worst]))
        if size <= limit:
            continue
        unit = "" if p is None else p.unit
        if p is not None and index is None and p.magnitude == "norm":
            detail = f"{p.label} changed by (" + ", ".join(f"{d:+.4g}" for d in change.values()) + f") {unit}"
        else:
            detail = f"{worst} changed by {change[worst]:+.4g}"
        out.append((key, size, limit, unit, detail))
    return out


def station_status(store: AuditStore, station_id: str, now, current_misalignment: dict,
                   drift_limits: dict) -> dict:
    """Calibration status of a station for this run.

    Parameters
    ----------
    store : AuditStore
    station_id : str
    now : datetime or ISO text
        Time of this run (UTC).
    current_misalignment : dict
        This run's station parameters, name -> value (or ``{"value", ...}``), e.g.
        ``{"illumination.shift_mm[0]": 0.012}``.
    drift_limits : dict
        Allowed change since calibration, keys as in the module docstring.

    Returns
    -------
    dict
        ``status`` (``"untrusted"``, ``"none"``, ``"valid"``, ``"expired"``, ``"failed"``,
        ``"drifted"``), ``reason`` (one sentence), ``calibrated_utc``, ``valid_until``,
        ``calibration_seq``, ``golden_lens_id`` and ``drift`` (list of exceedances as dicts).
        Precedence: untrusted, none, failed, expired, drifted.

    Notes
    -----
    No record is read before the store is verified (:meth:`AuditStore.verified_last_calibration`:
    the hash chain from the stored checkpoint, and the calibration record itself with its links).
    A broken chain makes the status ``"untrusted"``, naming the first problems: an edited record
    can claim anything, a passed calibration valid until 2099 included.
    """
    now_t = parse_utc(now, "now")
    cal, check = store.verified_last_calibration(station_id)
    out = {"status": "none", "reason": f"no calibration recorded for station {station_id}",
           "calibrated_utc": None, "valid_until": None, "calibration_seq": None,
           "golden_lens_id": None, "drift": []}
    if not check.ok:
        shown = "; ".join(check.problems[:3]) + (f" (and {len(check.problems) - 3} more)" if len(check.problems) > 3 else "")
        out.update(status="untrusted", reason=f"the audit store failed its integrity check, so no calibration "
                   f"record in it can be trusted: {shown}; run 'metrology audit verify'")
        return out
    if cal is None:
        return out
    c = cal.content
    closure = c.get("closure") or {}
    out.update(calibrated_utc=cal.utc, valid_until=c.get("valid_until"), calibration_seq=cal.seq,
               golden_lens_id=closure.get("golden_lens_id"))
    if not c.get("passed", False):
        failed = [str(t["noll"]) for t in closure.get("per_term", []) if not t.get("pass", False)]
        out.update(status="failed", reason=(
            f"last calibration (seq {cal.seq}, {cal.utc}) failed the golden-lens closure"
            + (f" on Noll {', '.join(failed)}" if failed else "")
            + f" (max En {float(closure.get('max_En', math.nan)):.2f})"))
        return out
    valid_until = c.get("valid_until")
    if valid_until and now_t > parse_utc(valid_until):
        out.update(status="expired", reason=f"calibration seq {cal.seq} expired at {valid_until}")
        return out
    exceed = drift_exceedances(_values(current_misalignment), _values(c.get("misalignment") or {}),
                               drift_limits)
    if exceed:
        out["drift"] = [{"key": k, "change": ch, "limit": lim, "unit": u, "detail": d}
                        for k, ch, lim, u, d in exceed]
        out.update(status="drifted", reason="station drifted since calibration seq "
                   f"{cal.seq}: " + "; ".join(f"{d} (|change| {ch:.4g} {u} > limit {lim:g} {u})"
                                              for k, ch, lim, u, d in exceed))
        return out
    out.update(status="valid", reason=f"calibrated {cal.utc} (seq {cal.seq}) with "
               f"{closure.get('golden_lens_id', 'golden lens')}, valid until {valid_until}")
    return out


def record_calibration(store: AuditStore, station_id: str, operator: str, closure: ClosureResult,
                       misalignment, validity_days: float, inputs, software_version: str,
                       now=None, extra: dict | None = None) -> Record:
    """Append a ``calibration`` record.

    Parameters
    ----------
    closure : ClosureResult
        From :func:`metrology.audit.golden.closure_check`.
    misalignment : list of StationEstimate or dict
        The station state measured during calibration (see :func:`misalignment_dict`).
    validity_days : float
        ``valid_until = now + validity_days`` (only for a passed closure; a failed one has none).
    inputs : dict label -> sha256, or list of paths (hashed here)
    now : datetime or str, optional
        Time of the calibration; default now.
    extra : dict, optional
        More fields to store (e.g. solver summary).
    """
    t = parse_utc(now, "now") if now is not None else utc_now()
    if not (isinstance(validity_days, (int, float)) and validity_days > 0):
        raise InputError("validity_days", f"must be a positive number of days, got {validity_days!r}")
    content = {
        "operator": str(operator),
        "software_version": str(software_version),
        "inputs": _inputs(inputs),
        "misalignment": misalignment_dict(misalignment),
        "closure": closure.to_dict(),
        "golden_lens_id": closure.golden_lens_id,
        "passed": bool(closure.passed),
        "validity_days": float(validity_days),
        "valid_until": plus_days(t, validity_days) if closure.passed else None,
    }
    if extra:
        content["extra"] = extra
    return store.append("calibration", station_id, content, utc=t)


def record_inspection(store: AuditStore, station_id: str, *, operator: str, software_version: str,
                      inputs, misalignment, serial: str, zernike: dict, figures: dict, verdict: str,
                      status: dict | None = None, now=None, extra: dict | None = None,
                      result: dict | None = None, expect_head=None) -> Record:
    """Append an ``inspection`` record.

    Parameters
    ----------
    zernike : dict
        Noll -> ``(value, U)`` or ``{"value", "U"}`` in waves.
    figures : dict
        Lens figures (e.g. ``{"rms_waves": {"value", "U"}, "strehl": ...}``), stored as given.
    verdict : {"PASS", "FAIL", "INCONCLUSIVE"}
    status : dict, optional
        The :func:`station_status` of this run.
    result : dict, optional
        The result files this record commits: ``{"id", "files": {"pdf", "json"}, "sha256": {"pdf",
        "json"}}`` (the record is appended before the files get their names; see
        :mod:`metrology.io.results`).
    expect_head : (int, str), optional
        Append only onto this store head (:meth:`AuditStore.append`).
    """
    if verdict not in ("PASS", "FAIL", "INCONCLUSIVE"):
        raise InputError("verdict", f"must be PASS, FAIL or INCONCLUSIVE, got {verdict!r}")
    z = {}
    for k, v in (zernike or {}).items():
        value, U = (v["value"], v["U"]) if isinstance(v, dict) else (v[0], v[1])
        z[str(int(str(k)))] = {"value": _number(value), "U": _number(U)}
    content = {
        "operator": str(operator),
        "software_version": str(software_version),
        "inputs": _inputs(inputs),
        "misalignment": misalignment_dict(misalignment),
        "lens": {"serial": str(serial), "zernike": z, "figures": figures or {}, "verdict": verdict},
        "verdict": verdict,
    }
    if status is not None:
        content["station_status"] = {k: status.get(k) for k in
                                     ("status", "reason", "calibration_seq", "valid_until")}
    if result is not None:
        content["result"] = result
    if extra:
        content["extra"] = extra
    return store.append("inspection", station_id, content, utc=now, expect_head=expect_head)
