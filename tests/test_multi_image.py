"""Multi-image IMP (the paper's multi-image script): one network fits several images, the loss is the sum of the
per-image MSEs, one mask per round for all of them, provenance lists the images; one image runs as before."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from lipdeploy.cli import cli
from lipdeploy.errors import InputError
from lipdeploy.fit import FitConfig, fit, simulate
from lipdeploy.images import save_image, standard_image
from lipdeploy.imp import ImpConfig, find_ticket, prune
from lipdeploy.masks import Mask
from lipdeploy.multi_image import MultiObservation, common_size, stack_observations
from lipdeploy.networks import make_input
from lipdeploy.runlock import image_digest
from lipdeploy.tasks import Denoise, Inpaint, SuperResolution
from lipdeploy.testing import tiny_skip
from lipdeploy.ticket import Ticket, load_ticket, ticket_from_model

ITERS = 3


def dense_ticket(seed: int = 0) -> Ticket:
    spec = tiny_skip()
    torch.manual_seed(seed)
    model = spec.build()
    return ticket_from_model(model, spec, Mask.ones_like(model))


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    """Three 32x32 crops (the tiny network's stride is 8): two for finding, one held out."""
    coffee = standard_image("coffee")
    return [
        coffee[:, :, 100:132, 200:232].contiguous(),
        coffee[:, :, 200:232, 300:332].contiguous(),
        coffee[:, :, 300:332, 100:132].contiguous(),
    ]


@pytest.mark.parametrize("task", [Denoise(), Inpaint(drop=0.5), SuperResolution(factor=4)], ids=lambda t: t.name)
def test_loss_is_the_sum_of_per_image_mses(images, task):
    singles = [simulate(task, img, seed=i) for i, img in enumerate(images)]
    multi = stack_observations(singles)
    out = torch.rand(1, 3, 32, 32)
    direct = sum(
        F.mse_loss(o.forward_operator(out), o.image * o.mask if o.mask is not None else o.image) for o in singles
    )
    assert float(multi.loss(out)) == pytest.approx(float(direct), rel=1e-6)
    assert float(multi.loss(out)) == pytest.approx(sum(float(o.loss(out)) for o in singles), rel=1e-6)
    fid = sum(float(o.fidelity_psnr_t(out)) for o in singles) / len(singles)
    assert float(multi.fidelity_psnr_t(out)) == pytest.approx(fid, rel=1e-6)
    assert isinstance(multi.to("cpu"), MultiObservation) and multi.count == 3


def test_fit_minimises_the_summed_loss_and_reports_mean_psnr(images):
    """The first step's logged loss is the sum of the MSEs of the single output to each image (computed here from
    the same network, input and perturbation); PSNR is the mean over images."""
    task = Denoise()
    pair = images[:2]
    ticket = dense_ticket()
    target = stack_observations([task.clean_target(img) for img in pair])
    config = FitConfig(iters=1, log_every=1, seed=3)
    result = fit(ticket, target, config, gt=torch.cat(pair), task=task)

    model = ticket.build("init", bn="image").train()
    x0 = make_input(ticket.arch, 32, 32, seed=config.seed, scale=config.input_scale)
    noise = torch.empty_like(x0).normal_(generator=torch.Generator().manual_seed(config.seed + 1))
    with torch.no_grad():
        out = model(torch.add(x0, noise, alpha=task.input_noise_std))
    direct = sum(float(F.mse_loss(out, img)) for img in pair)
    assert result.history[0]["loss"] == pytest.approx(direct, rel=1e-5)
    mean_psnr = sum(float(task.psnr_t(result.output, img)) for img in pair) / 2
    assert result.psnr_final == pytest.approx(mean_psnr, abs=1e-4)
    with pytest.raises(InputError, match="eager step"):
        fit(ticket, target, FitConfig(iters=1, capture="sync-free"), gt=torch.cat(pair), task=task)


def test_multi_image_imp_one_mask_per_round_provenance_and_resume(images, tmp_path):
    pair, names = images[:2], ["coffee_a", "coffee_b"]
    imp = ImpConfig(rounds=1)
    cfg = FitConfig(iters=ITERS)
    paths = find_ticket(dense_ticket(), pair, Denoise(), tmp_path / "a", imp, cfg, image_name=names)
    assert [p.name for p in paths] == ["round_00.pt", "round_01.pt"]
    r0, r1 = load_ticket(paths[0]), load_ticket(paths[1])
    # one mask per round, for all images: round 1 prunes round 0's (jointly) fitted weights
    assert r1.masks.keys() == r0.masks.keys()
    expected = prune(r0.fitted, r0.masks, imp.rate, generator=torch.Generator().manual_seed(1000))
    assert all(torch.equal(r1.masks[n], expected[n]) for n in expected)
    assert r1.density == pytest.approx(0.8, abs=0.01)
    prov = r1.provenance
    assert [im["name"] for im in prov["images"]] == names
    assert [im["sha256"] for im in prov["images"]] == [image_digest(img) for img in pair]
    assert {im["size"] for im in prov["images"]} == {"32x32"}
    assert prov["image"] == names and prov["settings"]["image_sha256"] == [image_digest(img) for img in pair]
    assert prov["psnr_best"] is not None
    summary = json.loads((tmp_path / "a" / "imp.json").read_text())
    assert summary["settings"]["image"] == names

    # resume: continuing to round 2 equals an uninterrupted 2-round run
    more = ImpConfig(rounds=2)
    find_ticket(dense_ticket(), pair, Denoise(), tmp_path / "a", more, cfg, image_name=names)
    find_ticket(dense_ticket(), pair, Denoise(), tmp_path / "b", more, cfg, image_name=names)
    ra, rb = load_ticket(tmp_path / "a" / "round_02.pt"), load_ticket(tmp_path / "b" / "round_02.pt")
    assert all(torch.equal(ra.masks[n], rb.masks[n]) for n in ra.masks)
    assert all(torch.equal(ra.fitted[n], rb.fitted[n]) for n in ra.fitted)
    # another image set (here: the other order) is not continued in that folder
    with pytest.raises(InputError, match="different settings"):
        find_ticket(dense_ticket(), pair[::-1], Denoise(), tmp_path / "a", more, cfg, image_name=names[::-1])


def test_single_image_runs_as_before(images, tmp_path):
    """One image (a tensor, or a list of one) writes what it always did: same settings, no ``images`` entry, and
    round 0 is the plain one-image fit of the clean image."""
    clean = images[0]
    cfg = FitConfig(iters=ITERS)
    imp = ImpConfig(rounds=0)
    a = find_ticket(dense_ticket(), clean, Denoise(), tmp_path / "a", imp, cfg, image_name="coffee")[0]
    b = find_ticket(dense_ticket(), [clean], Denoise(), tmp_path / "b", imp, cfg, image_name=["coffee"])[0]
    ta, tb = load_ticket(a), load_ticket(b)
    assert "images" not in ta.provenance and ta.provenance["image"] == "coffee"
    assert ta.provenance["settings"] == tb.provenance["settings"]
    assert ta.provenance["settings"]["image_sha256"] == image_digest(clean)
    assert all(torch.equal(ta.fitted[n], tb.fitted[n]) for n in ta.fitted)
    direct = fit(dense_ticket(), Denoise().clean_target(clean), FitConfig(iters=ITERS, backend="masked"), gt=clean)
    assert all(torch.equal(ta.fitted[n], direct.state_dict[n]) for n in ta.fitted)
    assert ta.provenance["psnr_best"] == direct.psnr_best


def test_multi_image_ticket_restores_a_held_out_image(images, tmp_path):
    """Transfer: the ticket found on two images fits a third through the ordinary one-image ``fit``."""
    paths = find_ticket(
        dense_ticket(), images[:2], Denoise(), tmp_path, ImpConfig(rounds=1), FitConfig(iters=ITERS),
        image_name=["a", "b"],
    )  # fmt: skip
    ticket = load_ticket(paths[-1])
    held_out = images[2]
    result = fit(ticket, simulate(Denoise(), held_out, seed=0), FitConfig(iters=ITERS), gt=held_out)
    assert result.output.shape == held_out.shape and result.psnr_best is not None and result.psnr_best > 5
    for name, mask in ticket.masks.items():  # the mask holds: pruned weights stay zero
        assert not bool(result.state_dict[name][mask == 0].any()), name


def test_common_size_crop_and_resize(images):
    big = standard_image("coffee")[:, :, :50, :70]
    out, msg = common_size([images[0], big], 8)
    assert [tuple(o.shape[2:]) for o in out] == [(32, 32), (32, 32)] and out[0] is images[0]
    assert torch.equal(out[1], big[:, :, 9:41, 19:51]) and "cropped the centre 32x32" in msg
    out, msg = common_size([images[0], big], 8, "resize")
    assert tuple(out[1].shape[2:]) == (32, 32) and "resized" in msg
    assert common_size(images[:2], 8) == (list(images[:2]), None)
    with pytest.raises(InputError, match="below one network stride"):
        common_size([images[0], big[:, :, :5]], 8)
    with pytest.raises(InputError, match="one size"):
        find_ticket(dense_ticket(), [images[0], big], Denoise(), "unused", ImpConfig(rounds=0), image_name=["a", "b"])


def test_find_cli_several_images(images, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    save_image(images[0], a)
    save_image(standard_image("coffee")[:, :, :40, :48], b)  # 48x40: brought to a's 32x32
    out = tmp_path / "imp"
    args = ["find", a, b, "--task", "denoise", "--channels", "8,16,16", "--iters", 2, "--rounds", 1, "-o", out]
    r = CliRunner().invoke(cli, [str(x) for x in [*args, "--quiet"]], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    prov = load_ticket(out / "round_01.pt").provenance
    assert [im["name"] for im in prov["images"]] == ["a.png", "b.png"]
    assert {im["size"] for im in prov["images"]} == {"32x32"}
    mask = tmp_path / "m.png"
    save_image(torch.ones(1, 3, 32, 32), mask)
    args = ["find", a, b, "--task", "inpaint", "--mask", mask, "-o", tmp_path / "x", "--quiet"]
    r = CliRunner().invoke(cli, [str(x) for x in args], catch_exceptions=False)
    assert r.exit_code == 2 and "mask file is for one image" in r.output
