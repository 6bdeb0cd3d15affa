"""Issue 26: untrusted ONNX graphs in ``run``. Only the exporter's operators run; every tensor's shape is inferred at
the requested size and checked against the image limits and the memory budget before ONNX Runtime sees the model;
ONNX Runtime runs in a child process stopped after ``--timeout``."""

from __future__ import annotations

import onnx
import pytest
from cli_helpers import one_line_error, run
from onnx import TensorProto, helper

from lipdeploy.cli.run import EXPORTER_OPS, check_graph, read_model
from lipdeploy.export import export_onnx
from lipdeploy.networks import DeepDecoderSpec
from lipdeploy.testing import random_mask_ticket, tiny_skip
from lipdeploy.ticket import ticket_from_model

F = TensorProto.FLOAT


def save(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


IMAGE = helper.make_tensor_value_info("image", F, [1, 3, "h", "w"])


def test_exporter_ops_cover_every_export_form(tmp_path):
    """The allow-list is the exporter's vocabulary: every form `lipdeploy export` writes runs."""
    skip = random_mask_ticket(tiny_skip(), 0.5, seed=0)
    dd_arch = DeepDecoderSpec(k=8, depth=2)
    dd = ticket_from_model(dd_arch.build(), dd_arch)
    forms = [{}, {"weights_format": "dense"}, {"dtype": "fp16"}, {"quantize": "int8"}, {"embed_input": (16, 16)},
             {"bn": "running"}, {"opset": 21}]  # fmt: skip
    seen = set()
    for i, kw in enumerate(forms):
        for name, ticket in (("skip", skip), ("dd", dd)):
            path = tmp_path / f"{name}{i}.onnx"
            export_onnx(ticket, path, test_size=(16, 16), **kw)
            seen |= {n.op_type for n in onnx.load(str(path)).graph.node}
    assert seen <= EXPORTER_OPS, seen - EXPORTER_OPS
    r = run("run", tmp_path / "skip2.onnx", "--size", "16x16", "--repeat", "1", "-o", tmp_path / "o.png")
    assert r.exit_code == 0, r.output


def test_constant_of_shape_bomb_refused(tmp_path):
    shape = helper.make_tensor("s", TensorProto.INT64, [4], [1, 3, 10000, 10000])
    value = helper.make_tensor("v", F, [1], [0.5])
    model = save(tmp_path / "c.onnx", [helper.make_node("ConstantOfShape", ["s"], ["image"], value=value)], [],
                 [IMAGE], [shape])  # fmt: skip
    assert model.stat().st_size < 300
    one_line_error(run("run", model, "-o", tmp_path / "o.png"), "10000x10000 is too large")
    assert not (tmp_path / "o.png").exists()


def test_constant_of_shape_intermediate_bomb_refused_by_memory(tmp_path):
    """A huge zero buffer sliced down to a small image: the sum of the inferred tensors exceeds the budget."""
    shape = helper.make_tensor("s", TensorProto.INT64, [4], [1, 4096, 4096, 4096])
    ints = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("st", 0), ("en", 3), ("ax", 1))]
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["zeros"], value=helper.make_tensor("v", F, [1], [0.0])),
             helper.make_node("Slice", ["zeros", "st", "en", "ax"], ["image"])]  # fmt: skip
    model = save(tmp_path / "c.onnx", nodes, [], [IMAGE], [shape, *ints])
    one_line_error(run("run", model, "-o", tmp_path / "o.png"), "GiB of memory is available")


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand", "Tile"])
def test_data_dependent_sizes_refused(tmp_path, op):
    """The size comes from the noise code itself: it cannot be known before running, so the graph is refused."""
    x = helper.make_tensor_value_info("code", F, [1, 3, "h", "w"])
    cast = helper.make_node("Cast", ["code"], ["n"], to=TensorProto.INT64)
    inputs = {"ConstantOfShape": ["n"], "Expand": ["code", "n"], "Tile": ["code", "n"]}[op]
    model = save(tmp_path / "d.onnx", [cast, helper.make_node(op, inputs, ["image"])], [x], [IMAGE])
    r = run("run", model, "--size", "16x16", "-o", tmp_path / "o.png")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o.png").exists()


