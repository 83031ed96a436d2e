"""Searches of the LED geometry, robust enough for a real station (used by :mod:`.start`).

1. Per-LED search of the illumination frequency ``k_j`` on an integer grid around the nominal, by
   matching translation-invariant features (Fourier magnitude of the windowed frame) of the measured
   frame against frames modelled through a clear pupil (known reference sample,
   :func:`search_led_frequencies`). The search works on a centre crop of at most ``crop_px`` pixels
   so its cost does not grow with the frame size.
2. Bright-field disks (:func:`search_bright_field`), whatever the sample: each bright-field frame's
   spectrum shows two pupil-sized disks centred at ``+k_j`` and ``-k_j`` (the interference of the
   unscattered light with the scattered light). Their centres are found by correlating the frame's
   log spectrum with the two-disk template over a grid of candidate ``k_j``.
3. A robust least-squares fit of the global LED geometry (shift, rotation, distance, tilt) to those
   per-LED estimates (:func:`fit_geometry`).
"""

from __future__ import annotations

import math

import torch

from metrology.parameters import GEOMETRY
from metrology.physics import StationModel
from metrology.physics.illumination import Illumination
from metrology.physics.pupil import soft_disk
from metrology.physics.zernike import zernike_grid

GEOMETRY_NAMES = tuple(path.split(".", 1)[1] for path in GEOMETRY)
"""Attribute names of the LED geometry on :class:`~metrology.physics.illumination.Illumination`."""

DEFAULT_RANGES = {"shift_mm": 1.0, "rotation_deg": 3.0, "distance_error_mm": 3.0}
"""Misalignment the per-LED search covers (keys: :attr:`metrology.parameters.Parameter.key`; the
tilt moves the LEDs little and is not searched)."""


def _hann(n, dtype, device=None):
    w = torch.hann_window(n, periodic=False, dtype=dtype, device=device)
    return w[:, None] * w[None, :]


def _features(frames: torch.Tensor) -> torch.Tensor:
    """Normalised Fourier magnitude (DC removed) of windowed frames, shape (..., n, n)."""
    n = frames.shape[-1]
    x = frames - frames.mean(dim=(-2, -1), keepdim=True)
    f = torch.fft.fft2(x * _hann(n, frames.dtype, frames.device)).abs()
    f[..., 0, 0] = 0
    f = torch.log1p(f / (f.mean(dim=(-2, -1), keepdim=True) + 1e-12))
    f = f - f.mean(dim=(-2, -1), keepdim=True)
    return f / (f.norm(dim=(-2, -1), keepdim=True) + 1e-12)


def _pupil_phase(model: StationModel, u: torch.Tensor, df: float, radius: float) -> torch.Tensor:
    """``exp(i 2 pi (W + defocus))`` of the model's current pupil on a box grid ``u`` (pixels of ``df``)."""
    c = model.pupil.zernike_waves.detach().double().to(u.device)
    z = model.sample.defocus_um.detach().double().to(u.device)
    if not bool(c.abs().max() > 0) and float(z) == 0.0:
        return torch.ones((u.numel(), u.numel()), dtype=torch.complex64, device=u.device)
    x = (u.double()[None, :] / radius).expand(u.numel(), -1)
    y = (u.double()[:, None] / radius).expand(-1, u.numel())
    w = torch.einsum("k,kyx->yx", c, zernike_grid(c.numel(), x, y))
    f2 = (x**2 + y**2) * (radius * df) ** 2
    inv = 1.0 / model.geometry.wavelength_um
    w = w + z * (-f2 / (torch.sqrt((inv**2 - f2).clamp(min=1e-12)) + inv))
    return torch.polar(torch.ones_like(w), 2 * math.pi * w).to(torch.complex64)


def search_radius_px(model: StationModel, ranges=DEFAULT_RANGES, df=None) -> torch.Tensor:
    """Per-LED search radius (grid pixels of ``df``) covering the misalignment ranges."""
    g = model.geometry
    df = g.df if df is None else df
    ill = Illumination(g, torch.float64)
    with torch.no_grad():
        k0 = ill.spatial_frequencies()
        dev = torch.zeros(g.n_leds, dtype=torch.float64)
        for sx in (-1, 1):
            for sy in (-1, 1):
                for sr in (-1, 1):
                    for sd in (-1, 1):
                        ill.shift_mm.copy_(torch.tensor([sx, sy], dtype=torch.float64) * ranges["shift_mm"])
                        ill.rotation_deg.fill_(sr * ranges["rotation_deg"])
                        ill.distance_error_mm.fill_(sd * ranges["distance_error_mm"])
                        d = torch.linalg.vector_norm(ill.spatial_frequencies() - k0, dim=-1)
                        dev = torch.maximum(dev, d)
    return torch.ceil(dev / df) + 1


