"""Uncertainty budget tables (GUM, JCGM 100 8.1): what each source contributes to a reported figure.

Sources (from :class:`metrology.measurement.Measurement`):

* **Noise and learned data uncertainty** (Type A): the Fisher information of the camera-noise model
  with the variance inflation learned per frame and border band (``parts.noise``);
* **Model mismatch** (Type B, from the fit's own consistency: the spatial-covariance sandwich, the
  LED-group and image-region jackknifes, the Birge ratio): what ``parts.fit`` adds to the noise;
* **Station constants** (Type B, :attr:`Measurement.budget`): wavelength, NA, magnification, camera
  pixel, LED pitch, distance, emitter size, slide, each with its standard uncertainty from the
  station file's ``[uncertainty]`` table and its sensitivity by implicit differentiation of the fit.

A row gives the source, its standard uncertainty ``u(x_i)`` (in its unit), the sensitivity
``c_i = d figure / d x_i`` (figure unit per unit of ``x_i``; 1 for the fit's own sources, whose
``u(x_i)`` is already in the figure's unit), the contribution ``|c_i| u(x_i)`` and its share of the
combined variance. The combination is linear (the first-order GUM law); the figures of merit's own
``u`` comes from the Monte Carlo of :mod:`metrology.analysis.propagation`, which agrees with it away
from zero (RMS near zero is biased and the Monte Carlo says so).
"""

from __future__ import annotations

import math

import numpy as np

from metrology.orderings import lens_only
from metrology.parameters import element_label


def _rows(noise_var: float, fit_var: float, constants: list, unit: str) -> dict:
    """Rows and combined ``u`` from the fit's variances and ``(source, g . v_source)`` pairs."""
    rows = [{"source": "noise", "label": "Noise and learned data uncertainty (Type A)",
             "u_x": math.sqrt(max(noise_var, 0.0)), "unit": unit, "sensitivity": 1.0,
             "contribution": math.sqrt(max(noise_var, 0.0))},
            {"source": "model_mismatch", "label": "Model mismatch (Type B: sandwich, jackknifes)",
             "u_x": math.sqrt(max(fit_var - noise_var, 0.0)), "unit": unit, "sensitivity": 1.0,
             "contribution": math.sqrt(max(fit_var - noise_var, 0.0))}]
    for b, effect in constants:
        rows.append({"source": b.name, "label": b.label, "u_x": float(b.u), "unit": b.unit,
                     "sensitivity": float(effect / b.u) if b.u else 0.0, "contribution": abs(float(effect))})
    total = math.sqrt(sum(r["contribution"] ** 2 for r in rows))
    for r in rows:
        r["share"] = (r["contribution"] / total) ** 2 if total > 0 else 0.0
    largest = max(rows, key=lambda r: r["contribution"])["source"] if rows else ""
    return {"u": total, "unit": unit, "rows": rows, "largest": largest}


def coefficient_budget(measurement, noll: int) -> dict:
    """Budget of one Noll coefficient (waves)."""
    i = noll - 1
    p = measurement.parts
    return _rows(float(p.noise[i, i]), float(p.fit[i, i]), [(b, b.zernike[i]) for b in measurement.budget], "waves")


def rms_budget(measurement) -> dict:
    """Budget of the RMS wavefront error (waves, alignment terms excluded), linearised at the estimate:
    ``d RMS / d c = c / RMS`` over the lens terms."""
    c = lens_only(np.nan_to_num(measurement.zernike_waves))
    rms = float(np.sqrt(np.sum(c**2)))
    g = c / rms if rms > 0 else np.zeros_like(c)
    p = measurement.parts
    return _rows(float(g @ p.noise @ g), float(g @ p.fit @ g), [(b, float(g @ b.zernike)) for b in measurement.budget],
                 "waves")


def station_budget(measurement, name: str) -> dict:
    """Budget of one station estimate (by element name, in its unit)."""
    p = measurement.parts
    unit = next((s.unit for s in measurement.station if s.name == name), "")
    noise = p.station_noise.get(name, 0.0) ** 2
    fit = p.station_fit.get(name, 0.0) ** 2
    return _rows(noise, fit, [(b, b.station.get(name, 0.0)) for b in measurement.budget], unit)


def budget_document(measurement, lens_terms: int = 15) -> dict:
    """The result document's ``uncertainty_budget`` block: the RMS wavefront, every measured lens
    coefficient up to Noll ``lens_terms``, every station estimate; the constants' values used."""
    if measurement.parts is None:
        return {}
    k = min(lens_terms, measurement.zernike_waves.size)
    method_record = measurement.arrays.get("uncertainty_method", {})
    refits, edge = method_record.get("pupil_radius_refits"), method_record.get("pupil_edge_refit")
    method = ("GUM first-order law (JCGM 100); sensitivities of the station constants by implicit "
              "differentiation of the fitted optimum")
    doc = {
        "method": method if refits is None else
        method + "; the pupil radius (NA, magnification, camera pixel) by two re-fits at +/- its u, the sample free",
        "constants": [{"name": b.name, "label": b.label, "u": float(b.u), "unit": b.unit} for b in measurement.budget],
        "rms_waves": rms_budget(measurement),
        "zernike": [{"noll": j, **coefficient_budget(measurement, j)} for j in range(5, k + 1)],
        "station": [{"name": s.name, "label": element_label(s.name), **station_budget(measurement, s.name)}
                    for s in measurement.station],
    }
    if refits is not None:
        doc["pupil_radius_refits"] = refits
    if edge is not None:
        doc["pupil_edge_refit"] = edge
    return doc
