"""``metrology audit verify|list|report`` and the audit PDF (rendered with poppler when available).

The commands run on both databases: an SQLite file and a PostgreSQL schema (tests/audit_backends.py).
"""

import json
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from metrology.audit.drift import check_and_record
from metrology.audit.golden import closure_check, load_certificate
from metrology.audit.status import record_calibration, record_inspection
from metrology.audit.store import AuditStore
from metrology.cli import main
from tests.audit_backends import raw_exec

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "golden-4x-010.toml"
STATION = "st-4x-01"
T0 = datetime(2025, 5, 1, 6, 0, tzinfo=timezone.utc)


def build_history(path, n_runs=36, seed=3):
    """Inspections every hour, a calibration every 12 runs; the LED shift x drifts by +0.005 mm/run
    from run 25 (sigma 0.010 mm), so alarms are raised and recorded."""
    cert = load_certificate(FIXTURE)
    rng = np.random.default_rng(seed)
    with AuditStore(path) as s:
        for run in range(1, n_runs + 1):
            t = T0 + timedelta(hours=run)
            shift = 0.05 + rng.normal(0, 0.01) + (0.005 * (run - 24) if run >= 25 else 0.0)
            mis = {"illumination.shift_mm[0]": {"value": shift, "U": 0.02, "unit": "mm"},
                   "illumination.rotation_deg": {"value": 0.1 + rng.normal(0, 0.01), "U": 0.02, "unit": "deg"}}
            if run % 12 == 1:
                meas = {j: (v + rng.normal(0, 0.001), 0.004) for j, (v, U) in cert.coefficients.items()}
                record_calibration(s, STATION, "alice", closure_check(meas, cert), mis, 7,
                                   {"golden.tif": "1" * 64}, "0.1.0", now=t)
            else:
                record_inspection(s, STATION, operator="bob", software_version="0.1.0",
                                  inputs={"frames.tif": "2" * 64}, misalignment=mis, serial=f"LENS-{run:03d}",
                                  zernike={5: (0.01, 0.003)}, figures={"rms_waves": {"value": 0.02, "U": 0.004}},
                                  verdict=("PASS", "PASS", "FAIL", "INCONCLUSIVE")[run % 4], now=t)
            check_and_record(s, STATION, utc=t)
        s.append("inspection", "other-station", {"operator": "carol", "verdict": "PASS"}, utc=T0)
    return path


@pytest.fixture(scope="module")
def db(module_store):
    return build_history(module_store())


