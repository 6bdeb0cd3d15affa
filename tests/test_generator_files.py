"""Every progressive-GAN generator file layout loads into a Ticket (the files are written here with torch.save of plain
tensors and dicts, as pytorch_GAN_zoo and torch.nn.utils.prune write them), and every hostile variant is refused with
one line naming the file."""

from __future__ import annotations

import types
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from torch.nn.utils import prune

from lipdeploy.cli.options import ticket_options
from lipdeploy.errors import InputError
from lipdeploy.generator import PGANSpec, make_latent
from lipdeploy.generator_files import GeneratorCheckpoint, zoo_keys
from lipdeploy.layers import EqualizedConv2d
from lipdeploy.networks import prunable_names
from lipdeploy.ticket import load_ticket, read_tensor_file

SPEC = PGANSpec(latent_dim=6, depth_scale0=8, depth_other_scales=(8, 4), alpha=0.3)
CONFIG = {
    "latentVectorDim": 6,
    "depthScale0": 8,
    "depthOtherScales": [8, 4],
    "alpha": 0.3,
    "leakyReluLeak": 0.2,
    "dimOutput": 3,
    "equalizedlR": True,
    "perChannelNormalization": True,
    "initBiasToZero": True,
    "miniBatchStdDev": True,
    "lossCriterion": "WGANGP",
    "learningRate": 0.001,
    "attribKeysOrder": None,
}


def generator_state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in SPEC.build().state_dict().items()}


def discriminator_state() -> dict[str, torch.Tensor]:
    """A few tensors in DNet's layout: the loader hands them on untouched."""
    return {
        "fromRGBLayers.0.module.weight": torch.randn(8, 3, 1, 1),
        "fromRGBLayers.0.module.bias": torch.zeros(8),
        "groupScaleZero.0.module.weight": torch.randn(8, 9, 3, 3),
        "decisionLayer.module.weight": torch.randn(1, 8),
    }


def old_style(state):
    return {k.replace(".module.", "."): v for k, v in state.items()}


def data_parallel(state):
    return {f"module.{k}": v for k, v in state.items()}


def checkpoint(netG, avgG=None, config=CONFIG, **extra):
    out = {"config": config, "netG": netG, "netD": discriminator_state(), "avgG": avgG or generator_state(9)}
    out.update(extra)
    return out


def save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def pruned_generator(seed: int, amount: float = 0.6):
    """(the zoo's GNet state pruned with torch.nn.utils.prune on every EqualizedConv2d's inner conv, its masks,
    its pre-pruning weights)."""
    model = SPEC.build()
    model.load_state_dict(generator_state(seed))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [(m.module, "weight") for m in model.modules() if isinstance(m, EqualizedConv2d)]
    prune.global_unstructured(convs, pruning_method=prune.RandomUnstructured, amount=amount)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {k[: -len("_mask")]: v for k, v in sd.items() if k.endswith("_mask")}
    return sd, masks, before


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gan")
    g = generator_state(1)
    sd, masks, _ = pruned_generator(1)
    mask_dict = {f"{k}_mask": v for k, v in masks.items()}
    return {
        "g": g,
        "masks": masks,
        "pruned_sd": sd,
        "zoo": save(d / "zoo.pth", checkpoint(g)),
        "old": save(d / "old.pth", checkpoint(old_style(g))),
        "parallel": save(d / "parallel.pth", checkpoint(data_parallel(g))),
        "old_parallel": save(d / "old_parallel.pth", checkpoint(data_parallel(old_style(g)))),
        "pruned_ckpt": save(d / "pruned_ckpt.pth", checkpoint(sd)),
        "pruned_bare": save(d / "pruned_bare.pth", sd),
        "mask_only": save(d / "masks.pth", mask_dict),
        "mask_only_old": save(d / "masks_old.pth", old_style(mask_dict)),
    }


def output(ticket, weights="init"):
    model = ticket.build(weights)
    with torch.no_grad():
        return model(make_latent(ticket.arch, 2, seed=4))


def reference_output(state):
    model = SPEC.build()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(make_latent(SPEC, 2, seed=4))


# --------------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["zoo", "old", "parallel", "old_parallel"])
def test_zoo_checkpoint_in_every_key_layout(files, layout):
    t = load_ticket(files[layout])
    assert t.arch == SPEC
    assert set(t.init) == set(files["g"]) and all(torch.equal(t.init[k], v) for k, v in files["g"].items())
    assert list(t.masks) == prunable_names(SPEC.build()) and t.density == 1.0
    assert t.provenance["source_format"] == "pgan-checkpoint" and t.provenance["net"] == "netG"
    torch.testing.assert_close(output(t), reference_output(files["g"]), rtol=0, atol=0)