def test_loop_refused(tmp_path):
    x = helper.make_tensor_value_info("code", F, [1, 3, "h", "w"])
    vi = helper.make_tensor_value_info
    body_in = [vi("i", TensorProto.INT64, []), vi("cond", TensorProto.BOOL, []), vi("v", F, None)]
    body_out = [vi("cond_out", TensorProto.BOOL, []), vi("v_out", F, None)]
    nodes = [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["v"], ["v_out"])]
    body = helper.make_graph(nodes, "body", body_in, body_out)
    n = helper.make_tensor("n", TensorProto.INT64, [], [10**12])
    c = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    loop = helper.make_node("Loop", ["n", "c", "code"], ["image"], body=body)
    model = save(tmp_path / "l.onnx", [loop], [x], [IMAGE], [n, c])
    one_line_error(run("run", model, "--size", "16x16", "-o", tmp_path / "o.png"), "operator Loop")


@pytest.mark.parametrize("op", ["Expand", "Tile", "Range", "RandomNormal", "NonZero", "If", "Scan", "Loop"])
def test_other_generating_ops_refused(tmp_path, op):
    x = helper.make_tensor_value_info("code", F, [1, 3, "h", "w"])
    model = save(tmp_path / "g.onnx", [helper.make_node(op, ["code"], ["image"])], [x], [IMAGE])
    one_line_error(run("run", model, "--size", "16x16", "-o", tmp_path / "o.png"), f"operator {op}")


def test_custom_domain_refused(tmp_path):
    x = helper.make_tensor_value_info("code", F, [1, 3, "h", "w"])
    node = helper.make_node("Relu", ["code"], ["image"], domain="com.evil")
    graph = helper.make_graph([node], "g", [x], [IMAGE])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    onnx.save(model, tmp_path / "d.onnx")
    one_line_error(run("run", tmp_path / "d.onnx", "--size", "16x16", "-o", tmp_path / "o.png"), "com.evil::Relu")


def _wide(path, channels=4096):
    x = helper.make_tensor_value_info("code", F, [1, channels, "h", "w"])
    ints = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("st", 0), ("en", 3), ("ax", 1))]
    return save(path, [helper.make_node("Slice", ["code", "st", "en", "ax"], ["image"])], [x], [IMAGE], ints)


def test_wide_input_refused_by_memory_before_allocation(tmp_path, monkeypatch):
    model = _wide(tmp_path / "w.onnx")
    monkeypatch.setattr("lipdeploy.limits.available_memory_bytes", lambda: 8 * 2**30)
    one_line_error(run("run", model, "--size", "4096x4096", "-o", tmp_path / "o.png"), "GiB of memory is available")
    assert not (tmp_path / "o.png").exists()


def test_resize_bomb_refused_by_image_limit(tmp_path):
    x = helper.make_tensor_value_info("code", F, [1, 3, "h", "w"])
    scales = helper.make_tensor("sc", F, [4], [1, 1, 1000, 1000])
    model = save(tmp_path / "r.onnx", [helper.make_node("Resize", ["code", "", "sc"], ["image"])], [x], [IMAGE],
                 [scales])  # fmt: skip
    one_line_error(run("run", model, "--size", "64x64", "-o", tmp_path / "o.png"), "64000x64000 is too large")


def test_unknown_shape_refused(tmp_path):
    """A shape computed from data (Reshape to a shape that is itself an input) cannot be checked: refused."""
    x = helper.make_tensor_value_info("code", F, [1, 3, "h", "w"])
    shape_of = helper.make_node("Cast", ["code"], ["as_int"], to=TensorProto.INT64)
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    nodes = [shape_of, helper.make_node("Reshape", ["as_int", "flat"], ["v"]),
             helper.make_node("Reshape", ["code", "v"], ["image"])]  # fmt: skip
    model = save(tmp_path / "u.onnx", nodes, [x], [IMAGE], [flat])
    one_line_error(run("run", model, "--size", "16x16", "-o", tmp_path / "o.png"), "cannot be known before running")


def test_timeout_stops_onnxruntime(tmp_path):
    ticket = random_mask_ticket(tiny_skip(), 0.5, seed=0)
    export_onnx(ticket, tmp_path / "m.onnx", test_size=(16, 16))
    r = run("run", tmp_path / "m.onnx", "--size", "16x16", "--timeout", "0.001", "-o", tmp_path / "o.png")
    one_line_error(r, "did not finish within --timeout")
    assert not (tmp_path / "o.png").exists()


def test_default_timeout_grows_with_the_model(tmp_path):
    ticket = random_mask_ticket(tiny_skip(), 0.5, seed=0)
    export_onnx(ticket, tmp_path / "m.onnx", test_size=(16, 16))
    model = read_model(tmp_path / "m.onnx")
    code = [1, ticket.arch.input_channels]
    _, small = check_graph(tmp_path / "m.onnx", model, [*code, 16, 16], repeat=1)
    _, large = check_graph(tmp_path / "m.onnx", model, [*code, 512, 512], repeat=1)
    assert 60 <= small < large < 3600
