"""The project's conventions, stated once.

Every report prints :data:`CONVENTIONS_TEXT`; every module follows it. Tests pin each sign
(``tests/test_physics_*.py``).

Frames and axes
---------------
* One right-handed frame for LEDs, sample, pupil and every map: ``x`` runs along image columns
  (column index increasing), ``y`` runs along image rows (row index increasing), ``z`` points from
  the sample towards the objective. Displayed maps put row 0 at the top, so **+y points down** on
  every image and map in a report.
* LED board: LED ``(row, col)`` sits nominally at ``x = (col - center_col) * pitch_mm``,
  ``y = (row - center_row) * pitch_mm``, ``z = -distance_mm`` (below the sample).
* Misalignment of the LED board (applied in this order to the nominal positions): tilt about x
  (``tilt_x_deg``, right hand about +x), tilt about y (``tilt_y_deg``), rotation about the optical
  axis (``rotation_deg``, from +x towards +y), then shift ``shift_mm = (dx, dy)`` and distance error
  ``distance_error_mm`` (positive: board further from the sample).
* Illumination: LED ``j`` at ``(x_j, y_j, -h_j)`` lights the tile centred at ``(X0, Y0)`` with
  ``k_j = (x_j - X0, y_j - Y0) / (lambda * sqrt((x_j - X0)^2 + (y_j - Y0)^2 + h_j^2))`` (cycles/um,
  exact direction cosines). The exit field's spectrum at the pupil is ``P(f) H(f) O(f + k_j)``:
  an LED at **+x** makes the pupil centre see the object's **+x** spatial frequencies (the object
  spectrum moves by ``-k_j`` relative to the pupil).
* Fourier transform: ``O(f) = sum_x o(x) exp(-i 2 pi f.x)`` (numpy/torch ``fft`` sign).

Pupil and Zernike polynomials
-----------------------------
* ``P(f) = A(f) exp(i 2 pi W(f))``, ``W`` in waves, cut off at ``|f| = NA / lambda``.
* ``W = sum_j c_j Z_j(rho, theta)``, ``rho = |f| / (NA / lambda)``, ``theta`` from +x towards +y.
* Noll ordering and normalisation: each term has unit RMS over the unit disk; even ``j`` carries
  ``cos(m theta)``, odd ``j`` carries ``sin(m theta)``. ``(n, m)`` with signed ``m`` (``m < 0``:
  sine) is the canonical key inside the code; Noll, ANSI and Fringe indices exist at the edges.
* Alignment terms: piston (Noll 1), tip/tilt (Noll 2, 3) and defocus (Noll 4) are never lens
  figures. Tilt is reported as sample lateral position, defocus as sample defocus in um.

Sample pose
-----------
* ``defocus_um``: the sample's exit field propagates ``+defocus_um`` along +z before reaching the
  plane in focus (``H(f) = exp(i 2 pi z (sqrt(1/lambda^2 - |f|^2) - 1/lambda))``); positive means the
  sample sits below the focal plane (further from the objective).
* ``position_um = (sx, sy)``: the reference sample is displaced by ``+sx, +sy`` in the sample plane.

MTF directions
--------------
* Across the field (:mod:`metrology.analysis.field_mtf`), at field point ``H``: the **tangential**
  MTF has its spatial-frequency vector along ``H`` (radial in the field: bars whose lines are
  perpendicular to ``H``), the **sagittal** MTF perpendicular to ``H``. On the axis (``H = 0``)
  tangential is along ``+x``, sagittal along ``+y`` (:data:`MTF_DIRECTIONS_TEXT`, printed on the
  full-field page).

Units
-----
mm for station geometry, um for the sample plane, nm for wavelength and optical path difference,
waves for Zernike coefficients (the optical path difference over the station's stated wavelength,
whatever the LED's true centroid: :func:`metrology.solver.budget.in_stated_waves`), degrees for angles.

Uncertainty and decisions
-------------------------
Every value carries a standard uncertainty ``u`` and an expanded uncertainty ``U = k u`` with
``k = 2``. Decision rule ISO 14253-1: conformance to an upper limit ``T`` is proven only if
``value + U <= T``; non-conformance only if ``value - U > T``; otherwise INCONCLUSIVE.
"""

from __future__ import annotations

COVERAGE_FACTOR = 2.0
"""Coverage factor ``k`` of every expanded uncertainty ``U = k u``."""

DECISION_RULE = (
    "ISO 14253-1: conformance only if value + U <= limit; non-conformance only if "
    "value - U > limit; otherwise inconclusive (k = 2)"
)

CONVENTIONS_TEXT = (
    "Zernike: Noll ordering and normalisation (unit RMS on the unit disk), cos for even j, sin for odd j, "
    "theta from +x towards +y; piston, tilt, defocus are alignment terms. "
    "Axes: x along image columns, y along image rows, +y down on every map, z towards the objective. "
    "Units: mm station, um sample plane, nm wavelength/OPD, waves Zernike (OPD / the stated wavelength). "
    "Decision rule: " + DECISION_RULE + "."
)
"""One-paragraph summary printed in every report footer and JSON result."""

MTF_DIRECTIONS_TEXT = (
    "MTF directions: at field point H the tangential MTF has its frequency vector along H (radial in the "
    "field), the sagittal MTF perpendicular to H; on the axis (H = 0) tangential is along +x, sagittal along +y."
)
"""The sagittal/tangential convention, printed on the full-field page and in the JSON."""

ALIGNMENT_NOLL = (1, 2, 3, 4)
"""Noll indices treated as alignment (piston, tip, tilt, defocus), never lens figures."""
