"""What a QA engineer signs (issue 17): the report's labels, tables, figures and identification.

Rendered-text checks use pdftotext; figure checks capture the matplotlib figures the report draws
(``plots._png``) and inspect their axes, tick labels, legends and colour bars.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import metrology.report.plots as plots
from metrology.report.layout import TINTS
from metrology.report.pdf import PAGES, write_inspection_report
from tests.report_example import example_arrays, example_document

DEMO_HISTORY = [1.0075809955596924, 0.9651818871498108, 0.9609497785568237, 0.9590950012207031,
                0.9576734304428101, 0.9576734304428101]
"""The loss history of a demo inspection (6 outer rounds), whose solver reported 7 iterations."""


def _need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (poppler-utils) is not installed")


def _text(pdf, page, layout=True):
    """The page's text, whitespace squashed; ``layout=False`` reads table cells whole (wrapped cells
    stay together) instead of line by line across the page."""
    _need("pdftotext")
    mode = ["-layout"] if layout else []
    out = subprocess.run(["pdftotext", *mode, "-f", str(page), "-l", str(page), str(pdf), "-"], check=True,
                         capture_output=True, text=True).stdout
    return " ".join(out.split())


def _render(doc, tmp_path, monkeypatch, arrays=None):
    """Write the report; return (pdf path, every matplotlib figure drawn through plots._png)."""
    figs = []
    original = plots._png

    def capture(fig):
        figs.append(fig)
        return original(fig)

    monkeypatch.setattr(plots, "_png", capture)
    pdf = write_inspection_report(doc, arrays or example_arrays(doc), tmp_path / "report.pdf")
    return pdf, figs


def _axes_with(figs, predicate):
    return [ax for fig in figs for ax in fig.axes if predicate(ax)]


@pytest.fixture()
def demo_like(tmp_path, monkeypatch):
    """The example report with the demo's loss history (6 rounds) and 7 solver iterations."""
    doc = example_document("PASS")
    doc["solver"].update(history=DEMO_HISTORY, iterations=7, final_loss=DEMO_HISTORY[-1])
    arrays = example_arrays(doc)
    arrays.loss_history = np.array(DEMO_HISTORY)
    return (doc, *_render(doc, tmp_path, monkeypatch, arrays))


# ------------------------------------------------------------------ convergence plot
def _convergence_axes(figs):
    axes = _axes_with(figs, lambda ax: ax.get_ylabel() == "loss")
    assert len(axes) == 1, "one convergence plot with its y axis labelled 'loss'"
    return axes[0]


def test_convergence_tick_labels_are_distinct_and_inside_the_figure(demo_like):
    _, _, figs = demo_like
    ax = _convergence_axes(figs)
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fig_box = fig.bbox
    lo, hi = ax.get_ylim()
    labels = [t for t in ax.get_yticklabels(which="both")
              if t.get_visible() and t.get_text() and lo <= t.get_position()[1] <= hi]
    texts = [t.get_text() for t in labels]
    assert len(texts) >= 3, texts
    assert len(set(texts)) == len(texts), f"repeated tick labels: {texts}"
    for t in labels + [ax.yaxis.label, ax.xaxis.label]:
        box = t.get_window_extent(renderer)
        assert box.x0 >= fig_box.x0 - 0.5 and box.x1 <= fig_box.x1 + 0.5, f"{t.get_text()!r} is clipped"


def test_convergence_plots_outer_rounds_on_integer_ticks(demo_like):
    doc, pdf, figs = demo_like
    ax = _convergence_axes(figs)
    x = ax.lines[0].get_xdata()
    assert list(x) == list(range(1, len(DEMO_HISTORY) + 1))  # rounds 1..6, as many as in the history
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    text = _text(pdf, 3)
    assert "6 outer rounds (plotted) + 1 Gauss-Newton polish steps = 7 iterations" in text


def test_timings_line_shows_the_report_time(tmp_path):
    import time

    doc = example_document("PASS")
    doc["timings_s"]["report"] = 0.0  # as in an inspection: measured only after the PDF is written
    started = time.perf_counter() - 0.5
    pdf = write_inspection_report(doc, example_arrays(doc), tmp_path / "r.pdf", report_started=started)
    text = _text(pdf, 3)
    timings = re.search(r"Timings: load [\d.]+ s, reconstruct [\d.]+ s, analyse [\d.]+ s, report ([\d.]+) s\.", text)
    assert timings, text
    assert float(timings.group(1)) >= 0.5, timings.group(0)


# ------------------------------------------------------------------ page 1
def test_page_one_identifies_and_has_an_approval_block(tmp_path):
    doc = example_document("PASS")
    pdf = write_inspection_report(doc, example_arrays(doc), tmp_path / "r.pdf")
    p1 = _text(pdf, 1, layout=False)
    assert f"Report ID {doc['report']['id']}" in p1
    assert "OBJ-10x-0.25.toml rev C, valid 520-540 nm (sha256 0123456789ab)" in p1
    assert "seq 4711 after chain c0ffee00c0ffee00" in p1 and "audit.sqlite" in p1
    assert f"lens-metrology {doc['software']['version']}" in p1
    for text in ("Approval", "Measured by (operator) A. Example 2026-11-26", "Reviewed by (QA engineer)",
                 "Approved for release", "Signature", "Release decision"):
        assert text in p1, text


