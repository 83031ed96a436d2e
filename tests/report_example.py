"""A realistic synthetic result document and report arrays.

A test fixture (not part of the package), and the reference of what the inspection pipeline fills in. Everything is
deterministic (fixed seeds) and consistent: the figures of merit follow from the Zernike terms,
each limit's verdict follows the decision rule of :mod:`metrology.conventions`, and the pupil map
and PSF in :func:`example_arrays` are computed from the document's coefficients.
"""

from __future__ import annotations

import math

import numpy as np

from metrology import __version__
from metrology.orderings import noll_norm, noll_to_nm, zernike_family, zernike_name
from metrology.conventions import ALIGNMENT_NOLL, CONVENTIONS_TEXT, COVERAGE_FACTOR, DECISION_RULE
from metrology.report.plots import ReportArrays

_K = COVERAGE_FACTOR

# lens Zernike coefficients (waves) of the example lens, Noll 5.. (alignment terms are 0)
_LENS_WAVES = {5: 0.018, 6: -0.011, 7: 0.009, 8: -0.006, 9: 0.004, 10: -0.003, 11: -0.016, 12: 0.003,
               13: -0.002, 14: 0.0015, 15: -0.001, 16: 0.002, 17: -0.0012, 18: 0.0008, 19: 0.0006,
               20: -0.0005, 21: 0.0004, 22: -0.0025}
_SCALE = {"PASS": 1.0, "INCONCLUSIVE": 2.4, "FAIL": 5.0}
_N_TERMS = 22


def _q(value: float, u: float) -> dict:
    return {"value": float(value), "u": float(u), "U": float(_K * u)}


def _decide(kind: str, limit: float, value: float, U: float) -> tuple[str, str]:
    if kind == "max":
        if value + U <= limit:
            return "PASS", "value + U <= limit"
        if value - U > limit:
            return "FAIL", "value - U > limit"
        return "INCONCLUSIVE", "limit lies within value ± U"
    if value - U >= limit:
        return "PASS", "value - U >= limit"
    if value + U < limit:
        return "FAIL", "value + U < limit"
    return "INCONCLUSIVE", "limit lies within value ± U"


def _radial(n: int, m: int, rho):
    m = abs(m)
    out = np.zeros_like(rho)
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * math.factorial(n - s) / (
            math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s))
        out += c * rho ** (n - 2 * s)
    return out


def zernike_map(terms, size: int = 128) -> np.ndarray:
    """Evaluate Noll-normalised Zernike terms on a (size, size) grid over -1..1, NaN outside the disk.

    Parameters
    ----------
    terms : list of dict
        Entries with ``n``, ``m``, ``value_waves``.
    size : int
        Grid size ``P``; columns are +x and rows +y.

    Returns
    -------
    ndarray, shape (P, P)
        Wavefront in waves.
    """
    c = (np.arange(size) - (size - 1) / 2) / (size / 2)
    x, y = np.meshgrid(c, c)  # x along columns, y along rows
    rho, theta = np.hypot(x, y), np.arctan2(y, x)
    w = np.zeros_like(rho)
    for t in terms:
        n, m = t["n"], t["m"]
        norm = noll_norm(n, m)
        ang = 1.0 if m == 0 else (np.cos(m * theta) if m > 0 else np.sin(-m * theta))
        w += t["value_waves"] * norm * _radial(n, m, rho) * ang
    return np.where(rho <= 1.0, w, np.nan)


def _zernike_terms(scale: float) -> list:
    rng = np.random.default_rng(7)
    out = []
    for j in range(1, _N_TERMS + 1):
        n, m = noll_to_nm(j)
        alignment = j in ALIGNMENT_NOLL
        value = 0.0 if alignment else scale * _LENS_WAVES.get(j, 0.0)
        u = 0.0 if alignment else round(float(0.0012 + 0.0004 * rng.random() + 0.03 * abs(value)), 6)
        out.append({"noll": j, "n": n, "m": m, "name": zernike_name(n, m), "family": zernike_family(n, m),
                    "value_waves": round(value, 6), "u_waves": u, "U_waves": _K * u,
                    "alignment": alignment})
    return out


