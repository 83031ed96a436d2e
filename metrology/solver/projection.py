"""Alternating-projection initialisation of the lens pupil (and, in blind mode, of the sample).

A gradient fit of Zernike coefficients from a clear pupil can stall in a local minimum when the
lens carries a wave or more of aberration peak to valley. Classic Fourier-ptychographic
projections do not: with the pupil held as a free phase map on the pupil box, each iteration

1. forms every LED's exit spectrum ``S_j = C_j E_j exp(i phi)`` (``C_j``: the object spectrum
   seen by LED ``j`` with the sample-position ramp, ``E_j``: the model's pupil amplitude, edge
   included, at LED ``j``'s sub-pixel shift, ``phi``: the common phase map);
2. replaces the modulus of the camera field by the measured one (``sqrt((I - background) /
   gain)``; masked pixels keep the modelled field);
3. updates ``phi`` to the phase of ``sum_j conj(C_j E_j) S'_j`` (the least-squares pupil given
   the corrected spectra) and, in blind mode, the object spectrum by the batched quasi-Newton
   step of Tian et al. (2014, "EPRY"-style, every LED at once).

All LEDs are processed together (one batched FFT pair per iteration). The phase map is then
projected onto the model's own basis (Noll 5.., the sample defocus, the sample position) by a
least-squares fit to its wrapped **differences** between neighbouring pixels, which needs no
phase unwrapping, followed by one direct fit of the (now small) remaining phase.
"""

from __future__ import annotations

import math

import torch

from metrology.physics import StationModel
from metrology.physics.model import box_to_field, field_to_box

FIRST_FITTED_NOLL = 5
"""Noll 1-4 are not lens parameters (piston; tilt = sample position; defocus = sample defocus)."""

OBSERVE_EVERY = 5
"""Projection iterations between two ``observe`` calls (:func:`project`)."""


def _measured_amplitude(model: StationModel, data, background: float):
    """``sqrt((data - background) / gain)`` per frame, shape (J, n, n)."""
    gain = model.camera.counts_per_unit * model.illumination.brightness * model.illumination.emission() * model.exposure
    return torch.sqrt(((data - background) / gain[:, None, None].clamp(min=1e-12)).clamp(min=0.0))


