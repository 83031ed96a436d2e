"""Normal equations and the spectral meat from the Jacobian's tangents, in float64, in chunks.

:class:`metrology.solver.jacobian.Linearisation` keeps the Jacobian as tangents ``t_all`` (T, J, n, n):
the plain columns' tangents and, last, one compressed tangent per per-frame parameter
(:data:`PER_FRAME_PATHS`: the column of LED ``j`` lives in frame ``j`` only). This module assembles from them ``J^T J`` and ``J^T r`` (whole, per frame
group, per image region) and ``J^T S J`` with the residuals' own spatial covariance, a chunk of
frames at a time so that the float64 copy of the whole set is never held.
"""

from __future__ import annotations

import torch

from metrology.parameters import PER_FRAME as PER_FRAME_PATHS  # one compressed tangent each, in this order

MEAT_CHUNK = 16
"""Frames per chunk of the spectral meat (memory)."""
MEAT_SMOOTHING_PX = 3
"""Half-width (frequency pixels) of the box that smooths each frame's residual periodogram."""


def block_index(n: int, blocks: int) -> list:
    """Flat pixel indices of each region of a ``blocks x blocks`` grid over an (n, n) frame."""
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    out = []
    for a in range(blocks):
        for b in range(blocks):
            rows = torch.arange(edges[a], edges[a + 1])
            cols = torch.arange(edges[b], edges[b + 1])
            out.append((rows[:, None] * n + cols[None, :]).reshape(-1))
    return out


def frame_groups(cols, bright) -> list:
    """The per-frame columns ``bright`` split by parameter, in :data:`PER_FRAME_PATHS` order, the
    parameters without a column left out: group ``g``'s tangent is ``t_all[n_plain + g]``. Returns a
    list of ``{led: column}``."""
    groups = [{cols.flat_index[i]: i for i in bright if cols.paths[i] == path} for path in PER_FRAME_PATHS]
    return [g for g in groups if g]


def _pairs(frames: list, a: dict, b: dict, dev):
    """Frames of a chunk whose LED has a column in both groups ``a`` and ``b``: positions and the two
    columns, as index tensors; None when there is none."""
    both = [(k, a[j], b[j]) for k, j in enumerate(frames) if j in a and j in b]
    if not both:
        return None
    return tuple(torch.as_tensor(x, dtype=torch.long, device=dev) for x in zip(*both))


def lit_frames(frames: list, col_of_led: dict, dev):
    """The frames of a chunk whose LED has a brightness column: their positions in ``frames`` and
    their columns, as index tensors ``(ks, columns)``; None when there is none."""
    lit = [(k, col_of_led[j]) for k, j in enumerate(frames) if j in col_of_led]
    if not lit:
        return None
    return (torch.as_tensor([k for k, _ in lit], dtype=torch.long, device=dev),
            torch.as_tensor([c for _, c in lit], dtype=torch.long, device=dev))


def per_block(t_all, r, cols, plain, bright, blocks: int) -> list:
    """Per image region ``(J_b^T J_b, J_b^T r_b)`` (see :func:`metrology.solver.jacobian.normal_equations`)."""
    n = r.shape[-1]
    t_flat = t_all.reshape(t_all.shape[0], t_all.shape[1], n * n)
    r_flat = r.reshape(r.shape[0], n * n)
    out = []
    for idx in block_index(n, blocks):
        idx = idx.to(r.device)
        out.append(assemble(t_flat[:, :, idx], r_flat[:, idx], cols, plain, bright, None))
    return out


