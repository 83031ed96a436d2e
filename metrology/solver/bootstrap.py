"""The optional low-angle bootstrap (``Schedule.bootstrap_na_factor``, off by default) and the second
geometry search that goes with it.

They were the solver's first answer to strong aberrations; the alternating projections
(:mod:`metrology.solver.projection`) replaced them in the default schedules. Kept as an option.
"""

from __future__ import annotations

import numpy as np
import torch

from metrology.physics import CALIBRATABLE, StationModel
from metrology.solver.quality import NoiseModel
from metrology.solver.schedule import Schedule


def bootstrap(model: StationModel, frames, noise: NoiseModel, schedule: Schedule) -> dict:
    """Fit the low-angle LEDs first and carry the result over (see ``Schedule.bootstrap_na_factor``)."""
    from dataclasses import replace

    from metrology.solver.reconstruct import reconstruct  # the bootstrap is a fit of its own

    with torch.no_grad():
        k = torch.linalg.vector_norm(model.illumination.spatial_frequencies(), dim=-1)
        sel = torch.nonzero(k < schedule.bootstrap_na_factor * model.pupil.na / model.geometry.wavelength_um)
        sel = sel.flatten()
    if sel.numel() < 9 or sel.numel() == k.numel():
        return {"leds": int(sel.numel()), "used": False}
    g = model.geometry
    sub = StationModel(g.with_leds([g.leds[i] for i in sel.tolist()]), model.sample.transmission().detach(),
                       model.exposure[sel], dtype=model.pupil.na.dtype)
    shared = [p for p in CALIBRATABLE if not p.startswith("sample.field") and p != "illumination.brightness"]
    with torch.no_grad():
        for path in shared:
            sub.parameter(path).copy_(model.parameter(path))
        sub.illumination.brightness.copy_(model.illumination.brightness[sel])
    frames = torch.as_tensor(np.asarray(frames))[sel.cpu()].numpy()
    fit = reconstruct(sub, frames, noise, replace(schedule, bootstrap_na_factor=None), initialise_geometry=False)
    with torch.no_grad():
        for path in shared:
            model.parameter(path).copy_(sub.parameter(path))
        model.illumination.brightness[sel] = sub.illumination.brightness
    return {"leds": int(sel.numel()), "used": True, "loss": fit.history[-1] if fit.history else None}


def research(model, data, background, ranges, first_residual_px: float) -> dict:
    """Second geometry search; kept when its per-LED estimates agree better with one geometry."""
    from metrology.solver.init import DEFAULT_RANGES
    from metrology.solver.reconstruct import search_geometry_known

    geometry_paths = ("illumination.shift_mm", "illumination.rotation_deg", "illumination.distance_error_mm",
                      "illumination.tilt_deg")
    with torch.no_grad():
        saved = {p: model.parameter(p).detach().clone() for p in geometry_paths}
    small = {k: v / 3 for k, v in (ranges or DEFAULT_RANGES).items()}  # around the current estimate
    out = search_geometry_known(model, data, background, small)
    out["kept"] = out["residual_px"] < first_residual_px
    if not out["kept"]:
        with torch.no_grad():
            for p, v in saved.items():
                model.parameter(p).copy_(v)
    return out