def project(model: StationModel, data, mask, background: float, iterations: int = 30,
            update_sample: bool = False, indices=None, free=None, observe=None) -> dict:
    """Run the projections and write the result into ``model`` (pupil, defocus, position, sample).

    Parameters
    ----------
    model : StationModel
        Its geometry, brightness and camera scale should already be initialised.
    data, mask : Tensor, shape (J, n, n)
        Frames (counts) and the fit mask (1 = use).
    background : float
        Camera background (counts).
    iterations : int
        Projection iterations.
    update_sample : bool
        Update the object spectrum too (blind mode).
    indices : Tensor of int64, optional
        Use only these LEDs (default all).
    free : Tensor of bool, optional
        Which basis quantities (see :func:`basis_mask`) the phase map may change (default all).
    observe : callable, optional
        ``observe(zernike_waves)`` every :data:`OBSERVE_EVERY` iterations with the lens estimate the
        projections hold at that moment (the phase map fitted as at the end; Tensor (K,), waves).
        For time-to-accuracy benchmarks; each call costs one phase-map fit.

    Length: the loop's steps (forward, modulus constraint, pupil and object updates) share a dozen
    batched tensors; split, they would be passed around or recomputed each iteration.

    Returns
    -------
    dict
        ``error_start``, ``error_end`` (relative amplitude misfit), ``coefficients`` (waves,
        Noll 5..), ``defocus_um`` and ``position_um`` increments.
    """
    g = model.geometry
    n, half = g.field_px, g.pupil_box_half
    with torch.no_grad():
        measured = _measured_amplitude(model, data, background)
        use = mask > 0
        if indices is not None:
            measured, use = measured[indices], use[indices]
        if g.margin_px:  # the frames are the centre of the modelled field: its margin keeps the model's field
            pad = (g.margin_px,) * 4
            measured = torch.nn.functional.pad(measured, pad)
            use = torch.nn.functional.pad(use.to(measured.dtype), pad) > 0
        rows, cols, inside, remainder = model.spectrum_window(indices)
        factor = model.box_factor()
        # the projections see the edge as the frequency cells' area fraction: smoother than the
        # fit's source-smeared hard edge, so the modulus constraint converges faster; they only
        # start the fit (docs/solver.md)
        model_pupil = model.pupil(remainder, model.sample.defocus_um, edge="coverage")
        edge = model_pupil.abs()
        centre = model.pupil(torch.zeros((1, 2), dtype=remainder.dtype, device=remainder.device), model.sample.defocus_um,
                             edge="coverage")[0]
        start = torch.polar(torch.ones_like(edge[0]), torch.angle(centre))
        phase = start.clone()
        spectrum = model.illuminated_spectrum().clone()  # the sample as the LEDs light it
        idx_r = rows[:, :, None].expand(-1, -1, rows.shape[1]).reshape(-1)
        idx_c = cols[:, None, :].expand(-1, cols.shape[1], -1).reshape(-1)
        support = centre.abs() > 0.5
        if update_sample:
            # denominator of the object step: sum over LEDs of |factor E_j phase|^2, the same every
            # iteration since |phase| = 1
            weight = ((factor * edge).abs() ** 2).reshape(-1)
            den_o = torch.zeros(spectrum.shape, dtype=weight.dtype, device=weight.device)
            den_o = den_o.index_put_((idx_r, idx_c), weight, accumulate=True)
            den_o = den_o + 1e-3 * den_o.max()
        errors = []
        for it in range(iterations):
            crop = spectrum[rows[:, :, None], cols[:, None, :]]
            if inside is not None:
                crop = crop * inside
            seen = crop * factor * edge  # (J, B, B): what multiplies the phase map
            box = seen * phase
            field = box_to_field(box, n)
            modulus = field.abs()
            errors.append(float(((modulus - measured) ** 2 * use).sum() / (measured**2 * use).sum().clamp(min=1e-30)))
            corrected = torch.where(use, measured * field / modulus.clamp(min=1e-12), field)
            new_box = field_to_box(corrected, half)
            num = (seen.conj() * new_box).sum(dim=0)
            phase = torch.where(num.abs() > 0, num / num.abs().clamp(min=1e-30), phase)
            if update_sample:
                # batched quasi-Newton object step (all LEDs at once), weighted by the pupil
                pj = factor * edge * phase  # (J, B, B)
                delta = (pj.conj() * (new_box - box)).reshape(-1)
                num_o = torch.zeros_like(spectrum).index_put_((idx_r, idx_c), delta, accumulate=True)
                spectrum = spectrum + num_o / den_o
            if observe is not None and (it + 1) % OBSERVE_EVERY == 0 and it + 1 < iterations:
                c, _, _ = fit_phase_map(model, phase * start.conj(), support, free)
                now = model.pupil.zernike_waves.detach().clone()
                now[FIRST_FITTED_NOLL - 1 :] += c.to(now.dtype)
                observe(now)
        coeffs, defocus, position = fit_phase_map(model, phase * start.conj(), support, free)
        model.pupil.zernike_waves[FIRST_FITTED_NOLL - 1 :] += coeffs.to(model.pupil.zernike_waves.dtype)
        model.sample.defocus_um += defocus.to(model.sample.defocus_um.dtype)
        model.sample.position_um += position.to(model.sample.position_um.dtype)
        if update_sample:
            t = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)))
            lit = model.illumination_phase()
            if lit is not None:  # back to the transmission
                t = t * lit.conj().to(t.dtype)
            model.sample.field_real.copy_(t.real)
            model.sample.field_imag.copy_(t.imag)
    return {"iterations": iterations, "error_start": errors[0] if errors else None,
            "error_end": errors[-1] if errors else None, "coefficients": coeffs.tolist(),
            "defocus_um": float(defocus), "position_um": position.tolist()}


