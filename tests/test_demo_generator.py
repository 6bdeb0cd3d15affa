"""The bundled demo generator: made deterministically by lipdeploy.demo_generator, loadable, usable from the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lipdeploy.bundled import bundled_generator_path
from lipdeploy.cli import cli
from lipdeploy.demo_generator import D_SPEC, SPEC, build, checkpoint_bytes
from lipdeploy.discriminator import Discriminator
from lipdeploy.faces import LFW_FACES, TRAIN_FACES, lfw_faces, training_images
from lipdeploy.generator_prior import load_generator


@pytest.fixture(autouse=True)
def one_thread():
    """The demo generator is reproducible on one thread (and tiny networks gain nothing from more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_build_is_deterministic_and_a_zoo_checkpoint():
    a, b = build(glo_steps=3, critic_steps=2, log=False), build(glo_steps=3, critic_steps=2, log=False)
    assert set(a) == {"config", "netG", "netD", "avgG"}
    for net in ("netG", "netD"):
        assert a[net].keys() == b[net].keys() and all(torch.equal(a[net][k], b[net][k]) for k in a[net])
    assert a["config"]["depthOtherScales"] == list(SPEC.depth_other_scales) and a["config"]["miniBatchStdDev"]
    Discriminator(D_SPEC).load_state_dict(a["netD"])  # netD is the zoo's DNet for that generator
    assert checkpoint_bytes(a) == checkpoint_bytes(b)  # the file's bytes too, not only its tensors


def test_faces_splits_and_scale():
    train, test = lfw_faces(16, "train"), lfw_faces(16, "test")
    assert train.shape == (TRAIN_FACES, 3, 16, 16) and test.shape == (LFW_FACES - TRAIN_FACES, 3, 16, 16)
    assert -1 <= float(train.min()) and float(train.max()) <= 1 and torch.equal(train[:, 0], train[:, 2])
    assert torch.equal(training_images("skimage:lfw_faces", 16)[TRAIN_FACES:], test)


bundled = pytest.mark.skipif(not bundled_generator_path().is_file(), reason="the demo generator is not built")


@bundled
def test_bundled_generator_loads_and_is_small():
    path = bundled_generator_path()
    assert path.stat().st_size < 2 * 2**20
    g = load_generator(path)
    assert g.arch == SPEC and g.density == 1.0
    content = torch.load(path, weights_only=True)
    assert content["config"]["lipdeployDemo"]["by"] == "python -m lipdeploy.demo_generator"


@bundled
def test_example_generator_from_the_cli(tmp_path):
    out = tmp_path / "cs.png"
    r = CliRunner().invoke(
        cli,
        ["restore", "skimage:astronaut", "--task", "cs", "--example-generator", "--simulate", "--measurements", "200",
         "--iters", "5", "-o", str(out), "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(out.with_suffix(".json").read_text())["prior"]["generator"] == "example_generator.pth"


@bundled
def test_find_example_generator_trains_on_its_faces(tmp_path):
    r = CliRunner().invoke(
        cli, ["find", "--example-generator", "--rounds", "1", "--epochs", "1", "--batch", "40", "-o",
              str(tmp_path / "t"), "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "t" / "imp.json").read_text())["settings"]
    assert settings["data"] == "skimage:lfw_faces:train" and settings["data_images"] == 80
    assert settings["discriminator"] == "checkpoint"
