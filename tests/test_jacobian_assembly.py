"""The normal equations assembled from compressed tangents equal those of the dense Jacobian."""

import pytest
import torch

from metrology.solver import assembly, jacobian
from metrology.solver.jacobian import Columns, Linearisation


def _case(n_frames=37, px=5, n_plain=4, seed=0, stray=False):
    """A Linearisation with ``n_plain`` plain columns and one brightness column per frame but frame
    3 (an LED whose brightness is held), with ``stray`` also one stray-light column per frame but
    frame 5 (two per-frame tangents), in shuffled column order, and its dense Jacobian."""
    gen = torch.Generator().manual_seed(seed)
    groups = [jacobian.BRIGHTNESS] + ([jacobian.STRAY_LIGHT] if stray else [])
    tangents = torch.randn((n_plain + len(groups), n_frames, px, px), generator=gen)
    residual = torch.randn((n_frames, px, px), generator=gen)
    names = [f"p{i}" for i in range(n_plain)] + [f"{jacobian.BRIGHTNESS}[{j}]" for j in range(n_frames) if j != 3]
    if stray:
        names += [f"{jacobian.STRAY_LIGHT}[{j}]" for j in range(n_frames) if j != 5]
    order = torch.randperm(len(names), generator=gen).tolist()
    names = [names[k] for k in order]
    paths = [n.split("[")[0] for n in names]
    flat = [int(n.split("[")[1][:-1]) if "[" in n else 0 for n in names]
    cols = Columns(names, paths, flat, [0] * len(names))
    plain = [i for i, p in enumerate(paths) if p not in groups]
    bright = [i for i, p in enumerate(paths) if p in groups]
    # the tangents are stored plain columns first in the order of ``plain``, then one per group
    dense = torch.zeros((n_frames * px * px, len(names)), dtype=torch.float64)
    for k, i in enumerate(plain):
        dense[:, i] = tangents[k].double().reshape(-1)
    for i in bright:
        col = torch.zeros((n_frames, px, px), dtype=torch.float64)
        col[flat[i]] = tangents[n_plain + groups.index(paths[i]), flat[i]].double()
        dense[:, i] = col.reshape(-1)
    lin = Linearisation(tangents, residual, torch.ones_like(residual), cols, plain, bright)
    return lin, dense, residual.double()


def _expanded(lin, dense):
    """The same Jacobian with every column a plain tangent (no compression)."""
    j, px = lin.residual.shape[0], lin.residual.shape[-1]
    t = dense.T.reshape(-1, j, px, px).to(lin.tangents.dtype)
    n = len(lin.columns.names)
    return Linearisation(t, lin.residual, lin.mask, Columns(lin.columns.names, [f"q{i}" for i in range(n)],
                                                           [0] * n, [0] * n), list(range(n)), [])


@pytest.mark.parametrize("stray", [False, True])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_the_chunked_assembly_equals_the_dense_normal_equations(chunk, stray, monkeypatch):
    """Brightness alone, and brightness with stray light (two per-frame parameters sharing a frame:
    their cross terms)."""
    monkeypatch.setattr(assembly, "ASSEMBLE_CHUNK", chunk)
    lin, dense, r = _case(stray=stray)
    jtj, jtr = lin.normal()
    torch.testing.assert_close(jtj, dense.T @ dense, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(jtr, dense.T @ r.reshape(-1), rtol=1e-12, atol=1e-10)
    frames = [30, 2, 3, 17, 0]  # unsorted, with the frame whose brightness is held
    rows = torch.zeros((37, 5, 5), dtype=torch.bool)
    rows[frames] = True
    sub = dense[rows.reshape(-1)]
    jtj_f, jtr_f = lin.normal(frames)
    torch.testing.assert_close(jtj_f, sub.T @ sub, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(jtr_f, sub.T @ r[rows], rtol=1e-12, atol=1e-10)
    groups = [list(range(g, 37, 10)) for g in range(10)]
    total = [sum(part[k] for part in lin.per_group(groups)) for k in (0, 1)]
    torch.testing.assert_close(total[0], jtj, rtol=1e-12, atol=1e-10)
    blocks = [sum(part[k] for part in lin.per_block(2)) for k in (0, 1)]
    torch.testing.assert_close(blocks[0], jtj, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(blocks[1], jtr, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("chunk", [3, 16])
def test_the_spectral_meat_of_compressed_columns_equals_that_of_plain_ones(chunk, monkeypatch):
    """``J^T S J`` from the compressed per-frame tangents (brightness and stray light) equals the
    meat of the same Jacobian with every column a plain tangent."""
    monkeypatch.setattr(assembly, "MEAT_CHUNK", chunk)
    lin, dense, _ = _case(px=8, stray=True)
    torch.testing.assert_close(lin.meat(), _expanded(lin, dense).meat(), rtol=1e-10, atol=1e-9)
