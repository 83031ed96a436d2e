"""MTF across the field: sagittal and tangential MTF at a field point ``H`` from the field model's
Zernike coefficients there (``docs/full-field.md``, "MTF across the field").

* **Directions** (:data:`metrology.conventions.MTF_DIRECTIONS_TEXT`): the tangential MTF has its
  spatial-frequency vector along ``H`` (radial in the field), the sagittal MTF perpendicular to it;
  on the axis the tangential direction is ``+x``.
* **Pupil**: uniform amplitude on the station's NA, phase the field model's Noll ``5..K`` at ``H``
  plus the focus term below; the incoherent OTF is the pupil's normalised autocorrelation,
  evaluated on the overlap of the pupil and its shifted copy
  (:func:`metrology.analysis.propagation.mtf_batch`); the diffraction limit of the unvignetted
  stop (:func:`metrology.analysis.figures.mtf_diffraction_limited`) is reported beside it. Where the
  field fit found a second aperture (``field.vignetting``, :func:`metrology.analysis.field.fit_field_vignetting`)
  the pupil at ``H`` is the stop intersected with it (:func:`mtf_vignetted_batch`): the MTF a bench
  measures there, normalised to 1 at zero frequency.
* **Focus**: the image plane through the axis's best focus, as on an MTF bench at one focus
  setting. A tile's fitted sample defocus is its own best (medial) focus; the field-curvature fit
  ``z(H) = z0 + t.H + c |H|^2`` (:func:`metrology.analysis.field.fit_field_curvature`) puts the
  point ``H`` at ``c |H|^2`` um of sample defocus from that plane, a Noll-4 term of
  ``-c |H|^2 (1 - sqrt(1 - NA^2)) / (2 sqrt(3) lambda)`` waves (paraxial; the sign of
  ``sample.defocus_um``, :mod:`metrology.conventions`). The image-plane tilt ``t`` is the sample's
  tilt on the station, not the lens's, and is left out. Astigmatism splits sagittal from tangential
  only away from its medial focus: this focus term is what separates them. Without a
  field-curvature fit every point is at its own best focus (``focus`` says which).
* **Uncertainty**: the same Monte Carlo as every derived figure
  (:func:`metrology.analysis.propagation.monte_carlo`) over the coefficients' covariance at ``H``
  (the field model's, propagated, plus its per-field scatter: :meth:`FieldModel.lens_at`) and the
  curvature's ``u`` on the focus term (the two fits are independent). The second aperture's own
  ``u`` (the field fit's covariance of ``r`` and ``s``) is added in quadrature, linearly: the MTF at
  the fitted coefficients with the aperture moved by one standard deviation along each principal
  direction of that covariance, both ways (:func:`aperture_variations`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from metrology.analysis.figures import cutoff_cyc_per_mm, mtf_diffraction_limited
from metrology.analysis.propagation import N_DRAWS, SEED, Quantity, monte_carlo, mtf_batch, sample_coefficients
from metrology.analysis.wavefront import zernike_basis
from metrology.field_terms import vignetting_at

DIRECTIONS = ("sagittal", "tangential")
FOCUS_IMAGE_PLANE = ("image plane through the axis's best focus (field curvature c |H|^2 from the tiles' sample "
                     "defocus; the sample's tilt left out)")
FOCUS_BEST = "each field point at its own best (medial) focus: no field-curvature fit"
DRAWS = 500
"""Monte Carlo draws per field point (the MTF is an FFT-free overlap integral per draw, direction
and frequency; 500 draws give ``u`` to about 3 %)."""


VIGNETTED_GRID = 160
"""Grid points per pupil diameter of the vignetted MTF (:func:`mtf_vignetted_batch`): the areas are
counted on it, to about 0.5 % of the pupil's."""