def test_net_picks_the_moving_average(tmp_path):
    g, avg = generator_state(1), generator_state(2)
    path = save(tmp_path / "zoo.pth", checkpoint(g, avgG=avg))
    t = load_ticket(path, net="avgG")
    assert torch.equal(t.init["formatLayer.module.weight"], avg["formatLayer.module.weight"])
    assert t.provenance["net"] == "avgG"
    assert torch.equal(load_ticket(path).init["formatLayer.module.weight"], g["formatLayer.module.weight"])


def test_papers_pruned_layout_in_a_checkpoint(files):
    t = load_ticket(files["pruned_ckpt"])
    assert t.provenance["source_format"] == "pgan-prune"
    assert all(torch.equal(t.masks[k], m) for k, m in files["masks"].items())
    assert abs(t.sparsity - 0.6) < 0.01
    sd = files["pruned_sd"]
    for name in files["masks"]:
        assert torch.equal(t.init[name], sd[f"{name}_orig"] * sd[f"{name}_mask"])
    assert t.state_dict()["formatLayer.module.weight"].count_nonzero() > 0  # linear layers are never pruned


def test_bare_pruned_generator_with_the_checkpoint_as_weights(files):
    """The retrained pruned generator's tensors are the fitted weights; the checkpoint's are the rewind point."""
    t = load_ticket(files["pruned_bare"], weights=files["zoo"])
    assert t.arch == SPEC and t.fitted is not None
    assert torch.equal(t.init["toRGBLayers.2.module.bias"], files["g"]["toRGBLayers.2.module.bias"])
    assert torch.equal(t.fitted["toRGBLayers.2.module.bias"], files["pruned_sd"]["toRGBLayers.2.module.bias"])
    assert t.provenance["weights_file"] == "zoo.pth"


@pytest.mark.parametrize("layout", ["mask_only", "mask_only_old"])
def test_mask_only_dict_with_the_checkpoint(files, layout):
    t = load_ticket(files[layout], weights=files["zoo"])
    assert t.provenance["source_format"] == "pgan-masks" and t.fitted is None
    assert all(torch.equal(t.masks[k], m) for k, m in files["masks"].items())
    masked = {k: v * files["masks"].get(k, 1) for k, v in files["g"].items()}
    torch.testing.assert_close(output(t), reference_output(masked), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_own_ticket_round_trip(files, tmp_path, suffix):
    t = load_ticket(files["mask_only"], weights=files["zoo"])
    path = tmp_path / f"ticket{suffix}"
    t.save(path)
    back = load_ticket(path)
    assert back.arch == SPEC and back.arch.kind == "pgan"
    assert all(torch.equal(back.masks[k], t.masks[k]) for k in t.masks)
    assert all(torch.equal(back.init[k], t.state_dict()[k]) for k in t.init)
    torch.testing.assert_close(output(back), output(t), rtol=0, atol=0)
    rewound = load_ticket(path, weights=files["zoo"], net="avgG")  # an own ticket rewound to a checkpoint's avgG
    assert torch.equal(rewound.init["formatLayer.module.bias"], generator_state(9)["formatLayer.module.bias"])


def test_checkpoint_keeps_the_discriminator(files):
    ckpt = GeneratorCheckpoint.from_content(files["parallel"], read_tensor_file(files["parallel"])[0])
    assert set(ckpt.nets) == {"netG", "netD", "avgG"}
    assert set(ckpt.nets["netD"]) == set(discriminator_state())
    assert ckpt.config["miniBatchStdDev"] is True and ckpt.spec == SPEC
    assert "formatLayer.module.weight" in ckpt.nets["netG"]  # the DataParallel prefix is gone


def test_zoo_keys_maps_as_the_zoo_does_without_copies():
    w = torch.randn(4, 3)
    out = zoo_keys(None, {"module.formatLayer.weight": w, "module.scaleLayers.0.1.bias": torch.zeros(4)})
    assert list(out) == ["formatLayer.module.weight", "scaleLayers.0.1.module.bias"]
    assert out["formatLayer.module.weight"] is w


# --------------------------------------------------------------------------------------------------- hostile files


def refused(path, needle, names="path", **kwargs) -> str:
    """``load_ticket(path, **kwargs)`` raises one line holding ``needle`` and naming the file at fault: ``path``, the
    ``weights`` file (``names="weights"``) or none (``names=None``, a bad parameter)."""
    with pytest.raises(InputError) as info:
        load_ticket(path, **kwargs)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    if names is None:
        assert info.value.path is None, message
    else:
        assert Path(path if names == "path" else kwargs["weights"]).name in message, message
    return message


def test_missing_config(tmp_path, files):
    no_config = {k: v for k, v in checkpoint(files["g"]).items() if k != "config"}
    refused(save(tmp_path / "noconfig.pth", no_config), "without 'config'")
    refused(files["pruned_bare"], "no 'config'")
    refused(save(tmp_path / "bare.pth", files["g"]), "pass the generator's checkpoint as weights")
    refused(files["mask_only"], "mask-only file")


def test_config_that_is_not_plain_data_is_refused_unexecuted(tmp_path, files):
    obj = checkpoint(files["g"], config=types.SimpleNamespace(**CONFIG))
    refused(save(tmp_path / "objconfig.pth", obj), "refused")
    refused(save(tmp_path / "listconfig.pth", checkpoint(files["g"], config=[1, 2])), "not a mapping")


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(depthOtherScales=[8] * 100), "depth_other_scales has 100 entries"),
        (dict(depthScale0=2**40), "depth_scale0 must be between"),
        (dict(lossCriterion="MSE"), "'tanh' is not supported"),
        (dict(depthOtherScales=[8, 8]), "weight 'scaleLayers.1.0.module.weight' has shape"),
    ],
)
def test_bad_config(tmp_path, files, change, needle):
    refused(save(tmp_path / "bad.pth", checkpoint(files["g"], config={**CONFIG, **change})), needle)


