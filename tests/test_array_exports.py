"""Array exports: the wavefront map (``metrology wavefront-export``: HDF5, CSV, NPY) and the
reconstructed sample (``inspect --export-sample``: TIFF, HDF5), each read back.

The wavefront read back from each file equals the one rebuilt from the result JSON's coefficients
within 1e-6 waves, and is checked against an independent evaluation of the Noll terms (written out
here) at the coordinates and with the +y-down convention the file states in its metadata.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from metrology.analysis.wavefront import wavefront_map
from metrology.cli import main
from metrology.report.document import write_json_atomic
from metrology.report.sample_files import write_sample
from tests.report_example import example_arrays, example_document

N_PX = 48


def _noll_by_hand(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Noll 5..11 (the terms set below) written out: theta from +x towards +y, as the file states."""
    r, t = np.hypot(x, y), np.arctan2(y, x)
    terms = {5: np.sqrt(6) * r**2 * np.sin(2 * t), 6: np.sqrt(6) * r**2 * np.cos(2 * t),
             7: np.sqrt(8) * (3 * r**3 - 2 * r) * np.sin(t), 8: np.sqrt(8) * (3 * r**3 - 2 * r) * np.cos(t),
             9: np.sqrt(8) * r**3 * np.sin(3 * t), 10: np.sqrt(8) * r**3 * np.cos(3 * t),
             11: np.sqrt(5) * (6 * r**4 - 6 * r**2 + 1)}
    return sum(c[j - 1] * z for j, z in terms.items())


@pytest.fixture()
def result(tmp_path):
    doc = example_document("PASS")
    doc["zernike"] = [t for t in doc["zernike"] if t["noll"] <= 11]  # the terms written out above
    doc.pop("zernike_covariance")  # its rows are of the full term list
    path = tmp_path / "result.json"
    write_json_atomic(path, doc)
    c = np.zeros(11)
    for t in doc["zernike"]:
        c[t["noll"] - 1] = 0.0 if t["alignment"] else t["value_waves"]
    return doc, path, c


def _export(path, fmt, out):
    return main(["wavefront-export", str(path), "--format", fmt, "--out", str(out), "--n-px", str(N_PX)])


def _check_map(w, x, y, c):
    want = wavefront_map(c, N_PX)
    assert np.array_equal(np.isnan(w), np.isnan(want))
    assert np.nanmax(np.abs(w - want)) < 1e-6
    xx, yy = np.meshgrid(x, y)  # x along columns, y along rows (+y down), as the attributes say
    inside = np.isfinite(w)
    assert np.max(np.abs(w[inside] - _noll_by_hand(c, xx, yy)[inside])) < 1e-6
    assert y[0] < 0 < y[-1]  # row 0 is the top of the map: the most negative y, +y pointing down


def test_h5_round_trip(result, tmp_path):
    h5py = pytest.importorskip("h5py")  # the hdf5 extra (CI installs it)
    doc, path, c = result
    out = tmp_path / "w.h5"
    assert _export(path, "h5", out) == 0
    with h5py.File(out, "r") as f:
        w, mask, x, y = (f[k][()] for k in ("wavefront_waves", "mask", "x", "y"))
        attrs = dict(f.attrs)
        assert list(f["zernike_noll"][()]) == list(range(1, 12))
    _check_map(w, x, y, c)
    assert np.array_equal(mask == 1, np.isfinite(w))
    assert attrs["units"] == "waves" and attrs["wavelength_nm"] == 530.0 and attrs["na"] == 0.25
    assert "+y down" in attrs["axes"] and "NA / lambda" in attrs["normalisation_radius"]
    assert attrs["lens_serial"] == doc["lens"]["serial"] and attrs["report_id"] == doc["report"]["id"]
    assert len(attrs["source_sha256"]) == 64