@lru_cache(maxsize=16)  # each entry a (points, K) float64 basis difference, up to ~5 MB
def _vignetted_overlap(nu: float, azimuth_deg: float, n_terms: int, aperture: tuple, n_grid: int = VIGNETTED_GRID):
    """``B(p) - B(p - s)`` on the overlap of the vignetted pupil ``P`` (the unit stop inside the
    circle ``aperture = (r, cx, cy)``) and its copy shifted by ``s = 2 nu`` pupil radii along the
    azimuth, and the overlap's area over ``P``'s (both counted on one ``n_grid`` grid)."""
    r, cx, cy = aperture
    a = -1.0 + (np.arange(n_grid) + 0.5) * (2.0 / n_grid)
    x, y = np.meshgrid(a, a)
    x, y = x.ravel(), y.ravel()
    sx, sy = 2.0 * nu * math.cos(math.radians(azimuth_deg)), 2.0 * nu * math.sin(math.radians(azimuth_deg))

    def inside(px, py):
        return (px**2 + py**2 <= 1.0) & ((px - cx) ** 2 + (py - cy) ** 2 <= r * r)

    pupil = inside(x, y)
    both = pupil & inside(x - sx, y - sy)
    area = float(both.sum()) / max(float(pupil.sum()), 1.0)
    x, y = x[both], y[both]
    d = zernike_basis(n_terms, x, y) - zernike_basis(n_terms, x - sx, y - sy)
    d.setflags(write=False)
    return d, area


def mtf_vignetted_batch(samples, nu: float, azimuth_deg: float, aperture) -> np.ndarray:
    """MTF at normalised frequency ``nu`` (of the stop's cut-off) along ``azimuth_deg`` of each row of
    Noll coefficients (D, K; Noll 4 kept as the focus term, 1-3 dropped) through the stop vignetted
    by the second aperture ``(r, cx, cy)`` (pupil radii): ``(overlap area / pupil area) |<exp(i 2 pi
    (W(p) - W(p - s)))>_overlap|`` (uniform amplitude), 1 at ``nu = 0``."""
    s = np.atleast_2d(np.asarray(samples, dtype=np.float64)).copy()
    s[:, :3] = 0.0
    if nu <= 0.0:
        return np.ones(len(s))
    key = tuple(round(float(v), 9) for v in aperture)
    d, area = _vignetted_overlap(round(float(nu), 12), round(float(azimuth_deg), 9), s.shape[1], key)
    if not len(d):
        return np.zeros(len(s))
    return area * np.abs(np.exp(2j * np.pi * (s @ d.T)).mean(axis=1))


def _mtf_through(samples, nu: float, azimuth_deg: float, aperture) -> np.ndarray:
    """The MTF of each row through the stop alone (``aperture`` None) or the cut pupil."""
    if aperture is None:
        return mtf_batch(samples, nu, (azimuth_deg,), keep_defocus=True)
    return mtf_vignetted_batch(samples, nu, azimuth_deg, aperture)


def aperture_variations(vignetting, h) -> list:
    """``(plus, minus)`` second apertures ``(r, cx, cy)`` at ``h`` (or None where one no longer
    reaches the stop) with ``(r, s)`` moved by one standard deviation along each principal direction
    of its covariance; ``vignetting = (values (2,), cov (2, 2))`` (:func:`aperture_of`)."""
    values, cov = (np.asarray(v, dtype=np.float64) for v in vignetting)
    ev, vec = np.linalg.eigh(0.5 * (cov + cov.T))
    return [(vignetting_at(values + math.sqrt(max(e, 0.0)) * v, h), vignetting_at(values - math.sqrt(max(e, 0.0)) * v, h))
            for e, v in zip(ev, vec.T) if e > 0]


def tangential_azimuth_deg(h) -> float:
    """Azimuth of the tangential frequency vector at ``h`` (2,), degrees from +x towards +y: the
    direction of ``H``; 0 (``+x``) on the axis."""
    hx, hy = float(h[0]), float(h[1])
    return 0.0 if math.hypot(hx, hy) < 1e-9 else math.degrees(math.atan2(hy, hx))


