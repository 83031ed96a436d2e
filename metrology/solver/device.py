"""Where the fit runs: the CPU, or a CUDA GPU when torch sees one.

The whole fit (forward model, projections, Jacobians, L-BFGS) runs on the device of the
:class:`~metrology.physics.StationModel` passed to :func:`metrology.solver.reconstruct`; the
uncertainty analysis afterwards always runs on the CPU in float64.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits

from metrology.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def compute_device(name: str = "cpu", source: str = "--device") -> torch.device:
    """The torch device for ``name``.

    Parameters
    ----------
    name : {"auto", "cpu", "cuda"} or a torch device string such as ``"cuda:1"``
        ``auto`` takes the first CUDA device when torch sees one, else the CPU.
    source : str
        The option or field named in the error message.

    Raises
    ------
    InputError
        An unknown name, or CUDA asked for where torch sees no CUDA device.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise InputError(source, f"unknown compute device {name!r} (use one of {', '.join(DEVICE_CHOICES)})") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(source, f"unsupported compute device {name!r} (use one of {', '.join(DEVICE_CHOICES)})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(source, f"CUDA requested but torch {torch.__version__} sees no CUDA device "
                                     "(use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(source, f"CUDA device {dev.index} requested but torch sees "
                                     f"{torch.cuda.device_count()}")
    return dev


def device_label(device) -> str:
    """``"cpu"`` or ``"cuda:0 (NVIDIA H100 80GB HBM3)"``: the device as a report names it."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


@contextmanager
def fit_threads(n: int | None):
    """Run the block with ``n`` threads in torch and in numpy's BLAS (threadpoolctl); ``None``
    leaves both as they are.

    The same count gives bit-identical fits on any executor and in any process: torch and BLAS sum
    in another order with another thread count.
    """
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(before)
