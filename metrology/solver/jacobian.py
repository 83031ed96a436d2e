"""Jacobian of the whitened residuals with respect to the free system parameters.

:func:`linearise` gives one Jacobian column per tangent: forward-mode automatic differentiation
(``torch.func.jvp``, batched over tangents with ``vmap``) through the cheap part of the model (the
frames' field spectra on the pupil box, their gains and the background), and the camera part
(inverse FFT, ``|.|^2``, pixel quadrature, whitened square root) in closed form. Per-LED brightness
(and stray light) affects only its own frame, so a single tangent (all brightnesses at once) yields
all of their columns ("column compression", one tangent per such parameter,
:data:`metrology.solver.assembly.PER_FRAME_PATHS`). The columns are kept as (T, J, n, n) tangents; ``J^T J`` and
``J^T r`` are assembled from them in float64.

Residuals are whitened amplitude residuals ``r = 2 sqrt(g) (sqrt(M + c) - sqrt(D + c))`` (unit
variance under shot and read noise), so ``J^T J`` is the Fisher information of the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from metrology.parameters import element_name
from metrology.solver.assembly import PER_FRAME_PATHS, assemble, frame_groups, per_block, spectral_meat
from metrology.solver.losses import _offset, _roots, model_root_slope

BRIGHTNESS = "illumination.brightness"
STRAY_LIGHT = "illumination.stray_light"
ZERNIKE = "pupil.zernike_waves"
DEFOCUS = "sample.defocus_um"
POSITION = "sample.position_um"
PHASE_PATHS = (ZERNIKE, DEFOCUS, POSITION)
"""Parameters that move only the phase of the frames' box spectra: their tangents in closed form."""
GAIN_PATHS = (BRIGHTNESS, "illumination.emission_exponent", "camera.counts_per_unit", "camera.background_counts",
              STRAY_LIGHT)
"""Parameters that move only the frames' stray light, gain or the background: forward mode through
those alone."""
TANGENT_CHUNK_ELEMENTS = 1 << 23
"""Pupil-box elements (tangents x frames x box pixels) per batched forward-mode pass of
:func:`linearise`: 225 LEDs with a 105-pixel box take 3 tangents at once (memory)."""


@dataclass
class Columns:
    """The free scalar parameters: one entry per Jacobian column."""

    names: list  # element names (metrology.parameters.element_name), e.g. "pupil.zernike_waves[5]"
    paths: list  # parameter path of each column
    flat_index: list  # element of the parameter
    spec: list  # index of the ParameterSpec (in the list given) that frees it

    def values(self, model) -> torch.Tensor:
        """The current value of every column in ``model`` (their raw units), shape (P,), detached."""
        return torch.stack([model.parameter(p).detach().reshape(-1)[k] for p, k in zip(self.paths, self.flat_index)])


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


