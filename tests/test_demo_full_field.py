"""``metrology demo --full-field``: a full-frame capture of the shipped full-field fixtures (3 x 3
tiles of 32 px, 25 LEDs, fitted in one process per core; about 85 s on the 2-core machine) inspected against a spec with field zones; the
report's pages are rendered and read back (the helpers of tests/test_report_pdf.py)."""

from __future__ import annotations

import json
import time

from metrology.cli import main
from metrology.report.document import document_errors
from tests.test_report_pdf import A4_MM, _page_text, _pages_png, _png_size


def test_full_field_demo_writes_the_report_with_the_field_page(tmp_path, capsys):
    t0 = time.perf_counter()
    code = main(["demo", "--full-field", "--out", str(tmp_path / "out"), "--device", "cpu"])
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    # the fixture lens passes on axis and in the 0-0.7 zone, and fails the full field on astigmatism
    assert code == 1, out
    assert out.startswith("FAIL SN-F0001") and "zone 'full field'" in out and "astigmatism" in out
    (pdf,) = (tmp_path / "out").glob("*.pdf")
    (doc_path,) = (tmp_path / "out").glob("*.json")
    doc = json.loads(doc_path.read_text(encoding="utf-8"))
    assert document_errors(doc) == [] and doc["station"]["id"] == "bench-4x-fullfield"
    assert [(z["name"], z["verdict"]) for z in doc["verdict"]["zones"]] == [("0-0.7 field", "PASS"),
                                                                           ("full field", "FAIL")]
    pages = _pages_png(pdf, tmp_path, dpi=20)
    assert len(pages) == 5
    for page in pages:
        w, h = _png_size(page)
        assert abs(w - A4_MM[0] / 25.4 * 20) <= 1 and abs(h - A4_MM[1] / 25.4 * 20) <= 1
    first = _page_text(pdf, 1)
    assert "FAIL" in first and "zone 'full field' (|H| <= 1): astigmatism magnitude" in first
    field = _page_text(pdf, 5)
    for fragment in ("Lens across the field", "Verdict per field zone (overall FAIL)", "0-0.7 field (|H| <= 0.7): PASS",
                     "full field (|H| <= 1): FAIL", "field curvature (focus departure)", "Hopkins W222", "r2c2",
                     "page 5 of 5"):
        assert fragment in field, fragment
    print(f"demo --full-field: {seconds:.1f} s")
