"""Genuinely sparse networks: compaction first, then each remaining conv on the sparse kernels where that is faster.

:func:`sparsify` compacts the network exactly (:func:`lipdeploy.compact`: removes what provably cannot matter), then
swaps each remaining ``[ReflectionPad2d] -> Conv2d`` for a :class:`lipdeploy.kernels.SparseConv2d` holding only the
masked weights (the reflection padding moves into the sparse conv, which reflects its indices instead of
materialising a padded copy). The result is trainable: ``SparseConv2d.values`` are the only conv weights, so a
fitting (Adam included) moves exactly the ticket's weights and never a pruned one.

``backend="auto"`` is the per-layer dispatcher: sparsity must never make a layer slower. On CPU it returns the
compacted dense network (PyTorch's dense conv beats a scalar sparse loop there). On CUDA each conv is timed both ways
(sparse kernel vs cuDNN on the compacted dense weight, at the input size of ``example_input``) through
:func:`lipdeploy.kernels.choose_backend`, which caches the verdict in ``~/.cache/lipdeploy/backend_choice.json``
keyed by GPU name, layer shape, stride, input size and nnz; the faster one is kept.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from .compact import CompactNet, Step, compact
from .ticket import BatchNormMode, Ticket

__all__ = ["sparsify", "sparse_layers"]

Backend = Literal["triton", "torch", "auto"]


def _fusable_pads(net: CompactNet) -> dict[int, tuple[int, Step]]:
    """conv step index -> (pad amount, pad step) for reflection pads read only by that conv."""
    uses: dict[int, int] = {}
    for st in net.steps:
        for i in st.inputs:
            uses[i] = uses.get(i, 0) + 1
    by_out = {st.out: st for st in net.steps}
    out: dict[int, tuple[int, Step]] = {}
    for k, st in enumerate(net.steps):
        if st.kind != "module" or not isinstance(net.ops[st.module], nn.Conv2d):
            continue
        src = by_out.get(st.inputs[0])
        if src is None or src.kind != "module" or uses.get(src.out, 0) != 1:
            continue
        pad = net.ops[src.module]
        if isinstance(pad, nn.ReflectionPad2d) and len(set(pad.padding)) == 1:
            out[k] = (int(pad.padding[0]), src)
    return out


def _layer_inputs(net: CompactNet, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Input shape of every conv module of ``net`` for input ``x`` (one forward pass with hooks)."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, key=key: shapes.__setitem__(key, tuple(args[0].shape)))
        for key, m in net.ops.items()
        if isinstance(m, nn.Conv2d) or isinstance(m, nn.ReflectionPad2d)
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def sparsify(
    ticket_or_module: Ticket | nn.Module,
    backend: Backend = "auto",
    weights: Literal["init", "fitted"] = "init",
    bn: BatchNormMode = "image",
    example_input: torch.Tensor | None = None,
    format: str = "csr",
) -> CompactNet:
    """Compact exactly, then run each conv on the sparse kernels (``backend`` "triton" or "torch") or per-layer fastest.

    ``ticket_or_module``: a :class:`Ticket`, a reference-layout network (its zeros are its mask), or an already
    compacted :class:`CompactNet` (copied, not modified). ``backend``: "triton" (the Triton kernels; CUDA, or CPU under
    ``TRITON_INTERPRET=1``), "torch" (the kernels' dense PyTorch reference: same module and parameters, for testing
    and CPU fitting), "auto" (see the module docstring; ``example_input`` gives the input size to time at on CUDA,
    default the paper's 256 x 256; the network must already be on the GPU or is moved there). ``format``: the sparse
    packing ("csr" unstructured, "kernel" whole-kernel granular). Output equals the masked network's up to float
    rounding; gradients flow to the kept weights only.
    """
    if backend not in ("triton", "torch", "auto"):
        raise ValueError(f"backend must be 'triton', 'torch' or 'auto', got {backend!r}")
    if isinstance(ticket_or_module, CompactNet):
        net = copy.deepcopy(ticket_or_module)
    else:
        net = compact(ticket_or_module, weights=weights, bn=bn)
    if backend == "auto":
        device = _device(net)
        if not torch.cuda.is_available():
            return net  # CPU: the compacted dense network is the fast path
        if device.type != "cuda":
            net = net.cuda()
        return _auto(net, example_input, format)
    return _swap(net, backend, format, choose=None)


def _device(net: nn.Module) -> torch.device:
    """Where ``net`` lives (a compacted network whose output is provably constant may have no parameters)."""
    for t in (*net.parameters(), *net.buffers()):
        return t.device
    return torch.device("cpu")


def _swap(net: CompactNet, backend: str, format: str, choose) -> CompactNet:
    from .kernels import SparseConv2d

    fuse = _fusable_pads(net)
    steps = list(net.steps)
    drop: set[int] = set()
    for k, st in enumerate(net.steps):
        if st.kind != "module" or not isinstance(net.ops[st.module], nn.Conv2d):
            continue
        conv: nn.Conv2d = net.ops[st.module]
        mask = net.conv_index[st.module][3]
        if k in fuse:
            pad, pad_step = fuse[k]
            padding, mode, src = pad, "reflect", pad_step.inputs[0]
        else:
            pad_step = None
            padding, mode, src = conv.padding[0], "zeros" if conv.padding_mode == "zeros" else "reflect", st.inputs[0]
        sparse = SparseConv2d.from_dense(
            conv.weight.detach(),
            mask.to(conv.weight.device, conv.weight.dtype),
            conv.bias.detach() if conv.bias is not None else None,
            stride=conv.stride[0],
            padding=padding,
            padding_mode=mode,
            backend=backend,
            format=format,
        ).to(conv.weight.device)
        if choose is not None and choose(st, conv, pad_step, sparse) == "dense":
            continue
        net.ops[st.module] = sparse
        steps[k] = Step(st.out, "module", st.module, (src,))
        if pad_step is not None:
            drop.add(id(pad_step))
            del net.ops[pad_step.module]
    net.steps = [st for st in steps if id(st) not in drop]
    return net


def _auto(net: CompactNet, example_input: torch.Tensor | None, format: str) -> CompactNet:  # pragma: no cover - CUDA
    from .kernels import choose_backend

    device = _device(net)
    if example_input is None:
        if net.arch is None or not hasattr(net.arch, "input_shape"):
            raise ValueError("backend='auto' on CUDA needs example_input for a network without an architecture spec")
        example_input = torch.rand(net.arch.input_shape(256, 256), device=device) * 0.1
    example_input = example_input.to(device)
    shapes = _layer_inputs(net, example_input)

    def choose(st: Step, conv: nn.Conv2d, pad_step: Step | None, sparse) -> str:
        in_shape = shapes[pad_step.module] if pad_step is not None else shapes[st.module]
        x = torch.randn(in_shape, device=device)
        dense_ops = [net.ops[pad_step.module], conv] if pad_step is not None else [conv]

        def run_dense():
            y = x
            for op in dense_ops:
                y = op(y)
            return y

        cout, cin, kh, kw = conv.weight.shape
        key = (
            f"{cout}x{cin}x{kh}x{kw}-s{conv.stride[0]}-{in_shape[2]}x{in_shape[3]}-n{in_shape[0]}"
            f"-nnz{sparse.nnz}-{format}-{conv.weight.dtype}"
        )
        with torch.no_grad():
            return choose_backend(key, lambda: sparse(x), run_dense)

    return _swap(net, "triton", format, choose)


def sparse_layers(net: nn.Module) -> list[str]:
    """Names of the modules of ``net`` that run on the sparse kernels."""
    from .kernels import SparseConv2d

    return [name for name, m in net.named_modules() if isinstance(m, SparseConv2d)]
