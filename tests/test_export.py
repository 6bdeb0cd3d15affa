"""ONNX export: graph checks, ONNX Runtime parity with the masked PyTorch network for every ticket format, sparse
storage (bit-exact, folded at load, small), embedded input, fp16 / int8 summaries, metadata, atomic writes."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.nn.utils import prune

from lipdeploy import InputError, load_ticket, make_input
from lipdeploy.export import export_onnx, manifest_path_for, ort_session
from lipdeploy.networks import DeepDecoderSpec, SkipSpec, conv_layers
from lipdeploy.testing import randomize_, tiny_skip, write_ticket_files
from lipdeploy.ticket import ticket_from_model

TOL = 1e-4


def _oracle(ticket, h, w, weights, bn="image", seed=0):
    x = make_input(ticket.arch, h, w, seed=seed)
    with torch.no_grad():
        return x.numpy(), ticket.build(weights, bn=bn)(x).numpy()


def _run(path, code):
    sess = ort_session(str(path))
    feeds = {} if code is None else {sess.get_inputs()[0].name: code}
    return sess.run(None, feeds)[0]


@pytest.fixture(scope="module")
def tickets(tmp_path_factory):
    """name -> (path, weights path or None, expected weights to export)."""
    folder = tmp_path_factory.mktemp("tickets")
    files = write_ticket_files(folder, amount=0.5)
    out = {name: (f["path"], f["weights"], "init") for name, f in files.items()}
    # a *fitted* network pruned with torch.nn.utils.prune (weight_orig + weight_mask), initial weights beside it
    spec = tiny_skip()
    torch.manual_seed(1)
    model = randomize_(spec.build(), 1)
    torch.save(model.state_dict(), folder / "fit_init.pt")
    prune.global_unstructured(
        [(c, "weight") for c in conv_layers(model).values()], pruning_method=prune.L1Unstructured, amount=0.6
    )
    with torch.no_grad():
        for c in conv_layers(model).values():
            c.weight_orig.add_(0.05 * torch.randn_like(c.weight_orig))  # "fitting" moved the weights
    torch.save(model.state_dict(), folder / "fitted_pruned.pt")
    out["torch-prune-fitted"] = (folder / "fitted_pruned.pt", folder / "fit_init.pt", "fitted")
    # deep decoder, prune-reparametrised state dict
    dd = DeepDecoderSpec(k=8, depth=2)
    torch.manual_seed(2)
    dmodel = randomize_(dd.build(), 2)
    prune.global_unstructured(
        [(c, "weight") for c in conv_layers(dmodel).values()], pruning_method=prune.L1Unstructured, amount=0.5
    )
    torch.save(dmodel.state_dict(), folder / "dd_pruned.pt")
    out["deep-decoder"] = (folder / "dd_pruned.pt", None, "init")
    return out


FORMATS = [
    "own-pt",
    "own-safetensors",
    "paper-masks",
    "torch-prune",
    "state-dict-zeros",
    "torch-prune-fitted",
    "deep-decoder",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_parity_every_format(tickets, fmt, tmp_path):
    path, weights, expect = tickets[fmt]
    ticket = load_ticket(path, weights=weights)
    out = tmp_path / "m.onnx"
    summary = export_onnx(ticket, out)
    assert summary.weights == expect
    assert summary.parity_max_abs <= TOL and summary.sparse_vs_dense_max_abs == 0.0
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["code"] and len(model.graph.output) == 1
    s = ticket.arch.stride
    for h, w in [(2 * s, 3 * s), (4 * s, 2 * s)]:  # dynamic height and width
        code, ref = _oracle(ticket, h, w, expect)
        got = _run(out, code)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("bn", ["image", "running"])
def test_bn_modes_and_sparse_bit_exact(tickets, bn, tmp_path):
    ticket = load_ticket(tickets["own-pt"][0])
    dense = export_onnx(ticket, tmp_path / "d.onnx", bn=bn, weights_format="dense")
    sparse = export_onnx(ticket, tmp_path / "s.onnx", bn=bn, weights_format="sparse")
    assert dense.parity_max_abs <= TOL and sparse.parity_max_abs <= TOL
    assert any(p["encoding"] != "dense" for p in sparse.packed)
    code, ref = _oracle(ticket, 64, 32, "init", bn=bn)
    a, b = _run(tmp_path / "d.onnx", code), _run(tmp_path / "s.onnx", code)
    assert np.array_equal(a, b)  # sparse fp32 storage is lossless
    assert np.abs(b - ref).max() <= TOL
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "s.onnx").graph.node)
    assert ("InstanceNormalization" in ops) == (bn == "image")


def test_sparse_unpacking_is_folded_at_load(tickets, tmp_path):
    ticket = load_ticket(tickets["own-pt"][0])
    export_onnx(ticket, tmp_path / "s.onnx")
    ort_session(str(tmp_path / "s.onnx"), optimized_path=str(tmp_path / "opt.onnx"))
    ops = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert not ops & {"BitShift", "CumSum", "ScatterElements", "Gather", "Mod"}


def test_ort_session_spinning_switch(tickets, tmp_path):
    """Round-robin benchmarks turn ORT's worker spinning off (idle sessions' spinning workers halved the running one's
    speed on 2 cores); the switch reaches the session, and the outputs do not depend on it."""
    ticket = load_ticket(tickets["own-pt"][0])
    export_onnx(ticket, tmp_path / "s.onnx")
    code, _ = _oracle(ticket, 32, 32, "init")
    outs = []
    for spin in (True, False):
        sess = ort_session(str(tmp_path / "s.onnx"), threads=2, spin=spin)
        opts = sess.get_session_options()
        key = "session.intra_op.allow_spinning"
        if spin:  # ORT's default: no entry at all
            with pytest.raises(RuntimeError, match="does not have configuration"):
                opts.get_session_config_entry(key)
        else:
            assert opts.get_session_config_entry(key) == "0"
        outs.append(sess.run(None, {sess.get_inputs()[0].name: code})[0])
    assert np.array_equal(*outs)


def test_embed_input(tickets, tmp_path):
    path, weights, expect = tickets["torch-prune-fitted"]
    ticket = load_ticket(path, weights=weights)
    out = tmp_path / "e.onnx"
    summary = export_onnx(ticket, out, embed_input=(32, 64), seed=3)
    model = onnx.load(out)
    assert len(model.graph.input) == 0
    _, ref = _oracle(ticket, 32, 64, "fitted", seed=3)
    assert np.abs(_run(out, None) - ref).max() <= TOL and summary.parity_size == (32, 64)
    contract = json.loads({p.key: p.value for p in model.metadata_props}["input_contract"])
    assert contract["embedded"] and contract["image_size"] == [32, 64] and contract["seed"] == 3


def test_fp16_and_int8_report_error(tickets, tmp_path):
    ticket = load_ticket(tickets["own-pt"][0])
    half = export_onnx(ticket, tmp_path / "h.onnx", dtype="fp16")
    assert 0 < half.parity_max_abs < 1e-2 and half.fp32_parity_max_abs <= TOL
    assert 40 < half.precision_psnr_db < float("inf")
    target = torch.rand(1, 3, 64, 96)
    q = export_onnx(ticket, tmp_path / "q.onnx", quantize="int8", test_size=(64, 96), target=target)
    assert q.parity_max_abs > 0 and np.isfinite(q.precision_psnr_db) and q.psnr_change_db is not None
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"))
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}


def test_size_ratio_90_percent(tmp_path):
    """~90%-sparse net (layer-wise magnitude pruning of the init): sparse fp32 <= 0.15x, fp16 <= 0.08x dense fp32."""
    spec = SkipSpec(in_channels=16, channels_down=(128,) * 2, channels_up=(128,) * 2, channels_skip=(4,) * 2)
    torch.manual_seed(0)
    model = spec.build()
    for conv in conv_layers(model).values():
        prune.l1_unstructured(conv, "weight", amount=0.9)
        prune.remove(conv, "weight")
    ticket = ticket_from_model(model, spec)
    dense = export_onnx(ticket, tmp_path / "d.onnx", weights_format="dense")
    s32 = export_onnx(ticket, tmp_path / "s.onnx")
    s16 = export_onnx(ticket, tmp_path / "h.onnx", dtype="fp16")
    size = os.path.getsize
    assert size(tmp_path / "d.onnx") == dense.file_bytes
    assert size(tmp_path / "s.onnx") <= 0.15 * dense.file_bytes
    assert size(tmp_path / "h.onnx") <= 0.08 * dense.file_bytes
    assert s32.size_ratio <= 0.15 and s16.size_ratio <= 0.08


def test_metadata_and_manifest(tickets, tmp_path):
    ticket = load_ticket(tickets["paper-masks"][0], weights=tickets["paper-masks"][1])
    out = tmp_path / "model.onnx"
    summary = export_onnx(ticket, out)
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    for key in ("lipdeploy_version", "architecture", "sparsity", "provenance", "batchnorm", "input_contract"):
        assert key in props
    assert json.loads(props["architecture"])["kind"] == "dip"
    assert json.loads(props["provenance"])["source_format"] == "paper-masks"
    manifest_path = manifest_path_for(out)
    assert manifest_path == tmp_path / "model.manifest.json" and Path(summary.manifest_path) == manifest_path
    manifest = json.loads(manifest_path.read_text())
    assert manifest["parity"]["max_abs"] <= TOL and manifest["stored_sparse"] and "removed" in manifest
    assert manifest["file_bytes"] == os.path.getsize(out)


def test_bad_input_and_atomic_write(tickets, tmp_path, monkeypatch):
    ticket = load_ticket(tickets["own-pt"][0])
    out = tmp_path / "m.onnx"

    def boom():
        raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected"):
        export_onnx(ticket, out, _before_write=boom)
    assert list(tmp_path.iterdir()) == []  # nothing, not even a temporary file
    with pytest.raises(InputError, match="multiples of 8"):
        export_onnx(ticket, out, embed_input=(50, 64))
    with pytest.raises(InputError, match="exclude"):
        export_onnx(ticket, out, dtype="fp16", quantize="int8")
    export_onnx(ticket, out)
    with pytest.raises(InputError, match="already exists"):
        export_onnx(ticket, out)
    export_onnx(ticket, out, force=True)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(InputError, match="not writable"):
        export_onnx(ticket, tmp_path / "other.onnx")
