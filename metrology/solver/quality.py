"""Data quality of a capture: saturation, hot pixels, blank and repeated frames; the fit mask."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import median_filter

from metrology.measurement import DataQuality


@dataclass(frozen=True)
class NoiseModel:
    """The camera's noise, in counts.

    Parameters
    ----------
    gain_e_per_count : float
        Photo-electrons per count.
    read_noise_counts : float
        Read noise standard deviation (counts).
    saturation_counts : float or None
        Full scale; pixels at or above it are saturated (None: no saturation, e.g. HDR data).
    """

    gain_e_per_count: float = 1.0
    read_noise_counts: float = 1.0
    saturation_counts: float | None = None

    @classmethod
    def from_camera(cls, gain_e_per_count: float, read_noise_e: float, full_scale: float | None, quantised: bool = True):
        """Noise of an integer camera: read noise (electrons) plus quantisation (1/12 count^2)."""
        var = (read_noise_e / gain_e_per_count) ** 2 + (1.0 / 12.0 if quantised else 0.0)
        return cls(gain_e_per_count, max(var, 1e-12) ** 0.5, full_scale)


def flat_frames(frames):
    """Frames whose pixels are all equal (a camera drop-out: no offset, no noise), shape (J,) bool:
    an ndarray for an ndarray, a tensor on the frames' device for a tensor."""
    return frames.reshape(len(frames), -1).std(axis=1) < 1e-6


def frames_left_out(mask) -> list:
    """The frames of a (J, n, n) fit mask (tensor) with no pixel in the fit (blank, repeated)."""
    return torch.nonzero(mask.flatten(1).amax(dim=1) <= 0).flatten().tolist()


def duplicate_frames(frames) -> list:
    """Frames that repeat an earlier frame pixel for pixel: ``[[j, i], ...]`` with ``i < j`` the first
    frame with the same pixels.

    Two exposures never agree in every pixel (shot and read noise), so a repeat is the same image
    stored twice: a missed trigger whose buffer was read again, a frame written under two LEDs. It
    holds nothing of its own LED: fitted, it is a frame of the wrong illumination (the learned data
    variances would down-weight it, 5.6x the noise in a simulated case, but nothing would name it).
    Flat frames (:func:`flat_frames`) are left to the blank-frame rule.
    """
    frames = np.asarray(frames)
    flat = flat_frames(frames)
    first, out = {}, []
    for j in range(len(frames)):
        if flat[j]:
            continue
        key = hashlib.blake2b(np.ascontiguousarray(frames[j]), digest_size=16).digest()  # not a copy of the frame
        i = first.setdefault(key, j)
        if i != j and np.array_equal(frames[i], frames[j]):
            out.append([j, i])
    return out


