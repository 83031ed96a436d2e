"""Linear responses of the fitted system with the free sample re-optimised (profiled out).

In prior and blind modes the sample's transmission is fitted jointly with the system. The fitted
optimum's response to a perturbation of the loss (a station constant moving,
:mod:`metrology.solver.budget`) is then

    d theta* / d c = -[H^-1 g_c]_system,   H = J^T W J over (system, sample),   g_c = J^T W (d r / d c),

where the sample part of the joint solve lets the sample follow: holding it (the system block alone,
``-H_ss^-1 [g_c]_system``) is right only when the sample is known. With a free sample the held
response was measured to be wrong where it matters (``docs/uncertainty.md``, section 6): a constant
that the sample can partly absorb reads too large, and coefficients the held response puts at ~0
(quadrafoil against the NA, on a square LED grid) move by 1-2e-3 waves.

``H`` is never formed. Its products come from the system's Jacobian columns (the
:class:`~metrology.solver.jacobian.Linearisation` the budget already has) and forward/reverse-mode
products over the sample (``torch.func.jvp`` / ``vjp``), batched over the right-hand sides. The solve
is preconditioned conjugate gradients: the system block by the exact inverse of its own information,
the sample block by the Fourier-domain coverage preconditioner of the sample's own optimiser
(:class:`~metrology.solver.blocks.SampleBlock`: frequencies seen by many LEDs curve more).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp, vjp, vmap

from metrology.solver.assembly import frame_groups
from metrology.solver.jacobian import Linearisation, psd_inverse, whitened_residual

SAMPLE_PATHS = ("sample.field_real", "sample.field_imag")
MAX_ITERATIONS = 300
"""Conjugate-gradient iterations at most."""
TOLERANCE = 0.01
"""The solve stops when, over the last :data:`CHECK_EVERY` iterations, no right-hand side's system
part (its lens and geometry columns, in standard deviations of the held fit) changed by more than
this fraction of its size."""
CHECK_EVERY = 10
_TRACE = bool(os.environ.get("METROLOGY_TRACE_JOINT_SOLVE"))  # print the convergence every CHECK_EVERY iterations
COVERAGE_FLOOR = 0.05
"""The sample preconditioner's floor, as a fraction of the largest spectrum coverage (as the sample
optimiser's)."""


@dataclass
class JointSolve:
    """Outcome of :func:`joint_solve`."""

    system: torch.Tensor  # (K, P): the system part of H^-1 b for each right-hand side
    sample: torch.Tensor  # (K, 2, N, N): its sample part
    iterations: int
    converged: bool
    last_change: float  # the largest relative change of a system part over the last check interval


class JointOperator:
    """``H v`` over (system columns, sample fields) at the fit's point, batched over ``K`` vectors.

    Parameters
    ----------
    model : StationModel
        At the fitted point (float64).
    data, scale : Tensor (J, n, n)
        The frames and the residual scale ``mask / sqrt(v)`` the fit's information used.
    noise : NoiseModel
    lin : Linearisation
        The system's Jacobian columns at this point (same ``data``, ``scale``).
    prior_diag : Tensor (P,)
        The priors' information on the system columns (diagonal), added to the data term.
    sample_prior : float
        Information per sample value of a quadratic pull towards the reference (prior mode's
        ``prior_weight``, in the units of ``J^T J``). The blind fit's weak total-variation term is
        left out: the sample is taken as free as the data leave it.
    """

    def __init__(self, model, data, scale, noise, lin: Linearisation, prior_diag: torch.Tensor,
                 sample_prior: float = 0.0):
        self.lin = lin
        self.prior = prior_diag
        self.sample_prior = float(sample_prior)
        self.n_plain = len(lin.plain)
        self.plain = torch.as_tensor(lin.plain, dtype=torch.long)
        # per-frame columns, one compressed tangent per parameter (assembly.frame_groups): (columns, LEDs)
        self.groups = [(torch.as_tensor(list(g.values()), dtype=torch.long), torch.as_tensor(list(g), dtype=torch.long))
                       for g in frame_groups(lin.columns, lin.bright)]
        self.p = len(lin.columns.names)
        primals = tuple(model.parameter(p).detach() for p in SAMPLE_PATHS)
        background = model.camera.background_counts.detach()

        def f(re, im):
            out = functional_call(model, dict(zip(SAMPLE_PATHS, (re, im))), ())
            return whitened_residual(out, data, noise, background) * scale

        _, self._vjp = vjp(f, *primals)
        self._f, self._primals = f, primals
        self.sample_shape = (2,) + tuple(primals[0].shape)

    def system_forward(self, vs: torch.Tensor) -> torch.Tensor:
        """``J_s v`` (K, J, n, n) for system vectors ``vs`` (K, P)."""
        t = self.lin.tangents.double()
        out = torch.einsum("kp,pjab->kjab", vs[:, self.plain], t[: self.n_plain])
        for g, (cols, leds) in enumerate(self.groups):
            out[:, leds] += vs[:, cols, None, None] * t[self.n_plain + g][leds][None]
        return out

    def system_adjoint(self, w: torch.Tensor) -> torch.Tensor:
        """``J_s^T w`` (K, P) for residual-space ``w`` (K, J, n, n)."""
        t = self.lin.tangents.double()
        out = w.new_zeros((w.shape[0], self.p))
        out[:, self.plain] = torch.einsum("kjab,pjab->kp", w, t[: self.n_plain])
        for g, (cols, leds) in enumerate(self.groups):
            out[:, cols] = (w[:, leds] * t[self.n_plain + g][leds][None]).sum((-2, -1))
        return out

    def sample_forward(self, vo: torch.Tensor) -> torch.Tensor:
        """``J_o v`` (K, J, n, n) for sample vectors ``vo`` (K, 2, N, N)."""
        return vmap(lambda v: jvp(self._f, self._primals, (v[0], v[1]))[1])(vo)

    def sample_adjoint(self, w: torch.Tensor) -> torch.Tensor:
        """``J_o^T w`` (K, 2, N, N)."""
        return vmap(lambda x: torch.stack(self._vjp(x)))(w)

    def adjoint(self, w: torch.Tensor) -> tuple:
        """``J^T w`` as (system (K, P), sample (K, 2, N, N))."""
        return self.system_adjoint(w), self.sample_adjoint(w)

    def apply(self, vs: torch.Tensor, vo: torch.Tensor) -> tuple:
        """``H (vs, vo)`` with the priors on the system block."""
        r = self.system_forward(vs) + self.sample_forward(vo)
        return self.system_adjoint(r) + vs * self.prior, self.sample_adjoint(r) + self.sample_prior * vo


