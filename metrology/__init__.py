"""Lens metrology for LED-array QA stations by uncertainty-aware Fourier ptychography.

Importing the package has no side effects. The layers, with one-way imports (README, "Layout";
enforced by ``tests/test_layers.py``):

base (``parameters``, ``orderings``, ``conventions``, ``measurement``, ``errors``, ``toml_input``,
``progress``)
    <- ``metrology.physics`` (differentiable station model, torch)
    <- ``metrology.io`` (file formats), ``references``, ``misalignment``, ``simulate``
    <- ``metrology.solver`` (joint reconstruction)
    <- ``metrology.analysis`` (wavefront analysis, uncertainty, verdict)
    <- ``metrology.report`` / ``metrology.audit`` (result document, PDF, JSON, SQLite audit store)
    <- ``pipeline``, ``inspection``, ``calibration`` (the application)
    <- ``metrology.cli`` / ``metrology.commands``.
"""

__version__ = "0.1.0"
