"""Blind mode (unknown sample): initial sample and bright-field geometry calibration.

* The initial sample is the square root of the mean bright-field frame (Fourier-interpolated to
  the reconstruction grid), with zero phase.
* Without a known sample the per-LED search of :mod:`metrology.solver.init` cannot be used;
  instead each bright-field frame's spectrum shows two pupil-sized disks centred at ``+k_j`` and
  ``-k_j`` (the interference of the unscattered light with the scattered light), whatever the
  sample. Their centres are found by correlating the frame's log spectrum with the two-disk
  template over a grid of candidate ``k_j``, and the global LED geometry is fitted to them.
"""

from __future__ import annotations

import torch

from metrology.physics import StationModel
from metrology.physics.pupil import soft_disk
from metrology.solver.init import _hann, fit_geometry


def initial_sample(model: StationModel, data: torch.Tensor, background: float) -> None:
    """Set the sample to the square root of the mean bright-field frame (zero phase)."""
    g = model.geometry
    with torch.no_grad():
        bf = model.bright_field()
        frames = data[bf] if bf.any() else data[:1]
        amp = torch.sqrt((frames - background).clamp(min=0) / model.exposure[bf, None, None]).mean(dim=0)
        amp = amp / torch.sqrt((amp**2).mean()).clamp(min=1e-12)
        n, big = g.frame_px, g.object_px
        spec = torch.fft.fftshift(torch.fft.fft2(amp.to(torch.complex128)))
        pad = (big - n) // 2
        spec = torch.nn.functional.pad(spec, (pad, pad, pad, pad)) * (big / n) ** 2
        t = torch.fft.ifft2(torch.fft.ifftshift(spec)).real
        model.sample.field_real.copy_(t.to(model.sample.field_real.dtype))
        model.sample.field_imag.zero_()


def search_bright_field(model: StationModel, data: torch.Tensor, radius_px: int = 6, step: float = 0.25):
    """Estimate ``k_j`` of the bright-field LEDs from the two-disk pattern of their spectra.

    Returns
    -------
    k : Tensor (J, 2)
        Estimates (cycles/um); nominal values for LEDs not estimated.
    weight : Tensor (J,)
        Peak normalised correlation for estimated LEDs, 0 otherwise.
    """
    g = model.geometry
    n = g.frame_px
    with torch.no_grad():
        k_nom = model.illumination.spatial_frequencies().double()
        s_nom = k_nom / g.df
        radius = g.pupil_radius_px
        chosen = torch.nonzero(torch.linalg.vector_norm(s_nom, dim=-1) < radius - 2).flatten()
        dev = data.device
        u = torch.fft.fftfreq(n, d=1.0 / n, device=dev).double()
        fy, fx = u[:, None], u[None, :]
        k_est = k_nom.clone()
        weight = torch.zeros(g.n_leds, dtype=torch.float64, device=dev)
        win = _hann(n, torch.float64, dev)
        r0 = torch.tensor(radius, dtype=torch.float64, device=dev)

        def grid(half, spacing):
            d = torch.arange(-half, half + spacing / 2, spacing, dtype=torch.float64, device=dev)
            oy, ox = torch.meshgrid(d, d, indexing="ij")
            return torch.stack([ox.flatten(), oy.flatten()], dim=-1)

        def best_of(spec, cand):
            best, best_c = -2.0, cand[0]
            for s in range(0, cand.shape[0], 128):
                c = cand[s : s + 128]
                r1 = torch.sqrt((fx[None] - c[:, 0, None, None]) ** 2 + (fy[None] - c[:, 1, None, None]) ** 2)
                r2 = torch.sqrt((fx[None] + c[:, 0, None, None]) ** 2 + (fy[None] + c[:, 1, None, None]) ** 2)
                t = torch.maximum(soft_disk(r0, r1), soft_disk(r0, r2))
                t = t - t.mean(dim=(-2, -1), keepdim=True)
                t = t / t.norm(dim=(-2, -1), keepdim=True)
                score = (t * spec).sum(dim=(-2, -1))
                i = int(torch.argmax(score))
                if score[i] > best:
                    best, best_c = float(score[i]), c[i]
            return best, best_c

        coarse, fine = grid(radius_px, 1.0), grid(1.0, step)  # coarse to fine: whole pixels, then sub-pixel
        for j in chosen.tolist():
            frame = data[j].double()
            spec = torch.log(torch.fft.fft2((frame - frame.mean()) * win).abs() + 1e-9)
            spec[0, 0] = spec.mean()
            spec = spec - spec.mean()
            spec = spec / spec.norm()
            _, c0 = best_of(spec, s_nom[j][None, :] + coarse)
            best, best_c = best_of(spec, c0[None, :] + fine)
            k_est[j] = best_c * g.df
            weight[j] = max(best, 0.0)
        return k_est, weight


def initialise_blind_geometry(model: StationModel, data: torch.Tensor, background: float, bright_field=None) -> dict:
    """Fit the LED geometry to the bright-field disk centres (blind mode). ``bright_field``: the
    result of :func:`search_bright_field` for this model and data, when already computed."""
    k, w = search_bright_field(model, data - background) if bright_field is None else bright_field
    if int((w > 0).sum()) < 4:
        return {"bright_field_leds": int((w > 0).sum()), "note": "too few bright-field LEDs; nominal geometry kept"}
    # bright-field LEDs sit close to the axis: they fix the shift and the rotation, while the
    # distance and the tilt (radial scalings) are left at their nominal values
    out = fit_geometry(model, k, w, names=("shift_mm", "rotation_deg"))
    out["bright_field_leds"] = int((w > 0).sum())
    return out
