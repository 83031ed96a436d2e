"""Figures of the inspection report, rendered with matplotlib's Agg canvas to PNG bytes.

Every function here takes plain numpy arrays or slices of the result document and returns PNG
bytes of a figure sized in millimetres (so the PDF layout knows its size before drawing). Figures
are built as :class:`matplotlib.figure.Figure` attached to a ``FigureCanvasAgg`` explicitly: the Agg
backend is used without touching the global pyplot state or the user's chosen backend.

Frame: every map follows :mod:`metrology.conventions`: ``x`` along image columns, ``y`` along
image rows, row 0 at the top, so **+y points down** on every map (pupil, PSF, sample, frames and
the LED map alike).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

MM_PER_INCH = 25.4
DPI = 150
"""Resolution of the embedded PNG figures (dots per inch)."""

_FONT = 6.5


@dataclass
class ReportArrays:
    """Numpy arrays behind the report's figures (no torch, no physics objects).

    Attributes
    ----------
    pupil_phase_waves : ndarray, shape (P, P)
        Pupil phase (waves) with the alignment terms (Noll 1-4) removed, NaN outside the pupil.
        Columns run along +x, rows along +y; both span normalised pupil coordinates -1..1.
    psf : ndarray, shape (M, M), optional
        Point spread function normalised to the diffraction-limited peak (so its peak is the
        Strehl ratio).
    psf_pixel_um : float
        PSF sampling in the sample plane (um per pixel).
    psf_diffraction : ndarray, shape (M, M), optional
        Diffraction-limited PSF on the same grid (peak 1).
    mtf_freq_cyc_per_mm : ndarray, shape (L,), optional
        Spatial frequencies of the MTF curves (cycles/mm in the sample plane).
    mtf, mtf_diffraction : ndarray, shape (L,), optional
        MTF of the measured lens and of the diffraction-limited lens (1 at zero frequency).
    sample_amplitude, sample_phase : ndarray, shape (N, N), optional
        Reconstructed reference sample transmission: amplitude (unitless) and phase (rad).
    sample_pixel_um : float
        Sample reconstruction grid pitch (um).
    frames : dict, optional
        ``{"bright": {...}, "dark": {...}}``, each ``{"led": (row, col), "measured": (n, n),
        "modelled": (n, n)}`` in camera counts.
    loss_history : ndarray, shape (T,), optional
        Loss per solver iteration.
    led_xy_mm : ndarray, shape (J, 2), optional
        Fitted LED positions ``(x, y)`` in mm.
    led_brightness : ndarray, shape (J,), optional
        Fitted relative LED brightness.
    led_residual : ndarray, shape (J,), optional
        RMS residual per LED frame divided by the noise sigma.
    led_scale : ndarray, shape (J,), optional
        Learned data-uncertainty scale ``s_j`` of each LED's frame (1: the noise model;
        :mod:`metrology.solver.weights`).
    mtf_label : str
        What ``mtf`` is (its azimuth), for the legend, e.g. ``"worst of 0/45/90/135 deg azimuth"``.
    """

    pupil_phase_waves: np.ndarray
    psf: np.ndarray | None = None
    psf_pixel_um: float = 1.0
    psf_diffraction: np.ndarray | None = None
    mtf_freq_cyc_per_mm: np.ndarray | None = None
    mtf: np.ndarray | None = None
    mtf_diffraction: np.ndarray | None = None
    sample_amplitude: np.ndarray | None = None
    sample_phase: np.ndarray | None = None
    sample_pixel_um: float = 1.0
    frames: dict = field(default_factory=dict)
    loss_history: np.ndarray | None = None
    led_xy_mm: np.ndarray | None = None
    led_brightness: np.ndarray | None = None
    led_residual: np.ndarray | None = None
    led_scale: np.ndarray | None = None
    mtf_label: str = "azimuth 0 deg (x)"

    def __post_init__(self):
        self.pupil_phase_waves = np.asarray(self.pupil_phase_waves, dtype=float)
        if self.pupil_phase_waves.ndim != 2:
            raise ValueError(f"pupil_phase_waves must be 2-D, got shape {self.pupil_phase_waves.shape}")
        for name in ("psf", "psf_diffraction", "mtf_freq_cyc_per_mm", "mtf", "mtf_diffraction",
                     "sample_amplitude", "sample_phase", "loss_history", "led_xy_mm", "led_brightness",
                     "led_residual", "led_scale"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=float))
        if self.led_xy_mm is not None and (self.led_xy_mm.ndim != 2 or self.led_xy_mm.shape[1] != 2):
            raise ValueError(f"led_xy_mm must have shape (J, 2), got {self.led_xy_mm.shape}")


# ------------------------------------------------------------------ helpers
def _figure(width_mm: float, height_mm: float):
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_mm / MM_PER_INCH, height_mm / MM_PER_INCH), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


figure = _figure
"""A matplotlib ``Figure`` of ``(width_mm, height_mm)`` on its own Agg canvas (for the page modules)."""
png_bytes = _png
"""PNG bytes of a figure at :data:`DPI`."""


def _style(ax, title=None):
    ax.tick_params(labelsize=_FONT - 1, length=2, pad=1)
    if title:
        ax.set_title(title, fontsize=_FONT, pad=2)


def _missing(ax, what: str):
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{what}\nnot available", ha="center", va="center", fontsize=_FONT, color="0.4",
            transform=ax.transAxes)


def _colorbar(fig, mappable, ax, label=None):
    cb = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    cb.ax.tick_params(labelsize=_FONT - 1, length=2, pad=1)
    if label:
        cb.set_label(label, fontsize=_FONT - 1, labelpad=1)
    return cb


FONT = _FONT
style = _style
colorbar = _colorbar


def _image(fig, ax, img, extent, title, cmap="gray", label=None, vmin=None, vmax=None, xlabel=None,
           ylabel=None):
    """Show a map with row 0 at the top (+y down), as the conventions require."""
    im = ax.imshow(img, origin="upper", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    _style(ax, title)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=_FONT - 1, labelpad=1)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=_FONT - 1, labelpad=1)
    _colorbar(fig, im, ax, label)
    return im


def _extent(shape, pixel) -> list:
    """``imshow`` extent ``[x0, x1, y1, y0]`` (centred, +y down) for a map of ``shape`` and pixel pitch."""
    h, w = shape
    return [-w / 2 * pixel, w / 2 * pixel, h / 2 * pixel, -h / 2 * pixel]


# ------------------------------------------------------------------ page 1
def pupil_phase_png(phase_waves, wavelength_nm: float, width_mm=80.0, height_mm=70.0) -> bytes:
    """Pupil phase map (waves, alignment terms removed) with a secondary colour-bar scale in nm.

    Parameters
    ----------
    phase_waves : ndarray, shape (P, P)
        Phase in waves, NaN outside the pupil; columns = +x, rows = +y (normalised -1..1).
    wavelength_nm : float
        Wavelength (nm) for the nm scale.
    width_mm, height_mm : float
        Figure size.

    Returns
    -------
    bytes
        PNG image.
    """
    fig = _figure(width_mm, height_mm)
    ax = fig.add_axes([0.13, 0.12, 0.56, 0.76])
    cax = fig.add_axes([0.82, 0.12, 0.035, 0.76])
    phase = np.asarray(phase_waves, dtype=float)
    finite = phase[np.isfinite(phase)]
    lim = float(np.max(np.abs(finite))) if finite.size else 1.0
    lim = lim if lim > 0 else 1e-3
    im = ax.imshow(phase, origin="upper", extent=[-1, 1, 1, -1], cmap="RdBu_r", vmin=-lim, vmax=lim,
                   interpolation="nearest")
    rms = float(np.sqrt(np.mean((finite - finite.mean()) ** 2))) if finite.size else float("nan")
    pv = float(finite.max() - finite.min()) if finite.size else float("nan")
    _style(ax, f"Pupil phase, Noll 1-4 removed\nRMS {rms:.4f} waves, PV {pv:.3f} waves")
    ax.set_xlabel("x (normalised pupil) -> columns", fontsize=_FONT - 1, labelpad=1)
    ax.set_ylabel("y (normalised pupil), +y down", fontsize=_FONT - 1, labelpad=1)
    ax.set_xticks([-1, -0.5, 0, 0.5, 1])
    ax.set_yticks([-1, -0.5, 0, 0.5, 1])
    cb = fig.colorbar(im, cax=cax)
    cb.ax.tick_params(labelsize=_FONT - 1, length=2, pad=1)
    cb.set_label("waves", fontsize=_FONT - 1, labelpad=1)
    lam = float(wavelength_nm)
    sec = cb.ax.secondary_yaxis("left", functions=(lambda w: w * lam, lambda nm: nm / lam))
    sec.tick_params(labelsize=_FONT - 1.5, length=2, pad=1)
    sec.set_ylabel("nm", fontsize=_FONT - 1, labelpad=0)
    return _png(fig)


def zernike_bars_png(terms, wavelength_nm: float, width_mm=186.0, height_mm=62.0) -> bytes:
    """Bar chart of the lens Zernike coefficients (Noll 5..K) with expanded-uncertainty error bars.

    Parameters
    ----------
    terms : list of dict
        ``doc["zernike"]`` entries (``noll``, ``name``, ``value_waves``, ``U_waves``, ``alignment``).
    wavelength_nm : float
        For the secondary axis in nm.

    Returns
    -------
    bytes
        PNG image.
    """
    fig = _figure(width_mm, height_mm)
    fig.set_layout_engine("constrained", w_pad=0.02, h_pad=0.02)
    ax = fig.add_subplot()
    lens = [t for t in terms if not t["alignment"] and t["noll"] >= 5]
    lens.sort(key=lambda t: t["noll"])
    if not lens:
        _missing(ax, "Lens Zernike terms")
        return _png(fig)
    x = np.arange(len(lens))
    values = np.array([np.nan if t["value_waves"] is None else t["value_waves"] for t in lens], dtype=float)
    errors = np.array([np.nan if t["U_waves"] is None else t["U_waves"] for t in lens], dtype=float)
    colours = ["#3b6ea5" if v >= 0 else "#c0504d" for v in values]
    ax.bar(x, values, color=colours, width=0.7, zorder=2)
    ax.errorbar(x, values, yerr=errors, fmt="none", ecolor="black", elinewidth=0.6, capsize=1.5, zorder=3)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.grid(axis="y", linewidth=0.3, color="0.8", zorder=0)
    ax.set_xlim(-0.6, len(lens) - 0.4)
    fs = _FONT - 1 if len(lens) <= 24 else _FONT - 2
    ax.set_xticks(x)
    ax.set_xticklabels([f"Z{t['noll']} {t['name']}" for t in lens], rotation=60, ha="right",
                       rotation_mode="anchor", fontsize=fs)
    _style(ax, "Lens Zernike coefficients (Noll ordering and normalisation), error bars: U (k = 2)")
    ax.tick_params(axis="x", labelsize=fs)
    ax.set_ylabel("waves", fontsize=_FONT - 1, labelpad=1)
    lam = float(wavelength_nm)
    sec = ax.secondary_yaxis("right", functions=(lambda w: w * lam, lambda nm: nm / lam))
    sec.tick_params(labelsize=_FONT - 1, length=2, pad=1)
    sec.set_ylabel("nm", fontsize=_FONT - 1, labelpad=1)
    return _png(fig)


# ------------------------------------------------------------------ page 2
def psf_mtf_png(arrays: ReportArrays, mtf_points=(), width_mm=186.0, height_mm=46.0, mtf_limits=()) -> bytes:
    """PSF image (log scale), PSF x-profile and MTF, each against the diffraction limit.

    Parameters
    ----------
    arrays : ReportArrays
        Uses ``psf``, ``psf_diffraction``, ``psf_pixel_um``, ``mtf*``.
    mtf_points : list of dict
        ``doc["figures_of_merit"]["mtf"]`` entries, drawn as points with U error bars.
    mtf_limits : list of (float, float)
        ``(frequency cycles/mm, minimum MTF)`` of the specification, drawn as limit markers.

    Returns
    -------
    bytes
        PNG image.
    """
    fig = _figure(width_mm, height_mm)
    axes = [fig.add_axes([0.045, 0.20, 0.20, 0.68]), fig.add_axes([0.37, 0.20, 0.27, 0.68]),
            fig.add_axes([0.71, 0.20, 0.27, 0.68])]
    if arrays.psf is None:
        _missing(axes[0], "PSF")
        _missing(axes[1], "PSF profile")
    else:
        psf = arrays.psf
        ext = _extent(psf.shape, arrays.psf_pixel_um)
        img = np.log10(np.clip(psf / max(float(psf.max()), 1e-30), 1e-4, None))
        _image(fig, axes[0], img, ext, f"PSF, log10 (peak = Strehl {psf.max():.3f})", cmap="magma",
               label="log10 of I / diffraction-limited peak", xlabel="x (um)", ylabel="y (um), +y down")
        row = psf.shape[0] // 2
        xs = (np.arange(psf.shape[1]) - psf.shape[1] // 2) * arrays.psf_pixel_um
        ax = axes[1]
        ax.plot(xs, psf[row], color="#c0504d", linewidth=0.9, label="measured")
        if arrays.psf_diffraction is not None:
            ax.plot(xs, arrays.psf_diffraction[row], color="black", linewidth=0.7, linestyle="--",
                    label="diffraction limit")
        _style(ax, "PSF profile along x (through centre row)")
        ax.set_xlabel("x (um)", fontsize=_FONT - 1, labelpad=1)
        ax.set_ylabel("relative to diffraction peak", fontsize=_FONT - 1, labelpad=1)
        ax.legend(fontsize=_FONT - 1.5, frameon=False)
    ax = axes[2]
    if arrays.mtf is None or arrays.mtf_freq_cyc_per_mm is None:
        _missing(ax, "MTF")
    else:
        ax.plot(arrays.mtf_freq_cyc_per_mm, arrays.mtf, color="#c0504d", linewidth=0.9,
                label=f"measured, {arrays.mtf_label}")
        if arrays.mtf_diffraction is not None:
            ax.plot(arrays.mtf_freq_cyc_per_mm, arrays.mtf_diffraction, color="black", linewidth=0.7,
                    linestyle="--", label="diffraction limit")
        mtf_points = [p for p in mtf_points if p["value"] is not None]  # null: not measured
        if mtf_points:
            ax.errorbar([p["frequency_cyc_per_mm"] for p in mtf_points], [p["value"] for p in mtf_points],
                        yerr=[p["U"] or 0.0 for p in mtf_points], fmt="o", markersize=2, color="#3b6ea5",
                        elinewidth=0.6, capsize=1.5, label="reported (± U)")
        for i, (f, lo) in enumerate(mtf_limits):
            ax.plot([f, f], [lo, lo], marker="_", markersize=9, markeredgewidth=1.4, color="#1e8e3e",
                    linestyle="none", label="spec minimum" if i == 0 else None)
            ax.annotate("min", (f, lo), xytext=(2, -7), textcoords="offset points", fontsize=_FONT - 2,
                        color="#1e8e3e")
        ax.set_ylim(0, 1.05)
        ax.grid(linewidth=0.3, color="0.85")
        _style(ax, "MTF (object side)")
        ax.set_xlabel("spatial frequency (cycles/mm)", fontsize=_FONT - 1, labelpad=1)
        ax.legend(fontsize=_FONT - 1.5, frameon=False)
    return _png(fig)


def sample_led_png(arrays: ReportArrays, width_mm=186.0, height_mm=44.0) -> bytes:
    """Reconstructed reference sample (amplitude, phase) and per-LED brightness and residual maps.

    Returns
    -------
    bytes
        PNG image.
    """
    import matplotlib  # lazy, as everywhere here

    fig = _figure(width_mm, height_mm)
    axes = [fig.add_axes([0.05 + i * 0.25, 0.2, 0.15, 0.66]) for i in range(4)]
    if arrays.sample_amplitude is None or arrays.sample_phase is None:
        _missing(axes[0], "Sample amplitude")
        _missing(axes[1], "Sample phase")
    else:
        ext = _extent(arrays.sample_amplitude.shape, arrays.sample_pixel_um)
        _image(fig, axes[0], arrays.sample_amplitude, ext, "Reference sample, amplitude", xlabel="x (um)",
               ylabel="y (um), +y down", label="|t| (transmission)")
        _image(fig, axes[1], arrays.sample_phase, ext, "Reference sample, phase", cmap="twilight",
               label="rad", xlabel="x (um)")
    for ax, values, title, cmap, label in (
        (axes[2], arrays.led_brightness, "LED brightness (relative)", "viridis", "relative to nominal"),
        (axes[3], arrays.led_residual, "LED residual (RMS / noise sigma)", "inferno", "RMS residual / sigma"),
    ):
        if arrays.led_xy_mm is None or values is None:
            _missing(ax, title)
            continue
        sc = ax.scatter(arrays.led_xy_mm[:, 0], arrays.led_xy_mm[:, 1], c=values, s=5, edgecolors="none",
                        cmap=matplotlib.colormaps[cmap].with_extremes(bad="0.75"), plotnonfinite=True)  # not fitted: grey
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_yaxis()  # +y down, as on every map
        _style(ax, title)
        ax.set_xlabel("x (mm)", fontsize=_FONT - 1, labelpad=1)
        ax.set_ylabel("y (mm), +y down", fontsize=_FONT - 1, labelpad=1)
        _colorbar(fig, sc, ax, label)
    return _png(fig)


def frames_png(frames: dict, width_mm=128.0, height_mm=62.0) -> bytes:
    """Measured vs modelled frames and their residual for one bright-field and one dark-field LED.

    Parameters
    ----------
    frames : dict
        ``{"bright": {"led": (row, col), "measured": (n, n), "modelled": (n, n)}, "dark": {...}}``.

    Returns
    -------
    bytes
        PNG image.
    """
    fig = _figure(width_mm, height_mm)
    for r, key in enumerate(("bright", "dark")):
        axes = [fig.add_axes([0.06 + c * 0.32, 0.55 - r * 0.49, 0.22, 0.36]) for c in range(3)]
        entry = (frames or {}).get(key)
        led_txt = f" LED {tuple(int(v) for v in entry['led'])}" if entry and "led" in entry else ""
        fig.text(0.015, 0.73 - r * 0.49, f"{key}-field{led_txt}", rotation=90, ha="center", va="center",
                 fontsize=_FONT)
        if not entry:
            for ax in axes:
                _missing(ax, f"{key}-field frame")
            continue
        meas = np.asarray(entry["measured"], dtype=float)
        model = np.asarray(entry["modelled"], dtype=float)
        lo, hi = float(min(meas.min(), model.min())), float(max(meas.max(), model.max()))
        res = meas - model
        rlim = float(np.max(np.abs(res))) or 1.0
        ext = [0, meas.shape[1], meas.shape[0], 0]
        _image(fig, axes[0], meas, ext, "measured", vmin=lo, vmax=hi, label="counts")
        _image(fig, axes[1], model, ext, "modelled", vmin=lo, vmax=hi, label="counts")
        _image(fig, axes[2], res, ext, "residual (meas. - model)", cmap="RdBu_r", vmin=-rlim, vmax=rlim,
               label="counts")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    return _png(fig)


def convergence_figure(history, width_mm=56.0, height_mm=62.0, polish_steps: int = 0):
    """Solver loss per outer round (a ``Figure``; :func:`convergence_png` renders it).

    Rounds are numbered 1..R on an integer axis; a log axis is used only when the loss spans more
    than a decade, and every tick label is distinct (the decimals follow the tick spacing).
    """
    # lazy: matplotlib and reportlab load only when a report is drawn (start-up time)
    from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, NullFormatter

    fig = _figure(width_mm, height_mm)
    fig.set_layout_engine("constrained", w_pad=0.01, h_pad=0.01)
    ax = fig.add_subplot()
    hist = None if history is None else np.asarray(history, dtype=float)
    if hist is None or hist.size == 0 or not np.isfinite(hist).any():
        _missing(ax, "Loss history")
        return fig
    rounds = np.arange(1, hist.size + 1)
    ax.plot(rounds, hist, color="#3b6ea5", linewidth=0.9, marker="o", markersize=1.8)
    finite = hist[np.isfinite(hist)]
    if finite.min() > 0 and finite.max() / finite.min() > 10.0:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        lo, hi = float(finite.min()), float(finite.max())
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1e-12) * 1e-6
        ax.set_ylim(lo - pad, hi + pad)
        ticks = [t for t in MaxNLocator(5).tick_values(lo - pad, hi + pad) if lo - pad <= t <= hi + pad]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FixedFormatter(distinct_labels(ticks)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.set_xlim(0.5, hist.size + 0.5)
    ax.grid(linewidth=0.3, color="0.85")
    extra = f" then {polish_steps} Gauss-Newton steps" if polish_steps else ""
    _style(ax, f"Convergence: {hist.size} outer rounds{extra}")
    ax.set_xlabel("outer round", fontsize=_FONT - 1, labelpad=1)
    ax.set_ylabel("loss", fontsize=_FONT - 1, labelpad=1)
    return fig


def distinct_labels(ticks) -> list:
    """Tick labels with as many decimals as the spacing needs, so no two labels are equal."""
    ticks = np.asarray(ticks, dtype=float)
    if ticks.size < 2:
        return [f"{t:.6g}" for t in ticks]
    step = float(np.min(np.abs(np.diff(ticks))))
    decimals = max(0, int(np.ceil(-np.log10(step))) + 1) if step > 0 else 6
    labels = [f"{t:.{decimals}f}" for t in ticks]
    while len(set(labels)) < len(labels) and decimals < 15:
        decimals += 1
        labels = [f"{t:.{decimals}f}" for t in ticks]
    return labels


def convergence_png(history, width_mm=56.0, height_mm=62.0, polish_steps: int = 0) -> bytes:
    """Solver loss per outer round (see :func:`convergence_figure`).

    Returns
    -------
    bytes
        PNG image.
    """
    return _png(convergence_figure(history, width_mm, height_mm, polish_steps))


def led_scale_png(arrays: ReportArrays, width_mm=186.0, height_mm=52.0) -> bytes:
    """Per-LED maps of the learned data-uncertainty scale ``s_j`` (log colour scale) and of the raw
    residual against the camera noise: the frames the model explains least are where both are high.
    Frames left out of the fit (blank, repeated; NaN) are grey.

    Returns
    -------
    bytes
        PNG image.
    """
    # lazy: matplotlib loads only when a report is drawn (start-up time)
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig = _figure(width_mm, height_mm)
    axes = [fig.add_axes([0.06 + i * 0.5, 0.18, 0.32, 0.68]) for i in range(2)]
    for ax, values, title, log in (
        (axes[0], arrays.led_scale, "Learned data scale s_j (1 = camera noise)", True),
        (axes[1], arrays.led_residual, "LED residual (RMS / noise sigma)", False),
    ):
        if arrays.led_xy_mm is None or values is None:
            _missing(ax, title)
            continue
        finite = values[np.isfinite(values)]
        norm = LogNorm(vmin=1.0, vmax=max(2.0, float(finite.max()) if finite.size else 2.0)) if log else None
        cmap = matplotlib.colormaps["inferno"].with_extremes(bad="0.75")  # frames not fitted: grey
        sc = ax.scatter(arrays.led_xy_mm[:, 0], arrays.led_xy_mm[:, 1], c=values, s=9, cmap=cmap,
                        edgecolors="none", norm=norm, plotnonfinite=True)
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_yaxis()  # +y down, as on every map
        _style(ax, title)
        ax.set_xlabel("LED x (mm)", fontsize=_FONT - 1, labelpad=1)
        ax.set_ylabel("LED y (mm), +y down", fontsize=_FONT - 1, labelpad=1)
        cb = _colorbar(fig, sc, ax, "s_j" if log else "sigma")
        if log:  # plain numbers at 1, 2, 5, 10, ... (the default wrote a lone "2 x 10^0" on a narrow range)
            cb.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            cb.ax.yaxis.set_minor_formatter(NullFormatter())
    return _png(fig)
