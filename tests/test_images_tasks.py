"""Images, tasks and metrics: cropping, loading, the three degradations and their measurement conventions."""

from __future__ import annotations

import pytest
import torch

from lipdeploy.errors import InputError
from lipdeploy.fit import simulate
from lipdeploy.images import crop_to_multiple, load_image, load_mask, save_image, standard_image
from lipdeploy.metrics import psnr, psnr_y, rgb_to_y, ssim
from lipdeploy.tasks import TASKS, Denoise, Inpaint, SuperResolution, lanczos_kernel, make_task


@pytest.fixture(scope="module")
def patch() -> torch.Tensor:
    return standard_image("coffee")[:, :, 100:164, 200:264].contiguous()


def test_crop_to_multiple_centre_and_message():
    img = torch.rand(1, 3, 70, 100)
    out, msg = crop_to_multiple(img, 32)
    assert out.shape == (1, 3, 64, 96)
    assert torch.equal(out, img[:, :, 3:67, 2:98])
    assert "100x70" in msg and "96x64" in msg and "32" in msg
    same, none = crop_to_multiple(out, 32)
    assert none is None and same is out


def test_standard_images_and_grayscale_replicated():
    cam = load_image("skimage:camera")
    assert cam.shape == (1, 3, 512, 512) and cam.dtype == torch.float32
    assert torch.equal(cam[:, 0], cam[:, 1]) and torch.equal(cam[:, 1], cam[:, 2])
    assert 0.0 <= float(cam.min()) and float(cam.max()) <= 1.0
    assert load_image("skimage:astronaut").shape == (1, 3, 512, 512)
    with pytest.raises(InputError, match="no such scikit-image"):
        load_image("skimage:nonexistent_picture")


def test_png_roundtrip_and_bad_files(tmp_path, patch):
    path = tmp_path / "p.png"
    save_image(patch, path)
    back = load_image(path)
    assert back.shape == patch.shape
    assert float((back - patch).abs().max()) <= 0.5 / 255 + 1e-6
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(bad)


def test_denoise_noise_level_clipping_and_seed():
    gray = torch.full((1, 3, 64, 64), 0.5)
    obs = simulate(Denoise(), gray, seed=3)
    std = float((obs.image - gray).std())
    assert abs(std - 25 / 255) < 0.004
    assert float(obs.image.min()) >= 0 and float(obs.image.max()) <= 1
    assert torch.equal(obs.image, simulate(Denoise(), gray, seed=3).image)
    assert not torch.equal(obs.image, simulate(Denoise(), gray, seed=4).image)
    bright = torch.full((1, 3, 32, 32), 0.98)
    assert float(simulate(Denoise(), bright, 0).image.max()) <= 1.0


def test_inpaint_mask_and_loss_on_kept_pixels_only(tmp_path, patch):
    obs = simulate(Inpaint(), patch, seed=0)
    assert obs.mask.shape == (1, 1, 64, 64)  # per pixel, shared by the channels
    assert abs(float(obs.mask.mean()) - 0.5) < 0.05
    assert torch.equal(obs.image, patch * obs.mask)
    out = torch.rand_like(patch)
    changed_dropped = out + (1 - obs.mask) * 0.3
    changed_known = out + obs.mask * 0.3
    assert torch.equal(obs.loss(out), obs.loss(changed_dropped))
    assert not torch.equal(obs.loss(out), obs.loss(changed_known))
    # fidelity PSNR of the clean image on the known pixels is perfect
    assert float(obs.fidelity_psnr_t(patch)) > 100
    # a mask image: white = known
    m = torch.zeros(1, 3, 64, 64)
    m[:, :, :, :32] = 1
    save_image(m, tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", like=patch)
    obs2 = Inpaint(mask=mask).degrade(patch, torch.Generator())
    assert float(obs2.mask.mean()) == 0.5 and torch.equal(obs2.image[:, :, :, 32:], torch.zeros(1, 3, 64, 32))


def test_super_resolution_operator_and_y_psnr(patch):
    task = SuperResolution(factor=4)
    obs = simulate(task, patch, 0)
    assert obs.image.shape == (1, 3, 16, 16) and obs.out_size == (64, 64)
    k = lanczos_kernel(4)
    assert k.shape == (16, 16) and abs(float(k.sum()) - 1) < 1e-5
    # the loss's downsampler agrees with Pillow's Lanczos downsampling of the clean image
    assert psnr(obs.forward_operator(patch), obs.image) > 30
    assert obs.forward_operator(torch.rand(1, 3, 64, 64, requires_grad=True)).requires_grad
    assert SuperResolution(8).degrade(patch, torch.Generator()).image.shape == (1, 3, 8, 8)
    # Y channel: BT.601 studio range; border pixels do not count
    white, black = torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    assert abs(float(rgb_to_y(white).mean()) - 235 / 255) < 1e-5
    assert abs(float(rgb_to_y(black).mean()) - 16 / 255) < 1e-5
    out = patch.clone()
    noisy = (patch + 0.05 * torch.randn_like(patch)).clamp(0, 1)
    base = psnr_y(noisy, patch, border=4)
    spoiled = noisy.clone()
    spoiled[:, :, :4] = 1 - spoiled[:, :, :4]
    spoiled[:, :, :, -4:] = 0
    assert psnr_y(spoiled, patch, border=4) == pytest.approx(base, abs=1e-4)
    assert psnr_y(spoiled, patch, border=0) < base - 1
    assert task.psnr_t(noisy, patch).item() == pytest.approx(base, abs=1e-4)
    assert ssim(out, patch) == pytest.approx(1.0)
    assert 0 < task.ssim(noisy, patch) < 1


def test_task_registry():
    assert set(TASKS) == {"denoise", "inpaint", "sr"}
    assert make_task("denoise").sigma == pytest.approx(25 / 255)
    assert make_task("sr", factor=8).factor == 8
    assert Denoise.input_noise_std == pytest.approx(1 / 30)
    assert Inpaint.input_noise_std == SuperResolution.input_noise_std == 0.03
    assert SuperResolution(8).obs_multiple(32) == 4 and SuperResolution(4).clean_multiple(32) == 32