def test_every_figure_of_merit_is_labelled(tmp_path):
    doc = example_document("PASS")
    pdf = write_inspection_report(doc, example_arrays(doc), tmp_path / "r.pdf")
    p1 = _text(pdf, 1)
    fom = doc["figures_of_merit"]
    for label in ("RMS wavefront error (waves)", "RMS wavefront error (nm)", "Peak-to-valley",
                  "PVr (Evans: PV of Noll <= 36 + 3 x residual)", "Residual beyond Noll 36 (RMS) 0.0021 waves",
                  "Strehl ratio, on-axis (pupil integral)", "Strehl ratio, PSF peak"):
        assert label in p1, label
    assert "from Zernike RMS" not in p1  # the on-axis Strehl is not computed from the RMS
    assert f"{fom['rms_nm']['value']:.1f} ± {fom['rms_nm']['U']:.1f} nm" in p1


def _tint_pixels(img, hex_colour, atol=0.02):
    want = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int(np.all(np.abs(img - want) < atol, axis=-1).sum())


def test_invalid_measurement_does_not_colour_limits_pass_or_fail(tmp_path):
    import matplotlib.image as mpimg

    _need("pdftoppm")
    counts = {}
    for invalid in (False, True):
        doc = example_document("FAIL", invalid=invalid)
        pdf = write_inspection_report(doc, example_arrays(doc), tmp_path / f"r{invalid}.pdf")
        subprocess.run(["pdftoppm", "-r", "40", "-f", "1", "-l", "1", "-png", str(pdf), str(tmp_path / f"p{invalid}")],
                       check=True)
        img = mpimg.imread(next(tmp_path.glob(f"p{invalid}*.png")))[..., :3]
        counts[invalid] = (_tint_pixels(img, TINTS["PASS"]), _tint_pixels(img, TINTS["FAIL"]))
        text = _text(pdf, 1)
        if invalid:
            assert doc["verdict"]["overall"] == "INCONCLUSIVE"
            assert "PASS - not trusted" in text and "FAIL - not trusted" in text
    assert counts[False][0] > 100 and counts[False][1] > 100  # the valid report colours its limits
    assert counts[True] == (0, 0), counts  # the invalid one: no green PASS, no red FAIL cell


# ------------------------------------------------------------------ page 2: the lens in numbers
def test_zernike_table_seidel_profiles_and_interferogram(tmp_path):
    doc = example_document("PASS")
    pdf = write_inspection_report(doc, example_arrays(doc), tmp_path / "r.pdf")
    p2 = _text(pdf, 2)
    for t in doc["zernike"]:
        if t["alignment"]:
            assert f"{t['noll']} {t['n']}, {t['m']} {t['name']} alignment" in p2
        else:
            assert f"{t['noll']} {t['n']}, {t['m']} {t['name']} {t['value_waves']:.4f} {t['U_waves']:.4f}" in p2, t
    for text in ("W222 astigmatism", "W131 coma", "W040 spherical", "Magnitude and axis (Seidel)",
                 "Profiles along the astigmatism axes at", "tilt of 6 fringes across the pupil diameter"):
        assert text in p2, text


# ------------------------------------------------------------------ page 3 figures
def test_mtf_plot_names_its_azimuth_and_draws_the_limit(tmp_path, monkeypatch):
    doc = example_document("PASS")
    arrays = example_arrays(doc)
    arrays.mtf_label = "worst of 0/45/90/135 deg azimuth"
    _, figs = _render(doc, tmp_path, monkeypatch, arrays)
    (ax,) = _axes_with(figs, lambda ax: ax.get_title().startswith("MTF"))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("azimuth" in t for t in legend), legend
    limit = next(lim for lim in doc["verdict"]["limits"] if lim["key"].startswith("limits.mtf"))
    marks = [line for line in ax.lines if line.get_label() == "spec minimum"]
    assert marks, legend
    assert (200.0, limit["limit"]) == (float(marks[0].get_xdata()[0]), float(marks[0].get_ydata()[0]))


def test_every_colour_bar_has_a_unit(tmp_path, monkeypatch):
    doc = example_document("PASS")
    _, figs = _render(doc, tmp_path, monkeypatch)
    bars = [ax for fig in figs for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    assert len(bars) >= 9
    missing = [ax.get_title() or str(ax) for ax in bars if not ax._colorbar.ax.get_ylabel().strip()]
    assert not missing, missing


# ------------------------------------------------------------------ the pages shown in the docs
def test_docs_show_the_rendered_demo_and_inconclusive_pages():
    """docs/report.md shows the committed PNG pages (scripts/render_report_images.py): every demo
    page, and the INCONCLUSIVE report's page 1 without a green PASS or red FAIL cell."""
    import matplotlib.image as mpimg

    docs = Path(__file__).resolve().parents[1] / "docs"
    linked = re.findall(r"\(images/([\w.-]+\.png)\)", (docs / "report.md").read_text())
    assert linked and all((docs / "images" / name).is_file() for name in linked), linked
    demo = sorted((docs / "images").glob("demo-page-*.png"))
    assert [p.name for p in demo] == [f"demo-page-{i}.png" for i in range(1, len(PAGES) + 1)]
    demo1 = mpimg.imread(docs / "images" / "demo-page-1.png")[..., :3]
    inconclusive1 = mpimg.imread(docs / "images" / "inconclusive-page-1.png")[..., :3]
    # a verdict cell is hundreds of pixels at 60 dpi; a few stray ones are anti-aliased map colours
    assert _tint_pixels(demo1, TINTS["PASS"]) > 1000
    assert _tint_pixels(inconclusive1, TINTS["PASS"]) + _tint_pixels(inconclusive1, TINTS["FAIL"]) < 20
    assert _tint_pixels(inconclusive1, TINTS["NOT TRUSTED"], atol=0.005) > 1000  # not the header grey
