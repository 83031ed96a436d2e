"""The station's digital twin: a differentiable FPM forward model batched over LEDs.

``StationModel`` is a named, ordered composition ``illumination``, ``pupil``, ``sample``,
``camera``; every calibratable quantity is an ``nn.Parameter`` with a stable path
(``illumination.shift_mm``, ``pupil.zernike_waves``, ``sample.defocus_um`` ...), listed by
:data:`CALIBRATABLE` (from the registry, :mod:`metrology.parameters`). Everything derived (grids,
frequencies, crops) is computed in ``forward()``.

Fast path (exact for a periodic object): the object spectrum is cropped at the integer part
``m_j`` of each LED's frequency offset, and the pupil is evaluated at coordinates shifted by the
sub-pixel remainder ``r_j`` (``G(g) = P(g - r_j) O(g + m_j)``). The remainder's phase ramp cancels
in ``|.|^2``. All LEDs are processed in one batched tensor operation.
"""

from __future__ import annotations

import math

import numpy as np

import torch
from torch import nn

from metrology.parameters import PARAMETERS, TRACKED, parameter
from metrology.physics.camera import Camera
from metrology.physics.geometry import StationGeometry
from metrology.physics.illumination import Illumination, max_nominal_illumination_na
from metrology.physics.pupil import Pupil
from metrology.physics.sample import Sample

CALIBRATABLE = {p.path: p.description for p in PARAMETERS}
"""Every calibratable parameter path with its meaning and unit (from :mod:`metrology.parameters`)."""

STATION_PARAMETERS = TRACKED
"""The station misalignment tracked by calibration audits (:data:`metrology.parameters.TRACKED`)."""


def box_to_field(box: torch.Tensor, n: int) -> torch.Tensor:
    """Camera fields from pupil-box spectra: zero-pad the centred box (J, B, B) to (J, n, n) and
    inverse FFT (DC at index ``n // 2`` of the centred spectrum)."""
    half = box.shape[-1] // 2
    c = n // 2
    full = box.new_zeros((box.shape[0], n, n))
    full[:, c - half : c + half + 1, c - half : c + half + 1] = box
    return torch.fft.ifft2(torch.fft.ifftshift(full, dim=(-2, -1)))


def box_field(box: torch.Tensor, n: int) -> torch.Tensor:
    """Camera fields (J, n, n) from pupil-box spectra (J, B, B), uncentred: :func:`box_to_field`
    times a phase ramp.

    Moving a spectrum by whole frequency pixels multiplies its field by a phase ramp, which
    ``|.|^2`` removes, so the box is zero-padded at its end (``ifft2(box, s=(n, n))``) instead of
    being placed at the centre and shifted back (``ifftshift``). Same intensities to rounding; the
    shift is a copy of the whole (J, n, n) field and, under forward- and reverse-mode
    differentiation, a chain of concatenations that cost more than the transform (issue 18).
    """
    return torch.fft.ifft2(box, s=(n, n))


def field_to_box(field: torch.Tensor, half: int) -> torch.Tensor:
    """Centred spectra of camera fields (J, n, n), cropped to the pupil box (J, 2 half + 1,
    2 half + 1): the inverse of :func:`box_to_field` for fields band-limited to the box."""
    c = field.shape[-1] // 2
    full = torch.fft.fftshift(torch.fft.fft2(field), dim=(-2, -1))
    return full[:, c - half : c + half + 1, c - half : c + half + 1]


def gauss_legendre_offsets(points: int):
    """Sub-pixel offsets (pixels, in [-1/2, 1/2]) and weights of a ``points``-point
    Gauss-Legendre rule per axis, as (points^2, 2) offsets ``(dx, dy)`` and (points^2,) weights
    summing to 1 (the pixel-area average of a smooth intensity)."""
    x, w = np.polynomial.legendre.leggauss(int(points))
    x, w = 0.5 * x, 0.5 * w
    offsets = [(a, b) for b in x for a in x]
    weights = [wa * wb for wb in w for wa in w]
    return offsets, weights


