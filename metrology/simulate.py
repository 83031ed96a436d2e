"""The literal station simulator: captures as a real station would record them.

This deliberately takes a different, slower and more literal path than the solver's model
(:mod:`metrology.physics.model`), to avoid the inverse crime (``GUIDE.md``):

* the reference sample lives on a grid ``oversample`` times finer than the reconstruction grid
  (same field of view, from :mod:`metrology.references`) and is displaced by ``position_um`` with
  an exact Fourier shift;
* LED positions and exact (non-paraxial) illumination frequencies ``k_j`` are computed here in
  numpy float64 from the misalignment, independently of :mod:`metrology.physics.illumination`
  (same conventions, :mod:`metrology.conventions`), refraction through a slide included;
* per LED and per emitter sub-source (a Python loop), the sample's spectrum is moved by the tilted
  plane wave, ``O(f + k_j)`` at pupil frequency ``f``, and multiplied by a **hard-edged** pupil
  ``|f| <= NA / lambda`` whose Zernike phase is evaluated with the ``zernike`` package (RZern), and
  by the defocus propagator ``H(f) = exp(i 2 pi z (sqrt(1/lambda^2 - |f|^2) - 1/lambda))``; the
  field is formed at the camera pixels and ``|.|^2`` taken; a finite LED (``size_mm > 0``) is an
  incoherent average over ``led_subsources^2`` points across the emitter;
* a finite LED spectrum (``spectral_fwhm_nm > 0``) is an incoherent sum over
  :data:`SPECTRAL_NODES` wavelengths (each with its own illumination frequencies, cut-off,
  defocus and aberration in waves, the lens's optical path difference fixed); the LEDs' angular
  emission ``cos^p`` (``emission_exponent``) scales each frame (:func:`emission_law`);
* camera: each pixel integrates the intensity over its area when the station says so
  (``camera.pixel_integration``; exact: the field at 2 x 2 points per pixel, the intensity
  box-filtered in Fourier); Poisson shot noise, Gaussian read noise, gain, background,
  quantisation, saturation, optional hot pixels and blank frames.

Why the plane wave is applied in the Fourier domain: the sample is periodic over the field of
view, so its spectrum is a lattice ``f_l``; the tilted wave moves that lattice by ``-k_j``, off the
DFT grid. Multiplying the sampled object by a non-periodic ramp and taking a DFT would wrap the
ramp and leak the bright DC term into dark-field frames, an artefact no real station shows. Here
the pupil is evaluated exactly at ``f_l - k_j`` for every lattice point instead (one "FFT" per
LED: the field at the camera pixels is the inverse DFT of those products; the camera pixels are
every ``upsampling * oversample``-th point of the fine grid, starting at index 0, and because the
field is band-limited by the pupil the small inverse DFT equals the fine one sampled there, see
``tests/test_simulate.py``).

Normalisation: a clear sample through a clear pupil gives intensity exactly 1 (as
:class:`metrology.physics.StationModel`); the camera records
``counts = photons * b_j * e_j * I / photons_per_count + background`` with ``e_j`` the exposure
relative to the median, so ``camera.counts_per_unit = photons / photons_per_count``.

The imaging steps live in :mod:`metrology.simulate_optics`; this module makes the capture of them
(reference sample, LED brightness and exposure, camera, files) and the model of a truth.
"""

from __future__ import annotations

import numpy as np

from metrology.errors import InputError
from metrology.io.capture import Capture
from metrology.misalignment import (  # noqa: F401  (re-exported: the simulator's public names)
    DEFAULT_RANGES,
    MISALIGNMENT_SHAPES,
    check_misalignment,
    draw_misalignment,
    nominal_misalignment,
)
from metrology.references import CATALOGUE, catalogue_over_field, reference_transmission
from metrology.simulate_optics import emission_law, illumination_frequencies, led_positions_mm, simulate_intensity


# ---------------------------------------------------------------------------- capture
def bright_field_mask(station, leds, na=None) -> np.ndarray:
    """Boolean (J,): nominal ``|k_j| < NA / lambda`` (aligned station)."""
    k = illumination_frequencies(station, led_positions_mm(station, leds, nominal_misalignment(len(leds))))
    cutoff = (station.na if na is None else na) / (station.wavelength_nm * 1e-3)
    return np.hypot(k[:, 0], k[:, 1]) < cutoff