def test_verify_ok(db, capsys):
    assert main(["audit", "verify", "--audit-db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "hash chain intact" in out


def test_verify_names_tampered_record(new_store, capsys):
    path = build_history(new_store(), n_runs=24)
    raw_exec(path, "UPDATE audit_records SET content = replace(content, '\"bob\"', '\"eve\"') WHERE seq = 7")
    raw_exec(path, "DELETE FROM audit_records WHERE seq = 12")
    assert main(["audit", "verify", "--audit-db", str(path)]) == 1
    out = capsys.readouterr().out
    assert "record seq 7: content hash mismatch" in out
    assert "record seq 13:" in out and "seq 12 missing" in out


def test_list_is_an_aligned_table(db, capsys, monkeypatch):
    monkeypatch.setenv("METROLOGY_AUDIT_DB", str(db))  # no --audit-db: the environment names it
    assert main(["audit", "list", "--station", STATION, "--since", "2025-05-02"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rule, rows = lines[0], lines[1], lines[2:-1]
    assert header.split()[:4] == ["seq", "time", "(UTC)", "station"]
    assert set(rule.replace(" ", "")) == {"-"}
    col = header.index("kind")
    assert all(r[col - 1] == " " for r in rows)  # columns aligned
    assert all(STATION in r for r in rows) and rows
    assert all(r.split()[1] >= "2025-05-02" for r in rows)
    assert any("alarm" in r and "illumination.shift_mm[0]" in r for r in rows)
    assert lines[-1] == f"{len(rows)} record(s)"
    assert main(["audit", "list", "--audit-db", str(db), "--kind", "calibration"]) == 0
    assert "closure PASS" in capsys.readouterr().out


def test_list_json(db, capsys):
    assert main(["audit", "list", "--audit-db", str(db), "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    with AuditStore(db, create=False) as s:
        stored = s.records()
    assert [r["seq"] for r in recs] == [r.seq for r in stored] and len(recs) > 30
    last = recs[-1]
    assert set(last) == {"seq", "kind", "station_id", "utc", "content", "content_sha256", "prev_sha256",
                         "chain_sha256"}
    assert last["content"] == stored[-1].content and last["chain_sha256"] == stored[-1].chain_sha256
    assert main(["audit", "list", "--audit-db", str(db), "--json", "--station", STATION, "--kind", "alarm"]) == 0
    alarms = json.loads(capsys.readouterr().out)
    assert alarms and {r["kind"] for r in alarms} == {"alarm"} and {r["station_id"] for r in alarms} == {STATION}


@pytest.mark.parametrize("argv,msg", [
    (["audit", "verify", "--audit-db", "{tmp}/missing.sqlite"], "no audit store"),
    (["audit", "list", "--audit-db", "{tmp}/foreign.txt"], "not an audit store"),
    (["audit", "list", "--audit-db", "{db}", "--since", "last tuesday"], "--since"),
    (["audit", "report", "--station", "nope", "--out", "{tmp}/o", "--audit-db", "{db}"], "--station"),
    (["audit", "report", "--station", STATION, "--out", "{tmp}/foreign.txt", "--audit-db", "{db}"], "foreign"),
])
def test_bad_input_exits_2(tmp_path, db, capsys, argv, msg):
    (tmp_path / "foreign.txt").write_text("not sqlite")
    argv = [a.format(tmp=tmp_path, db=db) for a in argv]
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_report_pdf(db, tmp_path, capsys):
    out_dir = tmp_path / "reports"
    assert main(["audit", "report", "--station", STATION, "--out", str(out_dir), "--audit-db", str(db)]) == 0
    pdf = Path(capsys.readouterr().out.strip())
    assert pdf.parent == out_dir and re.fullmatch(r"audit_st-4x-01_\d{8}T\d{6}Z\.pdf", pdf.name)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and b"%%EOF" in data[-64:]
    assert [p.name for p in out_dir.iterdir()] == [pdf.name]  # no temp file left behind

    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) not installed")
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout \
        if shutil.which("pdfinfo") else ""
    n_pages = int(re.search(r"Pages:\s+(\d+)", info).group(1)) if info else len(pages)
    assert len(pages) == n_pages >= 3  # summary + tables + charts of 2 parameters and 5 golden terms
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "Calibration audit: station st-4x-01" in text
    assert "Integrity check passed" in text
    assert re.search(r"ALARM EWMA\s+illumination\.shift_mm\[0\]", text), "recorded alarm text"
    assert "golden.golden-4x-010.Z11" in text and "illumination.rotation_deg" in text
    # inspection counts: 33 inspections (calibrations at runs 1, 13, 25); verdict by run % 4
    for verdict, count in (("PASS", 15), ("FAIL", 9), ("INCONCLUSIVE", 9), ("total", 33)):
        assert re.search(rf"^\s*{verdict}\s+{count}\s*$", text, re.M), verdict
    for i in range(1, n_pages + 1):
        page = subprocess.run(["pdftotext", "-f", str(i), "-l", str(i), str(pdf), "-"],
                              capture_output=True, text=True, check=True).stdout
        assert f"page {i} of {n_pages}" in page and "Noll ordering" in page  # footer on every page


def test_one_record_is_charted_on_integer_seq_ticks(tmp_path, monkeypatch):
    """A station with a single calibration: the record axis shows seq numbers, not 0.96 ... 1.04."""
    import metrology.audit.report_pdf as report_pdf

    figures = []
    original = report_pdf.chart_figure

    def keep(*args):
        fig, alarms = original(*args)
        figures.append(fig)
        return fig, alarms

    monkeypatch.setattr(report_pdf, "chart_figure", keep)
    path = build_history(tmp_path / "audit.sqlite", n_runs=1)
    with AuditStore(path) as s:
        report_pdf.write_audit_report(s, STATION, out_dir=tmp_path / "r")
    assert figures
    for fig in figures:
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_report_shows_failed_integrity(tmp_path, new_store):
    from metrology.audit.report_pdf import write_audit_report

    path = build_history(new_store(), n_runs=22)
    raw_exec(path, "UPDATE audit_records SET utc = '2020-01-01T00:00:00.000000Z' WHERE seq = 5")
    with AuditStore(path) as s:
        pdf = write_audit_report(s, STATION, since="2025-05-01", out_dir=tmp_path / "r")
    assert pdf.exists()
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "FAILED" in text and "record seq 5" in text


def test_audit_layer_imports_no_torch():
    code = ("import sys, metrology.audit.store, metrology.audit.drift, metrology.audit.golden, "
            "metrology.audit.status, metrology.audit.report_pdf, metrology.commands.audit; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('metrology.physics') "
            "or m.startswith('matplotlib') or m.startswith('reportlab') or m.startswith('psycopg')]; "
            "print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("command", ["inspect", "demo", "simulate", "zernike-export", "wavefront-export", "calibrate",
                                     "audit", "audit init"])
def test_help_has_no_raw_restructured_text(command):
    """--help is read in a terminal: no ``literal`` quotes, :: blocks or :func: roles (issue 17)."""
    out = subprocess.run([sys.executable, "-m", "metrology", *command.split(), "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage:")
    for raw in ("``", "::", ":func:", ":mod:", ":data:"):
        assert raw not in out.stdout, (raw, out.stdout)