@dataclass
class Linearisation:
    """The whitened residuals and their Jacobian at one point (see :func:`linearise`).

    ``tangents`` holds one (J, n, n) Jacobian column per plain column and, last, the compressed
    per-frame tangents (one per parameter of :data:`PER_FRAME_PATHS` present; its column j lives in
    frame j); ``bright`` lists the per-frame columns.
    """

    tangents: torch.Tensor  # (T, J, n, n)
    residual: torch.Tensor  # (J, n, n)
    mask: torch.Tensor  # (J, n, n): the residual scale the tangents carry
    columns: Columns
    plain: list
    bright: list

    def normal(self, frames=None):
        """``(J^T J, J^T r)`` over ``frames`` (default all), float64."""
        sel = None if frames is None else torch.as_tensor(list(frames), dtype=torch.long, device=self.residual.device)
        return assemble(self.tangents, self.residual, self.columns, self.plain, self.bright, sel)

    def per_group(self, groups) -> list:
        """``(J_g^T J_g, J_g^T r_g)`` per frame group (the groups must partition the frames)."""
        n = self.residual.shape[0]
        if sorted(i for sel in groups for i in sel) != list(range(n)):
            raise ValueError("frame groups must partition the frames")
        return [self.normal(sel) for sel in groups]

    def per_block(self, blocks: int) -> list:
        """``(J_b^T J_b, J_b^T r_b)`` per image region of a ``blocks x blocks`` grid."""
        return per_block(self.tangents, self.residual, self.columns, self.plain, self.bright, blocks)

    def meat(self) -> torch.Tensor:
        """``J^T S J`` (:func:`metrology.solver.assembly.spectral_meat`)."""
        return spectral_meat(self.tangents, self.residual, self.mask, self.columns, self.plain, self.bright)

    @property
    def rtr(self) -> float:
        return float((self.residual.double() ** 2).sum())

    def rescaled(self, mask: torch.Tensor) -> "Linearisation":
        """The same linearisation with the per-pixel residual scale ``mask`` instead of ``self.mask``.

        The residuals and every tangent are the unscaled ones times the scale, so at the same
        parameter values a new scale (re-estimated data variances, :mod:`metrology.solver.weights`)
        changes them by the ratio of the scales: this equals a fresh :func:`linearise` with ``mask``
        (to rounding) without a forward-mode pass. Pixels outside the old scale (0) must stay out.
        """
        old = self.mask
        if bool(((old == 0) & (mask != 0)).any()):
            raise ValueError("the new residual scale covers pixels the linearisation left out")
        ratio = torch.where(old != 0, mask / torch.where(old != 0, old, torch.ones_like(old)), torch.zeros_like(old))
        return Linearisation(self.tangents * ratio, self.residual * ratio, mask, self.columns, self.plain, self.bright)


