"""Reader for foreign FPM datasets: a MATLAB ``.mat`` capture plus a small station description.

The description (TOML, ``format = "metrology-foreign"``; example ``fixtures/foreign/uconn-bloodsmear.toml``,
the how and why in ``docs/real-data.md``) states the optics (NA, pixel), the LED board (pitch, air
gap, first LED, lit square, capture order), the slide, the mapping of the lab's axes onto ours, and
which ``.mat`` keys hold the frames, wavelength, LED offsets and known defocus.

:func:`load_foreign` returns our :class:`~metrology.io.capture.Capture` (frames scaled from HDR
units to pseudo-counts, see :func:`estimate_hdr_noise`) and a
:class:`~metrology.io.station_file.StationDescription` whose board is the lit ``n x n`` square
(board index ``(row, col)``), whose LED centre is the first LED and whose ``tile_center_mm`` is
minus the first LED's offset from the patch centre, in our axes (:mod:`metrology.conventions`).
The glass slide (thickness, index) goes into the station so the illumination model refracts
through it.

Helpers that establish a lab's conventions from its data: :func:`measured_bright_field`,
:func:`bright_field_mismatch` and :func:`defocus_shift_matrix`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch

from metrology.errors import InputError
from metrology.io.capture import Capture
from metrology.io.station_file import parse_station
from metrology.physics.illumination import Illumination
from metrology.toml_input import read_toml

FORMAT_NAME = "metrology-foreign"
AXES = {"+col": (0, 1.0), "-col": (0, -1.0), "+row": (1, 1.0), "-row": (1, -1.0)}
"""Mapping values: which of our axes (0 = x = columns, 1 = y = rows) and which sign."""


# ---------------------------------------------------------------------------------- LED order
def square_spiral(side: int) -> list[tuple[int, int]]:
    """Square spiral out of ``(0, 0)``: ``+x`` 1, ``+y`` 1, ``-x`` 2, ``-y`` 2, ``+x`` 3 ...

    Returns
    -------
    list of (int, int)
        ``side**2`` relative LED indices ``(xi, yi)`` (their axes), in capture order.
    """
    half = (side - 1) // 2
    out, x, y, run, d = [(0, 0)], 0, 0, 1, 0
    dirs = ((1, 0), (0, 1), (-1, 0), (0, -1))
    while len(out) < side * side:
        for _ in range(2):
            dx, dy = dirs[d % 4]
            for _ in range(run):
                x, y = x + dx, y + dy
                if max(abs(x), abs(y)) <= half and len(out) < side * side:
                    out.append((x, y))
            d += 1
        run += 1
    return out


def mapping_matrix(their_x: str, their_y: str) -> np.ndarray:
    """Signed permutation ``M`` (2, 2) with ``ours = M @ theirs`` (ours: ``(x, y)`` = (column, row))."""
    m = np.zeros((2, 2))
    for j, name in enumerate((their_x, their_y)):
        axis, sign = AXES[name]
        m[axis, j] = sign
    if abs(np.linalg.det(m)) != 1:
        raise ValueError(f"mapping {their_x}, {their_y} does not use both axes")
    return m


def candidate_mappings() -> dict:
    """All eight axis mappings (x/y swap and sign flips), name -> ``(their_x, their_y)``."""
    out = {}
    for a in ("col", "row"):
        b = "row" if a == "col" else "col"
        for sa in "+-":
            for sb in "+-":
                out[f"x->{sa}{a}, y->{sb}{b}"] = (sa + a, sb + b)
    return out


# ---------------------------------------------------------------------------------- description
@dataclass(frozen=True)
class ForeignDescription:
    """Parsed foreign station description (units in the names; see the module docstring)."""

    station_id: str
    description: str
    na: float
    magnification: float
    camera_pixel_um: float
    board_rows: int
    board_cols: int
    pitch_mm: float
    air_gap_mm: float
    first_led: tuple
    lit_side: int
    order: str
    slide_thickness_mm: float
    slide_index: float
    their_x: str
    their_y: str
    mat_keys: dict
    files: dict
    source: str = ""

    @property
    def mapping(self) -> np.ndarray:
        return mapping_matrix(self.their_x, self.their_y)

    def relative_indices(self) -> list[tuple[int, int]]:
        """Relative LED indices ``(xi, yi)`` (their axes) in capture order."""
        return square_spiral(self.lit_side)


def _get(source, table: dict, section: str, key: str, kind, default=None, check=None):
    name = f"{section}.{key}"
    if key not in table:
        if default is None:
            raise InputError(source, f"missing required key '{name}'")
        return default
    v = table[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise InputError(source, f"{name} must be {kind.__name__}, got {v!r}")
    if check is not None and not check(v):
        raise InputError(source, f"{name} has a bad value: {v!r}")
    return v


def load_description(path) -> ForeignDescription:
    """Read and validate a foreign station description (TOML).

    Raises
    ------
    InputError
        Missing file, TOML syntax error, wrong format, missing key or bad value (naming the key).
    """
    path = Path(path)
    data = read_toml(path, "foreign station description")
    if data.get("format") != FORMAT_NAME:
        raise InputError(path, f"'format' must be {FORMAT_NAME!r}, got {data.get('format')!r}")
    if data.get("format_version") != 1:
        raise InputError(path, f"format_version {data.get('format_version')!r} is not supported (expected 1)")
    sec = {s: data.get(s, {}) for s in ("station", "optics", "led_array", "slide", "mapping", "mat", "files")}
    for s, t in sec.items():
        if not isinstance(t, dict):
            raise InputError(path, f"[{s}] must be a table")
    pos = lambda v: v > 0  # noqa: E731
    st, op, led, sl, mp, mat = (sec[s] for s in ("station", "optics", "led_array", "slide", "mapping", "mat"))
    their_x = _get(path, mp, "mapping", "their_x", str, check=lambda v: v in AXES)
    their_y = _get(path, mp, "mapping", "their_y", str, check=lambda v: v in AXES)
    try:
        mapping_matrix(their_x, their_y)
    except ValueError as exc:
        raise InputError(path, f"mapping: {exc}") from None
    side = _get(path, led, "led_array", "lit_side", int, check=lambda v: v >= 1 and v % 2 == 1)
    rows = _get(path, led, "led_array", "board_rows", int, check=pos)
    cols = _get(path, led, "led_array", "board_cols", int, check=pos)
    fx = _get(path, led, "led_array", "first_led_x", int, check=lambda v: 0 <= v < cols)
    fy = _get(path, led, "led_array", "first_led_y", int, check=lambda v: 0 <= v < rows)
    order = _get(path, led, "led_array", "order", str, check=lambda v: v == "spiral")
    keys = {k: _get(path, mat, "mat", k, str, default="") for k in ("frames", "wavelength_m", "xint_mm", "yint_mm", "defocus_m", "rotation_deg")}
    if not keys["frames"]:
        raise InputError(path, "missing required key 'mat.frames'")
    axes = _get(path, mat, "mat", "frames_axes", str, default="rows,cols,frames")
    if axes not in ("rows,cols,frames", "frames,rows,cols"):
        raise InputError(path, f"mat.frames_axes must be 'rows,cols,frames' or 'frames,rows,cols', got {axes!r}")
    keys["frames_axes"] = axes
    files = {}
    for name, entry in sec["files"].items():
        if not isinstance(entry, dict):
            raise InputError(path, f"[files.{name}] must be a table")
        files[name] = {k: _get(path, entry, f"files.{name}", k, float) for k in entry}
    return ForeignDescription(
        station_id=_get(path, st, "station", "id", str, check=lambda v: bool(v.strip())),
        description=_get(path, st, "station", "description", str, default=""),
        na=_get(path, op, "optics", "na", float, check=lambda v: 0 < v < 1),
        magnification=_get(path, op, "optics", "magnification", float, check=pos),
        camera_pixel_um=_get(path, op, "optics", "camera_pixel_um", float, check=pos),
        board_rows=rows, board_cols=cols,
        pitch_mm=_get(path, led, "led_array", "pitch_mm", float, check=pos),
        air_gap_mm=_get(path, led, "led_array", "air_gap_mm", float, check=pos),
        first_led=(fx, fy), lit_side=side, order=order,
        slide_thickness_mm=_get(path, sl, "slide", "thickness_mm", float, default=0.0, check=lambda v: v >= 0),
        slide_index=_get(path, sl, "slide", "index", float, default=1.52, check=lambda v: v >= 1),
        their_x=their_x, their_y=their_y, mat_keys=keys, files=files, source=str(path),
    )


# ---------------------------------------------------------------------------------- HDR noise
def laplacian_noise_sigma(frames: np.ndarray) -> np.ndarray:
    """Per-frame noise standard deviation by Immerkaer's Laplacian estimator, shape (J,).

    ``sigma = sqrt(pi / 2) / 6 * mean |L * I|`` with the 3x3 kernel ``[1 -2 1; -2 4 -2; 1 -2 1]``,
    which cancels smooth structure; residual fine texture biases it upwards (an upper bound).
    """
    f = np.asarray(frames, dtype=np.float64)
    lap = (
        f[:, :-2, :-2] - 2 * f[:, :-2, 1:-1] + f[:, :-2, 2:]
        - 2 * f[:, 1:-1, :-2] + 4 * f[:, 1:-1, 1:-1] - 2 * f[:, 1:-1, 2:]
        + f[:, 2:, :-2] - 2 * f[:, 2:, 1:-1] + f[:, 2:, 2:]
    )
    return math.sqrt(math.pi / 2) / 6 * np.abs(lap).mean(axis=(1, 2))


def estimate_hdr_noise(frames: np.ndarray) -> dict:
    """Scale of HDR frames to pseudo-counts and a noise model, estimated from the data.

    HDR merging hides the camera's gain. Assuming photon noise, ``var = a (mean - offset)`` with
    ``a`` the HDR units per equivalent photo-electron; ``a`` is the median of
    ``sigma_j^2 / (mean_j - offset)`` over the darker half of the frames (dark field: little
    texture, so the Laplacian estimate is closest to the noise), ``offset`` the 0.1th percentile of
    all pixels. Dividing the frames by ``a`` gives pseudo-counts with unit gain.

    Returns
    -------
    dict
        ``units_per_count`` (a), ``offset_units``, ``read_noise_counts`` (the residual noise of the
        darkest frames beyond their photon noise, at least 1), ``sigma`` (J,), ``mean`` (J,).
    """
    f = np.asarray(frames, dtype=np.float64)
    sigma = laplacian_noise_sigma(f)
    mean = f.mean(axis=(1, 2))
    offset = float(np.percentile(f, 0.1))
    dark = mean <= np.median(mean)
    above = np.clip(mean - offset, 1e-12, None)
    a = float(np.median(sigma[dark] ** 2 / above[dark]))
    darkest = np.argsort(mean)[: max(1, len(mean) // 20)]
    excess = np.median(sigma[darkest] ** 2 / a**2 - above[darkest] / a)
    return {
        "units_per_count": a,
        "offset_units": offset,
        "read_noise_counts": float(max(1.0, math.sqrt(max(excess, 0.0)))),
        "sigma": sigma,
        "mean": mean,
    }


# ---------------------------------------------------------------------------------- reader
def _scalar(source, mat: dict, key: str, default, what: str):
    if key and key in mat:
        v = np.asarray(mat[key]).ravel()
        if v.size != 1 or not np.isfinite(v[0]):
            raise InputError(source, f"'{key}' ({what}) must be one finite number")
        return float(v[0])
    if default is None:
        raise InputError(source, f"no '{key}' ({what}) in the file and none in the description")
    return float(default)


def load_foreign(mat_path, description_toml, *, crop_px: int | None = None):
    """Read a foreign ``.mat`` capture into our capture and station formats.

    Parameters
    ----------
    mat_path : str or Path
        The MATLAB file (``scipy.io.loadmat``).
    description_toml : str or Path
        Foreign station description (``format = "metrology-foreign"``).
    crop_px : int, optional
        Keep only the centre ``crop_px x crop_px`` patch (even, >= 8). The tile centre is that of
        the full frame, so geometry is unchanged.

    Returns
    -------
    (Capture, StationDescription)
        Frames in pseudo-counts (float32, unit gain: see :func:`estimate_hdr_noise`), exposure 1;
        ``capture.extra`` holds ``source_file``, ``known_defocus_um_theirs``, ``hdr_units_per_count``,
        ``read_noise_counts``, ``their_led_index`` (absolute ``(x, y)`` of each frame's LED),
        ``led_rotation_deg`` and ``mapping``.

    Raises
    ------
    InputError
        Unreadable or malformed ``.mat`` file (naming it), or a bad description.
    """
    desc = load_description(description_toml)
    mat_path = Path(mat_path)
    mat, frames = _read_frames(mat_path, desc)
    scalars = _mat_scalars(mat_path, mat, desc)
    noise = estimate_hdr_noise(frames)
    counts = (frames / noise["units_per_count"]).astype(np.float32)
    n = counts.shape[-1]
    if crop_px is not None:
        if crop_px < 8 or crop_px % 2 or crop_px > n:
            raise InputError(mat_path, f"crop_px must be even, >= 8 and <= {n}, got {crop_px}")
        c0 = (n - crop_px) // 2
        counts = np.ascontiguousarray(counts[:, c0 : c0 + crop_px, c0 : c0 + crop_px])
    order = desc.relative_indices()
    m = desc.mapping
    half = (desc.lit_side - 1) // 2
    leds = []
    for xi, yi in order:
        ox, oy = m @ (xi, yi)
        leds.append((int(round(half + oy)), int(round(half + ox))))
    toml = _station_toml(desc, scalars, noise, counts.shape[-1])
    station = parse_station(toml, source=f"{desc.source} + {mat_path.name}")
    fx, fy = desc.first_led
    capture = Capture(
        frames=counts,
        leds=leds,
        exposure_s=np.ones(len(leds)),
        station_id=desc.station_id,
        reference_sample=mat_path.stem,
        wavelength_nm=scalars["wavelength_m"] * 1e9,
        extra={
            "source_file": mat_path.name,
            "known_defocus_um_theirs": scalars["defocus_m"] * 1e6,
            "hdr_units_per_count": noise["units_per_count"],
            "hdr_offset_units": noise["offset_units"],
            "read_noise_counts": noise["read_noise_counts"],
            "their_led_index": [[fx + xi, fy + yi] for xi, yi in order],
            "their_offset_mm": [scalars["xint_mm"], scalars["yint_mm"]],
            "led_rotation_deg": float(np.linalg.det(m)) * scalars["rotation_deg"],
            "mapping": {"their_x": desc.their_x, "their_y": desc.their_y},
        },
    )
    return capture, station


def _read_frames(mat_path: Path, desc: ForeignDescription) -> tuple:
    """The ``.mat`` contents and its frame stack (J, n, n) float64, checked against ``desc``."""
    if not mat_path.exists():
        raise InputError(mat_path, "foreign capture file not found")
    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as exc:  # scipy raises ValueError, TypeError, ... for damaged files
        raise InputError(mat_path, f"not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    keys = desc.mat_keys
    if keys["frames"] not in mat:
        raise InputError(mat_path, f"no '{keys['frames']}' frame stack in the file")
    stack = np.asarray(mat[keys["frames"]])
    if stack.ndim != 3 or not np.issubdtype(stack.dtype, np.number):
        raise InputError(mat_path, f"'{keys['frames']}' must be a 3-D numeric array, got shape {stack.shape}")
    frames = np.moveaxis(stack, 2, 0) if keys["frames_axes"] == "rows,cols,frames" else stack
    frames = np.ascontiguousarray(frames, dtype=np.float64)
    lit = len(desc.relative_indices())
    if frames.shape[0] != lit:
        raise InputError(mat_path, f"{frames.shape[0]} frames but {lit} LEDs lit ({desc.lit_side}x{desc.lit_side})")
    if frames.shape[1] != frames.shape[2]:
        raise InputError(mat_path, f"frames must be square, got {frames.shape[1]}x{frames.shape[2]}")
    if not np.all(np.isfinite(frames)):
        raise InputError(mat_path, "frames contain NaN or inf")
    if frames.max() <= 0:
        raise InputError(mat_path, "all frames are zero or negative")
    return mat, frames


def _mat_scalars(mat_path: Path, mat: dict, desc: ForeignDescription) -> dict:
    """Wavelength (m), first-LED offsets (mm), known defocus (m; NaN if none stated) and board
    rotation (deg): from the ``.mat`` keys the description names, else from its ``[files.<stem>]``."""
    keys = desc.mat_keys
    per_file = desc.files.get(mat_path.stem, {})
    wl_default = None if "wavelength_nm" not in per_file else per_file["wavelength_nm"] * 1e-9
    out = {
        "wavelength_m": _scalar(mat_path, mat, keys["wavelength_m"], wl_default, "wavelength, m"),
        "xint_mm": _scalar(mat_path, mat, keys["xint_mm"], per_file.get("xint_mm"), "first LED x offset, mm"),
        "yint_mm": _scalar(mat_path, mat, keys["yint_mm"], per_file.get("yint_mm"), "first LED y offset, mm"),
        "defocus_m": float("nan"),
        "rotation_deg": _scalar(mat_path, mat, keys["rotation_deg"], 0.0, "rotation, deg"),
    }
    if keys["defocus_m"] or "known_defocus_um" in per_file:
        z_default = None if "known_defocus_um" not in per_file else per_file["known_defocus_um"] * 1e-6
        out["defocus_m"] = _scalar(mat_path, mat, keys["defocus_m"], z_default, "known defocus, m")
    if not 200e-9 < out["wavelength_m"] < 2e-6:
        raise InputError(mat_path, f"wavelength {out['wavelength_m']:g} m is not a plausible LED wavelength")
    return out


def _station_toml(desc: ForeignDescription, scalars: dict, noise: dict, frame_px: int) -> str:
    """Our station description (TOML) of the lit square: LED centre at the first LED, tile centre at
    minus the first LED's offset in our axes, the slide, the HDR noise estimate."""
    half = (desc.lit_side - 1) // 2
    tile = -(desc.mapping @ (scalars["xint_mm"], scalars["yint_mm"]))
    background = noise["offset_units"] / noise["units_per_count"]
    return f"""
format_version = 1
[station]
id = {desc.station_id!r}
description = {desc.description!r}
[led_array]
rows = {desc.lit_side}
cols = {desc.lit_side}
pitch_mm = {desc.pitch_mm!r}
distance_mm = {desc.air_gap_mm + desc.slide_thickness_mm!r}
center_row = {half}
center_col = {half}
wavelength_nm = {scalars['wavelength_m'] * 1e9!r}
order = "spiral"
[lens]
na = {desc.na!r}
magnification = {desc.magnification!r}
[camera]
pixel_um = {desc.camera_pixel_um!r}
frame_px = {frame_px}
bit_depth = 16
photons_per_count = 1.0
read_noise_e = {noise['read_noise_counts']!r}
background_counts = {background!r}
[reconstruction]
tile_center_mm = [{float(tile[0])!r}, {float(tile[1])!r}]
[slide]
thickness_mm = {desc.slide_thickness_mm!r}
index = {desc.slide_index!r}
"""


# ---------------------------------------------------------------------------------- evidence
def measured_bright_field(frames: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Bool (J,): frames whose mean exceeds ``fraction`` of the brightest frame means' median.

    Bright-field frame means sit near the on-axis one (dropping towards the pupil edge, where part of
    the scattered light leaves the pupil); dark-field means are a few per cent of it.
    """
    mean = np.asarray(frames, dtype=np.float64).mean(axis=(1, 2))
    top = np.median(np.sort(mean)[-5:])
    return mean > fraction * top


def predicted_illumination_na(station, leds) -> np.ndarray:
    """Nominal illumination NA (through the slide) of each LED, shape (J,)."""
    with torch.no_grad():
        ill = Illumination(station.geometry(leds), torch.float64)
        return ill.illumination_na().numpy()


def bright_field_mismatch(capture, station, margin_na: float = 0.0) -> dict:
    """Compare measured bright-field frames with the LEDs predicted inside the pupil.

    Returns
    -------
    dict
        ``measured`` (J,) bool, ``na`` (J,), ``mismatched`` list of frame indices whose status
        disagrees and whose NA is more than ``margin_na`` from the cut-off (LEDs on the edge are
        undecided), and ``n_mismatched``.
    """
    measured = measured_bright_field(capture.frames)
    na = predicted_illumination_na(station, capture.leds)
    decided = np.abs(na - station.na) > margin_na
    bad = np.nonzero(decided & (measured != (na < station.na)))[0].tolist()
    return {"measured": measured, "na": na, "mismatched": bad, "n_mismatched": len(bad)}


def phase_correlation_px(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Shift ``(dx, dy)`` (pixels, columns and rows) of image ``b`` relative to ``a``."""
    fa = np.fft.fft2(a - a.mean())
    fb = np.fft.fft2(b - b.mean())
    r = fb * np.conj(fa)
    c = np.fft.ifft2(r / (np.abs(r) + 1e-12)).real
    n0, n1 = c.shape
    i, j = np.unravel_index(int(np.argmax(c)), c.shape)

    def sub(cm, c0, cp):
        d = cm - 2 * c0 + cp
        return 0.0 if d == 0 else 0.5 * (cm - cp) / d

    di = sub(c[(i - 1) % n0, j], c[i, j], c[(i + 1) % n0, j])
    dj = sub(c[i, (j - 1) % n1], c[i, j], c[i, (j + 1) % n1])
    return float((j + n1 // 2) % n1 - n1 // 2 + dj), float((i + n0 // 2) % n0 - n0 // 2 + di)


def defocus_shift_matrix(frames: np.ndarray, relative_indices, bright: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares ``A`` (2, 2) with ``shift_px(j) = A^T (xi_j, yi_j)`` over bright-field frames.

    A defocused sample moves the bright-field image with the illumination angle: in our
    conventions the image of LED ``j`` moves by ``-defocus_um * (x_j, y_j) / h`` (um). ``A`` shows
    which image axis each of their LED axes moves along (the swap) and the relative sign of the two
    axes; its overall sign is tied to the defocus sign (see ``docs/real-data.md``).

    Returns
    -------
    (A, rms_residual_px)
        ``A[i, k]``: image shift along our axis ``k`` (0 = columns, 1 = rows) per LED step along their
        axis ``i``.
    """
    idx = np.asarray(relative_indices, dtype=np.float64)
    ref = int(np.argmin(np.abs(idx).sum(axis=1)))
    rows, rhs = [], []
    for j in np.nonzero(bright)[0]:
        if j == ref:
            continue
        rows.append(idx[j])
        rhs.append(phase_correlation_px(frames[ref], frames[j]))
    rows, rhs = np.asarray(rows), np.asarray(rhs)
    a, *_ = np.linalg.lstsq(rows, rhs, rcond=None)
    return a, float(np.sqrt(np.mean((rows @ a - rhs) ** 2)))
