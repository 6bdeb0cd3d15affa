"""Shrink an exported graph without changing what it computes.

The TorchScript exporter lowers each reflection pad into a chain of ~10 small shape-computing nodes (ConstantOfShape,
Concat, Reshape, Slice, Transpose, Cast) whose inputs are all constant, and gives every node and tensor a long
path-derived name. For the paper network that is ~85 KB of graph around 8.8 MB of weights: negligible dense, but about
a seventh of a 90%-sparse fp16 file. :func:`fold_small_constants` evaluates such constant chains once (with ONNX's
reference evaluator) and :func:`shorten_names` renames intermediate tensors; the computation is untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MAX_FOLD_ELEMENTS = 4096  # fold only small results: never materialise activations or weights here
_NEVER_FOLD = {"Conv", "ConvTranspose", "RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike"}


def _eval_node(node: onnx.NodeProto, inputs: list[np.ndarray], opset: int) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator  # 0.1-0.4 s on top of onnx: only when a node is folded

    names = [f"i{k}" for k in range(len(inputs))]
    mapping = dict(zip(node.input, names, strict=True))
    n2 = onnx.NodeProto()
    n2.CopyFrom(node)
    del n2.input[:]
    n2.input.extend(mapping.get(i, "") if i else "" for i in node.input)
    graph = helper.make_graph(
        [n2],
        "fold",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, inputs, strict=True)
        ],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        return list(ReferenceEvaluator(model).run(None, dict(zip(names, inputs, strict=True))))
    except Exception:
        return None


def fold_small_constants(model: onnx.ModelProto) -> int:
    """Replace nodes whose inputs are all constant and whose outputs are small by initializers; returns the count."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    known: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    big = {name for name, arr in known.items() if arr.size > MAX_FOLD_ELEMENTS}
    keep: list[onnx.NodeProto] = []
    folded = 0
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        ins = [i for i in node.input if i]
        if (
            node.op_type not in _NEVER_FOLD
            and node.domain in ("", "ai.onnx")
            and all(i in known and i not in big for i in ins)
        ):
            outs = (
                _eval_node(node, [known[i] for i in node.input if i], opset)
                if ins or node.op_type == "Constant"
                else None
            )
            if outs is not None and all(np.asarray(o).size <= MAX_FOLD_ELEMENTS for o in outs):
                for name, arr in zip(node.output, outs, strict=True):
                    arr = np.asarray(arr)
                    known[name] = arr
                    new_inits.append(numpy_helper.from_array(arr, name))
                folded += 1
                continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    remove_unused(model)
    return folded


def remove_unused(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        alive = [n for n in graph.node if any(o in used for o in n.output)]
        if len(alive) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(alive)
    used = {i for n in graph.node for i in n.input} | outputs
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def shorten_names(model: onnx.ModelProto) -> None:
    """Rename intermediate tensors to t0, t1, ... and clear node names (graph inputs, outputs, initializers kept)."""
    graph = model.graph
    fixed = {i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer}
    mapping: dict[str, str] = {}
    for node in graph.node:
        for k, out in enumerate(node.output):
            if out and out not in fixed:
                mapping[out] = f"t{len(mapping)}"
                node.output[k] = mapping[out]
        for k, inp in enumerate(node.input):
            if inp in mapping:
                node.input[k] = mapping[inp]
        node.name = ""
    for vi in graph.value_info:
        if vi.name in mapping:
            vi.name = mapping[vi.name]