def example_document(verdict: str = "PASS", invalid: bool = False) -> dict:
    """A complete, schema-valid result document whose overall verdict is ``verdict``.

    Parameters
    ----------
    verdict : {"PASS", "FAIL", "INCONCLUSIVE"}
        The overall verdict wanted; the lens aberrations are scaled so that the decision rule gives it.
    invalid : bool
        Make the measurement not valid (solver not converged): the overall verdict is then
        INCONCLUSIVE whatever the limits say, and ``verdict.valid`` is false.

    Returns
    -------
    dict
        JSON-able result document (schema 1.0).
    """
    if verdict not in _SCALE:
        raise ValueError(f"verdict must be one of {sorted(_SCALE)}, got {verdict!r}")
    wavelength_nm, na = 530.0, 0.25
    terms = _zernike_terms(_SCALE[verdict])
    lens = [t for t in terms if not t["alignment"]]
    rms = math.sqrt(sum(t["value_waves"] ** 2 for t in lens))
    u_rms = math.sqrt(sum((t["value_waves"] * t["u_waves"]) ** 2 for t in lens)) / max(rms, 1e-12)
    u_rms = max(u_rms, 0.0015)
    strehl = math.exp(-((2 * math.pi * rms) ** 2))
    u_strehl = strehl * 2 * (2 * math.pi) ** 2 * rms * u_rms
    wmap = zernike_map(lens, 128)
    pv = float(np.nanmax(wmap) - np.nanmin(wmap))
    cutoff = 2 * na / (wavelength_nm * 1e-6)  # cycles/mm
    mtf_points = []
    for f in (200.0, 100.0, 400.0, 600.0):  # the spec's MTF frequency first (limits.mtf[0])
        nu = f / cutoff
        diff = 2 / math.pi * (math.acos(nu) - nu * math.sqrt(1 - nu * nu))
        value = diff * (1 - 0.6 * (1 - strehl))
        mtf_points.append({"frequency_cyc_per_mm": f, "value": round(value, 4), "u": 0.01, "U": 0.02})
    astig = math.hypot(terms[4]["value_waves"], terms[5]["value_waves"])
    coma = math.hypot(terms[6]["value_waves"], terms[7]["value_waves"])
    measured = {
        "RMS wavefront error": ("max", 1 / 14, "waves", rms, u_rms),
        "Strehl ratio": ("min", 0.8, "", strehl, u_strehl),
        "Astigmatism (Z5, Z6) magnitude": ("max", 0.05, "waves", astig, 0.002),
        "Coma (Z7, Z8) magnitude": ("max", 0.04, "waves", coma, 0.0018),
        "Primary spherical Z11": ("max", 0.05, "waves", abs(terms[10]["value_waves"]), terms[10]["u_waves"]),
        "MTF at 200 cycles/mm": ("min", 0.45, "", mtf_points[0]["value"], 0.01),
    }
    keys = ["limits.rms_waves_max", "limits.strehl_min", "limits.family.astigmatism", "limits.family.coma",
            "limits.term.11", "limits.mtf[0].min"]
    limits = []
    for key, (name, (kind, limit, unit, value, u)) in zip(keys, measured.items()):
        limit, value, u = round(limit, 6), round(value, 6), round(u, 6)
        v, why = _decide(kind, limit, value, _K * u)
        limits.append({"name": name, "kind": kind, "limit": limit, "unit": unit, "value": value, "u": u,
                       "U": _K * u, "verdict": v, "reason": why, "key": key})
    verdicts = {lim["verdict"] for lim in limits}
    overall = "FAIL" if "FAIL" in verdicts else "INCONCLUSIVE" if "INCONCLUSIVE" in verdicts else "PASS"
    reasons = [f"{lim['name']}: {lim['verdict']} ({lim['value']:.4g} ± {lim['U']:.2g} {lim['unit']} vs "
               f"{lim['kind']} {lim['limit']:.4g}; {lim['reason']})".replace("  ", " ")
               for lim in limits if lim["verdict"] != "PASS"]
    if invalid:
        overall = "INCONCLUSIVE"
        reasons = ["measurement not valid: solver did not converge: maximum iterations reached"]
    station = [
        ("illumination.shift_mm[0]", "LED shift x", "mm", 0.142, 0.004),
        ("illumination.shift_mm[1]", "LED shift y", "mm", -0.087, 0.004),
        ("illumination.rotation_deg", "LED rotation", "deg", 0.31, 0.02),
        ("illumination.distance_error_mm", "LED distance error", "mm", 0.21, 0.03),
        ("illumination.tilt_deg[0]", "LED tilt about x", "deg", 0.05, 0.04),
        ("illumination.tilt_deg[1]", "LED tilt about y", "deg", -0.03, 0.04),
        ("sample.defocus_um", "Sample defocus", "um", 1.84, 0.05),
        ("sample.position_um[0]", "Sample position x", "um", 0.62, 0.03),
        ("sample.position_um[1]", "Sample position y", "um", -0.41, 0.03),
    ]
    history = [float(0.02 + 3.0 * math.exp(-i / 25.0)) for i in range(240)]
    return {
        "schema_version": "1.0",
        "software": {"name": "lens-metrology", "version": __version__},
        "created_utc": "2026-11-26T12:00:00Z",
        "lens": {"model": "OBJ-10x/0.25 plan achromat", "serial": "SN-2026-00417"},
        "operator": "A. Example",
        "station": {"id": "QA-STATION-03", "calibration": {
            "status": "valid", "reason": "calibrated 2026-11-20, within 30 days and within drift limits",
            "calibrated_utc": "2026-11-20T08:30:00Z", "valid_until": "2026-12-20T08:30:00Z"}},
        "inputs": [
            {"role": "capture", "path": "captures/SN-2026-00417.tif", "sha256": "3f" * 32},
            {"role": "station", "path": "stations/QA-STATION-03.json", "sha256": "a1b2c3d4" * 8},
            {"role": "spec", "path": "specs/OBJ-10x-0.25.toml", "sha256": "0123456789abcdef" * 4},
            {"role": "reference", "path": "reference/usaf-phase-target.npz", "sha256": "e7" * 32},
        ],
        "conventions": {
            "text": CONVENTIONS_TEXT, "zernike_ordering": "Noll",
            "zernike_normalisation": "Noll: unit RMS over the unit disk; cos for even j, sin for odd j",
            "axes": "x along image columns, y along image rows, +y down on every map, z towards the objective",
            "units": "mm station, um sample plane, nm wavelength/OPD, waves Zernike (OPD / the stated wavelength)",
            "decision_rule": DECISION_RULE, "coverage_factor": 2},
        "wavelength_nm": wavelength_nm,
        "na": na,
        "tile_center_mm": [0.0, 0.0],
        "zernike": terms,
        "figures_of_merit": {
            "rms_waves": _q(rms, u_rms), "rms_nm": _q(rms * wavelength_nm, u_rms * wavelength_nm),
            "pv_waves": _q(pv, 3 * u_rms), "pvr_waves": _q(0.9 * pv, 3 * u_rms),
            "strehl": _q(strehl, u_strehl), "strehl_psf": _q(strehl * 0.995, u_strehl),
            "fit_residual_waves": 0.0021, "mtf": mtf_points},
        "station_misalignment": [{"name": n, "label": lab, "unit": unit, "value": v, "u": u, "U": _K * u}
                                 for n, lab, unit, v, u in station],
        "identifiability": {
            "condition_number": 412.5, "max_abs_correlation": 0.83,
            "strong_pairs": [{"a": "illumination.distance_error_mm", "b": "pupil.na", "correlation": 0.83},
                             {"a": "sample.position_um[0]", "b": "illumination.shift_mm[0]",
                              "correlation": -0.71}],
            "unidentifiable": []},
        "data_quality": {
            "saturated_fraction": 0.0004, "hot_pixels": 3, "blank_frames": [],
            "flags": [{"code": "HOT_PIXELS", "message": "3 hot pixels masked", "severity": "warning"}]},
        "solver": {"mode": "prior", "loss": "poisson", "iterations": len(history), "converged": True,
                   "final_loss": history[-1], "reduced_chi2": 1.07, "history": history,
                   "message": "relative loss change below 1e-6"},
        "verdict": {"overall": overall, "reasons": reasons, "limits": limits, "valid": not invalid},
        "timings_s": {"load": 0.8, "reconstruct": 41.2, "analyse": 0.6, "report": 1.9},
        "uncertainty_budget": _example_budget(),
        "report": {"id": "QA-STATION-03-20261126T120000Z-1a2b3c4d",
                   "spec": {"file": "OBJ-10x-0.25.toml", "revision": "C", "sha256": "0123456789abcdef" * 4,
                            "wavelength_band_nm": [520.0, 540.0]}},
        "audit_record": {"store": "/var/lib/metrology/audit.sqlite", "seq": 4711,
                         "previous_chain_sha256": "c0ffee00" * 8},
        "zernike_covariance": {"noll": [t["noll"] for t in terms], "unit": "waves^2",
                               "matrix": [[t["u_waves"] ** 2 if t is r else 0.0 for t in terms] for r in terms]},
    }


