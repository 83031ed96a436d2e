"""`metrology inspect`: exit codes, bad input, verdicts on simulated captures, the written files (issues 4, 5)."""

import csv
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from metrology.audit.store import AuditStore
from metrology.cli import main
from metrology.io.capture import read_capture
from metrology.report.document import validate_document
from metrology.solver.device import compute_device, device_label
from tests.sim_cases import FIXTURES, bench_station, centre_leds, lens_coefficients, simulate_to

SPEC = FIXTURES / "specs" / "plan-4x-010.toml"


@pytest.fixture(scope="module")
def small():
    """32-px frames, 9x9 LEDs of the 4x bench: fast enough to inspect in a test."""
    return bench_station(32), centre_leds(9)


@pytest.fixture(scope="module")
def good_capture(small, tmp_path_factory):
    station, leds = small
    return simulate_to(tmp_path_factory.mktemp("good"), station, lens_coefficients(0.03, 1), seed=1, leds=leds)


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(code, err, out_dir, needle):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("metrology: error:"), err
    assert needle in lines[0], (needle, lines[0])
    assert not out_dir.exists(), "bad input creates nothing, not even the output folder (issue 17)"


def test_missing_capture(tmp_path, good_capture, capsys):
    _, station, _ = good_capture
    out = tmp_path / "out"
    code, _, err = run_cli(["inspect", tmp_path / "nope.tif", "--station", station, "--spec", SPEC, "--out", out], capsys)
    assert_bad_input(code, err, out, "nope.tif")


def test_truncated_tiff(tmp_path, good_capture, capsys):
    capture, station, _ = good_capture
    bad = tmp_path / "truncated.tif"
    data = capture.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, _, err = run_cli(["inspect", bad, "--station", station, "--spec", SPEC, "--out", out], capsys)
    assert_bad_input(code, err, out, "truncated.tif")


def _rewrite(path, frames, metadata):
    tifffile.imwrite(path, frames, description=json.dumps(metadata), metadata=None)


def test_frame_count_not_matching_led_list(tmp_path, good_capture, capsys):
    capture, station, _ = good_capture
    cap = read_capture(capture)
    meta = cap.metadata()
    meta["frames"] = meta["frames"][:-1]
    bad = tmp_path / "short-list.tif"
    _rewrite(bad, cap.frames, meta)
    out = tmp_path / "out"
    code, _, err = run_cli(["inspect", bad, "--station", station, "--spec", SPEC, "--out", out], capsys)
    assert_bad_input(code, err, out, "short-list.tif")


@pytest.mark.parametrize("kind", ["nan", "zero"])
def test_nan_or_all_zero_frames(tmp_path, good_capture, capsys, kind):
    capture, station, _ = good_capture
    cap = read_capture(capture)
    frames = cap.frames.astype(np.float32)
    if kind == "nan":
        frames[3, 5, 5] = np.nan
    else:
        frames[:] = 0
    bad = tmp_path / f"{kind}.tif"
    _rewrite(bad, frames, cap.metadata())
    out = tmp_path / "out"
    code, _, err = run_cli(["inspect", bad, "--station", station, "--spec", SPEC, "--out", out], capsys)
    assert_bad_input(code, err, out, f"{kind}.tif")


def test_spec_with_unknown_key(tmp_path, good_capture, capsys):
    capture, station, _ = good_capture
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.read_text() + "\n[extras]\ncolour = 'blue'\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["inspect", capture, "--station", station, "--spec", spec, "--out", out], capsys)
    assert_bad_input(code, err, out, "extras")


def test_unwritable_output_folder(tmp_path, good_capture, capsys):
    capture, station, _ = good_capture
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "reports"
    code, _, err = run_cli(["inspect", capture, "--station", station, "--spec", SPEC, "--out", out], capsys)
    assert code == 2 and "a-file" in err and len(err.strip().splitlines()) == 1


def test_usage_error_exits_2(capsys):
    assert main(["inspect"]) == 2
    assert main(["no-such-command"]) == 2


