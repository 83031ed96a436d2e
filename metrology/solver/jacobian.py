"""Jacobian of the whitened residuals with respect to the free system parameters.

Forward-mode automatic differentiation (``torch.func.jvp``, one pass per tangent) gives one
Jacobian column per tangent. Per-LED brightness affects only its own frame, so a single tangent
(all brightnesses at once) yields all of their columns ("column compression"). The products
``J^T J`` and ``J^T r`` are accumulated directly; the full Jacobian is never stored.

Residuals are whitened amplitude residuals ``r = 2 sqrt(g) (sqrt(M + c) - sqrt(D + c))`` (unit
variance under shot and read noise), so ``J^T J`` is the Fisher information of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp

from metrology.parameters import element_name
from metrology.solver.losses import _offset, _roots

BRIGHTNESS = "illumination.brightness"


@dataclass
class Columns:
    """The free scalar parameters: one entry per Jacobian column."""

    names: list  # element names (metrology.parameters.element_name), e.g. "pupil.zernike_waves[5]"
    paths: list  # parameter path of each column
    flat_index: list  # element of the parameter
    spec: list  # index of the ParameterSpec (in the list given) that frees it


def columns_for(model, specs) -> Columns:
    names, paths, idx, owner = [], [], [], []
    for si, s in enumerate(specs):
        p = model.parameter(s.path)
        elems = range(p.numel()) if s.indices is None else s.indices
        for k in elems:
            names.append(element_name(s.path, None if p.dim() == 0 else k))
            paths.append(s.path)
            idx.append(int(k))
            owner.append(si)
    return Columns(names, paths, idx, owner)


def psd_inverse(mat: torch.Tensor, rcond: float = 1e-12) -> torch.Tensor:
    """Pseudo-inverse of a symmetric positive semi-definite matrix, scaled by its diagonal first
    (parameters in different units), with eigenvalues below ``rcond * max`` dropped."""
    if mat.numel() == 0:
        return mat.clone()
    d = torch.sqrt(mat.diagonal().clamp(min=1e-300))
    scaled = mat / d[:, None] / d[None, :]
    evals, evecs = torch.linalg.eigh(scaled)
    keep = evals > rcond * evals.max().clamp(min=1e-300)
    inv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    return inv / d[:, None] / d[None, :]


def whitened_residual(model_out, data, noise, background):
    """Variance-stabilised residual ``2 sqrt(g) (sqrt(M - b + c) - sqrt(D - b + c))`` (unit variance)."""
    sm, sd = _roots(model_out, data, background, _offset(noise.gain_e_per_count, noise.read_noise_counts))
    return 2 * noise.gain_e_per_count**0.5 * (sm - sd)


def normal_equations(model, data, mask, noise, specs, groups=None):
    """``J^T J``, ``J^T r`` and ``r^T r`` over the valid pixels, for the free elements of ``specs``.

    Parameters
    ----------
    model : StationModel
    data, mask : Tensor, shape (J, n, n)
    noise : NoiseModel
    specs : list of ParameterSpec
        Free parameters (sample fields excluded).
    groups : list of index arrays, optional
        Frame groups; when given, the per-group ``(J_g^T J_g, J_g^T r_g)`` are returned too
        (for the linearised jackknife).

    Returns
    -------
    jtj : Tensor (P, P) float64
    jtr : Tensor (P,) float64
    rtr : float
    columns : Columns
    """
    cols = columns_for(model, specs)
    paths = list(dict.fromkeys(s.path for s in specs))
    primals = tuple(model.parameter(p).detach() for p in paths)

    def f(*vals):
        over = dict(zip(paths, vals))
        out = functional_call(model, over, ())
        bg = over.get("camera.background_counts", model.camera.background_counts.detach())
        return whitened_residual(out, data, noise, bg) * mask

    # tangents: all non-brightness columns one by one, brightness compressed into one tangent
    plain = [i for i, p in enumerate(cols.paths) if p != BRIGHTNESS]
    bright = [i for i, p in enumerate(cols.paths) if p == BRIGHTNESS]
    tangent_defs = [[i] for i in plain] + ([bright] if bright else [])
    with torch.no_grad():
        r = f(*primals)
    # one forward-mode pass per tangent (a plain loop measured faster than vmap here), outputs
    # kept in the model's precision and accumulated in float64 frame group by frame group
    t_all = torch.empty((len(tangent_defs),) + tuple(r.shape), dtype=r.dtype, device=r.device)
    for ti, members in enumerate(tangent_defs):
        tans = []
        for pi, path in enumerate(paths):
            t = torch.zeros_like(primals[pi])
            for ci in members:
                if cols.paths[ci] == path:
                    t.view(-1)[cols.flat_index[ci]] = 1.0
            tans.append(t)
        t_all[ti] = jvp(f, primals, tuple(tans))[1].detach()
    n = r.shape[0]
    parts = [list(sel) for sel in groups] if groups else [list(range(g, n, 10)) for g in range(min(10, n))]
    per_group = [_assemble(t_all, r, cols, plain, bright, torch.as_tensor(sel, dtype=torch.long, device=r.device)) for sel in parts]
    jtj = sum(a for a, _ in per_group)
    jtr = sum(b for _, b in per_group)
    covered = sorted(i for sel in parts for i in sel)
    if covered != list(range(n)):
        raise ValueError("frame groups must partition the frames")
    rtr = float((r.double() ** 2).sum())
    if groups is not None:
        return jtj, jtr, rtr, cols, per_group
    return jtj, jtr, rtr, cols


def _assemble(t_all, r, cols, plain, bright, frames):
    """``J^T J`` and ``J^T r`` restricted to ``frames`` (None: all frames)."""
    n_plain = len(plain)
    p_total = len(cols.names)
    dev = t_all.device
    jtj = torch.zeros((p_total, p_total), dtype=torch.float64, device=dev)
    jtr = torch.zeros(p_total, dtype=torch.float64, device=dev)
    tsel = (t_all if frames is None else t_all[:, frames]).double()
    rsel = (r if frames is None else r[frames]).double()
    tp = tsel[:n_plain].reshape(n_plain, -1)
    pi = torch.as_tensor(plain, dtype=torch.long, device=dev)
    jtj[pi[:, None], pi[None, :]] = tp @ tp.T
    jtr[pi] = tp @ rsel.reshape(-1)
    if bright:
        bt = t_all[n_plain]  # (J, n, n): column j lives in frame j
        bi = torch.as_tensor(bright, dtype=torch.long, device=dev)
        leds = torch.as_tensor([cols.flat_index[i] for i in bright], dtype=torch.long, device=dev)
        if frames is not None:
            keep = torch.isin(leds, frames)
            bi, leds = bi[keep], leds[keep]
        bcol = bt[leds].double()  # (Jb, n, n)
        jtj[bi, bi] = (bcol**2).sum(dim=(-2, -1))
        cross = torch.einsum("pjxy,jxy->pj", t_all[:n_plain][:, leds].double(), bcol)
        jtj[pi[:, None], bi[None, :]] = cross
        jtj[bi[:, None], pi[None, :]] = cross.T
        jtr[bi] = (bcol * r[leds].double()).sum(dim=(-2, -1))
    return jtj, jtr