def search_led_frequencies(model: StationModel, data: torch.Tensor, crop_px: int = 64, ranges=DEFAULT_RANGES,
                           leds=None, radius_px: int | None = None):
    """Estimate each LED's illumination frequency from its frame (known reference sample).

    Candidate frames are modelled through the model's current pupil (its Zernike phase and the
    sample defocus; a clear pupil at the start), around the model's current ``k_j``.

    Parameters
    ----------
    model : StationModel
        Carries the geometry and the reference transmission.
    data : Tensor, shape (J, n, n)
        Measured frames minus background.
    leds : Tensor of bool, shape (J,), optional
        The LEDs searched (default all); the others keep the model's ``k_j`` with score 0.
    radius_px : int, optional
        Search radius (grid pixels of the crop) of every LED, instead of the one that covers
        ``ranges`` (:func:`search_radius_px`): a refinement around a fitted geometry.

    Returns
    -------
    k : Tensor, shape (J, 2)
        Estimated ``k_j`` (cycles/um).
    score : Tensor, shape (J,)
        Peak normalised correlation (0..1) of each estimate.
    """
    g = model.geometry
    n = g.frame_px
    nc = min(n, crop_px)
    dev = data.device
    c0 = (n - nc) // 2
    up = g.upsampling
    rdtype = torch.float32
    with torch.no_grad():
        t = model.sample.transmission().detach()
        o0 = g.frame_offset_px + c0 * up  # the crop's first object pixel (past the modelled margin)
        tc = t[o0 : o0 + nc * up, o0 : o0 + nc * up].to(torch.complex64)
        nobj = nc * up
        spec = torch.fft.fftshift(torch.fft.fft2(tc))
        df = 1.0 / (nc * g.pixel_um)
        radius = g.cutoff / df
        half = int(math.ceil(radius + 1))
        u = torch.arange(-half, half + 1, device=dev)
        rr = torch.sqrt((u[None, :] ** 2 + u[:, None] ** 2).to(rdtype))
        pupil = soft_disk(torch.tensor(radius, dtype=rdtype, device=dev), rr).to(torch.complex64) * (nc / nobj) ** 2
        pupil = pupil * _pupil_phase(model, u, df, radius)
        feats = _features(data[:, c0 : c0 + nc, c0 : c0 + nc].to(rdtype))
        k_nom = model.illumination.spatial_frequencies().detach().double().cpu()
        s_nom = k_nom / df
        radii = search_radius_px(model, ranges, df).long()
        est = torch.zeros_like(s_nom)
        score = torch.zeros(g.n_leds, dtype=torch.float64)
        pad = nobj // 2
        spec_p = torch.nn.functional.pad(spec, (pad, pad, pad, pad))  # zero outside the grid
        centre = nobj // 2 + pad
        for j in range(g.n_leds):
            if leds is not None and not bool(leds[j]):
                est[j] = s_nom[j]
                continue
            rj = int(radii[j]) if radius_px is None else int(radius_px)
            d = torch.arange(-rj, rj + 1)
            d_dev = d.to(dev)
            base = torch.round(s_nom[j]).long()
            oy = int(base[1]) + d_dev[:, None].expand(-1, d.numel()).flatten()
            ox = int(base[0]) + d_dev[None, :].expand(d.numel(), -1).flatten()
            rows = centre + oy[:, None] + u[None, :]
            cols = centre + ox[:, None] + u[None, :]
            scores_all = _candidate_scores(spec_p, rows, cols, pupil, feats[j], nc)
            i = int(torch.argmax(scores_all))
            best = (scores_all[i].item(), i)
            side = d.numel()
            iy, ix = divmod(best[1], side)
            sub = _parabolic_peak(scores_all.reshape(side, side).cpu(), iy, ix)
            est[j, 0] = base[0] + d[ix] + max(-0.5, min(0.5, sub[0]))
            est[j, 1] = base[1] + d[iy] + max(-0.5, min(0.5, sub[1]))
            score[j] = best[0]
        return (est * df).to(dev), score.to(dev)


