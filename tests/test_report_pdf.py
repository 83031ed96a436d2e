"""The A4 PDF inspection report: pages, size, text, colours, layout limits, atomic write."""

from __future__ import annotations

import copy
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

import metrology.report.page_station as station_page
from metrology.orderings import noll_to_nm, zernike_family, zernike_name
from metrology.errors import InputError
from tests.report_example import example_arrays, example_document
from metrology.report.pdf import PAGES, VERDICT_COLOURS, format_value_u, write_inspection_report
from metrology.report.plots import ReportArrays, pupil_phase_png

VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")
A4_MM = (210.0, 297.0)
N_PAGES = len(PAGES)


def _need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (poppler-utils) is not installed")


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # width, height


def _pages_png(pdf, out_dir, dpi=20):
    _need("pdftoppm")
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(out_dir / "page")], check=True)
    return sorted(out_dir.glob("page*.png"))


def _page_text(pdf, page):
    _need("pdftotext")
    out = subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), str(pdf), "-"], check=True,
                         capture_output=True, text=True).stdout
    return " ".join(out.split())


def _squash(text):
    return " ".join(text.split())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The example report of each verdict: {verdict: (doc, pdf path, folder)}."""
    out = {}
    for verdict in VERDICTS:
        folder = tmp_path_factory.mktemp(verdict.lower())
        doc = example_document(verdict)
        path = write_inspection_report(doc, example_arrays(doc), folder / "report.pdf")
        out[verdict] = (doc, path, folder)
    return out


@pytest.mark.parametrize("verdict", VERDICTS)
def test_a4_pages(rendered, verdict, tmp_path):
    _, pdf, _ = rendered[verdict]
    media = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf.read_bytes())
    assert len(media) == N_PAGES
    for w, h in media:
        assert float(w) == pytest.approx(A4_MM[0] / 25.4 * 72, abs=0.5)
        assert float(h) == pytest.approx(A4_MM[1] / 25.4 * 72, abs=0.5)
    pages = _pages_png(pdf, tmp_path)
    assert len(pages) == N_PAGES
    for page in pages:
        w, h = _png_size(page)
        assert abs(w - A4_MM[0] / 25.4 * 20) <= 1 and abs(h - A4_MM[1] / 25.4 * 20) <= 1


@pytest.mark.parametrize("verdict", VERDICTS)
def test_text_content(rendered, verdict):
    doc, pdf, _ = rendered[verdict]
    texts = [_page_text(pdf, i) for i in range(1, N_PAGES + 1)]
    p1, p3 = texts[0], texts[2]
    assert verdict in p1.split()
    assert doc["lens"]["serial"] in p1 and doc["lens"]["model"] in p1
    assert doc["station"]["id"] in p1 and doc["operator"] in p1
    for lim in doc["verdict"]["limits"]:
        assert lim["name"] in p1, lim["name"]
    for reason in doc["verdict"]["reasons"]:
        assert _squash(reason) in p1
    if verdict == "PASS":
        assert "Why " not in p1
    else:
        assert "Why " + verdict in p1
    for m in doc["station_misalignment"]:
        assert m["label"] in p3
    conventions = _squash(doc["conventions"]["text"])
    for i, text in enumerate(texts, start=1):
        assert conventions in text, f"conventions footer missing on page {i}"
        assert f"page {i} of {N_PAGES}" in text
        for item in doc["inputs"]:
            assert f"{item['role']} {item['sha256'][:12]} ({os.path.basename(item['path'])})" in text
            assert item["sha256"] not in text  # short form only


@pytest.mark.parametrize("verdict", VERDICTS)
def test_budget_page_names_the_largest_contribution(rendered, verdict):
    """Page 4: the RMS wavefront's GUM budget (every source with its share), the largest contribution
    named, the coefficient table, the station constants' uncertainties, the pupil radius's re-fits (a
    re-fit that did not converge said so) and the data-uncertainty line."""
    doc, pdf, _ = rendered[verdict]
    p3 = _page_text(pdf, 4)
    assert f"page 4 of {N_PAGES}" in p3
    budget = doc["uncertainty_budget"]
    assert "Uncertainty budget" in p3
    largest = next(r["label"] for r in budget["rms_waves"]["rows"] if r["source"] == budget["rms_waves"]["largest"])
    assert _squash("largest contribution " + largest) in _squash(p3)
    for r in budget["rms_waves"]["rows"]:
        assert _squash(r["label"]) in _squash(p3), r["label"]
    for c in budget["constants"]:
        assert _squash(c["label"]) in _squash(p3), c["label"]
    # the pupil radius's re-fits: their size and that one did not converge
    assert _squash("two re-fits at +/- 1.4 % of the radius") in _squash(p3)
    assert _squash("NOT both converged: the held NA, magnification and camera-pixel terms are kept beside it") in _squash(p3)
    assert "Data uncertainty per LED" in p3


@pytest.mark.parametrize("verdict", VERDICTS)
def test_banner_colour(rendered, verdict, tmp_path):
    import matplotlib.image as mpimg

    _, pdf, _ = rendered[verdict]
    page1 = _pages_png(pdf, tmp_path, dpi=30)[0]
    img = mpimg.imread(page1)[..., :3]
    px = lambda mm: int(round(mm / 25.4 * 30))  # noqa: E731
    patch = img[px(14):px(16), px(14):px(18)].reshape(-1, 3)  # inside the banner, left of the word
    want = np.array([int(VERDICT_COLOURS[verdict][i:i + 2], 16) / 255 for i in (1, 3, 5)])
    assert np.allclose(patch.mean(axis=0), want, atol=0.04)


def test_no_temp_files_left(rendered):
    for _, pdf, folder in rendered.values():
        assert [p.name for p in folder.iterdir()] == ["report.pdf"]
        assert pdf.stat().st_size > 10_000


def test_failure_mid_build_leaves_no_file(tmp_path, monkeypatch):
    doc = example_document("FAIL")
    arrays = example_arrays(doc)

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(station_page, "frames_png", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        write_inspection_report(doc, arrays, tmp_path / "report.pdf")
    assert list(tmp_path.iterdir()) == []


def test_failure_at_rename_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    doc = example_document("PASS")
    target = tmp_path / "report.pdf"
    target.write_bytes(b"old report")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_inspection_report(doc, example_arrays(doc), target)
    assert target.read_bytes() == b"old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.pdf"]


def test_invalid_document_is_refused(tmp_path):
    doc = example_document("PASS")
    doc["verdict"]["overall"] = "GOOD"
    with pytest.raises(InputError):
        write_inspection_report(doc, example_arrays(), tmp_path / "report.pdf")
    assert list(tmp_path.iterdir()) == []


def _crowded_document():
    """A document with far more limits, flags, pairs and Zernike terms than usual."""
    doc = example_document("FAIL")
    base = doc["verdict"]["limits"][0]
    for i in range(20):
        lim = copy.deepcopy(base)
        lim["name"] = f"Extra limit number {i:02d}"
        doc["verdict"]["limits"].append(lim)
        doc["verdict"]["reasons"].append(f"Extra limit number {i:02d}: FAIL because it is a very long "
                                         "explanation that has to wrap over more than one line of the page")
    doc["data_quality"]["flags"] = [{"code": f"FLAG{i}", "message": "something odd " * 6, "severity": "warning"}
                                    for i in range(20)]
    doc["identifiability"]["strong_pairs"] *= 6
    doc["identifiability"]["unidentifiable"] = ["illumination.tilt_deg[0]", "illumination.tilt_deg[1]"]
    for j in range(len(doc["zernike"]) + 1, 46):
        n, m = noll_to_nm(j)
        doc["zernike"].append({"noll": j, "n": n, "m": m, "name": zernike_name(n, m),
                               "family": zernike_family(n, m), "value_waves": 0.001 * (-1) ** j,
                               "u_waves": 0.001, "U_waves": 0.002, "alignment": False})
    return doc


def test_crowded_document_keeps_its_pages(tmp_path):
    doc = _crowded_document()
    arrays = ReportArrays(pupil_phase_waves=example_arrays(example_document("FAIL")).pupil_phase_waves)
    pdf = write_inspection_report(doc, arrays, tmp_path / "report.pdf")
    assert len(_pages_png(pdf, tmp_path)) == N_PAGES  # shrunk to fit, never spilled onto another page
    p1, p2, p3 = (_page_text(pdf, i) for i in (1, 2, 3))
    assert "Extra limit number 19" in p1 and f"page 1 of {N_PAGES}" in p1
    assert "secondary spherical" in p2 and " 45 " in p2  # every Zernike term of the table, up to Noll 45
    assert "FLAG7" in p3 and "and 12 more flags" in p3 and f"page 3 of {N_PAGES}" in p3


def test_pupil_map_puts_plus_y_down():
    """Rows with larger index (+y) must be drawn lower on the page (conventions: +y down)."""
    import io

    import matplotlib.image as mpimg

    p = 64
    phase = np.full((p, p), -1.0)
    phase[p // 2:, :] = 1.0  # +y half positive -> red in RdBu_r
    img = mpimg.imread(io.BytesIO(pupil_phase_png(phase, 500.0, 80, 70)), format="png")[..., :3]
    h, w = img.shape[:2]
    col = int(w * (0.13 + 0.28))
    upper, lower = img[int(h * (1 - 0.69)), col], img[int(h * (1 - 0.31)), col]
    assert upper[2] > upper[0] + 0.2  # blue at the top (-y)
    assert lower[0] > lower[2] + 0.2  # red at the bottom (+y)


@pytest.mark.parametrize("value,U,text", [(0.035123, 0.00312, "0.0351 ± 0.0031"), (1.8432, 0.1, "1.84 ± 0.10"),
                                          (12.5, 0.0, "12.5"), (-0.087, 0.008, "-0.0870 ± 0.0080"),
                                          (0.71171, 5.56e133, "0.7117 ± 5.6e+133"), (9.193, 12345.0, "9.193 ± 1.2e+04")])
def test_format_value_u(value, U, text):
    assert format_value_u(value, U) == text


def test_unmeasured_station_terms_are_named():
    """A fit that holds the LED distance and tilt (blind mode holds the tilt): the budget page (page 4) names them (the full example measures all)."""
    from metrology.report.budget_page import unmeasured_station_terms

    blind = {"station_misalignment": [{"name": n} for n in (
        "illumination.shift_mm[0]", "illumination.shift_mm[1]", "illumination.rotation_deg", "sample.defocus_um")]}
    assert unmeasured_station_terms(blind) == ["LED array distance error", "LED array tilt", "Sample position"]
    full = blind["station_misalignment"] + [{"name": n} for n in (
        "illumination.distance_error_mm", "illumination.tilt_deg[0]", "illumination.tilt_deg[1]",
        "sample.position_um[0]", "sample.position_um[1]")]
    assert unmeasured_station_terms({"station_misalignment": full}) == []


def test_frames_left_out_of_the_fit_are_grey_on_the_led_maps():
    """A blank or repeated frame has no learned scale and no residual (NaN): its LED is drawn grey,
    and the colour scale is that of the fitted frames (a 1e150 placeholder had set its top)."""
    import io

    import matplotlib.image

    from metrology.report.plots import led_scale_png, sample_led_png

    def grey_pixels(png):
        rgb = matplotlib.image.imread(io.BytesIO(png))[..., :3]
        return int((np.abs(rgb - 0.75).max(axis=-1) < 0.02).sum())

    arrays = example_arrays()
    j = len(arrays.led_residual)
    arrays.led_scale = np.linspace(1.0, 3.0, j)
    before = [grey_pixels(led_scale_png(arrays)), grey_pixels(sample_led_png(arrays))]
    arrays.led_scale[j // 2] = np.nan
    arrays.led_residual[j // 2] = np.nan
    after = [grey_pixels(led_scale_png(arrays)), grey_pixels(sample_led_png(arrays))]
    assert after[0] >= before[0] + 4 and after[1] >= before[1] + 4, (before, after)
