"""Blocks of free parameters the fit optimises together, and their L-BFGS optimisers.

:class:`Block` holds system parameters (LED geometry and brightness, lens, sample pose, camera) in
preconditioned coordinates; :class:`SampleBlock` the sample's transmission through its spectrum.
Both are used by the staged rounds of :func:`metrology.solver.reconstruct.reconstruct` and by the
Gauss-Newton polish (:mod:`metrology.solver.polish`).
"""

from __future__ import annotations

import torch

from metrology.physics import StationModel
from metrology.solver.jacobian import columns_for


class Block:
    """Free parameter elements optimised together in preconditioned coordinates ``z``.

    ``theta = theta0 + W z`` with ``W = diag(step)`` (sample fields) or ``W = L^-T`` where
    ``L L^T`` is the Gauss-Newton Hessian of the loss at the start (system parameters): in ``z``
    the problem is close to isotropic, so L-BFGS converges in few iterations.
    """

    def __init__(self, model: StationModel, specs, hessian: torch.Tensor | None = None):
        self.model = model
        self.hessian = hessian
        self.specs = list(specs)
        self.cols = columns_for(model, self.specs)
        self.paths = list(dict.fromkeys(s.path for s in self.specs))
        dtype = model.pupil.na.dtype
        dev = model.pupil.na.device
        cols = self.cols
        self.slices = {  # positions (in column order) of each path's columns
            path: torch.as_tensor([i for i, p in enumerate(cols.paths) if p == path], dtype=torch.long, device=dev)
            for path in self.paths
        }
        self.index = {
            path: torch.as_tensor([cols.flat_index[i] for i in self.slices[path].tolist()], dtype=torch.long, device=dev)
            for path in self.paths
        }
        spec_of = [self.specs[i] for i in cols.spec]
        self.theta0 = cols.values(model).to(dtype)
        steps = torch.tensor([sp.step for sp in spec_of], dtype=dtype, device=dev)
        self.lower = torch.tensor([(sp.bounds or (-float("inf"), 0))[0] for sp in spec_of], dtype=dtype, device=dev)
        self.upper = torch.tensor([(sp.bounds or (0, float("inf")))[1] for sp in spec_of], dtype=dtype, device=dev)
        if hessian is None:
            self.w = None
            self.steps = steps
        else:
            # W = H^-1/2 through the eigen-decomposition: robust to directions the data do not
            # constrain (their eigenvalues are floored, so the step there stays bounded)
            h = hessian.double()
            # a floor on each parameter's curvature, in units of its step: directions the data do
            # not see (a dark frame's brightness under a smooth start) must not get unbounded steps
            st = steps.double()
            typical = torch.median(h.diagonal() * st**2).clamp(min=1e-30)
            h = h + torch.diag(1e-4 * typical / st**2)
            d = torch.sqrt(h.diagonal().clamp(min=1e-30))
            evals, evecs = torch.linalg.eigh(h / d[:, None] / d[None, :])
            evals = evals.clamp(min=1e-4 * float(evals.max().clamp(min=1e-30)))
            self.w = ((evecs / torch.sqrt(evals)) @ evecs.T / d[:, None]).to(dtype)
        self.z = [torch.zeros(len(self.theta0), dtype=dtype, device=dev, requires_grad=True)]

    def theta(self) -> torch.Tensor:
        z = self.z[0]
        return self.theta0 + (z * self.steps if self.w is None else self.w @ z)

    def projected(self) -> torch.Tensor:
        """``theta`` projected onto the bounds: the point :meth:`project_and_store` stores. The gradient
        passes where a value is inside (or on) its bound and is zero beyond it."""
        theta = self.theta()
        return torch.where(theta > self.upper, self.upper, torch.where(theta < self.lower, self.lower, theta))

    def values(self) -> dict:
        """Parameter tensors (differentiable w.r.t. ``z``) to pass to ``functional_call``: the
        :meth:`projected` point, so that every loss an optimiser compares is the loss of a point it
        can store. (Evaluated unprojected, an L-BFGS pass or a Gauss-Newton candidate that crossed a
        bound was judged by a loss its clamped point did not have: on the UConn red capture a joint
        settle pass went from 0.78 to 23 when stored, and the pupil edge's re-fit of a 32-px fixture
        lens stored a loss of 1.18 for one of 0.95 at every step, the LED tilt's step to 5.7 deg
        clamped at its bound 5.)"""
        theta = self.projected()
        out = {}
        for path in self.paths:
            p = self.model.parameter(path).detach()
            flat = p.flatten().index_put((self.index[path],), theta[self.slices[path]])
            out[path] = flat.reshape(p.shape)
        return out

    def finite(self) -> bool:
        """Whether every value of the block is a finite number."""
        with torch.no_grad():
            return bool(torch.isfinite(self.theta()).all())

    def project_and_store(self) -> None:
        """Write the values back into the model, clamped to the bounds; a pass that left any value
        non-finite is not stored (the model keeps the values it had; on a real capture a joint
        settle pass once turned every parameter into NaN)."""
        if not self.finite():
            return
        with torch.no_grad():
            theta = self.projected()
            for path in self.paths:
                p = self.model.parameter(path)
                flat = p.detach().flatten().clone()
                flat[self.index[path]] = theta[self.slices[path]]
                p.copy_(flat.reshape(p.shape))


