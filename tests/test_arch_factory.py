"""``--arch-factory module:callable``: a network from the user's own code (imported by name, never unpickled) with a
state dict: inspect, export (exact in ONNX Runtime) and compaction through the rules table."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lipdeploy.cli import cli
from lipdeploy.compaction import compact
from lipdeploy.errors import InputError
from lipdeploy.export.onnx_export import ort_session
from lipdeploy.factory import factory_ticket

USER_CODE = '''
from torch import nn


class Up(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, x):
        return self.up(self.act(self.norm(self.conv(x))))


class Decoder(nn.Module):
    """Noise [1, 6, H/4, W/4] -> image [1, 3, H, W]."""

    def __init__(self):
        super().__init__()
        self.a = Up(6, 8)
        self.b = Up(8, 8)
        self.skip = nn.Conv2d(8, 8, 1)
        self.out = nn.Sequential(nn.Conv2d(8, 3, 1), nn.Sigmoid())

    def forward(self, x):
        h = self.b(self.a(x))
        return self.out(h + self.skip(h) * 0.5)


def make_decoder():
    return Decoder()


def make_bad():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    name = f"user_nets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def _state_file(tmp_path, module: str, sparsity: float = 0.6):
    """The user's network with random weights, pruned by zeros (the mask), one dead channel, as a state dict file."""
    sys.path.insert(0, str(tmp_path))
    try:
        model = __import__(module).make_decoder()
    finally:
        sys.path.remove(str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if name.endswith("bias") else 1.0))
            if p.dim() == 4:
                p.mul_((torch.rand(p.shape, generator=gen) >= sparsity).float())
        model.b.conv.weight[:3] = 0  # three dead channels: constants through BN, ReLU, upsampling and the sum
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)
    return path, model


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_factory_ticket_compacts_exactly(tmp_path, user_module):
    path, model = _state_file(tmp_path, user_module)
    ticket = factory_ticket(path, f"{user_module}:make_decoder")
    assert ticket.arch.stride == 4 and ticket.arch.input_shape(32, 32) == (1, 6, 8, 8)
    assert 0.3 < ticket.density < 0.5
    net = compact(ticket)
    x = torch.rand(1, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ticket.build().double()(x.double())
        got = net(x)
    assert (got.double() - want).abs().max() <= 1e-5
    assert {la.name: la.out_after for la in net.layers}["b.conv"] == 5


def test_inspect_and_export_from_the_command_line(tmp_path, user_module):
    path, _ = _state_file(tmp_path, user_module)
    factory = f"{user_module}:make_decoder"
    r = run_cli("inspect", path, "--arch-factory", factory, "--size", "32x32", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    layers = {row["name"]: row for row in report["layers"]}
    assert layers["b.conv"]["zero_outputs"] == 3 and layers["out.0"]["output_hw"] == [32, 32]
    out = tmp_path / "u.onnx"
    r = run_cli("export", path, "--arch-factory", factory, "-o", out, "--test-size", "32x32", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["parity_max_abs"] <= 1e-4
    sess = ort_session(out)
    x = torch.rand(1, 6, 16, 12, generator=torch.Generator().manual_seed(2))  # another size: H and W are dynamic
    ticket = factory_ticket(path, factory)
    with torch.no_grad():
        want = ticket.build()(x).numpy()
    got = sess.run(None, {"code": x.numpy()})[0]
    assert got.shape == (1, 3, 64, 48) and np.abs(got - want).max() <= 1e-4
    r = run_cli("run", out, "--size", "32x32", "-o", tmp_path / "u.png", "--repeat", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["size"] == [32, 32]  # the code is 8x8: the contract's code_downsample


@pytest.mark.parametrize(
    "factory, words",
    [
        ("no_colon", "module:callable"),
        ("no_such_module_xyz:make", "cannot import"),
        ("{mod}:missing", "has no 'missing'"),
        ("{mod}:make_bad", "GroupNorm"),
    ],
)
def test_bad_factories_are_one_line_errors(tmp_path, user_module, factory, words):
    path, _ = _state_file(tmp_path, user_module)
    r = run_cli("inspect", path, "--arch-factory", factory.format(mod=user_module))
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.output


def test_a_state_dict_of_another_network_is_refused(tmp_path, user_module):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2, 2, 1, 1)}, path)
    with pytest.raises(InputError, match="does not fit"):
        factory_ticket(path, f"{user_module}:make_decoder")