def simulate_capture(station, lens_zernike_waves, truth: dict | None = None, *, seed: int = 0,
                     reference: str = "random-broadband", reference_seed: int = 0, oversample: int = 2,
                     photons: float = 2e4, hot_pixel_fraction: float = 0.0, blank_frames=(), progress=None,
                     noise: bool = True, lens=None, leds=None, led_subsources: int = 9, exposure_s: float = 0.01,
                     dark_field_exposure: float = 1.0, stray_light=None):
    """Simulate a capture of ``station`` imaging a reference sample through a lens.

    Parameters
    ----------
    station : StationDescription
    lens_zernike_waves : array-like (K,)
        Lens pupil phase, Noll 1..K (waves at the station wavelength).
    truth : dict, optional
        Misalignment by model path (partial allowed; missing = aligned). None: aligned station.
    seed : int
        Seed of the camera noise (and hot pixels). Same seed -> identical frames.
    reference : str
        Reference sample ID (:data:`metrology.references.CATALOGUE`).
    reference_seed : int
        Seed of the reference sample (a physical slide: keep it fixed across captures).
    oversample : int
        Fine grid = reconstruction grid x ``oversample`` (same field of view).
    photons : float
        Photo-electrons per pixel for unit intensity at unit brightness and median exposure.
    hot_pixel_fraction : float
        Fraction of pixels stuck near full scale (same pixels in every frame).
    blank_frames : sequence of int
        Frames returned entirely zero (a camera drop-out; bad-data tests).
    progress : callable ``progress(i, total)``, optional
    noise : bool
        False: no shot/read noise, no quantisation or clipping; float32 frames in counts.
    lens : LensDescription, optional
        Gives the true NA, apodisation, model and serial.
    leds : sequence of (row, col), optional
        Capture order (default ``station.led_list()``).
    led_subsources : int
        Emitter sub-sources per side (finite LED size).
    exposure_s : float
        Exposure of bright-field frames (s); dark-field frames get ``dark_field_exposure`` times it.
    stray_light : float or array (J,), optional
        Each frame's uniform haze of its LED's light that reached the camera off the imaging path,
        in clear-pupil intensity (it scales with the LED's brightness and exposure as the image does;
        the model's ``illumination.stray_light``, freed where the station states ``lens.stray_light``).
        Recorded in the truth as ``illumination.stray_light``.

    Length: the documentation of its options; the steps are helpers (:func:`simulate_intensity`,
    :func:`_camera_counts`, :func:`_add_hot_pixels`, :func:`_lens_and_camera_truth`).

    Returns
    -------
    capture : Capture
    truth : dict
        Every misalignment parameter by its model path, ``pupil.*``, ``camera.*``, and the
        simulation settings (JSON-ready).
    """
    leds = station.led_list() if leds is None else [tuple(map(int, rc)) for rc in leds]
    n_leds = len(leds)
    mis = check_misalignment(truth or {}, n_leds)
    coeffs = np.asarray(lens_zernike_waves, dtype=np.float64).reshape(-1)
    lens_na = station.na if lens is None else lens.na
    log_amp = None if lens is None or not lens.apodisation else lens.apodisation_coefficients()
    if reference not in CATALOGUE:
        raise InputError(reference, f"unknown reference sample; known: {', '.join(CATALOGUE)}")
    n_fine = station.frame_px * station.upsampling * int(oversample)
    transmission = reference_transmission(reference, station.fov_um, n_fine, seed=reference_seed)
    intensity = simulate_intensity(station, leds, mis, transmission, coeffs, lens_na=lens_na,
                                   log_amplitude=log_amp, led_subsources=led_subsources, progress=progress)
    stray = np.zeros(n_leds) if stray_light is None else np.broadcast_to(np.asarray(stray_light, float), (n_leds,))
    if not (np.all(np.isfinite(stray)) and np.all(stray >= 0)):
        raise InputError("stray_light", "must be finite and >= 0 (clear-pupil intensity)")
    intensity = intensity + (stray * emission_law(station, leds, mis))[:, None, None]  # the LED's light, as the image

    bright = bright_field_mask(station, leds)
    exposure = np.where(bright, exposure_s, exposure_s * dark_field_exposure)
    rel = exposure / np.median(exposure)
    cam = station.camera
    brightness = np.asarray(mis["illumination.brightness"])
    electrons = photons * (brightness * rel)[:, None, None] * intensity
    rng = np.random.default_rng([int(seed), 7])
    frames = _camera_counts(electrons, cam, rng, noise)
    hot = _add_hot_pixels(frames, station.frame_px, cam.full_scale, hot_pixel_fraction, rng)
    for j in blank_frames:
        frames[int(j)] = 0
    out_truth = dict(mis)
    if stray_light is not None:
        out_truth["illumination.stray_light"] = stray.tolist()
    out_truth.update(_lens_and_camera_truth(station, coeffs, lens_na, log_amp, photons / cam.photons_per_count))
    out_truth.update({
        "seed": int(seed),
        "reference_sample": reference,
        "reference_seed": int(reference_seed),
        "station_id": station.station_id,
        "lens_model": "" if lens is None else lens.model,
        "lens_serial": "" if lens is None else lens.serial,
        "leds": [list(rc) for rc in leds],
        "relative_exposure": rel.tolist(),
        "photons": float(photons),
        "oversample": int(oversample),
        "led_subsources": int(led_subsources),
        "noise": bool(noise),
        "hot_pixels": hot,
        "blank_frames": [int(j) for j in blank_frames],
    })
    capture = Capture(
        frames=frames, leds=leds, exposure_s=exposure, station_id=station.station_id,
        lens_serial=out_truth["lens_serial"], lens_model=out_truth["lens_model"],
        reference_sample=reference, wavelength_nm=station.wavelength_nm,
        extra={"simulated": True, "reference_seed": int(reference_seed)},
    )
    return capture, out_truth