class StationModel(nn.Module):
    """Differentiable model of an LED-array QA station imaging a sample through the lens under test.

    Parameters
    ----------
    geometry : StationGeometry
        Nominal geometry and LED list.
    transmission : array-like, shape (N, N), complex, optional
        Sample transmission on the reconstruction grid (default: clear).
    exposure : array-like, shape (J,), optional
        Relative exposure of each frame (from the capture metadata; default ones).
    dtype : torch.dtype
        ``torch.float32`` (default) or ``torch.float64``.
    """

    def __init__(self, geometry: StationGeometry, transmission=None, exposure=None, dtype=torch.float32):
        super().__init__()
        geometry.check_sampling(max_nominal_illumination_na(geometry))
        self.geometry = geometry
        self.illumination = Illumination(geometry, dtype)
        self.pupil = Pupil(geometry, dtype)
        self.sample = Sample(geometry, transmission, dtype)
        self.camera = Camera(dtype=dtype)
        exp = torch.ones(geometry.n_leds, dtype=dtype) if exposure is None else torch.as_tensor(exposure, dtype=dtype)
        self.register_buffer("exposure", exp.clone())
        self.edge_softening_px = 0.0
        """Smallest source width (frequency pixels) seen at the pupil edge: > 0 smooths the edge
        (the solver's coarse-to-fine continuation); 0 is the physical emitter."""

    # ------------------------------------------------------------------ helpers
    def frequency_offsets_px(self) -> torch.Tensor:
        """``k_j / df``: each LED's spectrum offset in grid pixels, shape (J, 2) ``(x, y)`` (with
        :meth:`curvature_tilt` under spherical illumination)."""
        k = self.illumination.spatial_frequencies()
        tilt = self.curvature_tilt()
        return (k if tilt is None else k + tilt) / self.geometry.df

    def bright_field(self) -> torch.Tensor:
        """Boolean (J,): LED inside the pupil cut-off (``|k_j| < NA / lambda``)."""
        with torch.no_grad():
            k = torch.linalg.vector_norm(self.illumination.spatial_frequencies(), dim=-1)
            return k < self.pupil.na / self.geometry.wavelength_um

    def spectrum_window(self, indices=None, wavelength_scale: float = 1.0):
        """Where each LED's pupil box sits on the centred object spectrum.

        ``wavelength_scale``: ``lambda / lambda_0`` (the illumination frequencies scale as its
        inverse).

        Returns
        -------
        rows, cols : Tensor of int64, shape (J', B)
            Object-spectrum rows/columns of the box (clamped to the grid).
        inside : Tensor of bool, shape (J', B, B) or None
            Box cells on the grid (None when all are; cells outside carry no object content).
        remainder : Tensor, shape (J', 2)
            Sub-pixel part ``(x, y)`` of ``k_j / df`` (the pupil's shift on the box).
        """
        g = self.geometry
        offsets = self.frequency_offsets_px()
        if indices is not None:
            offsets = offsets[indices]
        if wavelength_scale != 1.0:
            offsets = offsets / wavelength_scale
        whole = torch.round(offsets).detach()
        remainder = offsets - whole
        n_obj = g.object_px
        half = g.pupil_box_half
        u = torch.arange(-half, half + 1, device=offsets.device)
        w = whole.to(torch.long)
        rows = n_obj // 2 + w[:, 1, None] + u[None, :]
        cols = n_obj // 2 + w[:, 0, None] + u[None, :]
        inside = None
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= n_obj or cols.max() >= n_obj:
            # frequencies beyond the reconstruction grid carry no object content (band limit);
            # StationGeometry.check_sampling keeps nominal LEDs inside, this guards optimiser excursions
            inside = ((rows >= 0) & (rows < n_obj))[:, :, None] & ((cols >= 0) & (cols < n_obj))[:, None, :]
        return rows.clamp(0, n_obj - 1), cols.clamp(0, n_obj - 1), inside, remainder

    def illumination_phase(self):
        """The LEDs' common wavefront curvature on the sample grid, shape (N, N) complex, or None
        for plane waves (``geometry.spherical_illumination`` off).

        An LED at distance ``R`` lights the sample with ``exp(i 2 pi r / lambda)`` (``r`` its
        distance from the LED): the tile centre's plane wave (``k_j``, the spectrum's shift) times
        ``exp(i pi |x|^2 / (lambda R))`` to second order in the position ``x`` from the tile centre
        (on the transmission's grid; :meth:`curvature_tilt` keeps it on the tile when the sample is
        displaced). That factor moves the illumination frequency across the field by ``x / (lambda R)``: at the
        border of a 208 um field 90 mm below, 0.0012 in NA, which decides on which side of the pupil
        edge an LED near it falls. Taken alike for every LED with ``R`` the distance along the axis
        (the LED board's nominal distance plus ``illumination.distance_error_mm``, a slide of
        thickness ``t`` and index ``n`` counting ``t / n``): an LED at angle ``theta`` has the radius
        ``R / cos theta`` across its direction and ``R / cos^3 theta`` along it (0.5 % and 1.5 % longer
        at NA 0.1, whose LEDs the effect matters for); the wavelength is the stated one (the spectral nodes share it).
        """
        g = self.geometry
        if not g.spherical_illumination:
            return None
        d = self.illumination.distance_error_mm
        x = (torch.arange(g.object_px, dtype=d.dtype, device=d.device) - g.object_px / 2) * g.object_pixel_um
        phase = math.pi * (x[None, :] ** 2 + x[:, None] ** 2) / (g.wavelength_um * self._curvature_radius_um())
        return torch.polar(torch.ones_like(phase), phase)

    def _curvature_radius_um(self) -> torch.Tensor:
        """``R`` of :meth:`illumination_phase` (um): the LED board's fitted distance, a slide of
        thickness ``t`` and index ``n`` counting ``t / n``."""
        g = self.geometry
        t = g.slide_thickness_mm
        return 1e3 * (g.led_distance_mm + self.illumination.distance_error_mm - t + t / g.slide_index)

    def curvature_tilt(self):
        """The illumination frequency (cycles/um, shape (2,)) the waves' curvature adds for a sample
        displaced by ``sample.position_um``, or None for plane waves.

        :meth:`box_factor` displaces the illuminated sample as a whole, so the phase of
        :meth:`illumination_phase` would move with the sample; the waves are centred on the tile
        instead: ``Q(x' + s) = Q(x') exp(i 2 pi x'.s / (lambda R))`` up to a constant, on the
        transmission's coordinates ``x'``. That tilt is taken as a shift of every LED's frequency by
        ``-s / (lambda R)`` (exact, and periodic on the grid where the tilt itself is not); unmodelled
        it would read as an LED shift equal to the sample's displacement."""
        g = self.geometry
        if not g.spherical_illumination:
            return None
        return -self.sample.position_um / (g.wavelength_um * self._curvature_radius_um())

    def illuminated_spectrum(self) -> torch.Tensor:
        """Centred spectrum of the sample as the LEDs light it, shape (N, N) complex: the
        transmission times :meth:`illumination_phase` (the transmission's own spectrum for plane
        waves)."""
        return self.sample.spectrum(self.illumination_phase())

    def box_factor(self) -> torch.Tensor:
        """Sample-position phase ramp times the FFT scale on the box, shape (B, B) complex."""
        g = self.geometry
        half = g.pupil_box_half
        u = torch.arange(-half, half + 1, device=self.pupil.na.device)
        uf = u.to(self.pupil.na.dtype) * g.df
        pos = self.sample.position_um
        ramp_phase = -2 * math.pi * (uf[None, :] * pos[0] + uf[:, None] * pos[1])
        scale = (g.field_px / g.object_px) ** 2
        return torch.polar(torch.full_like(ramp_phase, scale), ramp_phase)

    def field_spectrum(self, indices=None) -> torch.Tensor:
        """Exit-pupil field spectrum on the pupil box, shape (J', B, B) complex (the coherent part
        of the image; :meth:`intensity` adds the source's incoherent remainder)."""
        rows, cols, inside, remainder = self.spectrum_window(indices)
        crop = self.illuminated_spectrum()[rows[:, :, None], cols[:, None, :]]
        if inside is not None:
            crop = crop * inside
        source = self.source_side_px(indices) if self.pupil.edge == "source" else None
        pupil = self.pupil(remainder, self.sample.defocus_um, source)
        return pupil * crop * self.box_factor()

    def spectrum_coverage(self) -> torch.Tensor:
        """How often each object frequency is seen: ``sum_j |P(f - k_j)|^2`` on the centred object
        spectrum grid, shape (N, N) (a preconditioner for sample updates)."""
        g = self.geometry
        with torch.no_grad():
            rows, cols, inside, remainder = self.spectrum_window()
            source = self.source_side_px() if self.pupil.edge == "source" else None
            pupil = self.pupil(remainder, self.sample.defocus_um, source)
            weight = pupil.abs() ** 2
            if inside is not None:
                weight = weight * inside
            b = rows.shape[1]
            cover = torch.zeros((g.object_px, g.object_px), dtype=weight.dtype, device=weight.device)
            idx_r = rows[:, :, None].expand(-1, -1, b)
            idx_c = cols[:, None, :].expand(-1, b, -1)
            cover.index_put_((idx_r.reshape(-1), idx_c.reshape(-1)), weight.reshape(-1), accumulate=True)
            return cover

    def source_side_px(self, indices=None) -> torch.Tensor:
        """Side of each LED emitter's image in frequency pixels, shape (J',).

        A square emitter of side ``a`` (``geometry.led_size_mm``) at distance ``h`` subtends
        ``a cos^3(theta) / (lambda h)`` in spatial frequency (``d k / d x`` at the LED's angle); the
        pupil edge is averaged over it (:func:`metrology.physics.pupil.source_edge`).
        """
        g = self.geometry
        k = self.illumination.spatial_frequencies()
        if indices is not None:
            k = k[indices]
        s2 = (k * g.wavelength_um).pow(2).sum(dim=-1).clamp(max=0.99)
        h = g.led_distance_mm + self.illumination.distance_error_mm
        side = g.led_size_mm * (1.0 - s2) ** 1.5 / (h * g.wavelength_um * g.df)
        return side.clamp(min=self.edge_softening_px) if self.edge_softening_px else side

    def pixel_ramps(self, half: int, dtype, device, points: int | None = None) -> list:
        """The pixel-area quadrature as ``(weight, ramp)`` pairs: ``ramp`` (B, B) complex is the
        phase ramp on a pupil box of half-width ``half`` that moves the field by a sub-pixel offset
        (``points``, default ``geometry.pixel_quadrature``, Gauss-Legendre points per axis), or None
        for the single sample at the pixel centre."""
        q = self.geometry.pixel_quadrature if points is None else points
        if q <= 1:
            return [(1.0, None)]
        offsets, weights = gauss_legendre_offsets(q)
        u = torch.arange(-half, half + 1, device=device, dtype=dtype) * (2 * math.pi / self.geometry.field_px)
        return [(w, torch.polar(torch.ones_like(u[:, None] * u[None, :]), u[None, :] * dx + u[:, None] * dy))
                for (dx, dy), w in zip(offsets, weights)]

    def crop_frame(self, field: torch.Tensor) -> torch.Tensor:
        """The frame's pixels of a modelled field (..., n, n): the margin removed."""
        g = self.geometry
        m = g.margin_px
        return field[..., m : m + g.frame_px, m : m + g.frame_px] if m else field

    def camera_field(self, spectrum: torch.Tensor, ramp=None) -> torch.Tensor:
        """The camera field at the frame's pixels (J', frame_px, frame_px) complex from pupil-box
        spectra (J', B, B), moved by a :meth:`pixel_ramps` ramp (None: the pixel centres).

        Uncentred (:func:`box_field`): the phase ramp that differs from the centred field cancels
        in every use (``|.|^2``, and ``Re(conj(F) dF)`` in :mod:`metrology.solver.jacobian`).
        """
        return self.crop_frame(box_field(spectrum if ramp is None else spectrum * ramp, self.geometry.field_px))

    def camera_fields(self, spectrum: torch.Tensor, points: int | None = None):
        """``(weight, ramp, field)`` per pixel-quadrature point (:meth:`pixel_ramps`,
        :meth:`camera_field`): what :meth:`camera_intensity` sums, and what the Jacobian's
        closed-form camera part keeps. ``points``: quadrature points per axis (default the
        geometry's)."""
        for w, ramp in self.pixel_ramps(spectrum.shape[-1] // 2, spectrum.real.dtype, spectrum.device, points):
            yield w, ramp, self.camera_field(spectrum, ramp)

    def camera_intensity(self, spectrum: torch.Tensor, fields=None) -> torch.Tensor:
        """``|psi|^2`` at the camera pixels from pupil-box spectra (J', B, B): sampled at the pixel
        centres, or averaged over each pixel's area (:meth:`pixel_ramps`: the sub-pixel fields are
        phase ramps of the same spectrum). ``fields``: the spectrum's :meth:`camera_fields` as a
        list, where the caller has them already."""
        out = 0.0
        for w, _, field in self.camera_fields(spectrum) if fields is None else fields:
            out = out + w * (field.real**2 + field.imag**2)
        return out

    def frame_parts(self, indices=None) -> list:
        """What the camera sees of each frame, per node of the LED spectrum, before the camera.

        With the source-smeared edge (``pupil.edge == "source"``), each frame is the coherent
        image through the source-averaged pupil ``E P`` plus the incoherent remainder of the
        average over the emitter: a frequency sample with edge transmission ``E`` contributes
        ``|P O|^2 E`` to the mean intensity, the coherent image only ``|P O|^2 E^2``; the
        difference ``sum |P O|^2 (E - E^2) / n^4`` is a uniform term (exact for each sample's own
        power; the cross terms of two samples both on the edge are neglected). It is what carries
        the unscattered light of an LED at the bright-/dark-field transition.

        With a finite LED spectrum (``geometry.spectral_fwhm_nm``) each wavelength node
        (:meth:`StationGeometry.spectral_nodes`) has its own illumination frequencies, cut-off,
        aberration in waves and defocus.

        Returns
        -------
        list of (weight, spectrum, uniform)
            Per spectral node: its weight (float), the exit-pupil field spectrum on the pupil box
            (J', B, B) complex, and the incoherent uniform term (J',) (None without the source edge).
            :meth:`intensity_of` turns them into frames; the Jacobian
            (:func:`metrology.solver.jacobian.linearise`) differentiates this cheap part by forward
            mode and the camera part in closed form.
        """
        spectrum = self.illuminated_spectrum()
        source = self.source_side_px(indices) if self.pupil.edge == "source" else None
        factor = self.box_factor()
        parts = []
        for scale, weight in self.geometry.spectral_nodes():
            rows, cols, inside, remainder = self.spectrum_window(indices, scale)
            crop = spectrum[rows[:, :, None], cols[:, None, :]]
            if inside is not None:
                crop = crop * inside
            edge, body = self.pupil.parts(remainder, self.sample.defocus_um,
                                          None if source is None else source / scale, wavelength_scale=scale)
            smooth = body * crop * factor
            uniform = None
            if self.pupil.edge == "source":
                n = self.geometry.field_px
                power = smooth.real**2 + smooth.imag**2
                uniform = (power * (edge - edge**2)).sum(dim=(-2, -1)) / n**4
            parts.append((weight, edge * smooth, uniform))
        return parts

    def intensity_of(self, parts, fields=None) -> torch.Tensor:
        """Frames (J', n, n) from :meth:`frame_parts`: the weighted sum over the spectral nodes of
        each node's camera intensity plus its uniform term. ``fields``: per node, its
        :meth:`camera_fields` as a list, where the caller keeps them (the Jacobian's camera part)."""
        out = 0.0
        for k, (weight, spectrum, uniform) in enumerate(parts):
            frames = self.camera_intensity(spectrum, None if fields is None else fields[k])
            if uniform is not None:
                frames = frames + uniform[:, None, None]
            out = out + weight * frames
        return out

    def intensity(self, indices=None) -> torch.Tensor:
        """Noise-free intensity on the camera grid, shape (J', n, n) (:meth:`frame_parts`, then
        :meth:`intensity_of`)."""
        return self.intensity_of(self.frame_parts(indices))

    def frame_gain(self, indices=None) -> torch.Tensor:
        """Per-frame gain (J',): brightness x angular emission x exposure."""
        gain = self.illumination.brightness * self.illumination.emission() * self.exposure
        return gain if indices is None else gain[indices]

    def frame_stray_light(self, indices=None) -> torch.Tensor:
        """Per-frame uniform stray light (J',), in clear-pupil intensity (``illumination.stray_light``)."""
        s = self.illumination.stray_light
        return s if indices is None else s[indices]

    def forward(self, indices=None) -> torch.Tensor:
        """Modelled frames in counts, shape (J', n, n) (``indices`` selects LEDs, default all):
        ``camera(intensity + stray light, gain)``."""
        return self.camera(self.intensity(indices) + self.frame_stray_light(indices)[:, None, None],
                           self.frame_gain(indices))

    # ------------------------------------------------------------------ parameters
    def parameter(self, path: str) -> nn.Parameter:
        """The parameter at a dotted ``path`` (see :data:`CALIBRATABLE`)."""
        parameter(path)  # KeyError naming the known paths
        return self.get_parameter(path)

    def station_state(self) -> dict:
        """Current station misalignment as plain floats / lists (for results and audits)."""
        out = {}
        for path in STATION_PARAMETERS:
            v = self.parameter(path).detach().cpu().double()
            out[path] = v.tolist()
        return out
