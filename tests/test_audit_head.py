"""The audit record's seq and chain hash in the report (issue 17) with the results written as one
unit whose record carries the files' SHA-256 (issue 15): the files state the head the record will
extend, and the record is appended only onto that head."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

import metrology.inspection as inspection
from metrology.audit.store import AuditStore, HeadMoved
from tests.report_example import example_arrays, example_document


def test_append_onto_a_moved_head_appends_nothing(tmp_path):
    with AuditStore(tmp_path / "a.sqlite") as store:
        head = store.head()
        store.append("alarm", "st-1", {"note": "another writer"})
        with pytest.raises(HeadMoved):
            store.append("alarm", "st-1", {"note": "late"}, expect_head=head)
        assert len(store) == 1
        moved = store.head()
        assert store.append("alarm", "st-1", {"note": "onto the new head"}, expect_head=moved).seq == 2


def test_results_are_made_again_when_another_writer_appends_first(tmp_path, monkeypatch):
    doc = example_document("PASS")
    db, out = tmp_path / "a.sqlite", tmp_path / "out"
    AuditStore(db).close()
    result = inspection.InspectionResult(doc, example_arrays(doc), SimpleNamespace(station=[]),
                                         {"status": "none"}, datetime(2026, 11, 26, 12, tzinfo=timezone.utc))
    heads = []
    append = inspection._append_inspection

    def another_writer_first(result, store, files, head=None):
        if not heads:  # another inspection is recorded between reading the head and the commit
            with AuditStore(store) as s:
                s.append("inspection", "QA-STATION-03", {"note": "another writer"})
        heads.append(head)
        return append(result, store, files, head)

    monkeypatch.setattr(inspection, "_append_inspection", another_writer_first)
    pdf, js = inspection.write_report(result, out, audit_db=db)
    assert [h[0] for h in heads] == [0, 1]
    written = json.loads(js.read_text())
    with AuditStore(db, create=False) as store:
        records = store.records(kind="inspection")
    assert [r.seq for r in records] == [1, 2]
    assert written["audit_record"]["seq"] == 2
    assert written["audit_record"]["previous_chain_sha256"] == records[0].chain_sha256 == records[1].prev_sha256
    assert records[1].content["result"]["files"] == {"pdf": pdf.name, "json": js.name}
    assert sorted(p.name for p in out.iterdir()) == sorted([pdf.name, js.name])  # nothing of the first try
