"""Conformance decisions (ISO 14253-1, ``U = k u``, ``k = 2``) and the overall verdict.

Rules (``docs/spec.md``, "Verdict"):

* each limit: :func:`decide_upper` / :func:`decide_lower`;
* the measurement must be valid (solver converged, fit residual, data quality, identifiability,
  station misalignment, wavelength/NA match, calibration status); an invalid measurement is never
  PASS and never FAIL: a FAIL from bad data is not trustworthy either, so it becomes INCONCLUSIVE
  with every reason stated;
* valid measurement: FAIL if any limit FAILs, PASS if all PASS, INCONCLUSIVE otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from metrology.conventions import ALIGNMENT_NOLL, COVERAGE_FACTOR, DECISION_RULE
from metrology.analysis.propagation import MTF_AZIMUTHS_DEG, N_DRAWS, SEED, derived_figures, family_indices
from metrology.analysis.spec import LensSpec, MisalignmentLimits
from metrology.measurement import Measurement
from metrology.orderings import noll_to_nm, zernike_name
from metrology.parameters import PER_FRAME, noll_of, parse_element, station_magnitudes

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def decide_upper(value: float, U: float, limit: float) -> str:
    """Upper limit: PASS if ``value + U <= limit``, FAIL if ``value - U > limit``, else INCONCLUSIVE."""
    if not (math.isfinite(value) and math.isfinite(U)):
        return INCONCLUSIVE
    if value + U <= limit:
        return PASS
    if value - U > limit:
        return FAIL
    return INCONCLUSIVE


def decide_lower(value: float, U: float, limit: float) -> str:
    """Lower limit: PASS if ``value - U >= limit``, FAIL if ``value + U < limit``, else INCONCLUSIVE."""
    if not (math.isfinite(value) and math.isfinite(U)):
        return INCONCLUSIVE
    if value - U >= limit:
        return PASS
    if value + U < limit:
        return FAIL
    return INCONCLUSIVE


@dataclass
class LimitResult:
    """One judged limit. ``kind`` is ``"max"`` or ``"min"``; ``U = k u``."""

    name: str
    kind: str
    limit: float
    unit: str
    value: float
    u: float
    U: float
    verdict: str
    reason: str
    key: str = ""  # the spec key, e.g. "limits.family.coma"


@dataclass
class Verdict:
    """Overall decision with its reasons (blocking findings first) and per-limit rows."""

    overall: str
    reasons: list
    limits: list
    warnings: list = field(default_factory=list)
    valid: bool = True
    decision_rule: str = DECISION_RULE
    coverage_factor: float = COVERAGE_FACTOR
    zones: list = field(default_factory=list)  # per field zone (metrology.analysis.zones): dicts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["limits"] = [asdict(r) for r in self.limits]
        return d


# ----------------------------------------------------------------------------- validity

def judged_noll(spec: LensSpec, n_terms: int) -> list[int]:
    """Noll indices (among 1..n_terms) that some limit of ``spec`` depends on."""
    judged = set()
    if spec.rms_waves_max is not None or spec.strehl_min is not None or spec.pv_waves_max is not None or spec.mtf:
        judged.update(j for j in range(1, n_terms + 1) if j not in ALIGNMENT_NOLL)
    for fam in spec.family_max:
        judged.update(i + 1 for i in family_indices(fam, n_terms))
    judged.update(j for j in spec.term_max if j <= n_terms)
    return sorted(judged)


def _few(names, shown: int = 4) -> str:
    """At most ``shown`` names, then how many more (a reason stays one readable sentence)."""
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def solver_reason(message: str) -> str:
    """One short sentence for a fit that did not converge: the decisive clause of the solver's
    message (the stage that said "not converged", else the message's first clause); the whole
    message stays in the report's solver section."""
    clauses = [c.strip() for c in (message or "").replace("\n", " ").split("; ") if c.strip()]
    decisive = next((c for c in clauses if c.lower().startswith("not converged")), None)
    if decisive is not None:
        why = decisive.split(":", 1)[1].strip() if ":" in decisive else ""
    else:
        why = clauses[0] if clauses else ""
    why = why[:157] + "..." if len(why) > 160 else why
    return f"solver did not converge: {why}" if why else "solver did not converge"


def _border_share(names, side: int | None) -> float | None:
    """Share of the named sample elements in the outer eighth of the (side, side) field (element
    ``k`` of an (N, N) map is row ``k // N``), or None when the side is not known."""
    if not side:
        return None
    idx = np.asarray([parse_element(x)[1] for x in names])
    rows, cols = np.divmod(idx, side)
    edge = np.minimum(np.minimum(rows, cols), np.minimum(side - 1 - rows, side - 1 - cols)) < side // 8
    return float(edge.mean())


def bounded_pixels_sentence(names, side: int | None = None) -> str:
    """One sentence summarising sample pixels on their bounds: count, and where (frame border or
    inside) when the grid side is known."""
    n = len(names)
    where = ""
    share = _border_share(names, side)
    if share is not None:
        where = f" ({100 * n / (2 * side * side):.2g} % of the sample's values, {100 * share:.0f} % of them in the outer eighth of the field)"
    return f"{n} reconstructed sample values ended on their bounds{where}: the sample is not measured there"


def sample_bounds_block(names, side: int | None, max_border_fraction: float) -> bool:
    """Whether sample values on their bounds make the measurement invalid: any inside the outer
    eighth of the field, more than ``max_border_fraction`` of the sample's values (real and
    imaginary parts of a (side, side) field), or where they lie is unknown."""
    share = _border_share(names, side)
    if share is None or share < 1.0:
        return True
    return len(names) / (2 * side * side) > max_border_fraction


def bound_findings(pinned, side: int | None, max_border_fraction: float) -> tuple[list, list]:
    """The findings of fitted values that ended on their bounds (``FitResult.at_bounds`` names):
    any parameter other than a per-LED one or a sample value blocks; sample values block as
    :func:`sample_bounds_block` says (else warn); per-LED brightness or stray light warn.

    Returns
    -------
    blocking, warnings : list of str
    """
    pinned = list(pinned)
    leds = [n for n in pinned if n.startswith(PER_FRAME)]
    pixels = [n for n in pinned if n.startswith("sample.field")]
    others = [n for n in pinned if n not in leds and n not in pixels]
    blocking, warnings = [], []
    if others:
        blocking.append("fitted parameters ended on their search bounds (the best fit lies outside the "
                        "allowed range; their uncertainties do not hold): " + _few(others))
    if pixels:
        block = sample_bounds_block(pixels, side, max_border_fraction)
        (blocking if block else warnings).append(bounded_pixels_sentence(pixels, side))
    if leds:
        warnings.append(f"{len(leds)} LED brightness or stray-light value(s) ended on a search bound: {_few(leds)}")
    return blocking, warnings


TRADED_BRIGHTNESS = 0.5
"""A frame whose fitted brightness is below this fraction of the array's median while its fitted stray
light is positive is reported (:func:`traded_frame_findings`)."""


def traded_frame_findings(frame_light: dict | None, na: float, quality=None) -> list:
    """A warning for frames whose light the fit may have put into their haze (stray light fitted).

    Near the pupil edge a frame's brightness and its uniform haze are hard to tell apart: off-model
    glare trials (``bench_offmodel.py --stray-light 0.001``, known mode, the NA held, 2026-12-04) had
    converged fits with one edge frame at brightness 0.007-0.73 for a true 0.96-0.98, its haze up to
    0.35 off (illumination NA 0.097-0.0997 of a 0.1 pupil), the lens 1.15-1.54 u RMS off. A real LED
    array's brightnesses spread by ~10-20 %, so a frame below :data:`TRADED_BRIGHTNESS` of the median
    with positive haze is named, with its illumination NA, for the engineer to look at (a dim or
    failing LED reads the same). Not blocking: the lens's U held on those trials (docs/uncertainty.md,
    section 5). Blank frames (excluded from the fit) are not judged.
    """
    if not frame_light:
        return []
    b = np.asarray(frame_light["brightness"], float)
    s = np.asarray(frame_light["stray_light"], float)
    blank = set(getattr(quality, "blank_frames", None) or [])
    fitted = np.array([j not in blank for j in range(len(b))], bool)
    if not fitted.any():
        return []
    median = float(np.median(b[fitted]))
    low = [j for j in np.flatnonzero(fitted) if b[j] < TRADED_BRIGHTNESS * median and s[j] > 0]
    if not low:
        return []
    leds, ill = frame_light["leds"], frame_light["illumination_na"]
    named = [f"LED ({leds[j][0]}, {leds[j][1]}) brightness {b[j]:.3g} ({100 * b[j] / median:.0f} % of the median), "
             f"stray light {s[j]:.3g}, illumination NA {ill[j]:.4f}" for j in low]
    more = f" and {len(named) - 3} more" if len(named) > 3 else ""
    return [f"frame light possibly traded for haze (pupil NA {na:.4f}; or a dim LED): " + "; ".join(named[:3]) + more]


MISFIT_SCALE = 10.0
"""A fitted frame whose learned data scale ``s_j`` is at least this many times the median frame's
(and at least this large) is named (:func:`misfit_frame_findings`)."""


def misfit_frame_findings(frame_light: dict | None, data_uncertainty: dict | None) -> list:
    """A warning naming the frames the model explains far worse than the rest.

    The learned data variances down-weight such a frame, so it does not steer the fit, and nothing
    else would name it. A frame of another LED is the usual cause: two frames swapped in the capture
    order (a bright-field frame stored under a dark-field LED read ``s_j`` 145 against a median of
    1.0; 9 x 9 LEDs, 32 px, simulated), a missed trigger, a reflection. :data:`MISFIT_SCALE` (a
    variance 100x the median's) leaves out the mis-modelling a real station shows in whole groups of
    frames (the UConn captures' bright field: ``s_j`` 4-5 against ~1). Not blocking: the frame is
    down-weighted and U carries it.
    """
    if not frame_light or not data_uncertainty or not data_uncertainty.get("frame_scale"):
        return []
    scale = np.array([np.nan if x is None else x for x in data_uncertainty["frame_scale"]], float)
    fitted = np.isfinite(scale)
    if len(scale) != len(frame_light["leds"]) or not fitted.any():
        return []
    median = float(np.median(scale[fitted]))
    bad = [j for j in np.flatnonzero(fitted) if scale[j] >= MISFIT_SCALE * max(median, 1.0)]
    if not bad:
        return []
    bad.sort(key=lambda j: -scale[j])
    leds, ill = frame_light["leds"], frame_light["illumination_na"]
    named = [f"LED ({leds[j][0]}, {leds[j][1]}) s_j {scale[j]:.3g} at illumination NA {ill[j]:.4f}" for j in bad[:3]]
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return [f"{len(bad)} frame(s) fit far worse than the rest (learned data scale >= {MISFIT_SCALE:g}x the median "
            f"{median:.3g}; down-weighted): " + "; ".join(named) + more
            + " (a frame of another LED: capture order or a missed trigger; or light the model lacks)"]


def validity_findings(measurement: Measurement, spec: LensSpec, station_status: dict | None = None):
    """Reasons that make the measurement invalid, and non-blocking warnings.

    Returns
    -------
    blocking : list of str
    warnings : list of str
    """
    v = spec.validity
    blocking, warnings = [], []
    sol = measurement.solver
    if not sol.converged:
        blocking.append(solver_reason(sol.message))
    pinned_blocking, pinned_warnings = bound_findings(sol.at_bounds, measurement.arrays.get("sample_px"),
                                                      v.max_border_bounded_fraction)
    blocking += pinned_blocking
    warnings += pinned_warnings
    chi2 = float(sol.reduced_chi2)
    if not math.isfinite(chi2) or chi2 > v.max_reduced_chi2:
        blocking.append(f"fit residual too large: reduced chi2 {chi2:.3g} > {v.max_reduced_chi2:g}")
    eff = (sol.data_uncertainty or {}).get("effective_data_fraction")
    if eff is not None and eff < v.min_effective_data_fraction:
        blocking.append(f"the model explains the data poorly: the learned data uncertainty leaves {100 * eff:.0f} % of "
                        f"the camera noise model's information (< {100 * v.min_effective_data_fraction:.0f} %)")
    warnings += traded_frame_findings(measurement.arrays.get("frame_light"), measurement.na, measurement.quality)
    warnings += misfit_frame_findings(measurement.arrays.get("frame_light"), sol.data_uncertainty)
    q = measurement.quality
    for code, message, sev in q.flags:
        (blocking if sev == "error" else warnings).append(f"data quality {sev} [{code}]: {message}")
    if q.blank_frames and not any(code == "blank_frames" for code, _, _ in q.flags):  # else said above
        warnings.append(f"blank frames: {list(q.blank_frames)}")
    if q.saturated_fraction > v.max_saturated_fraction:
        blocking.append(f"saturated fraction {q.saturated_fraction:.3g} > {v.max_saturated_fraction:g}")

    k = len(measurement.zernike_waves)
    judged = set(judged_noll(spec, k))
    ident = measurement.identifiability
    bad = []
    for name in ident.unidentifiable:
        j = noll_of(name)
        if j is None:
            warnings.append(f"not identifiable (not judged): {name}")
        elif j in judged:
            bad.append(f"Noll {j} ({zernike_name(*noll_to_nm(j))})")
    if bad:
        blocking.append("judged Zernike terms not identifiable from the data: " + ", ".join(bad))
    cond = float(ident.condition_number)
    if not math.isfinite(cond) or cond > v.max_condition_number:
        blocking.append(f"condition number {cond:.3g} > {v.max_condition_number:g}")

    lim = v.max_station_misalignment
    mis = station_magnitudes({s.name: s.value for s in measurement.station}, keys=MisalignmentLimits.keys())
    for key, value in mis.items():
        mx = getattr(lim, key)
        if value > mx:
            blocking.append(f"station misalignment {key} = {value:.3g} beyond the validity limit {mx:g}")

    if not spec.wavelength_ok(measurement.wavelength_nm):
        where = (f"band {spec.wavelength_band_nm[0]:g}-{spec.wavelength_band_nm[1]:g} nm" if spec.wavelength_band_nm
                 else f"{spec.wavelength_nm:g} nm (+/- {v.wavelength_tolerance_nm:g} nm)")
        blocking.append(f"wavelength {measurement.wavelength_nm:g} nm is outside the specification's {where}")
    if abs(measurement.na - spec.na) > v.na_tolerance:
        blocking.append(f"NA {measurement.na:g} does not match the specification's {spec.na:g}")

    if station_status is not None:
        _calibration_findings(station_status, v.require_calibration, blocking, warnings)
    edge = measurement.arrays.get("uncertainty_method", {}).get("pupil_edge_refit")
    if edge is not None and not edge["converged"]:
        blocking.append("the pupil edge's model-form re-fit (a term of U) did not converge: U is not established")
    if not np.all(np.isfinite(measurement.zernike_waves)) or not np.all(np.isfinite(measurement.zernike_cov)):
        blocking.append("non-finite Zernike coefficients or covariance")
    return blocking, warnings


def _calibration_findings(station_status: dict, spec_requires: bool, blocking: list, warnings: list) -> None:
    """The station's calibration status as a finding: expired, failed, drifted or untrusted (a store
    failing its integrity check) block; ``none`` (never calibrated) blocks when the spec (``validity.require_calibration``) or the station
    (``calibration.required``, carried as ``station_status["required"]``) requires a calibration,
    else it warns."""
    status = str(station_status.get("status", "none"))
    why = station_status.get("reason", "")
    required = bool(spec_requires or station_status.get("required", False))
    if status in ("expired", "failed", "drifted", "untrusted"):
        blocking.append(f"station calibration {status}" + (f": {why}" if why else ""))
    elif status == "none":
        text = "station not calibrated" + (f" ({why})" if why else "")
        if required:
            who = "the specification" if spec_requires else "the station"
            blocking.append(f"{text}; {who} requires a valid calibration")
        else:
            warnings.append(text)
    elif status != "valid":
        blocking.append(f"station calibration status unknown ({status!r})")


# ----------------------------------------------------------------------------- judge


UNDETERMINED = 100.0
"""An expanded uncertainty above this many times the limit (or the value) says the data did not
determine the figure (e.g. a blind fit of 3 x 3 LEDs: U = 5.6e+133 waves): the reason says so
rather than that it straddles the limit."""


def limit_row(name, key, kind, limit, unit, q, scale=1.0) -> LimitResult:
    """One judged limit from the quantity ``q`` (value, u, U; times ``scale``) with its reason."""
    value, u, U = q.value * scale, q.u * scale, q.U * scale
    dec = decide_upper(value, U, limit) if kind == "max" else decide_lower(value, U, limit)
    op = "<=" if kind == "max" else ">="
    if dec == PASS:
        reason = f"conforms: {value:.4g} {op} {limit:g} even with U = {U:.2g}"
    elif dec == FAIL:
        reason = f"does not conform: {value:.4g} violates {op} {limit:g} by more than U = {U:.2g}"
    elif not math.isfinite(value):
        reason = "value not available"
    elif not U <= UNDETERMINED * max(abs(limit), abs(value)):
        reason = f"not determined by the data: {value:.4g} +/- {U:.2g} against the limit {limit:g}"
    else:
        reason = f"{value:.4g} +/- {U:.2g} straddles the limit {limit:g}"
    return LimitResult(name, kind, float(limit), unit, float(value), float(u), float(U), dec, reason, key)


def _limit_rows(spec: LensSpec, figs: dict, k: int, fams: list) -> list:
    """One :class:`LimitResult` per limit of ``spec`` from the derived figures ``figs`` of a
    ``k``-term measurement (families in ``fams`` and terms beyond ``k`` are not measured)."""
    rows = []
    if spec.rms_waves_max is not None:
        rows.append(limit_row("RMS wavefront error (alignment removed)", "limits.rms_waves_max", "max",
                         spec.rms_waves_max, "waves", figs["rms_waves"]))
    if spec.pv_waves_max is not None:
        rows.append(limit_row("PV wavefront error (alignment removed)", "limits.pv_waves_max", "max",
                         spec.pv_waves_max, "waves", figs["pv_waves"]))
    if spec.strehl_min is not None:
        rows.append(limit_row("Strehl ratio (on-axis)", "limits.strehl_min", "min", spec.strehl_min, "",
                         figs["strehl"]))
    for name, lim in spec.family_max.items():
        key = f"limits.family.{name}"
        if name in fams:
            rows.append(limit_row(f"{name} magnitude", key, "max", lim, "waves", figs[f"family:{name}"]))
        else:
            rows.append(LimitResult(f"{name} magnitude", "max", lim, "waves", math.nan, math.nan, math.nan,
                                    INCONCLUSIVE, f"not measured (only Noll 1..{k} fitted)", key))
    for j, lim in spec.term_max.items():
        key = f"limits.term.{j}"
        label = f"|Z{j}| {zernike_name(*noll_to_nm(j))}"
        if j <= k:
            rows.append(limit_row(label, key, "max", lim, "waves", figs[f"term:{j}"]))
        else:
            rows.append(LimitResult(label, "max", lim, "waves", math.nan, math.nan, math.nan, INCONCLUSIVE,
                                    f"not measured (only Noll 1..{k} fitted)", key))
    az = "/".join(f"{a:g}" for a in MTF_AZIMUTHS_DEG)
    for i, m in enumerate(spec.mtf):
        rows.append(limit_row(f"MTF at {m.frequency_cyc_per_mm:g} cycles/mm (worst of {az} deg)",
                         f"limits.mtf[{i}].min", "min", m.min, "", figs[f"mtf@{m.frequency_cyc_per_mm:g}"]))

    return rows


def judge(measurement: Measurement, spec: LensSpec, station_status: dict | None = None,
          n_draws: int = N_DRAWS, seed: int = SEED) -> Verdict:
    """Judge a measurement against a lens specification.

    Parameters
    ----------
    measurement : Measurement
        Noll coefficients (waves) and covariance; alignment terms Noll 1-4 are excluded.
    spec : LensSpec
    station_status : dict, optional
        From calibration audits: ``{"status": "valid"|"expired"|"failed"|"none"|"drifted",
        "reason": str}``; ``"none"`` (no audit store) only warns.
    n_draws, seed : int
        Monte Carlo settings of :mod:`metrology.analysis.propagation`.

    Returns
    -------
    Verdict
    """
    c = np.asarray(measurement.zernike_waves, dtype=float)
    cov = np.asarray(measurement.zernike_cov, dtype=float)
    k = c.size
    fams = [f for f in spec.family_max if family_indices(f, k)]
    figs = derived_figures(
        np.nan_to_num(c), np.nan_to_num(cov), measurement.wavelength_nm, measurement.na,
        pv=spec.pv_waves_max is not None, strehl=spec.strehl_min is not None,
        mtf_frequencies_cyc_per_mm=[m.frequency_cyc_per_mm for m in spec.mtf],
        families=fams, terms=[j for j in spec.term_max if j <= k], n_draws=n_draws, seed=seed,
    )
    rows = _limit_rows(spec, figs, k, fams)
    if not np.all(np.isfinite(c)):  # nothing measured: no limit can be judged, whatever the figures say
        rows = [LimitResult(r.name, r.kind, r.limit, r.unit, math.nan, math.nan, math.nan, INCONCLUSIVE,
                            "not measured (the fit gave no finite Zernike coefficients)", r.key) for r in rows]
    blocking, warnings = validity_findings(measurement, spec, station_status)
    return overall_verdict(rows, blocking, warnings)


def overall_verdict(rows: list, blocking: list, warnings: list) -> Verdict:
    """The overall decision from judged limits (:class:`LimitResult`) and validity findings: any
    blocking finding makes it INCONCLUSIVE (a FAIL on invalid data is not trusted either), else
    FAIL if any limit FAILs, INCONCLUSIVE if any is open, PASS when all conform."""
    failed = [r for r in rows if r.verdict == FAIL]
    open_ = [r for r in rows if r.verdict == INCONCLUSIVE]
    if blocking:
        overall = INCONCLUSIVE
        reasons = ["measurement not valid: " + b for b in blocking]
        if failed:
            reasons.append("limits that would fail on valid data (not trusted): "
                           + ", ".join(r.name for r in failed))
    elif failed:
        overall = FAIL
        reasons = [f"{r.name}: {r.reason}" for r in failed]
    elif open_:
        overall = INCONCLUSIVE
        reasons = [f"{r.name}: {r.reason}" for r in open_]
    else:
        overall = PASS
        reasons = ["all limits conform with the expanded uncertainty taken into account"]
    return Verdict(overall, reasons, rows, warnings, valid=not blocking)