def test_missing_and_extra_keys_are_named(tmp_path, files):
    missing = {k: v for k, v in files["g"].items() if k != "toRGBLayers.1.module.bias"}
    refused(save(tmp_path / "missing.pth", checkpoint(missing)), "missing ['toRGBLayers.1.module.bias']")
    extra = {**files["g"], "toRGBLayers.7.module.weight": torch.zeros(3, 4, 1, 1)}
    refused(save(tmp_path / "extra.pth", checkpoint(extra)), "unexpected ['toRGBLayers.7.module.weight']")
    twice = {**files["g"], "formatLayer.weight": files["g"]["formatLayer.module.weight"]}
    refused(save(tmp_path / "twice.pth", checkpoint(twice)), "twice")
    refused(files["zoo"], "net must be one of netG, avgG, got 'netD'", names=None, net="netD")
    no_avg = {k: v for k, v in checkpoint(files["g"]).items() if k != "avgG"}
    refused(save(tmp_path / "noavg.pth", no_avg), "has no 'avgG'", net="avgG")


def test_bad_masks(tmp_path, files):
    masks = {f"{k}_mask": v for k, v in files["masks"].items()}
    name = "scaleLayers.0.1.module.weight_mask"
    wrong_shape = {**masks, name: torch.ones(8, 8, 1, 1)}
    refused(save(tmp_path / "shape.pth", wrong_shape), "has shape [8, 8, 1, 1]", weights=files["zoo"])
    half = {**masks, name: torch.full_like(masks[name], 0.5)}
    refused(save(tmp_path / "half.pth", half), "values other than 0 and 1", weights=files["zoo"])
    linear = {**masks, "formatLayer.module.weight_mask": torch.ones(128, 6)}
    refused(save(tmp_path / "linear.pth", linear), "unknown layer", weights=files["zoo"])
    sd = dict(files["pruned_sd"])
    sd[name] = torch.ones(3)
    refused(save(tmp_path / "pruned_shape.pth", checkpoint(sd)), "has shape [3]")
    refused(files["zoo"], "holds masks only", names="weights", weights=files["mask_only"])


def test_bad_weights(tmp_path, files):
    nan = dict(files["g"])
    nan["scaleLayers.1.0.module.weight"] = nan["scaleLayers.1.0.module.weight"].clone()
    nan["scaleLayers.1.0.module.weight"][0, 0, 0, 0] = float("nan")
    refused(save(tmp_path / "nan.pth", checkpoint(nan)), "NaN")
    refused(files["mask_only"], "NaN", names="weights", weights=save(tmp_path / "nan_init.pth", checkpoint(nan)))
    ints = {**files["g"], "formatLayer.module.bias": torch.zeros(128, dtype=torch.int64)}
    refused(save(tmp_path / "int.pth", checkpoint(ints)), "floating point expected")
    refused(save(tmp_path / "str.pth", checkpoint({**files["g"], "note": "hello"})), "not a tensor")


def test_net_and_overrides_outside_generator_files(tmp_path, files):
    from lipdeploy.testing import write_ticket_files

    dip = write_ticket_files(tmp_path)["torch-prune"]["path"]
    refused(dip, "not one", net="avgG")
    wrapped = save(tmp_path / "wrapped.pth", {"config": {"lr": 0.01}, "state_dict": torch.load(dip, weights_only=True)})
    assert load_ticket(wrapped).arch.kind == "dip"  # a config beside a DIP state dict is no GAN checkpoint
    refused(files["zoo"], "upsample_mode do not apply", upsample_mode="nearest")
    refused(files["zoo"], "net must be one of", names=None, net="netX")


def test_cli_passes_net_to_the_prior():
    seen = {}

    @click.command()
    @ticket_options()
    def cmd(prior):
        seen["prior"] = prior

    res = CliRunner().invoke(cmd, ["G.pth", "--net", "avgG", "--weights", "W.pth"])
    assert res.exit_code == 0, res.output
    assert seen["prior"].net == "avgG" and seen["prior"].weights == Path("W.pth")
    assert CliRunner().invoke(cmd, ["G.pth", "--net", "netD"]).exit_code == 2
