"""Lens specification TOML: the fixtures load; unknown keys and impossible limits are rejected."""

from pathlib import Path

import pytest

from metrology.analysis.spec import load_spec
from metrology.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
format_version = 1
[lens]
model = "ACME 4x/0.10"
wavelength_nm = 520
na = 0.10
[limits]
rms_waves_max = 0.07
strehl_min = 0.80
pv_waves_max = 0.35
[limits.family]
astigmatism = 0.05
coma = 0.05
[limits.term]
"11" = 0.04
[[limits.mtf]]
frequency_cyc_per_mm = 100
min = 0.5
[validity]
max_reduced_chi2 = 4.0
max_saturated_fraction = 0.05
max_station_misalignment = { shift_mm = 1.5, rotation_deg = 4.0, distance_error_mm = 4.0, tilt_deg = 2.0 }
max_condition_number = 1e6
"""


def _write(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_spec(tmp_path):
    s = load_spec(_write(tmp_path, GOOD))
    assert s.model == "ACME 4x/0.10" and s.wavelength_nm == 520 and s.na == 0.1
    assert s.rms_waves_max == 0.07 and s.strehl_min == 0.8 and s.pv_waves_max == 0.35
    assert s.family_max == {"astigmatism": 0.05, "coma": 0.05}
    assert s.term_max == {11: 0.04}
    assert s.mtf[0].frequency_cyc_per_mm == 100 and s.mtf[0].min == 0.5
    assert s.validity.max_station_misalignment.tilt_deg == 2.0
    assert s.validity.max_condition_number == 1e6
    assert s.cutoff_cyc_per_mm == pytest.approx(384.615, rel=1e-4)
    assert s.to_dict()["term_max"] == {"11": 0.04}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "fixtures" / "specs").glob("*.toml")))
def test_fixture_specs_load(name):
    s = load_spec(ROOT / "fixtures" / "specs" / name)
    assert s.rms_waves_max is not None


@pytest.mark.parametrize(
    "old,new,key",
    [
        ("rms_waves_max = 0.07", "rms_waves_max = 0.07\nrms_max = 1", "limits.rms_max"),
        ("[validity]", "[validity]\nmax_chi2 = 3", "validity.max_chi2"),
        ("model =", "colour = 'red'\nmodel =", "lens.colour"),
        ("coma = 0.05", "coma = 0.05\nastigmatizm = 0.1", "limits.family.astigmatizm"),
        ("min = 0.5", "min = 0.5\nazimuth = 3", "limits.mtf[0].azimuth"),
        ("tilt_deg = 2.0 }", "tilt_deg = 2.0, yaw = 1 }", "validity.max_station_misalignment.yaw"),
        ('"11" = 0.04', '"eleven" = 0.04', "limits.term.eleven"),
        ("format_version = 1", "format_version = 1\nextra = 2", "extra"),
    ],
)
def test_unknown_key_rejected(tmp_path, old, new, key):
    p = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(InputError) as e:
        load_spec(p)
    assert key in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize(
    "old,new,key",
    [
        ("rms_waves_max = 0.07", "rms_waves_max = -0.07", "limits.rms_waves_max"),
        ("strehl_min = 0.80", "strehl_min = 1.2", "limits.strehl_min"),
        ("strehl_min = 0.80", "strehl_min = 0", "limits.strehl_min"),
        ("min = 0.5", "min = 1.5", "limits.mtf[0].min"),
        ("frequency_cyc_per_mm = 100", "frequency_cyc_per_mm = 0", "limits.mtf[0].frequency_cyc_per_mm"),
        ("frequency_cyc_per_mm = 100", "frequency_cyc_per_mm = 400", "limits.mtf[0].frequency_cyc_per_mm"),
        ("wavelength_nm = 520", "wavelength_nm = -520", "lens.wavelength_nm"),
        ("na = 0.10", "na = 1.2", "lens.na"),
        ("na = 0.10", "na = 0", "lens.na"),
        ('"11" = 0.04', '"4" = 0.04', "limits.term.4"),
        ("coma = 0.05", "coma = -1", "limits.family.coma"),
        ("max_saturated_fraction = 0.05", "max_saturated_fraction = 2", "validity.max_saturated_fraction"),
        ("max_saturated_fraction = 0.05", "max_saturated_fraction = 0.05\nmax_border_bounded_fraction = -0.1",
         "validity.max_border_bounded_fraction"),
        ("shift_mm = 1.5", "shift_mm = -1.5", "validity.max_station_misalignment.shift_mm"),
        ("rms_waves_max = 0.07", "rms_waves_max = 'small'", "limits.rms_waves_max"),
    ],
)
def test_impossible_limit_rejected(tmp_path, old, new, key):
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(InputError) as e:
        load_spec(_write(tmp_path, text))
    assert key in str(e.value)


def test_structural_errors(tmp_path):
    with pytest.raises(InputError, match="missing.toml"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="not valid TOML"):
        load_spec(_write(tmp_path, "format_version = = 1"))
    with pytest.raises(InputError, match="format_version"):
        load_spec(_write(tmp_path, GOOD.replace("format_version = 1", "format_version = 2")))
    with pytest.raises(InputError, match="lens.wavelength_nm"):
        load_spec(_write(tmp_path, GOOD.replace("wavelength_nm = 520\n", "")))
    no_limits = GOOD.split("[limits]")[0]
    with pytest.raises(InputError, match="no limit"):
        load_spec(_write(tmp_path, no_limits))