def spectral_meat(t_all, r, mask, cols, plain, bright, smooth_px: int = MEAT_SMOOTHING_PX):
    """``J^T S J``: the Jacobian weighted by the residuals' own spatial covariance.

    The whitened residuals of a perfect model are white with unit variance; model mismatch adds a
    structured, spatially correlated part. Each frame's residual covariance is taken as stationary
    with power spectrum ``S_j(f) = smooth(|R_j(f)|^2) / N_j`` (``R_j`` the residual's DFT, ``N_j``
    its valid pixels; white unit noise gives ``S = 1``), and by Parseval
    ``J_j^T S_j J_j = (1 / n^2) sum_f conj(Jhat_j(f)) S_j(f) Jhat_j(f)^T``. For ``S = 1`` this is
    ``J^T J``; the sandwich ``(J^T J)^-1 J^T S J (J^T J)^-1`` then equals the Fisher covariance, and
    it grows where the mismatch has power at the frequencies a parameter is measured at
    (heteroscedasticity- and autocorrelation-consistent covariance).

    Returns
    -------
    Tensor (P, P) float64
    """
    n = r.shape[-1]
    dev = r.device
    rd = r.double()
    valid = (mask > 0).double().sum(dim=(-2, -1)).clamp(min=1.0)
    power = torch.fft.fft2(rd).abs() ** 2 / valid[:, None, None]  # (J, n, n)
    k = 2 * smooth_px + 1
    padded = torch.nn.functional.pad(power[:, None], (smooth_px,) * 4, mode="circular")
    spec = torch.nn.functional.avg_pool2d(padded, k, stride=1)[:, 0]  # (J, n, n)
    half = n // 2 + 1
    spec = spec[..., :half]
    wcol = torch.full((half,), 2.0, dtype=torch.float64, device=dev)  # rfft: count the mirrored half
    wcol[0] = 1.0
    if n % 2 == 0:
        wcol[-1] = 1.0
    weight = torch.sqrt(spec * wcol / n**2)  # (J, n, half)
    p_total = len(cols.names)
    meat = torch.zeros((p_total, p_total), dtype=torch.float64, device=dev)
    n_plain = len(plain)
    pi = torch.as_tensor(plain, dtype=torch.long, device=dev)
    groups = frame_groups(cols, bright)
    for start in range(0, r.shape[0], MEAT_CHUNK):  # frame chunks bound the memory
        frames = list(range(start, min(start + MEAT_CHUNK, r.shape[0])))
        w = weight[frames]
        fp = torch.view_as_real(torch.fft.rfft2(t_all[:n_plain, frames].double()) * w).reshape(n_plain, len(frames), -1)
        flat = fp.reshape(n_plain, -1)
        meat[pi[:, None], pi[None, :]] += flat @ flat.T
        if groups:
            fg = torch.view_as_real(torch.fft.rfft2(t_all[n_plain:, frames].double()) * w).reshape(len(groups), len(frames), -1)
        for g, col_of_led in enumerate(groups):
            lit = lit_frames(frames, col_of_led, dev)
            if lit is None:
                continue
            ks, ci = lit
            fb = fg[g, ks]
            meat[ci, ci] += (fb**2).sum(dim=1)
            cross = torch.einsum("pjk,jk->pj", fp[:, ks], fb)
            meat[pi[:, None], ci[None, :]] += cross
            meat[ci[:, None], pi[None, :]] += cross.T
            for h in range(g):
                both = _pairs(frames, groups[h], col_of_led, dev)
                if both is not None:
                    ks2, ch, cg = both
                    c = (fg[h, ks2] * fg[g, ks2]).sum(dim=1)
                    meat[ch, cg] += c
                    meat[cg, ch] += c
    return meat


ASSEMBLE_CHUNK = 16
"""Frames per chunk when ``J^T J`` is assembled: each chunk's float32 tangents are converted to
float64 once (the whole set, 1.3 GB at 225 x 128^2 in float64, is never held)."""


def assemble(t_all, r, cols, plain, bright, frames):
    """``J^T J`` and ``J^T r`` restricted to ``frames`` (None: all frames), in float64.

    ``t_all`` (T, J, ...) holds the plain columns' tangents and, last, the compressed per-frame
    tangents (:func:`frame_groups`: the column of LED j lives in frame j). The frames are taken :data:`ASSEMBLE_CHUNK` at a
    time, each chunk converted to float64 once for both the plain block and the brightness terms.
    """
    n_plain = len(plain)
    p_total = len(cols.names)
    dev = t_all.device
    jtj = torch.zeros((p_total, p_total), dtype=torch.float64, device=dev)
    jtr = torch.zeros(p_total, dtype=torch.float64, device=dev)
    plain_jtj = torch.zeros((n_plain, n_plain), dtype=torch.float64, device=dev)
    plain_jtr = torch.zeros(n_plain, dtype=torch.float64, device=dev)
    pi = torch.as_tensor(plain, dtype=torch.long, device=dev)
    groups = frame_groups(cols, bright)
    order = list(range(t_all.shape[1])) if frames is None else [int(f) for f in frames]
    for start in range(0, len(order), ASSEMBLE_CHUNK):
        idx = order[start : start + ASSEMBLE_CHUNK]
        sel = torch.as_tensor(idx, dtype=torch.long, device=dev)
        chunk = t_all[:, sel].double().flatten(2)  # (T, c, pixels)
        rc = r[sel].double().flatten(1)  # (c, pixels)
        tp = chunk[:n_plain].reshape(n_plain, -1)
        plain_jtj += tp @ tp.T
        plain_jtr += tp @ rc.reshape(-1)
        for g, col_of_led in enumerate(groups):
            lit = lit_frames(idx, col_of_led, dev)
            if lit is None:
                continue
            ks, bi = lit
            bcol = chunk[n_plain + g, ks]  # (L, pixels): each lit LED's column in its own frame
            jtj[bi, bi] = (bcol**2).sum(dim=1)
            cross = torch.einsum("pjx,jx->pj", chunk[:n_plain, ks], bcol)
            jtj[pi[:, None], bi[None, :]] = cross
            jtj[bi[:, None], pi[None, :]] = cross.T
            jtr[bi] = (bcol * rc[ks]).sum(dim=1)
            for h in range(g):  # two per-frame parameters of one LED share its frame
                both = _pairs(idx, groups[h], col_of_led, dev)
                if both is not None:
                    ks2, ch, cg = both
                    c = (chunk[n_plain + h, ks2] * chunk[n_plain + g, ks2]).sum(dim=1)
                    jtj[ch, cg] = c
                    jtj[cg, ch] = c
    jtj[pi[:, None], pi[None, :]] = plain_jtj
    jtr[pi] = plain_jtr
    return jtj, jtr
