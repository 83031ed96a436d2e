"""Analysis layer: Zernike orderings, wavefront fits and maps, figures of merit, uncertainty
propagation, the lens specification and the verdict.

Plain numpy/scipy (and the ``zernike`` package); never imports torch or :mod:`metrology.physics`.
Modules: :mod:`.orderings`, :mod:`.wavefront`, :mod:`.figures`, :mod:`.propagation`,
:mod:`.spec`, :mod:`.verdict`. Importing this package imports nothing else.
"""