def stray_light_levels(level: float, n_leds: int, rng: np.random.Generator) -> np.ndarray:
    """Each LED's haze for a simulated capture: ``level`` times a log-uniform factor in [1/3, 3]
    (clear-pupil intensity), shape (n_leds,); ``rng`` seeds it (``metrology simulate --stray-light``,
    the off-model benchmark's glare)."""
    return level * np.exp(rng.uniform(-np.log(3.0), np.log(3.0), n_leds))


def _camera_counts(electrons, cam, rng, noise: bool) -> np.ndarray:
    """Frames the camera records from photo-electrons: shot and read noise, gain, background,
    quantisation and clipping (uint16); without ``noise`` the exact counts (float32)."""
    if not noise:
        return (electrons / cam.photons_per_count + cam.background_counts).astype(np.float32)
    e = rng.poisson(electrons).astype(np.float64)
    e += rng.normal(0.0, cam.read_noise_e, e.shape)
    counts = np.clip(np.round(e / cam.photons_per_count + cam.background_counts), 0, cam.full_scale)
    return counts.astype(np.uint16)


def _add_hot_pixels(frames, n_px: int, full_scale: int, fraction: float, rng) -> list:
    """Set ``fraction`` of the pixels near full scale in every frame (in place); their ``[row, col]``."""
    if fraction <= 0:
        return []
    count = max(1, int(round(fraction * n_px * n_px)))
    flat = rng.choice(n_px * n_px, size=count, replace=False)
    rows, cols = np.divmod(flat, n_px)
    level = full_scale - rng.integers(0, max(2, full_scale // 50), size=count)
    frames[:, rows, cols] = level.astype(frames.dtype)
    return [[int(r), int(c)] for r, c in zip(rows, cols)]


def _lens_and_camera_truth(station, coeffs, lens_na, log_amp, counts_per_unit) -> dict:
    """The ``pupil.*`` and ``camera.*`` entries of the truth (model paths, JSON-ready)."""
    z = np.zeros(max(station.zernike_terms, len(coeffs)))
    z[: len(coeffs)] = coeffs
    return {
        "pupil.zernike_waves": z.tolist(),
        "pupil.na": float(lens_na),
        "pupil.log_amplitude": [] if log_amp is None else np.asarray(log_amp).tolist(),
        "illumination.emission_exponent": float(getattr(station, "emission_exponent", 0.0)),
        "camera.background_counts": float(station.camera.background_counts),
        "camera.counts_per_unit": float(counts_per_unit),
    }


def model_from_truth(station, truth: dict, transmission=None, dtype=None, leds=None, exposure=None):
    """A :class:`metrology.physics.StationModel` with every parameter set to ``truth``.

    Parameters
    ----------
    station : StationDescription
    truth : dict
        As returned by :func:`simulate_capture` (``truth.json``).
    transmission : ndarray (N, N), optional
        Sample on the reconstruction grid (default: the truth's reference sample, undisplaced:
        the model applies ``sample.position_um`` itself).
    dtype : torch dtype, optional
        Default ``torch.float64``.
    leds, exposure : optional
        LED list and relative exposures (default: from the truth).
    """
    # lazy: torch loads only when a model is needed (start-up time)
    import torch

    from metrology.physics import StationModel

    dtype = torch.float64 if dtype is None else dtype
    leds = truth.get("leds", station.led_list()) if leds is None else leds
    geometry = station.geometry([tuple(rc) for rc in leds])
    if transmission is None:
        transmission = catalogue_over_field(truth.get("reference_sample", "random-broadband"), station.fov_um,
                                            geometry, seed=truth.get("reference_seed", 0))
    if exposure is None:
        exposure = truth.get("relative_exposure")
    model = StationModel(geometry, transmission, exposure, dtype=dtype)
    mis = check_misalignment({k: truth[k] for k in MISALIGNMENT_SHAPES if k in truth}, len(leds))
    values = dict(mis)
    k = geometry.zernike_terms
    z = np.zeros(k)
    zw = np.asarray(truth.get("pupil.zernike_waves", []), dtype=np.float64)[:k]
    z[: len(zw)] = zw
    values["pupil.zernike_waves"] = z
    la = np.zeros(k)
    la_t = np.asarray(truth.get("pupil.log_amplitude", []), dtype=np.float64)[:k]
    la[: len(la_t)] = la_t
    values["pupil.log_amplitude"] = la
    for key in ("pupil.na", "camera.background_counts", "camera.counts_per_unit", "illumination.stray_light"):
        if key in truth:
            values[key] = truth[key]
    with torch.no_grad():
        for path, value in values.items():
            p = model.parameter(path)
            p.copy_(torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=p.dtype).reshape(p.shape))
    return model