def test_csv_round_trip(result, tmp_path):
    _, path, c = result
    out = tmp_path / "w.csv"
    assert _export(path, "csv", out) == 0
    text = out.read_text()
    meta = {line[2:].split(": ", 1)[0]: line[2:].split(": ", 1)[1] for line in text.splitlines() if line.startswith("#")}
    assert meta["units"] == "waves" and "+y down" in meta["axes"] and json.loads(meta["shape"]) == [N_PX, N_PX]
    rows = list(csv.DictReader(io.StringIO("\n".join(ln for ln in text.splitlines() if not ln.startswith("#")))))
    u = (np.arange(N_PX) - (N_PX - 1) / 2) / (N_PX / 2)
    w = np.full((N_PX, N_PX), np.nan)
    for r in rows:  # place each (x, y) sample back on the grid the metadata describes
        col = int(round(float(r["x"]) * N_PX / 2 + (N_PX - 1) / 2))
        row = int(round(float(r["y"]) * N_PX / 2 + (N_PX - 1) / 2))
        w[row, col] = float(r["wavefront_waves"])
    _check_map(w, u, u, c)


def test_npy_round_trip(result, tmp_path):
    _, path, c = result
    out = tmp_path / "w.npy"
    assert _export(path, "npy", out) == 0
    w = np.load(out, allow_pickle=False)
    meta = json.loads((tmp_path / "w.npy.json").read_text())
    assert meta["shape"] == [N_PX, N_PX] and meta["units"] == "waves"
    u = (np.arange(N_PX) - (N_PX - 1) / 2) / (N_PX / 2)
    _check_map(w, u, u, c)


def test_bad_grid_size_writes_nothing(result, tmp_path, capsys):
    _, path, _ = result
    rc = main(["wavefront-export", str(path), "--format", "npy", "--out", str(tmp_path / "w.npy"), "--n-px", "2"])
    assert rc == 2 and "--n-px" in capsys.readouterr().err
    assert not (tmp_path / "w.npy").exists()


# ------------------------------------------------------------------ reconstructed sample
@pytest.fixture()
def sample():
    doc = example_document("PASS")
    arrays = example_arrays(doc)
    return doc, arrays


def test_sample_tiff_round_trip(sample, tmp_path):
    import tifffile

    doc, arrays = sample
    path = write_sample(tmp_path / "s.tif", arrays, doc)
    with tifffile.TiffFile(path) as tf:
        amp, phase = (p.asarray() for p in tf.pages)
        meta = json.loads(tf.pages[0].description)
        x_res = tf.pages[0].tags["XResolution"].value
        unit = tf.pages[0].tags["ResolutionUnit"].value
    assert np.array_equal(amp, arrays.sample_amplitude.astype(np.float32))
    assert np.array_equal(phase, arrays.sample_phase.astype(np.float32))
    assert meta["pixel_um"] == pytest.approx(arrays.sample_pixel_um) and meta["pages"] == ["amplitude", "phase_rad"]
    assert int(unit) == 3  # centimetre
    assert 1e4 / (x_res[0] / x_res[1]) == pytest.approx(arrays.sample_pixel_um, rel=1e-6)
    assert "+y down" in meta["axes"] and meta["report_id"] == doc["report"]["id"]


def test_sample_h5_round_trip(sample, tmp_path):
    h5py = pytest.importorskip("h5py")  # the hdf5 extra (CI installs it)
    doc, arrays = sample
    path = write_sample(tmp_path / "s.h5", arrays, doc)
    with h5py.File(path, "r") as f:
        amp, phase, x_um = f["amplitude"][()], f["phase_rad"][()], f["x_um"][()]
        pixel = f.attrs["pixel_um"]
    assert np.array_equal(amp, arrays.sample_amplitude.astype(np.float32))
    assert np.array_equal(phase, arrays.sample_phase.astype(np.float32))
    assert pixel == pytest.approx(arrays.sample_pixel_um)
    assert np.allclose(np.diff(x_um), arrays.sample_pixel_um) and x_um.mean() == pytest.approx(0.0, abs=1e-9)