def _example_budget() -> dict:
    """A budget block as :func:`metrology.analysis.budget.budget_document` writes it."""
    def block(u_noise, u_fit, effects, unit="waves"):
        rows = [{"source": "noise", "label": "Noise and learned data uncertainty (Type A)", "u_x": u_noise,
                 "unit": unit, "sensitivity": 1.0, "contribution": u_noise},
                {"source": "model_mismatch", "label": "Model mismatch (Type B: sandwich, jackknifes)", "u_x": u_fit,
                 "unit": unit, "sensitivity": 1.0, "contribution": u_fit}]
        for name, label, u, unit_x, c in effects:
            rows.append({"source": name, "label": label, "u_x": u, "unit": unit_x, "sensitivity": c / u,
                         "contribution": abs(c)})
        total = sum(r["contribution"] ** 2 for r in rows) ** 0.5
        for r in rows:
            r["share"] = (r["contribution"] / total) ** 2
        return {"u": total, "unit": unit, "rows": rows, "largest": max(rows, key=lambda r: r["contribution"])["source"]}

    effects = [("wavelength_nm", "Wavelength (LED centroid)", 2.0, "nm", 0.00021),
               ("led_size_mm", "LED emitter size", 0.05, "mm", 0.00004),
               ("pupil_radius", "Pupil radius in frequency pixels (NA, magnification, camera pixel; by re-fits)",
                1.42, "%", 0.00017),
               # one re-fit not converged: the held terms it stands for are kept beside it
               ("na", "Lens NA", 0.0014, "", 0.00012),
               ("magnification", "Lens magnification", 0.04, "", 0.00012)]
    return {"method": "GUM first-order law (JCGM 100)",
            "constants": [{"name": n, "label": lab, "u": u, "unit": un} for n, lab, u, un, _ in effects],
            "rms_waves": block(0.00009, 0.00012, effects),
            "zernike": [{"noll": 5, **block(0.0001, 0.00008, effects)}],
            "station": [{"name": "sample.defocus_um", **block(0.02, 0.05, [], "um")}],
            # one re-fit not converged: the page says the held terms are kept
            "pupil_radius_refits": {"u_relative": 0.0142, "converged": [True, False], "wall_time_s": 212.0,
                                    "messages": ["converged: ...; sample settled (round 4)",
                                                 "not converged: the sample is still changing after 16 rounds"]}}