def test_help_lists_exit_codes():
    out = subprocess.run([sys.executable, "-m", "metrology", "inspect", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for line in ("0  PASS", "1  FAIL", "2  bad input", "3  INCONCLUSIVE"):
        assert line in out.stdout


# ------------------------------------------------------------------ verdicts on simulated captures
def _inspect(capture, station, spec, out, capsys, *extra):
    code, stdout, err = run_cli(
        ["inspect", capture, "--station", station, "--spec", spec, "--out", out, "--operator", "T. Est", *extra], capsys
    )
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout  # one-line verdict
    docs = sorted(out.glob("*.json"))
    assert len(docs) == 1 and len(list(out.glob("*.pdf"))) == 1
    assert not list(out.glob("*.tmp*")) and not [p for p in out.iterdir() if p.name.startswith(".")]
    doc = json.loads(docs[0].read_text())
    validate_document(doc)
    return code, lines[0], doc


def test_good_lens_passes_and_report_is_complete(tmp_path, good_capture, capsys):
    capture, station, _ = good_capture
    out = tmp_path / "out"
    code, line, doc = _inspect(capture, station, SPEC, out, capsys)
    assert code == 0 and line.startswith("PASS"), line
    assert doc["verdict"]["overall"] == "PASS"
    assert doc["solver"]["converged"]
    assert doc["lens"]["serial"] in line
    # the default --device auto: the CPU here unless torch sees a GPU; recorded in the result
    assert doc["software"]["compute_device"] == device_label(compute_device("auto"))
    pdf = next(out.glob("*.pdf"))
    assert pdf.name.startswith(f"{doc['station']['id']}_{doc['lens']['serial']}_")  # station id in the name
    # issue 17: what other tools read from the JSON
    assert doc["na"] == 0.1 and '"na": 0.1,' in next(out.glob("*.json")).read_text()  # not 0.10000000149011612
    assert all(lim["key"].startswith("limits.") for lim in doc["verdict"]["limits"]), doc["verdict"]["limits"]
    cov = np.array(doc["zernike_covariance"]["matrix"])
    assert doc["zernike_covariance"]["noll"] == [t["noll"] for t in doc["zernike"]]
    assert np.allclose(cov, cov.T) and np.allclose(np.sqrt(np.diag(cov))[4:], [t["u_waves"] for t in doc["zernike"]][4:])
    # the record committing the result: the seq the files state, onto the chain hash they state, and
    # the files' SHA-256 in it (issue 15's unit)
    rec = doc["audit_record"]
    with AuditStore(rec["store"], create=False) as store:
        (committed,) = [r for r in store.records(kind="inspection") if r.seq == rec["seq"]]
    assert committed.prev_sha256 == rec["previous_chain_sha256"]
    assert committed.content["result"]["sha256"]["json"] == hashlib.sha256(
        next(out.glob("*.json")).read_bytes()).hexdigest()
    assert doc["report"]["id"].startswith(doc["station"]["id"])
    # the exports carry the GUM budget's U: each term's u is its budget's combined u (issue 14)
    code, csv_text, _ = run_cli(["zernike-export", next(out.glob("*.json")), "--format", "csv"], capsys)
    rows = {int(r["noll"]): r for r in csv.DictReader(ln for ln in csv_text.splitlines() if not ln.startswith("#"))}
    for b in doc["uncertainty_budget"]["zernike"]:
        assert float(rows[b["noll"]]["U_waves"]) == pytest.approx(2 * b["u"], rel=1e-9)
        assert rows[b["noll"]]["largest_source"]
    if shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils not installed")
    pages = subprocess.run(["pdftoppm", "-r", "20", "-png", pdf, tmp_path / "page"], capture_output=True)
    assert pages.returncode == 0 and len(list(tmp_path.glob("page*.png"))) == 4
    text = subprocess.run(["pdftotext", "-layout", pdf, "-"], capture_output=True, text=True).stdout
    assert "PASS" in text and doc["lens"]["serial"] in text and "T. Est" in text
    for row in doc["verdict"]["limits"]:
        assert row["name"].split(" (")[0][:20] in text, row["name"]
    assert text.count("Noll ordering") >= 3  # conventions footer on every page
    # the GUM budget: the RMS wavefront's largest source is named on page 4 and in the JSON, and the
    # station constants' uncertainties (the station file's defaults here) enter U
    budget = doc["uncertainty_budget"]
    rms = budget["rms_waves"]
    largest = next(r["label"] for r in rms["rows"] if r["source"] == rms["largest"])
    assert "largest contribution " + largest in " ".join(text.split())
    assert {c["name"] for c in budget["constants"]} >= {"wavelength_nm", "na", "magnification"}
    assert rms["u"] > max(r["contribution"] for r in rms["rows"] if r["source"] in ("noise", "model_mismatch"))
    assert doc["solver"]["data_uncertainty"]["effective_data_fraction"] > 0.5


def test_bad_lens_fails(tmp_path, small, capsys):
    station, leds = small
    capture, st, _ = simulate_to(tmp_path / "bad", station, lens_coefficients(0.15, 2), seed=2, leds=leds)
    code, line, doc = _inspect(capture, st, SPEC, tmp_path / "out", capsys, "--export-sample", "tif")
    assert code == 1 and line.startswith("FAIL"), line
    assert any(r["verdict"] == "FAIL" for r in doc["verdict"]["limits"])
    # the reconstructed sample beside the report, with its pixel size, listed with its hash (issue 17)
    (sample,) = doc["outputs"]
    path = tmp_path / "out" / sample["path"].split("/")[-1]
    assert sample["role"] == "sample" and path.name.endswith("_sample.tif") and path.is_file()
    with tifffile.TiffFile(path) as tf:
        meta = json.loads(tf.pages[0].description)
        assert len(tf.pages) == 2 and tf.pages[0].asarray().dtype == np.float32
    assert meta["pixel_um"] > 0 and meta["report_id"] == doc["report"]["id"]


def test_lens_at_the_limit_is_inconclusive(tmp_path, small, capsys):
    station, leds = small
    coeffs = lens_coefficients(0.05, 3)
    capture, st, _ = simulate_to(tmp_path / "edge", station, coeffs, seed=3, leds=leds)
    spec = tmp_path / "spec.toml"
    text = SPEC.read_text().replace("rms_waves_max = 0.07", "rms_waves_max = 0.05")
    spec.write_text(text)
    code, line, doc = _inspect(capture, st, spec, tmp_path / "out", capsys)
    rms = doc["figures_of_merit"]["rms_waves"]
    assert abs(rms["value"] - 0.05) < rms["U"], rms  # the limit lies within value +/- U
    assert code == 3 and line.startswith("INCONCLUSIVE"), line
    row = next(r for r in doc["verdict"]["limits"] if r["name"].startswith("RMS"))
    assert row["verdict"] == "INCONCLUSIVE"


def test_blank_frames_never_pass(tmp_path, small, capsys):
    station, leds = small
    blank = list(range(0, len(leds), 3))  # a third of the frames
    capture, st, _ = simulate_to(tmp_path / "blank", station, lens_coefficients(0.03, 1), seed=1, leds=leds,
                                 blank_frames=blank)
    code, line, doc = _inspect(capture, st, SPEC, tmp_path / "out", capsys)
    assert code == 3 and doc["verdict"]["overall"] == "INCONCLUSIVE", line
    assert sorted(doc["data_quality"]["blank_frames"]) == blank
    assert any(f["code"] == "blank_frames" and f["severity"] == "error" for f in doc["data_quality"]["flags"])


def test_solver_stopped_early_never_passes(tmp_path, good_capture, capsys):
    capture, station, _ = good_capture
    code, line, doc = _inspect(capture, station, SPEC, tmp_path / "out", capsys, "--max-iterations", "3")
    assert not doc["solver"]["converged"]
    assert code == 3 and doc["verdict"]["overall"] == "INCONCLUSIVE", line
    assert any("converge" in r for r in doc["verdict"]["reasons"])


def test_8bit_capture_is_inspected(tmp_path, capsys):
    """An 8-bit camera's capture (uint8 frames, camera.bit_depth = 8) goes through inspect; a 12-bit
    station cannot take 8-bit frames (its saturation level would be missed) (issue 17)."""
    from dataclasses import replace

    from metrology.io import write_capture

    station = bench_station(32).replace(bit_depth=8)
    capture, st, _ = simulate_to(tmp_path / "sim", station, lens_coefficients(0.03, 1), seed=1, leds=centre_leds(5),
                                 photons=1e3)
    cap = read_capture(capture)
    assert cap.frames.max() <= 255
    cap8 = write_capture(tmp_path / "capture8.tif", replace(cap, frames=cap.frames.astype(np.uint8)))
    assert read_capture(cap8).frames.dtype == np.uint8
    code, line, doc = _inspect(cap8, st, SPEC, tmp_path / "out", capsys, "--max-iterations", "5")
    assert code in (0, 1, 3) and doc["lens"]["serial"] in line  # a short fit: the path, not the verdict
    st12 = tmp_path / "st12.toml"
    st12.write_text(st.read_text().replace("bit_depth = 8", "bit_depth = 12"))
    code, _, err = run_cli(["inspect", cap8, "--station", st12, "--spec", SPEC, "--out", tmp_path / "o12"], capsys)
    assert_bad_input(code, err, tmp_path / "o12", "camera.bit_depth is 12")