def _candidate_scores(spec: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, pupil: torch.Tensor,
                      feats: torch.Tensor, nc: int, chunk: int = 512) -> torch.Tensor:
    """Correlation of one measured frame's features ``feats`` (nc, nc) with the frames modelled at
    each candidate offset: the object spectrum ``spec`` cropped at ``rows``/``cols`` (C, B) through
    ``pupil`` (B, B), imaged on the ``nc``-pixel crop; shape (C,)."""
    half, cc = pupil.shape[-1] // 2, nc // 2
    out = torch.empty(rows.shape[0], device=spec.device)
    for s in range(0, rows.shape[0], chunk):
        sl = slice(s, s + chunk)
        crop = spec[rows[sl][:, :, None], cols[sl][:, None, :]]
        full = torch.zeros((crop.shape[0], nc, nc), dtype=torch.complex64, device=spec.device)
        full[:, cc - half : cc + half + 1, cc - half : cc + half + 1] = crop * pupil
        img = torch.fft.ifft2(torch.fft.ifftshift(full, dim=(-2, -1))).abs() ** 2
        out[sl] = (_features(img) * feats).sum(dim=(-2, -1))
    return out


def _parabolic_peak(grid, iy: int, ix: int) -> list:
    """Sub-pixel offsets ``[x, y]`` of the peak at ``(iy, ix)`` of a score grid: a parabola through
    the peak and its neighbours along each axis (0 on the grid's edge or without a maximum)."""
    side = grid.shape[-1]
    sub = [0.0, 0.0]
    if 0 < ix < side - 1:
        l, c, r = grid[iy, ix - 1], grid[iy, ix], grid[iy, ix + 1]
        den = l - 2 * c + r
        sub[0] = float(0.5 * (l - r) / den) if den < 0 else 0.0
    if 0 < iy < side - 1:
        l, c, r = grid[iy - 1, ix], grid[iy, ix], grid[iy + 1, ix]
        den = l - 2 * c + r
        sub[1] = float(0.5 * (l - r) / den) if den < 0 else 0.0
    return sub


def fit_geometry(model: StationModel, k_est: torch.Tensor, weight: torch.Tensor, iterations: int = 3,
                 names=GEOMETRY_NAMES) -> dict:
    """Robust least-squares fit of the global LED geometry to per-LED frequency estimates.

    Sets ``illumination.<names>`` on ``model`` (the others stay at the model's values) and returns
    the fit summary (residual RMS in grid pixels, LEDs used).
    """
    g = model.geometry
    ill = Illumination(g, torch.float64)
    k_est = k_est.double().cpu()
    w = weight.double().cpu().clamp(min=0)
    with torch.no_grad():
        for name in GEOMETRY_NAMES:
            getattr(ill, name).copy_(getattr(model.illumination, name).double().cpu())
    params = [getattr(ill, name) for name in names]
    used = w > 0
    for _ in range(iterations):
        opt = torch.optim.LBFGS(params, lr=1, max_iter=100, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            r = (ill.spatial_frequencies() - k_est) / g.data_df
            loss = (w[used, None] * r[used] ** 2).sum() / w[used].sum()
            loss = loss + 1e-4 * (ill.tilt_deg**2).sum()  # tilt is weakly determined: tiny ridge
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            res = torch.linalg.vector_norm((ill.spatial_frequencies() - k_est) / g.data_df, dim=-1)
            cut = max(1.5, 3 * float(torch.median(res[used])))
            used = (w > 0) & (res < cut)
    with torch.no_grad():
        for name in names:
            getattr(model.illumination, name).copy_(getattr(ill, name).to(getattr(model.illumination, name)))
    return {"residual_px": float(torch.sqrt((res[used] ** 2).mean())), "leds_used": int(used.sum())}


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
        s_nom = k_nom / g.data_df  # in pixels of the frames' DFT (the model's lattice is finer with a margin)
        radius = g.cutoff / g.data_df
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
            k_est[j] = best_c * g.data_df
            weight[j] = max(best, 0.0)
        return k_est, weight