def defocus_noll4_per_um(na: float, wavelength_nm: float) -> float:
    """Noll-4 coefficient (waves) of 1 um of sample defocus: ``-(1 - sqrt(1 - NA^2)) / (2 sqrt(3) lambda)``."""
    return -(1.0 - math.sqrt(1.0 - na * na)) / (wavelength_nm * 1e-3) / (2.0 * math.sqrt(3.0))


def image_plane_focus(curvature, h: np.ndarray, na: float, wavelength_nm: float) -> tuple:
    """Noll-4 value and standard uncertainty (waves) at each point ``h`` (P, 2) from the field-curvature
    fit (a :class:`~metrology.analysis.field.LinearFit` with ``curvature_um``; ``None``: zeros)."""
    h = np.asarray(h, dtype=np.float64).reshape(-1, 2)
    if curvature is None:
        return np.zeros(len(h)), np.zeros(len(h))
    c, uc = curvature.value("curvature_um")
    r2 = (h**2).sum(axis=1)
    per_um = defocus_noll4_per_um(na, wavelength_nm)
    return c * r2 * per_um, abs(uc * per_um) * r2


def mtf_at_point(c, cov, h, frequencies_cyc_per_mm, wavelength_nm: float, na: float, n_draws: int = N_DRAWS,
                 seed: int = SEED, aperture=None, variations=()) -> dict:
    """Sagittal and tangential MTF at one field point with their uncertainty.

    Parameters
    ----------
    c : array_like, shape (K,)
        Noll 1..K coefficients at the point (waves); piston and tilt are ignored, Noll 4 is the
        focus term (:func:`image_plane_focus`), Noll 5..K the lens.
    cov : array_like, shape (K, K)
        Their covariance (waves^2).
    h : array_like, shape (2,)
        The field point (``H`` units): sets the directions.
    frequencies_cyc_per_mm : sequence of float, length F
        Object-side frequencies (below the cut-off ``2 NA / lambda``).
    aperture : (float, float, float), optional
        The second aperture ``(r, cx, cy)`` at the point (:func:`metrology.field_terms.vignetting_at`;
        None: the stop alone).
    variations : list of (plus, minus) apertures, optional
        The aperture moved by its own uncertainty (:func:`aperture_variations`): half the MTF's
        change between each pair is added to ``u`` in quadrature.

    Returns
    -------
    dict
        ``sagittal`` and ``tangential``: lists (F) of :class:`Quantity`; ``diffraction_limited`` (F,);
        ``tangential_azimuth_deg``.
    """
    c = np.asarray(c, dtype=np.float64).copy()
    cv = np.asarray(cov, dtype=np.float64).copy()
    c[:3], cv[:3, :], cv[:, :3] = 0.0, 0.0, 0.0
    samples = sample_coefficients(c, cv, n_draws, seed)
    az_t = tangential_azimuth_deg(h)
    cut = cutoff_cyc_per_mm(wavelength_nm, na)
    out = {"sagittal": [], "tangential": [], "diffraction_limited": [], "tangential_azimuth_deg": az_t}
    for f in frequencies_cyc_per_mm:
        nu = float(f) / cut
        for name, az in (("tangential", az_t), ("sagittal", az_t + 90.0)):
            q = monte_carlo(lambda s, nu=nu, az=az: _mtf_through(s, nu, az, aperture), c, cv, "", samples=samples)
            extra = [0.5 * (_mtf_through(c[None], nu, az, plus)[0] - _mtf_through(c[None], nu, az, minus)[0])
                     for plus, minus in variations]
            out[name].append(Quantity.from_u(q.value, math.hypot(q.u, *extra), q.unit, q.method) if extra else q)
        out["diffraction_limited"].append(float(mtf_diffraction_limited(nu)))
    return out