class SampleBlock:
    """The sample, optimised through its spectrum with a Fourier-domain preconditioner.

    ``O = O0 + step * w(f) * (z_re + i z_im)``, ``t = IFFT(O)``, with ``w = 1 / sqrt(coverage + eps)``
    and ``coverage(f) = sum_j |P(f - k_j)|^2``: frequencies seen by many LEDs get small steps,
    those seen by few get large ones, which equalises the curvature of the data term.
    """

    def __init__(self, model: StationModel, step: float):
        self.model = model
        self.step = step
        with torch.no_grad():
            t = model.sample.transmission().detach()
            self.o0 = torch.fft.fftshift(torch.fft.fft2(t))
            cover = model.spectrum_coverage()
            n = t.shape[-1]
            self.w = (step * n / torch.sqrt(cover + 0.05 * cover.max())).to(t.real.dtype)
        self.z = [torch.zeros((2,) + t.shape, dtype=t.real.dtype, device=t.device, requires_grad=True)]

    def transmission(self) -> torch.Tensor:
        z = self.z[0]
        spec = self.o0 + self.w * torch.complex(z[0], z[1])
        return torch.fft.ifft2(torch.fft.ifftshift(spec))

    def values(self) -> dict:
        t = self.transmission()
        return {"sample.field_real": t.real, "sample.field_imag": t.imag}

    def finite(self) -> bool:
        with torch.no_grad():
            return bool(torch.isfinite(self.transmission()).all())

    def project_and_store(self) -> None:
        """Write the sample back into the model, unless any value is non-finite (then it keeps its own)."""
        if not self.finite():
            return
        with torch.no_grad():
            t = self.transmission()
            self.model.sample.field_real.copy_(t.real)
            self.model.sample.field_imag.copy_(t.imag)


class JointBlock:
    """Several blocks optimised as one (the system and the free sample together): one L-BFGS over
    all their coordinates, each block keeping its own preconditioner. Alternating the two lets the
    coupled directions zig-zag (each pass of one undoes part of the other's progress); a joint pass
    follows them."""

    def __init__(self, *blocks):
        self.blocks = blocks
        self.z = [z for block in blocks for z in block.z]

    def values(self) -> dict:
        out = {}
        for block in self.blocks:
            out.update(block.values())
        return out

    def project_and_store(self) -> None:
        """Store every block, or none when any holds a non-finite value."""
        if all(block.finite() for block in self.blocks):
            for block in self.blocks:
                block.project_and_store()


INNER_ITERATIONS = 10
"""L-BFGS iterations per outer iteration of the system step."""


def lbfgs(block, evaluate, max_iter: int):
    opt = torch.optim.LBFGS(
        block.z, lr=1.0, max_iter=max_iter, max_eval=4 * max_iter, history_size=30, line_search_fn="strong_wolfe",
        tolerance_grad=1e-12, tolerance_change=1e-15,
    )

    def closure():
        opt.zero_grad()
        loss = evaluate(block.values())
        loss.backward()
        return loss

    return opt, closure