class _FrameParts(nn.Module):
    """The cheap, parameter-dependent part of a model's frames as one module call (for
    ``functional_call``): per spectral node the field spectrum on the pupil box and the uniform
    term (:meth:`StationModel.frame_parts`), then the per-frame stray light, the per-frame gain
    (camera scale included) and the background."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self):
        m = self.model
        parts = m.frame_parts()
        uniform = [u for _, _, u in parts if u is not None]
        return tuple(spec for _, spec, _ in parts) + tuple(uniform) + (
            m.frame_stray_light(), m.camera.counts_per_unit * m.frame_gain(), m.camera.background_counts)


def linearise(model, data, mask, noise, specs, pixel_points: int | None = None) -> Linearisation:
    """Whitened residuals times ``mask`` and their Jacobian for the free elements of ``specs``.

    The frames are a fixed map of a few cheap quantities (:class:`_FrameParts`: each frame's field
    spectrum on the pupil box, its uniform term, its gain, the background), which carry every
    parameter's influence. Forward-mode AD (``jvp``, batched over tangents with ``vmap``) gives
    their tangents; the map to the whitened residual is differentiated in closed form with the
    camera fields ``F = ifft2(spectrum x ramp)`` computed once:
    ``dI = sum_s w_s (sum_q w_q 2 Re(conj(F_sq) ifft2(dspectrum_s x ramp_q)) + duniform_s)``,
    ``dr = sqrt(g) mask (d(gain I) / sqrt(gain I + c) + db [D - b + c > 0] / sqrt(D - b + c))``, with
    ``sqrt(c)`` in the first denominator where ``gain I < 0`` (the root's tangent continuation,
    :func:`metrology.solver.losses.model_root`).
    A tangent costs one inverse FFT per node and quadrature point instead of a forward-mode pass
    through the whole model (:func:`linearise_reference`, which this equals to rounding).

    Parameters
    ----------
    model : StationModel
    data, mask : Tensor, shape (J, n, n)
        ``mask``: 0/1 valid pixels, or any per-pixel residual scale (e.g. ``mask / sqrt(v)``).
    noise : NoiseModel
    specs : list of ParameterSpec
        Free parameters (sample fields excluded).
    pixel_points : int, optional
        Pixel-quadrature points per axis (default the geometry's). 1 samples the pixel centres only:
        ~4x fewer inverse FFTs than a 2 x 2 rule, for an approximate Jacobian where one suffices
        (the preconditioner of the staged rounds); never for the uncertainty or a convergence test.

    Notes
    -----
    Memory: the camera fields of every spectral node and quadrature point are kept
    (``nodes x quadrature^2 x J x field_px^2`` complex) besides the (T, J, n, n) tangents.
    """
    cols, paths, primals, (plain, bright, tans) = _tangent_definitions(model, specs)
    wrapper = _FrameParts(model)

    def parts_of(*vals):
        return functional_call(wrapper, {"model." + p: v for p, v in zip(paths, vals)}, ())

    gains = _GainParts(model)

    def gain_of(*vals):
        return functional_call(gains, {"model." + p: v for p, v in zip(paths, vals)}, ())

    nodes = model.geometry.spectral_nodes()
    with torch.no_grad():
        p0 = parts_of(*primals)
        camera = _CameraPart(model, nodes, p0, data, mask, noise, pixel_points)
        box = p0[0][0].numel()
        n_tangents = tans[0].shape[0]
        t_all = torch.empty((n_tangents,) + tuple(data.shape), dtype=camera.residual.dtype, device=data.device)
        chunk = max(1, TANGENT_CHUNK_ELEMENTS // max(1, box * data.shape[0]))
        for pi in range(len(paths)):
            # one parameter's tangents at a time: the others stay primal, so the branches of the
            # model that do not depend on it (e.g. the pupil edge for a Zernike column) carry no tangent
            rows = [t for t in range(n_tangents) if bool(tans[pi][t].any())]
            if paths[pi] in PHASE_PATHS and not (paths[pi] == POSITION and model.geometry.spherical_illumination):
                # a phase term: its parts' tangent in closed form, no forward-mode pass (the sample's
                # position also moves it under the LEDs' curved waves: then by forward mode)
                along = _phase_parts_tangent(model, nodes, p0, paths[pi])
                for row in rows:
                    t_all[row] = camera.tangent(along(tans[pi][row]))
                continue
            if paths[pi] in GAIN_PATHS:  # forward mode through the gain and background alone
                still = [torch.zeros_like(x) for x in p0[:-3]]
                _by_forward_mode(camera, gain_of, primals, pi, tans[pi], rows, chunk, t_all, still)
            else:
                _by_forward_mode(camera, parts_of, primals, pi, tans[pi], rows, chunk, t_all)
    return Linearisation(t_all, camera.residual, mask, cols, plain, bright)


def _by_forward_mode(camera, parts_of, primals, pi, tangents, rows, chunk, t_all, prefix=()) -> None:
    """Residual tangents ``t_all[rows]`` along the rows of ``tangents`` of parameter ``pi``: forward
    mode (``jvp``, ``chunk`` tangents per ``vmap`` pass) through ``parts_of`` with the other
    parameters primal, then the camera part in closed form. ``prefix``: the tangents of the parts
    that ``parts_of`` leaves out (zeros), put before its own."""
    for start in range(0, len(rows), chunk):
        sel = rows[start : start + chunk]

        def along(value):
            return parts_of(*(value if i == pi else v for i, v in enumerate(primals)))

        dp = vmap(lambda t: jvp(along, (primals[pi],), (t,))[1])(tangents[sel])
        for k, row in enumerate(sel):
            t_all[row] = camera.tangent(list(prefix) + [d[k] for d in dp])


def _phase_parts_tangent(model, nodes, parts, path: str):
    """The tangent of :class:`_FrameParts` along a direction ``v`` of a phase parameter (one of
    :data:`PHASE_PATHS`), in closed form. Such a parameter moves only the phase of each node's box
    spectrum: ``spectrum_s = edge body crop factor`` with the phase ``phi_s`` linear in it, so
    ``dspectrum_s = i dphi_s(v) spectrum_s``, and the uniform terms, the gain and the background do
    not move (a phase leaves ``|body|^2`` alone). Per spectral node ``s = lambda / lambda_0``:

    * ``pupil.zernike_waves``: ``dphi_s = (2 pi / s) W_s(v)`` (:meth:`Pupil.phase_waves` with the
      coefficients ``v`` at the node's sub-pixel remainders and radius);
    * ``sample.defocus_um``: ``dphi_s = v 2 pi (k_z - k)`` (:meth:`Pupil.defocus_phase`);
    * ``sample.position_um``: ``dphi = -2 pi (f_x v_x + f_y v_y)`` on the box (the ramp of
      :meth:`StationModel.box_factor`), the same for every node.

    Equal to the forward-mode pass (``tests/test_polish.py``) at a fraction of its cost (35 of the 45
    columns of a known fit). Returns a function ``v -> parts tangent`` (the :class:`_FrameParts`
    tuple layout)."""
    k = len(nodes)
    specs, rest = parts[:k], parts[k:]
    remainders = [model.spectrum_window(None, scale)[3] for scale, _ in nodes]
    zeros = tuple(torch.zeros_like(x) for x in rest)
    pupil = model.pupil
    if path == ZERNIKE:
        def phase(v, scale, rem):
            return (2 * math.pi / scale) * pupil.phase_waves(rem, coeffs=v, wavelength_scale=scale)
    elif path == DEFOCUS:
        grids = {scale: pupil.defocus_phase(rem, scale) for (scale, _), rem in zip(nodes, remainders)}

        def phase(v, scale, rem):
            return v * grids[scale]
    else:
        uf = pupil.box_coordinates() * model.geometry.df

        def phase(v, scale, rem):
            return -2 * math.pi * (uf[None, :] * v[0] + uf[:, None] * v[1])

    def along(v):
        return tuple(1j * phase(v, scale, rem) * spec
                     for (scale, _), rem, spec in zip(nodes, remainders, specs)) + zeros

    return along


class _GainParts(nn.Module):
    """The per-frame stray light, gain (camera scale included) and the background of
    :class:`_FrameParts` alone: what the parameters of :data:`GAIN_PATHS` move."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self):
        m = self.model
        return m.frame_stray_light(), m.camera.counts_per_unit * m.frame_gain(), m.camera.background_counts


class _CameraPart:
    """The map from :class:`_FrameParts` to the whitened residual, at one point, and its
    derivative in closed form (see :func:`linearise`)."""

    def __init__(self, model, nodes, parts, data, mask, noise, pixel_points=None):
        self.model, self.nodes = model, nodes
        specs, uniform, stray = parts[: len(nodes)], parts[len(nodes) : -3], parts[-3]
        self.gain, background = parts[-2], parts[-1]
        # computed once, kept for the tangents
        per_node = [list(model.camera_fields(spec, pixel_points)) for spec in specs]
        self.fields = [(si, weight * w, ramp, f)  # per (node, quadrature point), cropped to the frame
                       for si, ((_, weight), node) in enumerate(zip(nodes, per_node)) for w, ramp, f in node]
        self.intensity = model.intensity_of([(weight, spec, uniform[si] if uniform else None)
                                             for si, ((_, weight), spec) in enumerate(zip(nodes, specs))], per_node)
        self.intensity = self.intensity + stray[:, None, None]
        signal = self.gain[:, None, None] * self.intensity
        c = _offset(noise.gain_e_per_count, noise.read_noise_counts)
        sm, sd = _roots(signal + background, data, background, c)
        sqrt_g = noise.gain_e_per_count**0.5
        self.residual = 2 * sqrt_g * (sm - sd) * mask  # whitened_residual, from the roots it needs anyway
        self.on_signal = 2 * sqrt_g * mask * model_root_slope(signal, sm, c)
        self.on_background = sqrt_g * mask * ((data - background + c) >= 1e-12) / sd

    def tangent(self, d_parts) -> torch.Tensor:
        """The residual's tangent (J, n, n) from one tangent of the parts (as :class:`_FrameParts`
        returns them, without the tangent axis)."""
        k = len(self.nodes)
        dspecs, duniform, dstray, dgain, dbg = d_parts[:k], d_parts[k:-3], d_parts[-3], d_parts[-2], d_parts[-1]
        d_int = dstray[:, None, None]
        for si, w, ramp, f in self.fields:
            ds = dspecs[si]
            if not bool(ds.any()):
                continue
            g = self.model.camera_field(ds, ramp)
            d_int = d_int + (2 * w) * (f.real * g.real + f.imag * g.imag)
        for si, du in enumerate(duniform):
            d_int = d_int + self.nodes[si][1] * du[:, None, None]
        d_signal = dgain[:, None, None] * self.intensity + self.gain[:, None, None] * d_int
        return d_signal * self.on_signal + dbg * self.on_background


def _tangent_definitions(model, specs):
    """The columns of ``specs`` and their tangents: plain columns one tangent each, then each
    per-frame parameter (:data:`PER_FRAME_PATHS`, in that order) compressed into one tangent.

    Returns ``columns``, ``paths`` (the free parameters, once each), ``primals`` (their detached
    values) and ``(plain, bright, tangents)``: column indices, and one tangent tensor per path,
    shape (T,) + the parameter's shape."""
    cols = columns_for(model, specs)
    paths = list(dict.fromkeys(s.path for s in specs))
    primals = tuple(model.parameter(p).detach() for p in paths)
    plain = [i for i, p in enumerate(cols.paths) if p not in PER_FRAME_PATHS]
    bright = [i for i, p in enumerate(cols.paths) if p in PER_FRAME_PATHS]
    # the tangents' order is the assembly's (frame_groups): group g is tangent len(plain) + g
    tangent_defs = [[i] for i in plain] + [list(g.values()) for g in frame_groups(cols, bright)]
    tans = [torch.zeros((len(tangent_defs),) + tuple(p.shape), dtype=p.dtype, device=p.device) for p in primals]
    for ti, members in enumerate(tangent_defs):
        for ci in members:
            tans[paths.index(cols.paths[ci])][ti].view(-1)[cols.flat_index[ci]] = 1.0
    return cols, paths, primals, (plain, bright, tans)


def linearise_reference(model, data, mask, noise, specs) -> Linearisation:
    """:func:`linearise` by forward-mode AD through the whole model (one pass per tangent): the
    reference the closed-form camera part is tested against."""
    cols, paths, primals, (plain, bright, tans) = _tangent_definitions(model, specs)

    def f(*vals):
        over = dict(zip(paths, vals))
        out = functional_call(model, over, ())
        bg = over.get("camera.background_counts", model.camera.background_counts.detach())
        return whitened_residual(out, data, noise, bg) * mask

    with torch.no_grad():
        r = f(*primals)
        t_all = vmap(lambda *t: jvp(f, primals, t)[1], chunk_size=1)(*tans)
    return Linearisation(t_all, r, mask, cols, plain, bright)


def normal_equations(model, data, mask, noise, specs, groups=None, pixel_points=None):
    """``J^T J``, ``J^T r`` and ``r^T r`` over the valid pixels, for the free elements of ``specs``
    (see :func:`linearise`, also for ``pixel_points``); with ``groups`` (frame index lists
    partitioning the frames) also the per-group ``(J_g^T J_g, J_g^T r_g)`` for the linearised
    jackknife.

    Returns
    -------
    jtj : Tensor (P, P) float64
    jtr : Tensor (P,) float64
    rtr : float
    columns : Columns
    per_group : list, only with ``groups``
    """
    lin = linearise(model, data, mask, noise, specs, pixel_points)
    n = lin.residual.shape[0]
    parts = [list(sel) for sel in groups] if groups else [list(range(g, n, 10)) for g in range(min(10, n))]
    per_group = lin.per_group(parts)
    jtj = sum(a for a, _ in per_group)
    jtr = sum(b for _, b in per_group)
    out = (jtj, jtr, lin.rtr, lin.columns)
    return out + (per_group,) if groups is not None else out
