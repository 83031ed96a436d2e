"""The inspection and calibration pipelines: load and validate, reconstruct, analyse, decide.

This is the application layer: it composes the core (physics, solver, analysis) with the file
formats and the audit store; the CLI calls it. Every input is loaded and checked before any long
computation, so bad input fails fast with an :class:`~metrology.errors.InputError` naming the file
and the problem.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from metrology.analysis.spec import load_spec
from metrology.audit.status import misalignment_dict
from metrology.audit.status import station_status as status_of
from metrology.audit.store import AuditStore, resolve_db_path
from metrology.errors import InputError
from metrology.io.capture import read_capture, relative_exposure
from metrology.io.station_file import load_station
from metrology.physics import StationModel
from metrology.progress import reporter
from metrology.physics.illumination import max_nominal_illumination_na
from metrology.limits import MAX_SEED
from metrology.references import (
    CATALOGUE, continued_periodically, read_reference_image, reference_from_image, reference_transmission,
)
from metrology.measurement import Identifiability, Measurement, SolverReport
from metrology.solver import FitResult, NoiseModel, reconstruct
from metrology.solver.schedule import station_schedule
from metrology.solver.device import compute_device, device_label
from metrology.solver.reconstruct import prepare
from metrology.solver.refit_budget import edge_term_u, radius_applies
from metrology.solver.uncertainty import measurement_from_fit


@dataclass
class LoadedInputs:
    """Everything an inspection needs, validated."""

    capture_path: Path
    capture: object  # metrology.io.capture.Capture
    station_path: Path
    station: object  # metrology.io.station_file.StationDescription
    geometry: object  # metrology.physics.StationGeometry
    reference_label: str
    reference: np.ndarray | None  # complex (N, N) over the frame, N = frame_px * upsampling; None in blind mode without one
    inputs: list = field(default_factory=list)  # [{"role", "path", "sha256"}]
    spec_path: Path | None = None
    spec: object = None  # metrology.analysis.spec.LensSpec

    @property
    def reference_from_file(self) -> bool:
        """The reference map came from a file (it covers the frame alone), not from the catalogue."""
        return any(i["role"] == "reference" for i in self.inputs)


def _require_file(path, role: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(p, f"{role} file not found")
    if not p.is_file():
        raise InputError(p, f"{role} path is not a file")
    return p


def _seed(value, source) -> int:
    """A reference sample seed: an integer in ``0..MAX_SEED`` (text of one, from ``ID:seed=N``)."""
    if isinstance(value, str):
        value = int(value) if value.isdigit() and len(value) <= 10 else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise InputError(source, f"the reference seed must be an integer in 0..{MAX_SEED}, got {value!r}")
    return value


def resolve_reference(reference, capture, station, geometry):
    """The reference sample map on the reconstruction grid.

    ``reference`` is None (use the capture's ``reference_sample`` and ``reference_seed``), a
    catalogue id optionally with ``:seed=N`` (``random-broadband:seed=3``, ``0 <= N <= MAX_SEED``),
    or a ``.npy``/``.tif`` file (transmission over the station's field of view; its pixel is
    ``fov / side``).

    Returns
    -------
    label : str
    transmission : ndarray complex (N, N)
        Over the frame's field of view, ``N = frame_px * upsampling`` (the model's margin, where the
        station has one, is added by :func:`model_reference`; before 2026-12-02 the map was drawn
        with the margin's extra samples over the frame's field of view, i.e. at the wrong scale).
    source : dict or None
        ``{"path", "sha256"}`` of the file, when the reference came from one (hashed into the
        report from the bytes read).
    """
    n = geometry.frame_px * geometry.upsampling
    if reference is None:
        sample_id = capture.reference_sample or ""
        if sample_id not in CATALOGUE:
            raise InputError(
                "--reference",
                f"the capture names reference sample {sample_id!r}, which is not in the catalogue "
                f"({', '.join(CATALOGUE)}); pass --reference with a catalogue id or a .npy map",
            )
        seed = _seed(capture.extra.get("reference_seed", 0), "capture metadata 'reference_seed'")
        return f"{sample_id}:seed={seed}", reference_transmission(sample_id, station.fov_um, n, seed=seed), None
    text = str(reference)
    base, _, opts = text.partition(":")
    if base in CATALOGUE:
        seed = 0
        if opts:
            key, _, value = opts.partition("=")
            if key != "seed":
                raise InputError("--reference", f"expected ID or ID:seed=N, got {text!r}")
            seed = _seed(value, "--reference")
        return f"{base}:seed={seed}", reference_transmission(base, station.fov_um, n, seed=seed), None
    path = _require_file(text, "reference sample")
    image, sha256 = read_reference_image(path)
    t = reference_from_image(image, station.fov_um / image.shape[0], station.fov_um, n, path)
    return path.name, t, {"path": str(path), "sha256": sha256}


BLIND_REFERENCE_LABEL = "none (blind mode: the sample is reconstructed, no reference is used)"


def load_inputs(capture, station, spec=None, reference=None, mode: str = "known") -> LoadedInputs:
    """Load and validate the capture, the station description, the spec and the reference.

    In blind mode the reference sample is not used: none needs to be named (a ``--reference`` given
    anyway is still loaded and checked, and hashed into the report).
    """
    station_path = _require_file(station, "station")
    capture_path = _require_file(capture, "capture")
    spec_path = _require_file(spec, "spec") if spec is not None else None
    st = load_station(station_path)
    spec_obj = load_spec(spec_path) if spec_path is not None else None
    cap = read_capture(capture_path)
    st.check_capture(cap, capture_path)
    try:
        geometry = st.geometry(cap.leds)
        geometry.check_sampling(max_nominal_illumination_na(geometry))
    except ValueError as exc:
        raise InputError(station_path, str(exc)) from None
    if mode == "blind" and reference is None:
        label, transmission, ref_file = BLIND_REFERENCE_LABEL, None, None
    else:
        label, transmission, ref_file = resolve_reference(reference, cap, st, geometry)
    # every input is hashed from the very bytes that were parsed (each file is read once)
    inputs = [
        {"role": "capture", "path": str(capture_path), "sha256": cap.sha256},
        {"role": "station", "path": str(station_path), "sha256": st.sha256},
    ]
    if spec_path is not None:
        inputs.append({"role": "spec", "path": str(spec_path), "sha256": spec_obj.sha256})
    if ref_file is not None:
        inputs.append({"role": "reference", **ref_file})
    return LoadedInputs(capture_path, cap, station_path, st, geometry, label, transmission, inputs,
                        spec_path, spec_obj)


def noise_for(loaded: LoadedInputs) -> NoiseModel:
    """The solver's noise model from the station camera and the capture's data type."""
    cam = loaded.station.camera
    frames = loaded.capture.frames
    integer = np.issubdtype(frames.dtype, np.integer)
    return NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale if integer else None, integer)


def foreign_noise(capture) -> NoiseModel:
    """The solver's noise model for a capture from :func:`metrology.io.foreign.load_foreign`: unit
    gain (its frames are pseudo-counts), the read noise it estimated, no saturation (HDR data)."""
    return NoiseModel(gain_e_per_count=1.0, read_noise_counts=float(capture.extra["read_noise_counts"]),
                      saturation_counts=None)


def build_model(loaded: LoadedInputs, mode: str = "known", dtype=None):
    """Nominal station model for the capture (reference map in known/prior modes)."""
    dtype = dtype or torch.float32
    geometry = replace(loaded.geometry, margin_px=margin_for(loaded, mode))
    transmission = model_reference(loaded, geometry) if mode in ("known", "prior") else None
    return StationModel(geometry, transmission, relative_exposure(loaded.capture), dtype=dtype)


def model_reference(loaded: LoadedInputs, geometry):
    """The reference map over the modelled field (the frame and ``geometry.margin_px`` beyond it).

    A catalogue sample repeats with the field of view (:mod:`metrology.references`), so beyond the
    frame it is its own periodic continuation, which the model then holds exactly. A map from a file
    covers the frame alone: the model pads it with its mean (:func:`metrology.physics.sample.pad_with_mean`),
    the best guess of a sample unknown there. (Before 2026-12-02 a margin set in the station file
    made :func:`resolve_reference` draw the map over the frame's field of view with the whole field's
    samples, i.e. shrunk: a known-mode fit of a periodic capture with ``margin_px = 8`` ended with the
    LED tilt at 2.2 degrees and did not converge.)
    """
    ref = loaded.reference
    if ref is None or loaded.reference_from_file:
        return ref
    return continued_periodically(ref, geometry.frame_offset_px)


AUTO_MARGIN_FRACTION = 0.125
"""``reconstruction.margin_px`` when the station file leaves it out: this fraction of the frame (at
least 4 pixels) wherever the sample beyond the frame is unknown (blind mode, a reference map from a
file); 0 for a catalogue reference in known and prior modes (the catalogue's slides repeat with the
field of view, so the frame is exactly periodic)."""


def margin_for(loaded: LoadedInputs, mode: str) -> int:
    """Camera pixels of sample the model keeps beyond each side of the frame (see
    :data:`AUTO_MARGIN_FRACTION` and :class:`metrology.physics.StationGeometry`)."""
    if loaded.station.margin_px is not None:
        return int(loaded.station.margin_px)
    if mode in ("known", "prior") and not loaded.reference_from_file:
        return 0
    return max(4, int(round(AUTO_MARGIN_FRACTION * loaded.geometry.frame_px)))


NON_FINITE_LOSS = 1e30
"""The value the solver's objective gives a NaN or infinite loss (so that a line search reads it as
"much worse"): a loss this large reported to the progress callback means the fit is not finite."""


class NonFiniteFit(Exception):
    """The fit's loss is not a finite number: raised from the progress callback at the first report
    (the solver's start, then every round), so the fit stops in its first round instead of running
    its whole budget on NaN. :func:`measure` turns it into a measurement with nothing measured."""

    def __init__(self, iteration: int, loss: float):
        self.iteration, self.loss = int(iteration), float(loss)
        where = "at the start of the fit" if self.iteration == 0 else f"at iteration {self.iteration}"
        super().__init__(f"the fit stopped: its loss is not a finite number {where} (NaN or infinity: "
                         "data the station model cannot represent, e.g. constant or nearly empty frames)")


def _watch_loss(progress):
    """The progress callback given to the solver: stops a non-finite fit, then reports."""

    def watch(iteration, max_iterations, loss):
        if not (math.isfinite(loss) and abs(loss) < NON_FINITE_LOSS):
            raise NonFiniteFit(iteration, loss)
        if progress is not None:
            progress(iteration, max_iterations, loss)

    return watch


def measure(loaded: LoadedInputs, mode: str = "known", max_iterations: int | None = None, progress=None,
            frozen=(), frames=None, device: str = "cpu"):
    """Reconstruct and evaluate the uncertainty.

    Parameters
    ----------
    progress : Progress or callable, optional
        Stages (``fit: start``, ``fit: iterations``, ``uncertainty``) and iterations
        (:func:`metrology.progress.reporter`); a plain callable gets ``(iteration, max, loss)``.
    frozen : sequence of str
        Parameter paths held at nominal (e.g. every misalignment path, to show the leak).
    frames : ndarray, optional
        Frames to fit instead of the capture's (tests).
    device : str
        Where the fit runs: ``cpu``, ``cuda`` or ``auto`` (:func:`metrology.solver.device.compute_device`).

    Returns
    -------
    fit : metrology.solver.FitResult
    measurement : metrology.measurement.Measurement
        When the loss is not finite (:class:`NonFiniteFit`), nothing is measured: every coefficient
        and uncertainty NaN, the solver not converged with the reason (:func:`not_measured`), which
        the verdict turns into INCONCLUSIVE.
    """
    rep = reporter(progress)
    schedule = station_schedule(loaded.geometry, mode, max_iterations)
    if not loaded.station.fit_na:
        schedule = schedule.without("pupil.na")
    if frozen:
        schedule = schedule.without(*frozen)
    model = build_model(loaded, mode).to(compute_device(device))
    data = loaded.capture.frames if frames is None else frames
    t0 = time.perf_counter()
    rep.stage("fit: start (geometry search, first sample estimate)")
    started = []

    def on_iteration(i, total, loss):
        if not started:  # the solver's first callback (iteration 0) ends its start
            started.append(True)
            rep.stage("fit: iterations (staged L-BFGS rounds, then Gauss-Newton polish)", total, early_stop=True)
        rep(i, total, loss)

    try:
        fit = reconstruct(
            model,
            data,
            noise_for(loaded),
            schedule,
            initialise_geometry=not any(p.startswith("illumination.") for p in frozen),
            progress=_watch_loss(on_iteration),
            # stray light fitted: the background is held at the camera's stated dark offset
            background_counts=loaded.station.background_counts if model.geometry.stray_light else None,
        )
    except NonFiniteFit as exc:
        return not_measured(loaded, mode, schedule, data, str(exc), time.perf_counter() - t0, device)
    refits = loaded.station.radius_refits and radius_applies(fit, loaded.station.uncertainty)
    edge = edge_term_u(fit, loaded.station.uncertainty) > 0  # the fit measured the NA, or the station asks
    rep.stage("uncertainty (Jacobian, covariance, budget" + ("; two re-fits for the pupil radius)" if refits else
                                                            "; a re-fit with the other pupil edge)" if edge else ")"))
    return fit, measurement_from_fit(fit, loaded.station.uncertainty, refit_radius=loaded.station.radius_refits)


def not_measured(loaded: LoadedInputs, mode: str, schedule, frames, why: str, wall_time_s: float, device="cpu"):
    """The fit result and measurement of a fit that measured nothing (``why`` says why).

    The model is the nominal one; coefficients, covariance, chi-square and frame residuals are NaN;
    no station parameter is estimated; the data quality is the capture's.
    """
    model = build_model(loaded, mode).to(compute_device(device))
    noise = noise_for(loaded)
    data, mask, quality, _background = prepare(model, frames, noise)
    n_frames, k = data.shape[0], loaded.geometry.zernike_terms
    fit = FitResult(model=model, schedule=schedule, data=data, mask=mask, noise=noise, quality=quality, history=[],
                    iterations=0, converged=False, message=why, chi2=math.nan, dof=1,
                    frame_residuals=np.full(n_frames, np.nan), wall_time_s=wall_time_s,
                    device=device_label(data.device))
    solver = SolverReport(mode=schedule.mode, loss_name=schedule.loss, iterations=0, converged=False,
                          final_loss=math.nan, history=[], reduced_chi2=math.nan,
                          frame_residuals=fit.frame_residuals, message=why, wall_time_s=wall_time_s)
    measurement = Measurement(
        wavelength_nm=loaded.geometry.wavelength_nm, na=loaded.geometry.na,
        tile_center_mm=tuple(loaded.geometry.tile_center_mm), zernike_waves=np.full(k, np.nan),
        zernike_cov=np.full((k, k), np.nan), station=[], solver=solver, quality=quality,
        identifiability=Identifiability(names=[], correlation=np.zeros((0, 0)), condition_number=math.inf),
    )
    return fit, measurement


audit_store_path = resolve_db_path
"""The audit store every command uses (:func:`metrology.audit.store.resolve_db_path`)."""


def prepare_audit_store(store_path) -> None:
    """Open (or create) the audit store, prove it can be written, verify its hash chain from the
    stored checkpoint and move the checkpoint to the verified head: before the fit, so that a
    foreign, read-only or corrupt store fails fast and the later checks read few records. A broken
    chain is not an error here: the station status reports it (``"untrusted"``)."""
    with AuditStore(store_path) as store:
        store.check_writable()
        store.save_checkpoint(store.verify(incremental=True))


def station_status(store_path, loaded: LoadedInputs, measurement, now) -> dict:
    """Calibration status of the station for this run (:func:`metrology.audit.status.station_status`;
    ``"none"`` without an audit store), with ``required``: whether the station demands a valid
    calibration (``calibration.required``)."""
    if store_path is None:
        return {"status": "none", "reason": "no audit store yet", "calibrated_utc": None, "valid_until": None,
                "required": bool(loaded.station.calibration_required)}
    with AuditStore(store_path) as store:
        current = {k: v["value"] if isinstance(v, dict) else v for k, v in misalignment_dict(measurement.station).items()}
        status = status_of(store, loaded.station.station_id, now, current, loaded.station.drift_limits)
    status["required"] = bool(loaded.station.calibration_required)
    return status


def check_output_dir(out_dir) -> Path:
    """Prove that ``out_dir`` can be written (fail fast, before the fit) without creating it.

    The probe is a new file of a random name created exclusively (``O_EXCL``: a planted file or
    symbolic link of that name makes the probe fail, it is never followed or truncated) in the
    folder, or in its nearest existing parent when it does not exist yet; the folder itself is
    created only when the results are written (:func:`ensure_output_dir`), so bad input or a failed
    run leaves no empty folder behind.
    """
    out = Path(out_dir)
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, "a file is in the way", str(probe))
        fd, name = tempfile.mkstemp(prefix=".metrology-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise InputError(out, f"output folder is not writable ({exc.strerror or exc})") from None
    return out


def ensure_output_dir(out_dir) -> Path:
    """Create ``out_dir`` (and its parents) for writing the results."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"output folder is not writable ({exc.strerror or exc})") from None
    return out


class Timer:
    """Wall-clock sections (seconds)."""

    def __init__(self):
        self.sections = {}
        self._t = time.perf_counter()

    @property
    def last_lap(self) -> float:
        """``time.perf_counter()`` at the end of the last section (the start of the running one)."""
        return self._t

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.sections[name] = self.sections.get(name, 0.0) + now - self._t
        self._t = now
