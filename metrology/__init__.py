"""Lens metrology for LED-array QA stations by uncertainty-aware Fourier ptychography.

Importing the package has no side effects. The layers, with one-way imports (README, "Layout";
enforced by ``tests/test_layers.py``):

base (``parameters``, ``orderings``, ``conventions``, ``measurement``, ``errors``, ``toml_input``,
``progress``)
    <- ``metrology.physics`` (differentiable station model, torch)
    <- ``metrology.io`` (file formats), ``references``, ``misalignment``, ``simulate``
    <- ``metrology.solver`` (joint reconstruction)
    <- ``metrology.analysis`` (wavefront analysis, uncertainty, verdict)
    <- ``metrology.report`` / ``metrology.audit`` (result document, PDF, JSON, SQLite or PostgreSQL
    audit store)
    <- ``pipeline``, ``inspection``, ``calibration``, ``batch`` (the application)
    <- ``metrology.cli`` / ``metrology.commands``.

The Python API (loaded on first use, so that ``import metrology`` stays light)::

    result = metrology.inspect("capture.tif", "station.toml", "spec.toml")   # no file written
    result.verdict, result.document["figures_of_merit"]["rms_waves"]
    pdf, json_file = metrology.write_report(result, "reports")

This facade is the package's one reach above its own (base) layer: :func:`__getattr__` loads
:mod:`metrology.inspection` by name on first use; nothing else in the base layer imports upwards.
"""

__version__ = "0.1.0"

_API = {"inspect": "metrology.inspection", "write_report": "metrology.inspection",
        "record": "metrology.inspection", "InspectionResult": "metrology.inspection"}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        # lazy: the API loads torch and the application layer only when first used
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'metrology' has no attribute {name!r}")
