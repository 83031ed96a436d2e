"""Report layer: the JSON result document, its schema, and the PDF inspection report.

Consumes a plain JSON-able result document and :class:`ReportArrays` (numpy); never imports
torch, :mod:`metrology.physics` or :mod:`metrology.solver`. Heavy libraries (matplotlib,
reportlab) are imported only when a report is drawn.
"""

from metrology.report.document import SCHEMA_PATH, read_document, validate_document, write_json_atomic
from metrology.report.pdf import write_inspection_report
from metrology.report.plots import ReportArrays

__all__ = ["SCHEMA_PATH", "ReportArrays", "read_document", "validate_document", "write_inspection_report",
           "write_json_atomic"]
