"""Lens metrology for LED-array QA stations by uncertainty-aware Fourier ptychography.

Importing the package has no side effects. The layers, with one-way imports:

``metrology.physics`` (differentiable station model, torch)
    <- ``metrology.solver`` (joint reconstruction)
    <- ``metrology.analysis`` (wavefront analysis, uncertainty, verdict)
    <- ``metrology.report`` / ``metrology.audit`` (PDF, JSON, SQLite audit store)
    <- ``metrology.cli``.

``metrology.io`` (file formats) and ``metrology.conventions`` are used by all layers.
"""

__version__ = "0.1.0"