def example_arrays(doc: dict | None = None) -> ReportArrays:
    """Report arrays consistent with ``doc`` (default: ``example_document()``).

    Parameters
    ----------
    doc : dict, optional
        Result document whose Zernike terms, wavelength and NA shape the pupil, PSF and MTF.

    Returns
    -------
    ReportArrays
        Pupil map (128^2), PSF (64^2), MTF (128 samples), sample (128^2), frames (64^2),
        loss history and a 15 x 15 LED board.
    """
    doc = example_document() if doc is None else doc
    lam_um, na = doc["wavelength_nm"] * 1e-3, doc["na"]
    lens = [t for t in doc["zernike"] if not t["alignment"]]
    p = 128
    phase = zernike_map(lens, p)
    inside = np.isfinite(phase)
    # PSF: zero-padded FFT of the pupil; pupil pixel df = (NA/lambda) / (p/2) cycles/um
    q = 4 * p
    df = (na / lam_um) / (p / 2)
    field = np.zeros((q, q), complex)
    field[:p, :p] = np.where(inside, np.exp(2j * np.pi * np.nan_to_num(phase)), 0)
    ideal = np.zeros((q, q), complex)
    ideal[:p, :p] = inside
    psf = np.fft.fftshift(np.abs(np.fft.fft2(field)) ** 2)
    psf0 = np.fft.fftshift(np.abs(np.fft.fft2(ideal)) ** 2)
    peak = psf0.max()
    c, h = q // 2, 32
    psf_crop, psf0_crop = psf[c - h:c + h, c - h:c + h] / peak, psf0[c - h:c + h, c - h:c + h] / peak
    otf = np.abs(np.fft.fft2(np.fft.ifftshift(psf)))
    otf0 = np.abs(np.fft.fft2(np.fft.ifftshift(psf0)))
    nf = p  # OTF reaches zero at 2 NA / lambda = p * df
    freq = np.arange(nf) * df * 1e3
    mtf, mtf0 = otf[0, :nf] / otf[0, 0], otf0[0, :nf] / otf0[0, 0]

    rng = np.random.default_rng(3)
    n = 128
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    ang = np.arctan2(yy, xx)
    amp = 0.35 + 0.6 * (np.cos(12 * ang) > 0) * (np.hypot(xx, yy) < 0.45 * n)
    ph = (1.2 * np.exp(-((xx - 18) ** 2 + (yy + 12) ** 2) / 300.0)
          - 0.8 * np.exp(-((xx + 25) ** 2 + (yy - 20) ** 2) / 200.0))

    def frame(level, dark):
        img = amp[::2, ::2] ** 2 * level
        if dark:
            img = np.abs(np.gradient(img)[1]) * 3 + 0.02 * level
        return img

    frames = {}
    for key, led, level, dark in (("bright", (7, 7), 3000.0, False), ("dark", (2, 11), 300.0, True)):
        model = frame(level, dark)
        meas = rng.poisson(np.clip(model, 0, None)).astype(float)
        frames[key] = {"led": led, "measured": meas, "modelled": model}

    g = np.arange(15) - 7
    gx, gy = np.meshgrid(g * 4.0, g * 4.0)
    xy = np.stack([gx.ravel() + 0.14, gy.ravel() - 0.09], axis=1)
    r = np.hypot(xy[:, 0], xy[:, 1])
    brightness = 1 + 0.05 * rng.standard_normal(xy.shape[0]) - 0.1 * (r / r.max()) ** 2
    residual = 1.0 + 0.3 * (r / r.max()) ** 2 + 0.05 * rng.random(xy.shape[0])
    return ReportArrays(
        pupil_phase_waves=phase, psf=psf_crop, psf_pixel_um=1 / (q * df), psf_diffraction=psf0_crop,
        mtf_freq_cyc_per_mm=freq, mtf=mtf, mtf_diffraction=mtf0,
        sample_amplitude=amp, sample_phase=ph, sample_pixel_um=0.35, frames=frames,
        loss_history=np.array(doc["solver"]["history"], dtype=float),
        led_xy_mm=xy, led_brightness=brightness, led_residual=residual)
