"""The compute device: choosing it, and the CUDA path agreeing with the CPU.

The CPU tests run everywhere. The CUDA tests run only where torch sees a GPU (never in CI, which
has none): the forward model, every calibratable parameter's gradient, the Gauss-Newton normal
equations and a whole known-mode fit must give the CPU's answers on the GPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metrology.cli import main
from metrology.errors import InputError
from metrology.physics import CALIBRATABLE, StationModel
from metrology.references import catalogue_over_field
from metrology.solver import NoiseModel, default_schedule, reconstruct
from metrology.solver.device import compute_device, device_label
from metrology.solver.jacobian import normal_equations
from tests.sim_cases import misaligned_capture

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device")


def test_cpu_and_auto_devices():
    assert compute_device("cpu") == torch.device("cpu")
    assert compute_device(" CPU ") == torch.device("cpu")
    assert compute_device("auto").type == ("cuda" if CUDA else "cpu")
    assert device_label("cpu") == "cpu"


@pytest.mark.parametrize("name", ["tpu", "banana", "mps"])
def test_unknown_device_is_an_input_error(name):
    with pytest.raises(InputError, match="--device.*compute device"):
        compute_device(name)


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(InputError, match="--device: CUDA requested but torch .* sees no CUDA device"):
        compute_device("cuda")


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_inspect_with_cuda_but_no_gpu_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "reports"
    code = main(["inspect", str(tmp_path / "capture.tif"), "--station", "s.toml", "--spec", "x.toml",
                 "--out", str(out), "--device", "cuda"])
    assert code == 2
    assert "--device" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def small_case():
    station, leds, capture, truth, coeffs = misaligned_capture(32, 7, seed=5)
    g = station.geometry(leds)
    ref = catalogue_over_field(truth["reference_sample"], station.fov_um, g, seed=truth["reference_seed"])
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    return g, ref, truth, capture, noise, coeffs


def _model(case, dtype=torch.float64, every_path=False):
    g, ref, truth, _, _, coeffs = case
    if every_path:  # the stray light and the two-circle vignetting enter the forward model (and have a
        # gradient) only where the station turns them on
        g = dataclasses.replace(g, stray_light=True, vignetting=(1.1, 0.3, -0.2))
    model = StationModel(g, transmission=ref, exposure=truth["relative_exposure"], dtype=dtype)
    with torch.no_grad():  # off-nominal everywhere, so no gradient vanishes by symmetry
        model.pupil.zernike_waves.copy_(torch.as_tensor(coeffs, dtype=dtype))
        model.illumination.shift_mm.copy_(torch.tensor([0.3, -0.2], dtype=dtype))
        model.illumination.rotation_deg.fill_(1.2)
        model.illumination.tilt_deg.copy_(torch.tensor([0.5, -0.4], dtype=dtype))
        model.sample.defocus_um.fill_(3.0)
    return model


@needs_cuda
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_forward_model_on_cuda_matches_cpu(small_case, dtype, rtol):
    cpu = _model(small_case, dtype)
    gpu = _model(small_case, dtype).to("cuda")
    a = cpu().detach()
    b = gpu().detach().cpu()
    assert float((a - b).abs().max() / a.abs().max()) < rtol


@needs_cuda
def test_gradients_on_cuda_match_cpu_for_every_calibratable_parameter(small_case):
    _, _, _, capture, _, _ = small_case
    data = torch.as_tensor(np.asarray(capture.frames, dtype=np.float64))
    grads = []
    for device in ("cpu", "cuda"):
        model = _model(small_case, every_path=True).to(device)
        loss = ((model() - data.to(device)) ** 2).mean()
        model.zero_grad()
        loss.backward()
        grads.append({path: model.parameter(path).grad.detach().cpu() for path in CALIBRATABLE})
    for path in CALIBRATABLE:
        a, b = grads[0][path], grads[1][path]
        assert torch.isfinite(b).all(), path
        assert float((a - b).abs().max()) <= 1e-8 * max(float(a.abs().max()), 1e-30), path


@needs_cuda
def test_normal_equations_on_cuda_match_cpu(small_case):
    _, _, _, capture, noise, _ = small_case
    specs = [p for p in default_schedule("known", 15).parameters if not p.path.startswith("sample.field")]
    out = []
    for device in ("cpu", "cuda"):
        model = _model(small_case).to(device)
        data = torch.as_tensor(np.asarray(capture.frames, dtype=np.float64), device=device)
        mask = torch.ones_like(data)
        jtj, jtr, _, _ = normal_equations(model, data, mask, noise, specs)
        out.append((jtj.cpu(), jtr.cpu()))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-8, atol=1e-10 * float(out[0][0].abs().max()))
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-8, atol=1e-10 * float(out[0][1].abs().max()))


@needs_cuda
def test_known_fit_on_cuda_recovers_what_the_cpu_does(small_case):
    g, ref, truth, capture, noise, coeffs = small_case
    results = {}
    for device in ("cpu", "cuda"):
        model = StationModel(g, transmission=ref, exposure=truth["relative_exposure"]).to(device)
        fit = reconstruct(model, capture.frames, noise, default_schedule("known", g.zernike_terms))
        got = model.pupil.zernike_waves.detach().double().cpu().numpy()
        results[device] = (fit, got)
    fit, got = results["cuda"]
    assert fit.device.startswith("cuda:")
    assert fit.converged, fit.message
    assert float(np.sqrt(np.sum((got[4:15] - coeffs[4:15]) ** 2))) < 0.003
    # float32 on two devices: the same solution to well inside its uncertainty
    assert float(np.abs(got - results["cpu"][1]).max()) < 5e-4
    assert abs(fit.reduced_chi2 - results["cpu"][0].reduced_chi2) < 0.02


@needs_cuda
def test_blind_fit_runs_on_cuda(small_case):
    g, _, truth, capture, noise, coeffs = small_case
    model = StationModel(g, exposure=truth["relative_exposure"]).to("cuda")
    fit = reconstruct(model, capture.frames, noise, default_schedule("blind", g.zernike_terms, 10))
    got = model.pupil.zernike_waves.detach().double().cpu().numpy()
    assert np.isfinite(fit.chi2)
    assert float(np.sqrt(np.sum((got[4:15] - coeffs[4:15]) ** 2))) < 0.02
