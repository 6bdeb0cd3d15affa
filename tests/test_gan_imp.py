"""GAN IMP (lipdeploy.gan_imp, lipdeploy.gan_train) and `lipdeploy find --generator`, on a tiny progressive GAN."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lipdeploy.cli import cli
from lipdeploy.discriminator import DiscriminatorSpec
from lipdeploy.faces import lfw_faces
from lipdeploy.gan_imp import discriminator_path, find_gan_ticket, fresh_discriminator, load_discriminator_round
from lipdeploy.gan_train import GanTrainConfig, critic_loss, train_wgan_gp
from lipdeploy.generator import PGANSpec
from lipdeploy.ticket import load_ticket, ticket_from_model

SPEC = PGANSpec(latent_dim=8, depth_scale0=8, depth_other_scales=(8, 4))
D_SPEC = DiscriminatorSpec(depth_scale0=8, depth_other_scales=(8, 4))
CONFIG = {"depthScale0": 8, "depthOtherScales": [8, 4], "latentVectorDim": 8, "dimOutput": 3, "miniBatchStdDev": True}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: torch's thread pool only adds contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def faces():
    return lfw_faces(16, "train")[:8]


def _generator():
    torch.manual_seed(0)
    return ticket_from_model(SPEC.build(), SPEC)


def test_critic_loss_is_the_wgan_gp_formula():
    d = D_SPEC.build()
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    eps = torch.rand(4, 1, 1, 1)
    loss, w = critic_loss(d, real, fake, eps, GanTrainConfig())
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
    (g,) = torch.autograd.grad(d(x_hat).sum(), x_hat)
    gp = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
    dr, df = d(real), d(fake)
    expected = -dr.mean() + df.mean() + 10 * gp + 1e-3 * (dr**2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert w.item() == pytest.approx((dr.mean() - df.mean()).item(), rel=1e-5)


def test_training_moves_weights_but_never_pruned_ones(faces):
    g, d = SPEC.build(), D_SPEC.build()
    g_mask = {"scaleLayers.0.0.module.weight": (torch.rand(8, 8, 3, 3) > 0.5).float()}
    d_mask = {"fromRGBLayers.2.module.weight": (torch.rand(4, 3, 1, 1) > 0.5).float()}
    before = g.scaleLayers[0][0].module.weight.detach().clone()
    out = train_wgan_gp(g, d, faces, GanTrainConfig(epochs=2, batch=4), g_masks=g_mask, d_masks=d_mask)
    w = g.scaleLayers[0][0].module.weight.detach()
    assert torch.all(w[g_mask["scaleLayers.0.0.module.weight"] == 0] == 0)
    assert not torch.allclose(
        w * g_mask["scaleLayers.0.0.module.weight"], before * g_mask["scaleLayers.0.0.module.weight"]
    )
    assert torch.all(d.fromRGBLayers[2].module.weight.detach()[d_mask["fromRGBLayers.2.module.weight"] == 0] == 0)
    assert set(out) == {"loss_d", "loss_g", "wasserstein", "seconds"}


def test_gan_imp_rounds_rewind_prune_both_and_resume(faces, tmp_path):
    gen, disc = _generator(), fresh_discriminator(D_SPEC, 0)
    train = GanTrainConfig(epochs=1, batch=4)
    paths = find_gan_ticket(gen, disc, faces, tmp_path / "imp", 2, train)
    assert [p.name for p in paths] == ["round_00.pt", "round_01.pt", "round_02.pt"]
    tickets = [load_ticket(p) for p in paths]
    for r, t in enumerate(tickets):
        assert t.density == pytest.approx(0.8**r, abs=2e-3)
        assert t.provenance["discriminator_density"] == pytest.approx(0.8**r, abs=2e-3)
        for k, m in t.masks.items():
            assert torch.equal(t.init[k] * m, gen.init[k] * m)  # rewound: init is the pre-trained generator
            assert torch.all(t.fitted[k][m == 0] == 0)
        assert t.provenance["settings"]["data_sha256"] and t.provenance["losses"]["seconds"] >= 0
    # masks nest, and round 2's are the lowest-magnitude 20% of round 1's retrained weights
    for k in tickets[1].masks:
        assert torch.all(tickets[2].masks[k] <= tickets[1].masks[k])
    d_masks, d_fitted = load_discriminator_round(discriminator_path(tmp_path / "imp", 2), D_SPEC)
    assert all(torch.all(d_fitted[k][m == 0] == 0) for k, m in d_masks.items())
    # resume: a third round continues the chain; another data set is refused
    more = find_gan_ticket(gen, disc, faces, tmp_path / "imp", 3, train)
    assert len(more) == 4 and load_ticket(more[3]).density == pytest.approx(0.8**3, abs=2e-3)
    with pytest.raises(Exception, match="different settings"):
        find_gan_ticket(gen, disc, faces[:4], tmp_path / "imp", 4, train)
    summary = json.loads((tmp_path / "imp" / "imp.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [0, 1, 2, 3]


def test_random_baseline_has_the_same_counts_and_other_masks(faces, tmp_path):
    gen, disc = _generator(), fresh_discriminator(D_SPEC, 0)
    train = GanTrainConfig(epochs=1, batch=4)
    imp = load_ticket(find_gan_ticket(gen, disc, faces, tmp_path / "imp", 1, train)[1])
    rnd = load_ticket(find_gan_ticket(gen, disc, faces, tmp_path / "rnd", 1, train, random=True)[1])
    assert imp.kept_count == rnd.kept_count
    assert any(not torch.equal(imp.masks[k], rnd.masks[k]) for k in imp.masks)


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_find_generator_cli_checkpoint_netd_and_errors(tmp_path):
    torch.manual_seed(0)
    g, d = SPEC.build(), D_SPEC.build()
    torch.save({"config": CONFIG, "netG": g.state_dict(), "netD": d.state_dict(), "avgG": g.state_dict()},
               tmp_path / "zoo.pth")  # fmt: skip
    torch.save({"config": CONFIG, "netG": g.state_dict()}, tmp_path / "no_d.pth")
    args = ("--data", "skimage:lfw_faces:test", "--rounds", 1, "--epochs", 1, "--batch", 10, "--quiet")
    r = _run("find", "--generator", tmp_path / "zoo.pth", *args, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    t = load_ticket(tmp_path / "out" / "round_01.pt")
    assert t.provenance["settings"]["discriminator"] == "checkpoint" and t.provenance["settings"]["data_images"] == 20
    r = _run("find", "--generator", tmp_path / "no_d.pth", *args, "-o", tmp_path / "out2")
    assert r.exit_code == 2 and r.output.startswith("error:") and "--fresh-discriminator" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "out2").exists()
    r = _run("find", "--generator", tmp_path / "no_d.pth", *args, "--fresh-discriminator", "--format", "safetensors",
             "-o", tmp_path / "out2")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert load_ticket(tmp_path / "out2" / "round_01.safetensors").provenance["parent"] == "round_00.safetensors"
    r = _run("find", "--generator", tmp_path / "zoo.pth", "--rounds", 1, "-o", tmp_path / "out3")
    assert r.exit_code == 2 and "--data" in r.output
    r = _run("find", "skimage:astronaut", "--generator", tmp_path / "zoo.pth", *args, "-o", tmp_path / "out4")
    assert r.exit_code == 2 and "takes no IMAGES" in r.output
    ticket = tmp_path / "out" / "round_01.pt"
    r = _run("restore", "skimage:astronaut", "--task", "cs", "--generator", tmp_path / "zoo.pth", "--ticket", ticket,
             "--simulate", "--iters", 3, "-o", tmp_path / "cs.png", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "cs.json").read_text())["prior"]["density"] == pytest.approx(0.8, abs=2e-3)
