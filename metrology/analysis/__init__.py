"""Analysis layer: wavefront fits and maps, figures of merit, uncertainty propagation, the lens
specification and the verdict (Zernike orderings: :mod:`metrology.orderings`).

Plain numpy/scipy (and the ``zernike`` package); never imports torch or :mod:`metrology.physics`.
Modules: :mod:`.wavefront`, :mod:`.figures`, :mod:`.propagation`, :mod:`.spec`, :mod:`.verdict`,
:mod:`.resolution`.
Importing this package imports nothing else.
"""
