"""Figures of the lens page: wavefront profiles along the astigmatism axes and the synthetic
interferogram (matplotlib Agg canvas, PNG bytes, sizes in mm; see :mod:`metrology.report.plots`).

Maps follow :mod:`metrology.conventions`: x along columns, +y down.
"""

from __future__ import annotations

import numpy as np

from metrology.report.plots import FONT, colorbar, figure, png_bytes, style


def profiles_interferogram_png(profiles, fringes, tilt_fringes: float, wavelength_nm: float, width_mm=90.0,
                               height_mm=70.0) -> bytes:
    """Two wavefront profiles with their U (k = 2) bands, and the synthetic interferogram.

    Parameters
    ----------
    profiles : list of dict
        :func:`metrology.analysis.lens_detail.wavefront_profile` results (``r``, ``waves``,
        ``u_waves``, ``angle_deg``).
    fringes : ndarray, shape (N, N)
        :func:`metrology.analysis.lens_detail.synthetic_interferogram` intensity (NaN outside).
    tilt_fringes : float
        Tilt added to the interferogram (fringes across the diameter, along x), printed on it.
    wavelength_nm : float
        For the nm axis of the profiles.

    Returns
    -------
    bytes
        PNG image.
    """
    fig = figure(width_mm, height_mm)
    ax = fig.add_axes([0.14, 0.56, 0.80, 0.36])
    colours = ("#3b6ea5", "#c0504d")
    for prof, colour in zip(profiles, colours):
        label = f"{prof['angle_deg']:.1f} deg"
        ax.plot(prof["r"], prof["waves"], color=colour, linewidth=0.9, label=label)
        if prof.get("u_waves") is not None:
            band = 2.0 * np.asarray(prof["u_waves"])
            ax.fill_between(prof["r"], prof["waves"] - band, prof["waves"] + band, color=colour, alpha=0.2,
                            linewidth=0)
    ax.axhline(0, color="black", linewidth=0.4)
    ax.grid(linewidth=0.3, color="0.85")
    style(ax, "Profiles along the astigmatism axes (band: U, k = 2)")
    ax.set_xlabel("normalised pupil coordinate along the axis", fontsize=FONT - 1, labelpad=1)
    ax.set_ylabel("wavefront (waves)", fontsize=FONT - 1, labelpad=1)
    ax.set_xlim(-1, 1)
    ax.legend(fontsize=FONT - 1.5, frameon=False, title="axis (from +x to +y)", title_fontsize=FONT - 1.5)
    lam = float(wavelength_nm)
    sec = ax.secondary_yaxis("right", functions=(lambda w: w * lam, lambda nm: nm / lam))
    sec.tick_params(labelsize=FONT - 1, length=2, pad=1)
    sec.set_ylabel("nm", fontsize=FONT - 1, labelpad=1)

    axi = fig.add_axes([0.14, 0.04, 0.50, 0.38])
    im = axi.imshow(fringes, origin="upper", extent=[-1, 1, 1, -1], cmap="gray", vmin=0, vmax=1,
                    interpolation="bilinear")
    style(axi, "Synthetic interferogram")
    axi.set_xticks([-1, 0, 1])
    axi.set_yticks([-1, 0, 1])
    axi.set_xlabel("x", fontsize=FONT - 1, labelpad=0)
    axi.set_ylabel("y, +y down", fontsize=FONT - 1, labelpad=0)
    colorbar(fig, im, axi, "intensity")
    fig.text(0.70, 0.30, f"tilt added for\nreadability:\n{tilt_fringes:g} fringes across\nthe diameter, along x\n\n"
                         "1 fringe = 1 wave\n(single pass);\nNoll 1-4 removed", fontsize=FONT - 1, va="center")
    return png_bytes(fig)