def _sample_preconditioner(model, op: JointOperator):
    """``M^-1`` of the sample block: ``alpha F^-1 diag(1 / (coverage + floor)) F`` on the complex
    transmission, ``alpha`` matching the operator's scale on random probes."""
    with torch.no_grad():
        cover = model.spectrum_coverage().double()
    inv = torch.fft.ifftshift(1.0 / (cover + COVERAGE_FLOOR * cover.max()))

    def m(vo):
        t = torch.fft.ifft2(inv * torch.fft.fft2(torch.complex(vo[:, 0], vo[:, 1])))
        return torch.stack([t.real, t.imag], 1)

    g = torch.Generator().manual_seed(0)
    probes = torch.randn((2,) + op.sample_shape, generator=g, dtype=torch.float64)
    mz = m(probes)
    amz = op.sample_adjoint(op.sample_forward(mz))
    alpha = float((mz * probes).sum() / (mz * amz).sum().clamp(min=1e-300))
    return lambda vo: alpha * m(vo)


def joint_solve(model, op: JointOperator, bs: torch.Tensor, bo: torch.Tensor, system_info: torch.Tensor,
                max_iterations: int = MAX_ITERATIONS, tolerance: float = TOLERANCE) -> JointSolve:
    """The system part of ``H^-1 b`` for ``K`` right-hand sides ``b = (bs (K, P), bo (K, 2, N, N))``.

    Parameters
    ----------
    system_info : Tensor (P, P)
        The system block of ``H`` (data and priors; the fit's ``jtj``): its inverse preconditions
        the system block, and its metric measures convergence.
    """
    with torch.no_grad():
        inv_s = psd_inverse(system_info.double())
        m_o = _sample_preconditioner(model, op)
        # convergence is judged on the plain columns: the per-LED brightness shares an exact gauge
        # with the sample's scale, along which the solve drifts without converging
        sd = torch.sqrt(inv_s.diagonal().clamp(min=1e-300))[op.plain]
        xs, xo = torch.zeros_like(bs), torch.zeros_like(bo)
        rs, ro = bs.clone(), bo.clone()
        zs, zo = rs @ inv_s, m_o(ro)
        ps, po = zs.clone(), zo.clone()
        rz = (rs * zs).sum(1) + (ro * zo).sum((1, 2, 3))
        last, change, k = xs.clone(), float("inf"), 0
        for k in range(1, max_iterations + 1):
            hs, ho = op.apply(ps, po)
            curv = (ps * hs).sum(1) + (po * ho).sum((1, 2, 3))
            a = torch.where(curv > 0, rz / curv.clamp(min=1e-300), torch.zeros_like(rz))
            xs += a[:, None] * ps
            xo += a[:, None, None, None] * po
            rs -= a[:, None] * hs
            ro -= a[:, None, None, None] * ho
            zs, zo = rs @ inv_s, m_o(ro)
            rz_new = (rs * zs).sum(1) + (ro * zo).sum((1, 2, 3))
            beta = torch.where(rz > 0, rz_new / rz.clamp(min=1e-300), torch.zeros_like(rz))
            ps = zs + beta[:, None] * ps
            po = zo + beta[:, None, None, None] * po
            rz = rz_new
            if k % CHECK_EVERY == 0:
                # each right-hand side's system part, in standard deviations of the held fit
                size = (xs[:, op.plain] / sd).norm(dim=1).clamp(min=1e-300)
                change = float(((xs - last)[:, op.plain] / sd).norm(dim=1).div(size).max())
                if _TRACE:
                    print(f"joint solve: iteration {k}, largest change {change:.3g}", flush=True)
                last = xs.clone()
                if change < tolerance:
                    break
        return JointSolve(xs, xo, k, change < tolerance, change)