def estimate_background(frames: np.ndarray) -> float:
    """Background (counts): a low percentile of the darkest frames' pixels.

    Flat frames (:func:`flat_frames`) are left out: a drop-out reads 0 counts, below the camera's
    offset, and one such frame among the darkest tenth pulled the whole estimate to 0 (a known fit
    of 81 frames, one of them dropped: every dark-field brightness on its bound 0, reduced chi-square
    1110 against the camera noise; with the frame left out, as without the drop-out). A frame of a
    dead LED reads the offset and its noise, and stays: it is the best measure of the offset.
    """
    live = frames[~flat_frames(frames)]
    live = frames if len(live) == 0 else live
    means = live.reshape(live.shape[0], -1).mean(axis=1)
    dark = live[np.argsort(means)[: max(1, live.shape[0] // 10)]]
    return float(np.percentile(dark, 5))


def hot_pixel_mask(frames: np.ndarray, noise: NoiseModel, background: float) -> np.ndarray:
    """Pixels stuck high in most frames (``(n, n)`` bool).

    A pixel is hot when its median over frames exceeds the 3x3 median of its neighbours' medians by
    more than 10 sigma of the noise there and by 50 %.
    """
    med = np.median(frames, axis=0)
    local = median_filter(med, size=3, mode="nearest")
    sigma = np.sqrt(np.clip(local - background, 0, None) / noise.gain_e_per_count + noise.read_noise_counts**2)
    return (med - local > 10 * sigma) & (med > 1.5 * np.maximum(local, background + 1e-9))


def assess(frames: np.ndarray, noise: NoiseModel, background: float) -> tuple[np.ndarray, DataQuality]:
    """Mask (J, n, n) of pixels to fit and the data-quality findings (before the fit).

    Blank frames are found after the geometry is known (:func:`blank_frames`).
    """
    mask = np.ones(frames.shape, dtype=bool)
    quality = DataQuality()
    if noise.saturation_counts is not None:
        sat = frames >= noise.saturation_counts
        mask &= ~sat
        quality.saturated_fraction = float(sat.mean())
        if sat.any():
            quality.flags.append(
                ("saturation", f"{100 * sat.mean():.2f} % of pixels saturated (masked, not fitted)", "warning")
            )
    hot = hot_pixel_mask(frames, noise, background)
    quality.hot_pixels = int(hot.sum())
    if hot.any():
        mask &= ~hot[None]
        quality.flags.append(("hot_pixels", f"{int(hot.sum())} hot pixels detected (masked)", "warning"))
    _flag_duplicates(frames, mask, quality)
    return mask, quality


def _flag_duplicates(frames: np.ndarray, mask: np.ndarray, quality: DataQuality) -> None:
    """Take the repeated frames (:func:`duplicate_frames`) out of the fit ``mask`` and flag them: a
    warning, an error when more than 5 % of the frames repeat (as for blank frames)."""
    pairs = duplicate_frames(frames)
    quality.duplicate_frames = pairs
    if not pairs:
        return
    for j, _ in pairs:
        mask[j] = False
    named = "; ".join(f"frame {j} repeats frame {i}" for j, i in pairs[:6]) + (" ..." if len(pairs) > 6 else "")
    quality.flags.append(("duplicate_frames", f"{len(pairs)} frame(s) repeat an earlier frame exactly (a missed "
                          f"trigger?), excluded from the fit: {named}",
                          "error" if len(pairs) > 0.05 * len(frames) else "warning"))


TRANSITION_BAND = 0.05
"""LEDs whose illumination NA lies within this fraction of the pupil's NA of it are judged blank by
the dark field (:func:`blank_frames`), not by the started model."""


def blank_frames(data: torch.Tensor, model: torch.Tensor, background: float, noise: NoiseModel,
                 illumination_na=None, na: float | None = None) -> list:
    """Frames with no signal where the model predicts clear signal (a dead LED, a missed trigger).

    A frame is blank when its mean signal above background is below 20 % of the modelled one and the
    modelled signal is at least 10 standard errors of the frame mean.

    An LED near the bright-/dark-field transition (illumination NA within :data:`TRANSITION_BAND` of
    the pupil's ``na``, given both) is judged differently: the started model's NA and LED geometry are
    not known well enough to say whether it lights the pupil, and a live LED just outside the edge reads
    far below a bright-field prediction. It is blank only when its signal is also below 20 % of the
    median signal of the dark-field frames (illumination NA beyond the band), which a live LED at the
    edge exceeds (its scatter is the strongest of the dark field) and a dead one does not. (Judged by
    the started model alone, blind off-model glare trials lost 1-3 live transition frames in half the
    trials, the frames that pin the pupil edge, and their per-frame terms drifted to their bounds.)

    Parameters
    ----------
    data, model : Tensor (J, n, n)
        Measured and started frames, counts.
    background : float
        Camera offset, counts.
    noise : NoiseModel
    illumination_na : array-like (J,), optional
        Each LED's illumination NA (``|k_j| lambda``).
    na : float, optional
        The pupil's NA.

    Returns
    -------
    list of int
        The blank frames' indices.
    """
    with torch.no_grad():
        npix = data.shape[-1] * data.shape[-2]
        measured = (data - background).mean(dim=(-2, -1))
        predicted = (model - background).mean(dim=(-2, -1))
        shot = (model - background).clamp(min=0).mean(dim=(-2, -1)) / noise.gain_e_per_count
        sigma_mean = torch.sqrt(shot + noise.read_noise_counts**2) / npix**0.5
        flat = flat_frames(data)
        blank = (measured < 0.2 * predicted) & (predicted > 10 * sigma_mean)
        if illumination_na is not None and na is not None:
            s = torch.as_tensor(np.asarray(illumination_na, dtype=float), dtype=measured.dtype, device=measured.device)
            edge = (s - na).abs() < TRANSITION_BAND * na
            dark = s >= (1 + TRANSITION_BAND) * na
            if bool(dark.any()):
                blank = blank & (~edge | (measured < 0.2 * measured[dark].median()))
        return [int(i) for i in torch.nonzero(blank | flat).flatten()]


def flag_blank(quality: DataQuality, blank: list, n_frames: int, bright_field: np.ndarray) -> None:
    """Record blank frames: an error when more than 5 % of frames or any bright-field frame."""
    quality.blank_frames = list(blank)
    if not blank:
        return
    frac = len(blank) / n_frames
    bright = [i for i in blank if bright_field[i]]
    severe = frac > 0.05 or bool(bright)
    quality.flags.append(
        (
            "blank_frames",
            f"{len(blank)} of {n_frames} frames hold far less light than the model predicts, or none (a dead LED, "
            f"a dropped frame, a frame of another LED; excluded from the fit): {blank[:12]}"
            + ("..." if len(blank) > 12 else "")
            + (f", of them in the bright field: {bright[:12]}" if bright else ""),
            "error" if severe else "warning",
        )
    )
