"""Decision rule and judge(): PASS / FAIL / INCONCLUSIVE, and validity blocks."""

import dataclasses
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from metrology.analysis.spec import load_spec, parse_spec
from metrology.analysis.verdict import decide_lower, decide_upper, judge, solver_reason
from metrology.measurement import (
    DataQuality, Identifiability, Measurement, SolverReport, StationEstimate,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "fixtures" / "specs" / "plan-4x-010.toml"
DRAWS = 400


def _lens_coeffs(name):
    d = tomllib.loads((ROOT / "fixtures" / "lenses" / f"{name}-4x.toml").read_text())
    c = np.zeros(15)
    for k, v in d["zernike_waves"].items():
        c[int(k) - 1] = v
    return c


def _measurement(c, u=0.002, **kw):
    k = len(c)
    cov = np.diag(np.r_[np.zeros(4), np.full(k - 4, u**2)])
    solver = SolverReport(mode="lens", loss_name="amplitude", iterations=100, converged=kw.pop("converged", True),
                          final_loss=1.0, history=[], reduced_chi2=kw.pop("chi2", 1.1),
                          frame_residuals=np.ones(5), at_bounds=kw.pop("at_bounds", []))
    quality = DataQuality(saturated_fraction=kw.pop("saturated", 0.0), blank_frames=kw.pop("blank", []),
                          flags=kw.pop("flags", []))
    ident = Identifiability(names=[], correlation=np.eye(2), condition_number=kw.pop("cond", 100.0),
                            unidentifiable=kw.pop("unidentifiable", []))
    station = [
        StationEstimate("illumination.shift_mm[0]", "LED shift x", "mm", kw.pop("dx", 0.1), 0.01),
        StationEstimate("illumination.shift_mm[1]", "LED shift y", "mm", 0.05, 0.01),
        StationEstimate("illumination.rotation_deg", "LED rotation", "deg", 0.3, 0.01),
        StationEstimate("illumination.distance_error_mm", "LED distance", "mm", 0.2, 0.05),
        StationEstimate("illumination.tilt_deg[0]", "tilt x", "deg", 0.1, 0.01),
        StationEstimate("illumination.tilt_deg[1]", "tilt y", "deg", -0.1, 0.01),
    ]
    return Measurement(wavelength_nm=kw.pop("wavelength_nm", 520.0), na=kw.pop("na", 0.1), tile_center_mm=(0.0, 0.0),
                       zernike_waves=np.asarray(c, float), zernike_cov=cov, station=station, solver=solver,
                       quality=quality, identifiability=ident)


@pytest.fixture(scope="module")
def spec():
    return load_spec(SPEC)


def test_decide_upper_three_outcomes_and_edge():
    assert decide_upper(0.05, 0.01, 0.07) == "PASS"
    assert decide_upper(0.10, 0.01, 0.07) == "FAIL"
    assert decide_upper(0.065, 0.01, 0.07) == "INCONCLUSIVE"
    assert decide_upper(0.075, 0.01, 0.07) == "INCONCLUSIVE"
    assert decide_upper(0.5, 0.25, 0.75) == "PASS"  # exactly at the limit: value + U == limit
    assert decide_upper(1.0, 0.25, 0.75) == "INCONCLUSIVE"  # value - U == limit is not proven FAIL
    assert decide_upper(float("nan"), 0.01, 0.07) == "INCONCLUSIVE"


def test_decide_lower_three_outcomes_and_edge():
    assert decide_lower(0.9, 0.05, 0.8) == "PASS"
    assert decide_lower(0.6, 0.05, 0.8) == "FAIL"
    assert decide_lower(0.82, 0.05, 0.8) == "INCONCLUSIVE"
    assert decide_lower(1.0, 0.25, 0.75) == "PASS"  # exactly at the limit
    assert decide_lower(0.5, 0.25, 0.75) == "INCONCLUSIVE"


def test_good_lens_passes(spec):
    v = judge(_measurement(_lens_coeffs("good")), spec, {"status": "valid", "reason": ""}, n_draws=DRAWS)
    assert v.overall == "PASS", v.reasons
    assert all(r.verdict == "PASS" for r in v.limits)
    names = {r.key for r in v.limits}
    assert {"limits.rms_waves_max", "limits.strehl_min", "limits.pv_waves_max", "limits.family.coma",
            "limits.term.11", "limits.mtf[0].min"} <= names
    d = v.to_dict()
    assert d["overall"] == "PASS" and len(d["limits"]) == len(v.limits) and "ISO 14253-1" in d["decision_rule"]


def test_bad_lens_fails(spec):
    v = judge(_measurement(_lens_coeffs("bad")), spec, n_draws=DRAWS)
    assert v.overall == "FAIL"
    rms = [r for r in v.limits if r.key == "limits.rms_waves_max"][0]
    assert rms.verdict == "FAIL" and rms.value == pytest.approx(0.15, abs=1e-3)


def test_rms_within_U_is_inconclusive(spec):
    c = _lens_coeffs("good") * (0.07 / 0.03997)  # RMS exactly at the limit
    v = judge(_measurement(c, u=0.004), spec, n_draws=DRAWS)
    rms = [r for r in v.limits if r.key == "limits.rms_waves_max"][0]
    assert rms.verdict == "INCONCLUSIVE" and rms.U > 0
    assert v.overall in ("INCONCLUSIVE", "FAIL")
    assert v.overall != "PASS"


def test_marginal_lens_is_inconclusive(spec):
    v = judge(_measurement(_lens_coeffs("marginal")), spec, n_draws=DRAWS)
    assert v.overall == "INCONCLUSIVE"


@pytest.mark.parametrize(
    "kw,text",
    [
        (dict(converged=False), "converge"),
        (dict(flags=[("blank_frame", "frame 12 is blank", "error")], blank=[12]), "blank"),
        (dict(unidentifiable=["pupil.zernike_waves[5]"]), "Noll 6"),
        (dict(chi2=9.0), "chi2"),
        (dict(saturated=0.2), "saturated"),
        (dict(cond=1e9), "condition"),
        (dict(dx=3.0), "shift_mm"),
        (dict(wavelength_nm=530.0), "wavelength"),
        (dict(na=0.12), "NA"),
        (dict(at_bounds=["illumination.shift_mm[0]"]), "search bounds"),
        (dict(at_bounds=["pupil.zernike_waves[7]", "illumination.brightness[2]"]), "pupil.zernike_waves[7]"),
    ],
)
@pytest.mark.parametrize("lens", ["good", "bad"])
def test_invalid_measurement_never_pass_or_fail(spec, kw, text, lens):
    v = judge(_measurement(_lens_coeffs(lens), **kw), spec, n_draws=200)
    assert v.overall == "INCONCLUSIVE" and not v.valid
    assert any(text in r for r in v.reasons), v.reasons


@pytest.mark.parametrize("status,overall", [("valid", "PASS"), ("none", "PASS"), ("expired", "INCONCLUSIVE"),
                                            ("failed", "INCONCLUSIVE"), ("drifted", "INCONCLUSIVE")])
def test_station_status(spec, status, overall):
    v = judge(_measurement(_lens_coeffs("good")), spec, {"status": status, "reason": "audit 2024-11"},
              n_draws=200)
    assert v.overall == overall
    if status == "none":
        assert any("audit" in w for w in v.warnings)
    if overall == "INCONCLUSIVE":
        assert any(status in r and "audit 2024-11" in r for r in v.reasons)


def test_warnings_do_not_block(spec):
    m = _measurement(_lens_coeffs("good"), flags=[("hot_pixels", "3 hot pixels", "warning")],
                     unidentifiable=["illumination.brightness[3]", "pupil.zernike_waves[0]"])
    v = judge(m, spec, n_draws=200)
    assert v.overall == "PASS" and v.warnings


def test_led_brightness_on_a_bound_is_a_warning(spec):
    """Per-LED brightness (a nuisance parameter) on its bound is stated but does not block; the
    list is shortened after four LEDs."""
    m = _measurement(_lens_coeffs("good"), at_bounds=[f"illumination.brightness[{i}]" for i in range(10)])
    v = judge(m, spec, n_draws=200)
    assert v.overall == "PASS" and v.valid
    assert any("10 LED brightness" in w and "and 6 more" in w for w in v.warnings), v.warnings


def test_sample_pixels_on_bounds_are_one_sentence(spec):
    """Blind mode: thousands of sample values on their bounds make the measurement invalid with one
    short sentence (count, fraction, where), never a list of every name."""
    side = 64
    names = [f"sample.field_real[{k}]" for k in range(0, side * side, 2)]
    m = _measurement(_lens_coeffs("good"), at_bounds=names)
    m.arrays["sample_px"] = side
    v = judge(m, spec, n_draws=200)
    assert v.overall == "INCONCLUSIVE" and not v.valid
    (reason,) = [r for r in v.reasons if "sample values" in r]
    assert f"{len(names)} reconstructed sample values ended on their bounds (25 % of the sample's values" in reason
    assert len(reason) < 200 and "field_real[" not in reason


def _border_names(side, count, inside=0):
    """``count`` sample element names on the frame's first row (outer eighth) and ``inside`` at the
    centre of a (side, side) field."""
    centre = (side // 2) * side + side // 2
    return ([f"sample.field_real[{k}]" for k in range(count)]
            + [f"sample.field_imag[{centre + k}]" for k in range(inside)])


def test_a_few_sample_values_pinned_at_the_border_are_a_warning(spec):
    """A handful of sample values on their bounds, all in the outer eighth of the field and at most
    ``validity.max_border_bounded_fraction`` of the sample's values, do not block: the lens is
    judged and the sentence is a warning. One more inside, too many at the border, or a spec that
    sets the fraction to 0 make it INCONCLUSIVE."""
    side = 128  # 2 * 128^2 values: 0.1 % is 32
    m = _measurement(_lens_coeffs("good"), at_bounds=_border_names(side, 5))
    m.arrays["sample_px"] = side
    v = judge(m, spec, n_draws=200)
    assert v.overall == "PASS" and v.valid
    assert any("5 reconstructed sample values" in w and "100 % of them in the outer eighth" in w for w in v.warnings)

    for names in (_border_names(side, 5, inside=1), _border_names(side, 40)):
        m = _measurement(_lens_coeffs("good"), at_bounds=names)
        m.arrays["sample_px"] = side
        v = judge(m, spec, n_draws=200)
        assert v.overall == "INCONCLUSIVE" and any("sample values" in r for r in v.reasons), names[-1]

    m = _measurement(_lens_coeffs("good"), at_bounds=_border_names(side, 5))  # where they lie unknown
    assert judge(m, spec, n_draws=200).overall == "INCONCLUSIVE"

    strict = dataclasses.replace(spec, validity=dataclasses.replace(spec.validity, max_border_bounded_fraction=0.0))
    m = _measurement(_lens_coeffs("good"), at_bounds=_border_names(side, 1))
    m.arrays["sample_px"] = side
    assert judge(m, strict, n_draws=200).overall == "INCONCLUSIVE"


def test_a_fit_that_did_not_converge_gives_one_short_reason(spec):
    """The reason line names the decisive stage of the solver's message in one sentence, not the
    whole multi-stage message (which stays in the report's solver section)."""
    message = ("loss unchanged over 2 rounds; converged: remaining Gauss-Newton step 0.0048 sigma after 0 steps "
               "(data variances re-estimated there: largest change 3.4e-06); not converged: the sample is still "
               "changing after 16 rounds (a further pass leaves a 1 sigma step)")
    m = _measurement(_lens_coeffs("good"), converged=False)
    m.solver.message = message
    v = judge(m, spec, n_draws=200)
    assert v.overall == "INCONCLUSIVE"
    (reason,) = [r for r in v.reasons if "converge" in r]
    assert reason.endswith("solver did not converge: the sample is still changing after 16 rounds "
                           "(a further pass leaves a 1 sigma step)")
    assert "Gauss-Newton" not in reason and ";" not in reason
    assert solver_reason("maximum iterations reached") == "solver did not converge: maximum iterations reached"
    assert solver_reason("") == "solver did not converge"
    assert len(solver_reason("x" * 1000)) < 200


def test_poorly_explained_data_are_inconclusive(spec):
    """When the learned data uncertainty leaves less than the spec's minimum of the noise model's
    information, the model does not describe the station: INCONCLUSIVE, however small the lens."""
    m = _measurement(_lens_coeffs("good"))
    m.solver.data_uncertainty = {"effective_data_fraction": 0.1}
    v = judge(m, spec, n_draws=200)
    assert v.overall == "INCONCLUSIVE"
    assert any("explains the data poorly" in r and "10 %" in r for r in v.reasons), v.reasons
    m.solver.data_uncertainty = {"effective_data_fraction": 0.8}
    assert judge(m, spec, n_draws=200).overall == "PASS"


def test_an_unconverged_uncertainty_refit_is_inconclusive(spec):
    """The pupil edge's model-form term of U comes from a warm re-fit with the other edge
    discretisation (blind mode, the NA fitted): where that re-fit did not converge, the term's size is
    not known (a stalled re-fit moves only part of the way), so U is not established: INCONCLUSIVE,
    in one short reason, however good the lens. Converged, the lens passes."""
    m = _measurement(_lens_coeffs("good"))
    record = {"edges": ["source", "coverage"], "converged": False, "message": "not converged", "wall_time_s": 90.0}
    m.arrays["uncertainty_method"] = {"pupil_edge_refit": record}
    v = judge(m, spec, n_draws=200)
    assert v.overall == "INCONCLUSIVE"
    (reason,) = [r for r in v.reasons if "pupil edge" in r]
    assert "did not converge" in reason and "U is not established" in reason and len(reason) < 160, reason
    record["converged"] = True
    assert judge(m, spec, n_draws=200).overall == "PASS"


def test_unmeasured_term_is_inconclusive(spec):
    data = tomllib.loads(SPEC.read_text())
    data["limits"] = {"term": {"22": 0.05}, "rms_waves_max": 0.07}
    s = parse_spec(data, "inline")
    v = judge(_measurement(_lens_coeffs("good")), s, n_draws=200)
    row = [r for r in v.limits if r.key == "limits.term.22"][0]
    assert row.verdict == "INCONCLUSIVE" and "not measured" in row.reason
    assert v.overall == "INCONCLUSIVE"


# ------------------------------------------------------------------ issue 17: calibration policy, wavelength band
def _spec_with(extra_lens="", extra_validity=""):
    text = SPEC.read_text().replace('description = "4x plan achromat, on-axis acceptance test"',
                                    'description = "4x plan achromat, on-axis acceptance test"\n' + extra_lens)
    text = text.replace("[validity]", "[validity]\n" + extra_validity)
    return parse_spec(tomllib.loads(text), "spec.toml")


@pytest.mark.parametrize("who", ["spec", "station"])
def test_required_calibration_blocks_an_uncalibrated_station(who):
    spec = _spec_with(extra_validity="require_calibration = true" if who == "spec" else "")
    status = {"status": "none", "reason": "no calibration recorded", "required": who == "station"}
    v = judge(_measurement(_lens_coeffs("good")), spec, status, n_draws=200)
    assert v.overall == "INCONCLUSIVE" and not v.valid
    owner = "the specification" if who == "spec" else "the station"
    assert any("station not calibrated" in r and f"{owner} requires a valid calibration" in r for r in v.reasons)
    relaxed = judge(_measurement(_lens_coeffs("good")), _spec_with(), {**status, "required": False}, n_draws=200)
    assert relaxed.overall == "PASS" and any("not calibrated" in w for w in relaxed.warnings)


def test_require_calibration_must_be_a_boolean():
    from metrology.errors import InputError

    with pytest.raises(InputError, match="validity.require_calibration' must be true or false"):
        _spec_with(extra_validity='require_calibration = "yes"')


def test_spec_valid_over_a_wavelength_band():
    band = _spec_with(extra_lens="wavelength_band_nm = [500.0, 540.0]")
    assert band.wavelength_band_nm == (500.0, 540.0)
    v = judge(_measurement(_lens_coeffs("good"), wavelength_nm=530.0), band, n_draws=200)
    assert v.overall == "PASS", v.reasons  # 10 nm from 520 nm, inside the stated band
    v = judge(_measurement(_lens_coeffs("good"), wavelength_nm=545.0), band, n_draws=200)
    assert v.overall == "INCONCLUSIVE" and any("outside the specification's band 500-540 nm" in r for r in v.reasons)


@pytest.mark.parametrize("band, text", [("[530.0, 540.0]", "must contain lens.wavelength_nm = 520"),
                                        ("[540.0, 500.0]", "0 < min < max"), ("[500.0]", "[min, max]")])
def test_bad_wavelength_band_is_an_input_error(band, text):
    from metrology.errors import InputError

    with pytest.raises(InputError, match=re.escape(text)):
        _spec_with(extra_lens=f"wavelength_band_nm = {band}")


def test_a_free_sample_fits_message_says_converged_only_where_the_fit_is():
    """With a free sample the polish's clause is the system's part ("system polished: ..."), so a blind
    fit's message no longer reads "converged: ...; not converged: the sample is still changing"; a
    failed polish keeps its "not converged" clause where the fit did not converge (the reason line can
    name it) and loses it where the settle loop finished the job."""
    from metrology.solver.reconstruct import _system_clause

    polished = "converged: remaining Gauss-Newton step 0.076 sigma after 3 steps (data variances re-estimated there)"
    assert _system_clause(polished, False) == ("system polished: remaining Gauss-Newton step 0.076 sigma after 3 "
                                               "steps (data variances re-estimated there)")
    assert _system_clause("converged at numerical precision (0.6 sigma step left)", True) == \
        "system polished at numerical precision (0.6 sigma step left)"
    failed = "not converged: iteration budget spent with a 3.3 sigma step left"
    assert _system_clause(failed, False) == failed
    # the settle loop polished the system again and the fit converged: no "not converged" clause
    assert _system_clause(failed, True) == ("system polish unfinished (the settle loop polished it again): "
                                            "iteration budget spent with a 3.3 sigma step left")
    message = (f"loss unchanged over 2 rounds; {_system_clause(polished, False)}; "
               "not converged: the sample is still changing")
    assert "; converged" not in message and not message.startswith("converged")
    assert solver_reason(message) == "solver did not converge: the sample is still changing"


def test_a_frame_whose_light_went_into_its_haze_is_named(spec):
    """Stray light fitted: a frame at half the array's median brightness or less, with positive haze,
    is named in a warning with its LED and illumination NA (not blocking); a blank frame is not judged,
    nor a dim frame without haze, nor a measurement without the stray light."""
    from metrology.analysis.verdict import traded_frame_findings

    n = 9
    light = {"leds": [[r, c] for r in range(3) for c in range(3)], "brightness": [1.0, 0.98, 1.03, 0.95, 1.01, 1.0,
             0.007, 0.4, 0.99], "stray_light": [0.001] * 6 + [0.35, -0.001, 0.001],
             "illumination_na": [0.05 + 0.006 * j for j in range(n)]}
    (warning,) = traded_frame_findings(light, 0.1, DataQuality(blank_frames=[]))
    assert "LED (2, 0) brightness 0.007 (1 % of the median), stray light 0.35, illumination NA 0.0860" in warning
    assert "(2, 1)" not in warning  # dim, but no haze took its light
    assert traded_frame_findings(light, 0.1, DataQuality(blank_frames=[6])) == []
    assert traded_frame_findings(None, 0.1) == []
    m = _measurement(_lens_coeffs("good"))
    m.arrays["frame_light"] = light
    v = judge(m, spec, n_draws=200)
    assert v.overall == "PASS" and any(w.startswith("frame light possibly traded") for w in v.warnings), v.warnings


def test_a_frame_the_model_explains_far_worse_than_the_rest_is_named(spec):
    """A fitted frame whose learned scale is >= 10x the median's (a swapped or foreign frame) is named,
    the worst first, with its LED and illumination NA; not blocking. Frames not fitted (NaN/None) and
    a bright field scaled 4-5x as a group (a real station's mis-modelling) are not named."""
    from metrology.analysis.verdict import MISFIT_SCALE, misfit_frame_findings

    light = {"leds": [[r, c] for r in range(3) for c in range(3)], "brightness": [1.0] * 9,
             "stray_light": [0.0] * 9, "illumination_na": [0.05 + 0.006 * j for j in range(9)]}
    scale = [1.0, 1.1, 0.99, 1.02, 146.0, None, 1.0, 12.0, 1.05]
    (warning,) = misfit_frame_findings(light, {"frame_scale": scale})
    assert warning.startswith("2 frame(s) fit far worse than the rest")
    assert warning.index("LED (1, 1) s_j 146 at illumination NA 0.0740") < warning.index("LED (2, 1) s_j 12")
    assert misfit_frame_findings(light, {"frame_scale": [1.0] * 4 + [4.5] * 5}) == []
    assert misfit_frame_findings(light, {"frame_scale": [1.0] * 8 + [0.99 * MISFIT_SCALE]}) == []
    assert misfit_frame_findings(light, {}) == [] and misfit_frame_findings(None, {"frame_scale": scale}) == []
    m = _measurement(_lens_coeffs("good"))
    m.arrays["frame_light"] = light
    m.solver.data_uncertainty = {"frame_scale": scale}
    v = judge(m, spec, n_draws=200)
    assert v.overall == "PASS" and any("fit far worse" in w for w in v.warnings), v.warnings
