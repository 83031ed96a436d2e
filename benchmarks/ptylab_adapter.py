"""Run PtyLab (PyPI ``ptylab``, 0.3.7) on one of our simulated captures.

Benchmark-only code: needs the optional ``bench`` extra (``pip install -e '.[bench]'``, which
brings ``ptylab`` and ``h5py``). Nothing in :mod:`metrology` imports this module.

Conversion of a capture to PtyLab's FPM input (one HDF5 file, SI units):

* ``ptychogram`` (J, n, n): frames minus the estimated background, clipped at 0, divided by the
  relative exposure, float32, ``fftshift``-ed so that the sample-plane origin (our pixel 0) sits
  at PtyLab's centre pixel ``n // 2`` (its Fraunhofer operator is a centred FFT);
* ``encoder`` (J, 2): nominal LED positions relative to the tile centre, **rows first**
  ``(y, x)``, in m; ``zled``: nominal LED distance (m);
* ``dxd``: the object-side pixel (camera pixel / magnification, m) with ``magnification = 1``
  (PtyLab divides ``dxd`` by ``magnification``); ``wavelength`` (m); ``NA`` (nominal).

PtyLab's FPM forward model is ``I_j = |FFT_c{ O_p[patch_j] P_p }|^2`` with the patch at
``-k_j`` (rounded to whole frequency pixels). A forward FFT of a product of spectra forms the
image point-reflected, so relative to our convention (:mod:`metrology.conventions`, field
``IFFT{ P(f) O(f + k_j) }``) PtyLab's pupil is ``P_p(u) = P(-u)`` and its object spectrum is
``O_p(v) = O(-v)``. :func:`pupil_in_our_frame` undoes the point reflection (about the centre
pixel ``n // 2``).
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np

ENGINES = ("ePIE", "mPIE", "qNewton", "mqNewton")


def nominal_led_xy_mm(station, leds) -> np.ndarray:
    """Nominal LED positions ``(x, y)`` relative to the tile centre (mm), shape (J, 2)."""
    rc = np.asarray(leds, dtype=np.float64).reshape(-1, 2)
    x = (rc[:, 1] - station.led_center_col) * station.led_pitch_mm - station.tile_center_mm[0]
    y = (rc[:, 0] - station.led_center_row) * station.led_pitch_mm - station.tile_center_mm[1]
    return np.stack([x, y], axis=-1)


def encoder_from_frequencies(k_cyc_per_um: np.ndarray, wavelength_nm: float, zled_mm: float) -> np.ndarray:
    """PtyLab ``encoder`` (J, 2; rows first, m) that reproduces given illumination frequencies.

    PtyLab takes the illumination sine from a straight line, ``s = e / sqrt(|e|^2 + zled^2)``;
    ``e = s zled / sqrt(1 - |s|^2)`` inverts it, so a station with a refracting slide (our
    :class:`metrology.physics.illumination.Illumination` solves the refracted ray) is passed to
    PtyLab with the same ``k_j``.

    Parameters
    ----------
    k_cyc_per_um : ndarray, shape (J, 2)
        Illumination spatial frequencies ``(kx, ky)`` (cycles/um).
    wavelength_nm : float
    zled_mm : float
        The LED distance written as ``zled``.
    """
    s = np.asarray(k_cyc_per_um, dtype=np.float64) * wavelength_nm * 1e-3
    e_xy = s * zled_mm * 1e-3 / np.sqrt(1.0 - np.sum(s**2, axis=-1, keepdims=True))
    return np.stack([e_xy[:, 1], e_xy[:, 0]], axis=-1)


def defocus_phase_rad(n: int, df: float, wavelength_um: float, defocus_um: float) -> np.ndarray:
    """Our sample-defocus phase ``2 pi z (k_z - k)`` on a centred ``(n, n)`` grid (radians).

    Same expression as :meth:`metrology.physics.pupil.Pupil.forward` (sign: see
    :mod:`metrology.conventions`); ``df`` is the grid step (cycles/um). Point-symmetric, so it is
    the same array in PtyLab's point-reflected frame up to the one-pixel offset of even ``n``.
    """
    u = (np.arange(n) - n // 2) * df
    f2 = u[None, :] ** 2 + u[:, None] ** 2
    inv = 1.0 / wavelength_um
    return 2 * np.pi * defocus_um * (-f2 / (np.sqrt(np.clip(inv**2 - f2, 1e-12, None)) + inv))


def fit_defocus_um(pupil: np.ndarray, df: float, wavelength_um: float, na: float, n_terms: int = 15,
                   inner: float = 0.9):
    """Sample defocus and Noll 5..``n_terms`` of a free pupil map in our frame.

    Fits ``piston + tilt + defocus_phase_rad(z) + 2 pi sum c_j Z_j`` to the phase of ``pupil``
    inside ``inner`` x the pupil radius, weighted by ``|P|^2``, iterating on the wrapped residual
    (no phase unwrapping needed while each step is below pi).

    Returns
    -------
    defocus_um : float
    zernike_waves : ndarray, shape (n_terms - 4,)
        Noll 5..``n_terms`` (waves).
    """
    from metrology.physics.zernike import evaluate_numpy

    p = np.asarray(pupil)
    n = p.shape[0]
    u = (np.arange(n) - n // 2) * df / (na / wavelength_um)
    x, y = np.meshgrid(u, u)
    inside = x**2 + y**2 < inner**2
    basis = [np.ones_like(x), x, y, defocus_phase_rad(n, df, wavelength_um, 1.0)]
    for j in range(5, n_terms + 1):
        unit = np.zeros(j)
        unit[j - 1] = 1.0
        basis.append(2 * np.pi * evaluate_numpy(unit, x, y))
    a = np.stack([b[inside] for b in basis], axis=-1)
    w = np.abs(p[inside])
    coef = np.zeros(a.shape[1])
    for _ in range(50):
        r = np.angle(p[inside] * np.exp(-1j * (a @ coef)))
        step = np.linalg.lstsq(a * w[:, None], r * w, rcond=None)[0]
        coef += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(coef[3]), coef[4:].copy()  # the basis carries the 2 pi: coefficients in waves


def write_ptylab_input(path, station, leds, frames, background_counts: float, exposure=None,
                       encoder=None) -> None:
    """Write a capture as PtyLab FPM input (HDF5, see the module docstring).

    Parameters
    ----------
    path : str or Path
        Output ``.hdf5`` file.
    station : StationDescription
    leds : sequence of (row, col)
        Capture order of the frames.
    frames : ndarray, shape (J, n, n)
        Measured frames (counts).
    background_counts : float
        Camera background subtracted from every frame (counts).
    exposure : ndarray (J,), optional
        Relative exposure of each frame (frames are divided by it).
    encoder : ndarray (J, 2), optional
        LED positions to write (rows first, m; e.g. :func:`encoder_from_frequencies`); default
        the nominal board (:func:`nominal_led_xy_mm`, straight line, no slide).
    """
    import h5py

    data = np.asarray(frames, dtype=np.float64) - float(background_counts)
    data = np.clip(data, 0.0, None)
    if exposure is not None:
        data = data / np.asarray(exposure, dtype=np.float64)[:, None, None]
    data = np.fft.fftshift(data, axes=(-2, -1)).astype(np.float32)
    if encoder is None:
        xy = nominal_led_xy_mm(station, leds)
        encoder = np.stack([xy[:, 1], xy[:, 0]], axis=-1) * 1e-3  # rows first (y, x), m
    with h5py.File(str(path), "w") as f:
        f.create_dataset("ptychogram", data=data)
        f.create_dataset("wavelength", data=station.wavelength_nm * 1e-9)
        f.create_dataset("encoder", data=encoder)
        f.create_dataset("dxd", data=station.camera_pixel_um / station.magnification * 1e-6)
        f.create_dataset("zled", data=station.led_distance_mm * 1e-3)
        f.create_dataset("magnification", data=1.0)
        f.create_dataset("NA", data=station.na)


def pupil_in_our_frame(probe: np.ndarray) -> np.ndarray:
    """PtyLab's probe (centred, ``(n, n)``) as our pupil ``P(u)`` on the centred grid.

    ``P(u) = P_p(-u)``: index ``i`` (centre ``n // 2``) maps to ``(n - i) % n`` on both axes.
    """
    p = np.asarray(probe).reshape(probe.shape[-2:])
    n0, n1 = p.shape
    return p[(n0 - np.arange(n0)) % n0][:, (n1 - np.arange(n1)) % n1]


def encoder_to_xy_mm(encoder: np.ndarray) -> np.ndarray:
    """PtyLab encoder (J, 2), rows first, m -> LED ``(x, y)`` in mm."""
    e = np.asarray(encoder, dtype=np.float64)
    return np.stack([e[:, 1], e[:, 0]], axis=-1) * 1e3


def run_ptylab(path, *, engine: str = "qNewton", iterations: int = 50, calibrate: bool = True,
               calibration_mode: str = "SimilarityTransform", calibrate_radius: bool = False,
               position_correction: bool = False, adaptive_denoising: bool = True, seed: int = 0,
               quiet: bool = True, gpu: bool = False, initial_defocus_um: float = 0.0) -> dict:
    """Calibrate the LED positions (optional) and reconstruct with one PtyLab engine.

    Parameters
    ----------
    path : str or Path
        Input written by :func:`write_ptylab_input`.
    engine : {"ePIE", "mPIE", "qNewton", "mqNewton"}
    iterations : int
        Engine iterations (sweeps over all LEDs).
    calibrate : bool
        Run ``IlluminationCalibration`` (bright-field circle fit + RANSAC transform) first and
        apply it with ``reconstruction.reset_positioncorrection()`` (the calibration writes only
        ``ExperimentalData.encoder``; the engines read ``Reconstruction.encoder_corrected``).
    calibration_mode : str
        ``"Translation"``, ``"EuclideanTransform"``, ``"SimilarityTransform"``, ``"AffineTransform"``.
    calibrate_radius : bool
        Let the calibration refit the pupil radius (NA).
    position_correction : bool
        PtyLab's in-loop ``positionCorrectionSwitch``.
    adaptive_denoising : bool
        ``params.adaptiveDenoisingSwitch`` (as in PtyLab's FPM tutorial).
    seed : int
        Seed of numpy's global RNG (PtyLab's initial guesses add random noise).
    quiet : bool
        Swallow PtyLab's prints and progress bars.
    gpu : bool
        ``params.gpuSwitch`` (PtyLab on CuPy; needs a CUDA GPU and cupy).
    initial_defocus_um : float
        Sample defocus put into the initial (circular) pupil, our convention
        (:func:`defocus_phase_rad`); the engines then update the pupil freely.

    Returns
    -------
    dict
        ``pupil`` (n, n) complex in our frame (:func:`pupil_in_our_frame`), ``led_xy_mm`` (J, 2)
        corrected LED positions used by the engine, ``led_xy_calibrated_mm`` after the
        calibration only, ``wall_s`` (calibration + reconstruction), ``cpu_s`` (the process's CPU
        seconds over the same span, all threads), ``calibration_s``,
        ``error`` (PtyLab's error metric per iteration), ``na`` (NA after calibration),
        ``settings`` (dict), ``df`` (the pupil grid step, cycles/um).
    """
    import PtyLab
    from PtyLab import Engines

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    np.random.seed(seed)
    sink = io.StringIO()
    ctx = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    settings = {
        "engine": engine, "iterations": iterations, "calibrate": calibrate,
        "calibration_mode": calibration_mode if calibrate else None, "calibrate_radius": calibrate_radius,
        "position_correction": position_correction, "adaptive_denoising": adaptive_denoising,
        "positionOrder": "NA", "probeBoundary": True, "initialProbe": "circ", "initialObject": "upsampled",
        "gpu": bool(gpu), "initial_defocus_um": float(initial_defocus_um),
    }
    with ctx:
        t0, c0 = time.perf_counter(), time.process_time()
        data, recon, params, monitor, eng, calib = PtyLab.easyInitialize(
            str(path), engine=getattr(Engines, engine), operationMode="FPM", dummyMonitor=True
        )
        led_cal = encoder_to_xy_mm(recon.encoder_corrected)
        if calibrate:
            calib.plot = False
            calib.fit_mode = calibration_mode
            calib.calibrateRadius = calibrate_radius
            calib.runCalibration()
            recon.reset_positioncorrection()  # without this the calibration has no effect
            led_cal = encoder_to_xy_mm(recon.encoder_corrected)
        t_cal = time.perf_counter() - t0
        recon.initialProbe = "circ"
        recon.initialObject = "upsampled"
        recon.initializeObjectProbe()
        df = 1.0 / (recon.Np * recon.dxo * 1e6)
        if initial_defocus_um:
            phase = defocus_phase_rad(recon.Np, df, float(recon.wavelength) * 1e6, initial_defocus_um)
            recon.probe = np.asarray(recon.probe) * np.exp(1j * pupil_in_our_frame(phase))
        params.gpuSwitch = bool(gpu)
        if bool(gpu) and not params.gpuSwitch:
            raise RuntimeError("PtyLab refused the GPU (no cupy or no CUDA device)")
        params.positionOrder = "NA"
        params.probePowerCorrectionSwitch = False
        params.comStabilizationSwitch = False
        params.probeBoundary = True
        params.adaptiveDenoisingSwitch = adaptive_denoising
        params.positionCorrectionSwitch = position_correction
        eng = getattr(Engines, engine)(recon, data, params, monitor)
        eng.numIterations = int(iterations)
        if engine in ("qNewton", "mqNewton"):
            eng.betaProbe = 1
            eng.betaObject = 1
        if engine == "mqNewton":
            eng.beta1 = 0.5
            eng.beta2 = 0.5
            eng.betaProbe_m = 0.25
            eng.betaObject_m = 0.25
            eng.momentum_method = "NADAM"
        eng.reconstruct()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "pupil": pupil_in_our_frame(np.asarray(recon.probe)[0, 0, 0, 0]),
        "led_xy_mm": encoder_to_xy_mm(recon.encoder_corrected),
        "led_xy_calibrated_mm": led_cal,
        "wall_s": wall,
        "cpu_s": cpu,
        "calibration_s": t_cal,
        "error": [float(e) for e in np.asarray(recon.error).ravel()],
        "na": float(recon.NA),
        "settings": settings,
        "df": df,
    }
