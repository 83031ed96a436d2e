"""Report layer: the JSON result document (built in :mod:`.result` from the plain measurement,
verdict and figures), its schema, and the PDF inspection report.

The PDF consumes the result document and :class:`ReportArrays` (numpy); the layer never imports
torch, :mod:`metrology.physics` or :mod:`metrology.solver`. Heavy libraries (matplotlib,
reportlab) are imported only when a report is drawn.
"""

from metrology.report.document import SCHEMA_PATH, read_document, validate_document, write_json_atomic
from metrology.report.pdf import write_inspection_report
from metrology.report.plots import ReportArrays

__all__ = ["SCHEMA_PATH", "ReportArrays", "read_document", "validate_document", "write_inspection_report",
           "write_json_atomic"]