def mtf_at_points(model, curvature, h, frequencies_cyc_per_mm, wavelength_nm: float, na: float,
                  n_draws: int = N_DRAWS, seed: int = SEED, vignetting=None) -> list:
    """:func:`mtf_at_point` at every point ``h`` (P, 2) of a field model (``FieldModel``) in the
    image plane of ``curvature`` (:func:`image_plane_focus`), through the field's second aperture
    ``vignetting = ((r, s), cov)`` (:func:`aperture_of`) where given; a list (P) of its dicts."""
    h = np.asarray(h, dtype=np.float64).reshape(-1, 2)
    c, cov = model.lens_at(h)
    if c.shape[1] < 4:
        raise ValueError("the field model ends before Noll 4")
    c4, u4 = image_plane_focus(curvature, h, na, wavelength_nm)
    c[:, 3] = c4
    cov[:, 3, :], cov[:, :, 3] = 0.0, 0.0
    cov[:, 3, 3] = u4**2
    if vignetting is None:
        return [mtf_at_point(ci, vi, hi, frequencies_cyc_per_mm, wavelength_nm, na, n_draws, seed)
                for ci, vi, hi in zip(c, cov, h)]
    return [mtf_at_point(ci, vi, hi, frequencies_cyc_per_mm, wavelength_nm, na, n_draws, seed,
                         vignetting_at(vignetting[0], hi), aperture_variations(vignetting, hi))
            for ci, vi, hi in zip(c, cov, h)]


class FieldMtf:
    """Sagittal and tangential MTF of a full-field measurement (``model``: a ``FieldModel``,
    ``curvature``: the field-curvature fit or ``None``) at the ``frequencies`` (cycles/mm), each field
    point computed once (the zone verdicts and the result document share the points).

    ``at(h)`` returns :func:`mtf_at_point`'s dict at ``h`` (2,). ``vignetting``: the field's second
    aperture ``((r, s), cov)`` (:func:`aperture_of`), or None.
    """

    def __init__(self, model, curvature, frequencies, wavelength_nm: float, na: float, n_draws: int = DRAWS,
                 seed: int = SEED, vignetting=None):
        self.model, self.curvature, self.vignetting = model, curvature, vignetting
        self.frequencies = tuple(float(f) for f in frequencies)
        self.wavelength_nm, self.na, self.n_draws, self.seed = float(wavelength_nm), float(na), int(n_draws), seed
        self._done = {}

    @property
    def focus(self) -> str:
        return focus_text(self.curvature)

    def at(self, h) -> dict:
        key = (round(float(h[0]), 9), round(float(h[1]), 9))
        if key not in self._done:
            self._done[key] = mtf_at_points(self.model, self.curvature, np.array([key]), self.frequencies,
                                            self.wavelength_nm, self.na, self.n_draws, self.seed,
                                            self.vignetting)[0]
        return self._done[key]

    def index(self, frequency: float) -> int:
        """Position of ``frequency`` among :attr:`frequencies`."""
        return min(range(len(self.frequencies)), key=lambda i: abs(self.frequencies[i] - float(frequency)))


def focus_text(curvature) -> str:
    """Which focus the MTF across the field is at (:data:`FOCUS_IMAGE_PLANE` or :data:`FOCUS_BEST`)."""
    return FOCUS_BEST if curvature is None else FOCUS_IMAGE_PLANE


def aperture_of(field) -> tuple | None:
    """The second aperture a full-field measurement fitted (``field.vignetting``, a ``LinearFit``)
    as ``((r, s), cov)`` (pupil radii; ``cov`` (2, 2) the fit's Birge-scaled covariance), or None."""
    fit = getattr(field, "vignetting", None)
    if fit is None:
        return None
    i = [fit.names.index("radius"), fit.names.index("shift_per_h")]
    return np.asarray(fit.values)[i], np.asarray(fit.cov_scaled)[np.ix_(i, i)]
