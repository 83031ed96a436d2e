"""The plain results object the solver hands to analysis, verdict, report and audit layers.

No torch tensors here: numpy arrays and floats only, so downstream layers never import the
physics. Produced by :func:`metrology.solver.uncertainty.measurement_from_fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StationEstimate:
    """One scalar station parameter with its standard uncertainty.

    ``name`` is a stable label such as ``"illumination.shift_mm[0]"``; ``unit`` e.g. ``"mm"``.
    """

    name: str
    label: str
    unit: str
    value: float
    u: float
    nominal: float = 0.0


@dataclass
class DataQuality:
    """Data-quality findings of a capture.

    ``flags`` holds ``(code, message, severity)`` with severity ``"error"`` (blocks a PASS) or
    ``"warning"``.
    """

    saturated_fraction: float = 0.0
    hot_pixels: int = 0
    blank_frames: list = field(default_factory=list)
    flags: list = field(default_factory=list)
    duplicate_frames: list = field(default_factory=list)  # [frame, the earlier frame it repeats]


@dataclass
class Identifiability:
    """Correlations of the fitted parameters at the solution (from the Jacobian)."""

    names: list
    correlation: np.ndarray
    condition_number: float
    strong_pairs: list = field(default_factory=list)  # (name_a, name_b, correlation)
    unidentifiable: list = field(default_factory=list)  # names the data cannot separate

    @property
    def max_abs_correlation(self) -> float:
        c = np.abs(self.correlation - np.diag(np.diag(self.correlation)))
        return float(c.max()) if c.size else 0.0


@dataclass
class SolverReport:
    """How the fit went."""

    mode: str
    loss_name: str
    iterations: int
    converged: bool
    final_loss: float
    history: list
    reduced_chi2: float
    frame_residuals: np.ndarray  # (J,) RMS residual per frame / noise sigma
    message: str = ""
    wall_time_s: float = 0.0
    at_bounds: list = field(default_factory=list)  # fitted elements that ended on a search bound
    reduced_chi2_noise: float | None = None  # against the camera noise alone (reduced_chi2: with the learned variances)
    data_uncertainty: dict = field(default_factory=dict)  # learned per-frame scales (metrology.solver.weights)


@dataclass
class BudgetSource:
    """One station constant of the GUM budget (a quantity the fit holds at its stated value).

    ``zernike`` and ``station`` hold its contribution ``sensitivity x u`` to every Noll coefficient
    (waves, signed; shape (K,)) and to every station estimate (by element name, in its unit).
    """

    name: str
    label: str
    unit: str
    u: float
    zernike: np.ndarray
    station: dict = field(default_factory=dict)


@dataclass
class UncertaintyParts:
    """The parts of the coefficient covariance (waves^2, (K, K) each): ``noise`` (Type A: the
    noise model with the learned data variances), ``fit`` (``noise`` widened by the model-mismatch
    estimates: sandwich, jackknifes, Birge ratio; see :mod:`metrology.solver.uncertainty`) and the
    station constants (:attr:`Measurement.budget`). ``station_noise`` and ``station_fit``: the same
    for the station estimates (standard uncertainties by element name)."""

    noise: np.ndarray
    fit: np.ndarray
    station_noise: dict = field(default_factory=dict)
    station_fit: dict = field(default_factory=dict)


@dataclass
class Measurement:
    """Everything measured from one capture.

    Attributes
    ----------
    wavelength_nm, na : float
        Of the lens under test.
    tile_center_mm : (float, float)
        Field position of the tile.
    zernike_waves : ndarray, shape (K,)
        Noll 1..K pupil phase coefficients (waves). Noll 1-4 are alignment terms (held at 0 in
        the pupil; tilt and defocus are reported as sample position and defocus).
    zernike_cov : ndarray, shape (K, K)
        Covariance of ``zernike_waves`` (waves^2), Type A and Type B combined: the fit's own
        (:attr:`parts`) plus the station constants of the GUM budget (:attr:`budget`).
    station : list of StationEstimate
        Station misalignment and sample pose with uncertainties.
    pupil_amplitude : ndarray, shape (P, P)
        Pupil amplitude on a normalised grid covering the unit disk (for reports).
    solver, quality, identifiability
        See the classes above.
    arrays : dict
        Optional arrays for reports (sample transmission, frames, residual maps, LED data).
    vignetting : list of StationEstimate
        The fitted second aperture (``pupil.vignetting_radius``, ``pupil.vignetting_center[0/1]``,
        pupil radii) where the station models one; empty otherwise.
    lens_parameters : list of StationEstimate
        The lens's scalar parameters the mode fitted (``pupil.na``, the pupil edge's NA, in blind
        mode; then :attr:`na` is the fitted value); empty where the mode holds them.
    """

    wavelength_nm: float
    na: float
    tile_center_mm: tuple
    zernike_waves: np.ndarray
    zernike_cov: np.ndarray
    station: list
    solver: SolverReport
    quality: DataQuality
    identifiability: Identifiability
    pupil_amplitude: np.ndarray | None = None
    arrays: dict = field(default_factory=dict)
    budget: list = field(default_factory=list)  # BudgetSource per station constant with u > 0
    parts: UncertaintyParts | None = None
    vignetting: list = field(default_factory=list)
    lens_parameters: list = field(default_factory=list)

    @property
    def zernike_u(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.zernike_cov), 0, None))
