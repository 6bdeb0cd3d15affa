"""Generators from the command line: inspect G.pth, export G.pth | TICKET to ONNX (latent in, image out, dynamic
batch, exact in ONNX Runtime against the masked generator)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from lipdeploy.cli import cli
from lipdeploy.export.onnx_export import export_onnx, ort_session
from lipdeploy.generator import PGANSpec, make_latent
from lipdeploy.masks import prunable_shapes
from lipdeploy.ticket import ticket_from_model

SPEC = PGANSpec(latent_dim=8, depth_scale0=8, depth_other_scales=(8, 4), alpha=0.3)
CONFIG = {"latentVectorDim": 8, "depthScale0": 8, "depthOtherScales": [8, 4], "alpha": 0.3}


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = SPEC.build().state_dict()
    return {k: torch.randn(v.shape, generator=gen) * (0.3 if k.endswith("bias") else 1.0) for k, v in sd.items()}


def _ticket(sparsity: float, seed: int = 0):
    model = SPEC.build()
    model.load_state_dict(_state(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    masks = {k: (torch.rand(s, generator=gen) >= sparsity).float() for k, s in prunable_shapes(model).items()}
    masks["scaleLayers.1.0.module.weight"][:2] = 0  # two dead channels before a pixel norm
    return ticket_from_model(model, SPEC, masks)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "G.pth"
    torch.save({"config": CONFIG, "netG": _state(0), "avgG": _state(1)}, path)
    return path


@pytest.mark.parametrize("weights_format, dtype", [("sparse", "fp32"), ("dense", "fp32"), ("sparse", "fp16")])
def test_generator_onnx_is_exact_with_a_dynamic_batch(tmp_path, weights_format, dtype):
    ticket = _ticket(0.6)
    path = tmp_path / "g.onnx"
    summary = export_onnx(ticket, path, weights_format=weights_format, dtype=dtype)
    model = onnx.load(path)
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert inp.name == "latent" and dims == ["batch", 8] and out == ["batch", 3, 16, 16]
    contract = json.loads({p.key: p.value for p in model.metadata_props}["input_contract"])
    assert contract["output"]["range"] == [-1, 1]
    sess = ort_session(path)
    tolerance = 1e-4 if dtype == "fp32" else 5e-2
    for batch in (1, 5):
        z = make_latent(SPEC, batch, seed=batch)
        with torch.no_grad():
            want = ticket.build().double()(z.double()).numpy()
        got = sess.run(None, {"latent": z.numpy()})[0]
        assert got.shape == (batch, 3, 16, 16)
        assert np.abs(got - want).max() <= tolerance
    assert summary.parity_max_abs <= tolerance and summary.parity_size == (16, 16)
    assert "latent" in summary.model_input


def test_export_inspect_from_the_command_line(checkpoint, tmp_path):
    out = tmp_path / "g.onnx"
    r = run_cli("export", checkpoint, "-o", out, "--net", "avgG", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["parity_max_abs"] <= 1e-4 and out.exists()
    r = run_cli("inspect", checkpoint, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["size"] == [16, 16]
    layers = {row["name"]: row for row in report["layers"]}
    assert layers["scaleLayers.1.1.module"]["output_hw"] == [16, 16]
    assert (
        layers["toRGBLayers.0.module"]["label"].endswith("(unused)") and layers["toRGBLayers.1.module"]["flops_dense"]
    )
    assert "formatLayer.module" in {row["name"] for row in report["compaction"]["layers"]}


def test_generator_options_refused_in_one_line(checkpoint, tmp_path):
    for args, words in [
        (("inspect", checkpoint, "--size", "32x32"), "16x16"),
        (("export", checkpoint, "-o", tmp_path / "e.onnx", "--embed-input", "16x16"), "latent"),
        (("export", checkpoint, "-o", tmp_path / "t.onnx", "--test-size", "32x32"), "16x16"),
    ]:
        r = run_cli(*args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.output