@torch.no_grad()
def _basis(model: StationModel) -> torch.Tensor:
    """Phase (radians) per unit of each fitted quantity on the box at zero shift, shape (M, B, B):
    Noll 5..K (waves), sample defocus (um), sample position x, y (um)."""
    g = model.geometry
    p = model.pupil
    zero = torch.zeros((1, 2), dtype=p.na.dtype, device=p.na.device)
    k = p.zernike_waves.numel()
    out = []
    for j in range(FIRST_FITTED_NOLL - 1, k):
        e = torch.zeros(k, dtype=p.na.dtype, device=p.na.device)
        e[j] = 1.0
        out.append(2 * math.pi * p.phase_waves(zero, e)[0])
    u = p.box_coordinates()
    fx, fy = u[None, :] * g.df, u[:, None] * g.df
    f2 = fx**2 + fy**2
    inv_lambda = 1.0 / g.wavelength_um
    out.append(-2 * math.pi * f2 / (torch.sqrt((inv_lambda**2 - f2).clamp(min=1e-12)) + inv_lambda))
    out.append((-2 * math.pi * fx).expand_as(f2))
    out.append((-2 * math.pi * fy).expand_as(f2))
    return torch.stack(out)


@torch.no_grad()
def fit_phase_map(model: StationModel, unit: torch.Tensor, support: torch.Tensor, free=None):
    """Project a unit-modulus phase map onto the model's basis (see :func:`_basis`).

    Parameters
    ----------
    unit : Tensor, shape (B, B), complex
        ``exp(i phi)`` on the pupil box (``phi`` may wrap).
    support : Tensor of bool, shape (B, B)
        Cells used (inside the pupil).
    free : Tensor of bool, shape (K - 1,), optional
        Basis quantities fitted (default all); the others are returned as 0.

    Returns
    -------
    coeffs : Tensor (K - 4,)
        Noll 5..K (waves).
    defocus_um : Tensor ()
    position_um : Tensor (2,)
    """
    full = _basis(model).to(torch.float64)
    free = torch.ones(full.shape[0], dtype=torch.bool, device=full.device) if free is None else free
    free = free.to(full.device)
    basis = full[free]
    unit = unit.to(torch.complex128)
    rows, targets = [], []
    for dim in (-1, -2):  # neighbour differences along x, then y
        a = unit.narrow(dim, 1, unit.shape[dim] - 1)
        b = unit.narrow(dim, 0, unit.shape[dim] - 1)
        ok = support.narrow(dim, 1, support.shape[dim] - 1) & support.narrow(dim, 0, support.shape[dim] - 1)
        d = torch.angle(a * b.conj())[ok]
        db = (basis.narrow(dim, 1, basis.shape[dim] - 1) - basis.narrow(dim, 0, basis.shape[dim] - 1))[:, ok]
        rows.append(db.T)
        targets.append(d)
    x = torch.linalg.lstsq(torch.cat(rows), torch.cat(targets)[:, None]).solution[:, 0]
    # the remaining phase is small now: fit it directly (with a piston column)
    rest = unit * torch.polar(torch.ones_like(basis[0]), -torch.tensordot(x, basis, dims=1))
    mean = rest[support].sum()
    rest = rest * (mean.conj() / mean.abs().clamp(min=1e-30))
    a = torch.cat([basis[:, support].T, torch.ones((int(support.sum()), 1), dtype=basis.dtype, device=basis.device)], dim=1)
    x = x + torch.linalg.lstsq(a, torch.angle(rest[support])[:, None]).solution[:-1, 0]
    out = torch.zeros(full.shape[0], dtype=x.dtype, device=x.device)
    out[free] = x
    k = full.shape[0] - 3
    return out[:k], out[k], out[k + 1 :]


def basis_mask(model: StationModel, parameters, blind: bool) -> torch.Tensor:
    """Which basis quantities of :func:`_basis` a schedule lets the projections set.

    Parameters
    ----------
    parameters : sequence of ParameterSpec
        The schedule's free parameters (Zernike terms by their indices, defocus, position).
    blind : bool
        In blind mode the sample position is a gauge of the unknown object (a pupil tilt and an
        object shift are the same data): it is always set.

    Returns
    -------
    Tensor of bool, shape (K - 1,)
    """
    k = model.pupil.zernike_waves.numel()
    mask = torch.zeros(k - FIRST_FITTED_NOLL + 1 + 3, dtype=torch.bool)
    for spec in parameters:
        if spec.path == "pupil.zernike_waves":
            idx = range(k) if spec.indices is None else spec.indices
            for i in idx:
                if i >= FIRST_FITTED_NOLL - 1:
                    mask[i - FIRST_FITTED_NOLL + 1] = True
        elif spec.path == "sample.defocus_um":
            mask[-3] = True
        elif spec.path == "sample.position_um":
            mask[-2:] = True
    if blind:
        mask[-2:] = True
    return mask
