"""Genuinely sparse networks: compaction first, then each remaining conv on the sparse kernels where that is faster.

:func:`sparsify` compacts the network exactly (:func:`lipdeploy.compact`: removes what provably cannot matter), then
swaps each remaining ``[ReflectionPad2d] -> Conv2d`` for a :class:`lipdeploy.kernels.SparseConv2d` holding only the
masked weights (the reflection padding moves into the sparse conv, which reflects its indices instead of
materialising a padded copy). The result is trainable: ``SparseConv2d.values`` are the only conv weights, so a
fitting (Adam included) moves exactly the ticket's weights and never a pruned one.

``backend="auto"`` is the per-layer dispatcher: sparsity must never make a layer slower. On CPU it returns the
compacted dense network (PyTorch's dense conv beats a scalar sparse loop there). On CUDA each conv is timed at its
real input shape (from ``example_input``) for the ``workload`` ("fit": forward + backward; "forward"): cuDNN on the
compacted dense weight against the sparse kernels in each packing format x a few kernel configs
(``kernels.sparse_conv.candidate_configs``), through :func:`lipdeploy.kernels.choose_fastest`. A sparse candidate must
beat cuDNN by 5% to be kept. Verdicts and all candidates' times are cached in
``~/.cache/lipdeploy/backend_choice.json`` keyed by GPU name, layer shape, stride, padding, input size, mask
fingerprint and workload, so a network tunes once per GPU (seconds, plus Triton's one-off compiles).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from .compact import CompactNet, Step, compact
from .ticket import BatchNormMode, Ticket

if TYPE_CHECKING:
    from .kernels.dispatch import Timer

__all__ = ["sparsify", "sparse_layers"]

Backend = Literal["triton", "torch", "auto"]
Workload = Literal["fit", "forward"]


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
    format: str | None = None,
    workload: Workload = "fit",
) -> CompactNet:
    """Compact exactly, then run each conv on the sparse kernels (``backend`` "triton" or "torch") or per-layer fastest.

    ``ticket_or_module``: a :class:`Ticket`, a reference-layout network (its zeros are its mask), or an already
    compacted :class:`CompactNet` (copied, not modified). ``backend``: "triton" (the Triton kernels; CUDA, or CPU under
    ``TRITON_INTERPRET=1``), "torch" (the kernels' dense PyTorch reference: same module and parameters, for testing
    and CPU fitting), "auto" (see the module docstring; ``example_input`` gives the input size to time at on CUDA,
    default the paper's 256 x 256; the network must already be on the GPU or is moved there). ``format``: the sparse
    packing ("csr" unstructured, "kernel" whole-kernel granular); default "csr", and under "auto" both are tried.
    ``workload`` (for "auto"): what the layers are timed on, "fit" (forward + backward, for fitting the ticket) or
    "forward" (inference). Output equals the masked network's up to float rounding; gradients flow to the kept
    weights only.
    """
    if backend not in ("triton", "torch", "auto"):
        raise ValueError(f"backend must be 'triton', 'torch' or 'auto', got {backend!r}")
    if format not in (None, "csr", "kernel"):
        raise ValueError(f"format must be 'csr' or 'kernel', got {format!r}")
    if workload not in ("fit", "forward"):
        raise ValueError(f"workload must be 'fit' or 'forward', got {workload!r}")
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
        return _auto(net, example_input, (format,) if format else ("csr", "kernel"), workload)
    return _swap(net, backend, format or "csr", choose=None)


def _device(net: nn.Module) -> torch.device:
    """Where ``net`` lives (a compacted network whose output is provably constant may have no parameters)."""
    for t in (*net.parameters(), *net.buffers()):
        return t.device
    return torch.device("cpu")


# A chooser gets (conv step, dense conv, fused pad step or None, build) where build(format) returns the layer's
# SparseConv2d in that packing; it returns the module to run (a SparseConv2d) or None to keep the dense conv.
Chooser = Callable[[Step, nn.Conv2d, "Step | None", Callable[[str], nn.Module]], "nn.Module | None"]


def _swap(net: CompactNet, backend: str, format: str, choose: Chooser | None) -> CompactNet:
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

        def build(fmt: str, conv=conv, mask=mask, padding=padding, mode=mode) -> nn.Module:
            return SparseConv2d.from_dense(
                conv.weight.detach(),
                mask.to(conv.weight.device, conv.weight.dtype),
                conv.bias.detach() if conv.bias is not None else None,
                stride=conv.stride[0],
                padding=padding,
                padding_mode=mode,
                backend=backend,
                format=fmt,
            ).to(conv.weight.device)

        sparse = build(format) if choose is None else choose(st, conv, pad_step, build)
        if sparse is None:
            continue
        net.ops[st.module] = sparse
        steps[k] = Step(st.out, "module", st.module, (src,))
        if pad_step is not None:
            drop.add(id(pad_step))
            del net.ops[pad_step.module]
    net.steps = [st for st in steps if id(st) not in drop]
    return net


def _values_needing_grad(net: CompactNet) -> set[int]:
    """Values of ``net``'s program that depend on a trainable parameter (value 0, the fixed input, does not)."""
    out: set[int] = set()
    for st in net.steps:
        trainable = st.kind == "module" and any(p.requires_grad for p in net.ops[st.module].parameters())
        if trainable or any(i in out for i in st.inputs):
            out.add(st.out)
    return out


def _mask_digest(mask: torch.Tensor) -> str:
    """Short fingerprint of a sparsity pattern (two layers with equal nnz but different patterns tune separately)."""
    return hashlib.blake2b(mask.detach().bool().cpu().numpy().tobytes(), digest_size=6).hexdigest()


def _auto(
    net: CompactNet,
    example_input: torch.Tensor | None,
    formats: tuple[str, ...],
    workload: Workload,
    timer: Timer | None = None,
) -> CompactNet:
    """Per conv, the fastest of cuDNN (dense, compacted) and the sparse kernels in each of ``formats`` x a few kernel
    configs, timed at the layer's real input shape for ``workload`` ("forward", or "fit": forward + backward, the
    gradients a fitting step needs). ``timer``: see :func:`lipdeploy.kernels.choose_fastest` (tests pass one)."""
    from .kernels import choose_fastest
    from .kernels.sparse_conv import candidate_configs

    device = _device(net)
    if example_input is None:
        if net.arch is None or not hasattr(net.arch, "input_shape"):
            raise ValueError("backend='auto' on CUDA needs example_input for a network without an architecture spec")
        example_input = torch.rand(net.arch.input_shape(256, 256), device=device) * 0.1
    example_input = example_input.to(device)
    shapes = _layer_inputs(net, example_input)
    needs_grad = _values_needing_grad(net)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def padding_of(pad_step: Step | None, conv: nn.Conv2d) -> str:
        return f"r{net.ops[pad_step.module].padding[0]}" if pad_step is not None else str(conv.padding[0])

    def choose(st: Step, conv: nn.Conv2d, pad_step: Step | None, build) -> nn.Module | None:
        in_shape = shapes[pad_step.module] if pad_step is not None else shapes[st.module]
        src = pad_step.inputs[0] if pad_step is not None else st.inputs[0]
        fit = workload == "fit"
        x = torch.randn(in_shape, generator=gen).to(device).requires_grad_(fit and src in needs_grad)
        dense_ops = [net.ops[pad_step.module], conv] if pad_step is not None else [conv]

        def run_dense() -> torch.Tensor:
            y = x
            for op in dense_ops:
                y = op(y)
            return y

        modules = {fmt: build(fmt) for fmt in formats}
        configs = candidate_configs(int(in_shape[2] * in_shape[3]) // conv.stride[0] ** 2, device)
        runs: dict[str, Callable[[], torch.Tensor]] = {"dense": run_dense}
        picks: dict[str, tuple[nn.Module, object]] = {}
        for fmt, mod in modules.items():
            for cfg in configs:
                name = f"{fmt}:{cfg.tag}"
                picks[name] = (mod, cfg)
                runs[name] = lambda mod=mod, cfg=cfg: _with_config(mod, cfg, x)
        params = [p for m in (*dense_ops, *modules.values()) for p in m.parameters()]
        if fit:
            g = torch.randn(run_dense().shape, generator=gen).to(device)
            candidates = {n: _fwd_bwd(fn, g, [x, *params]) for n, fn in runs.items()}
        else:
            candidates = {n: torch.no_grad()(fn) for n, fn in runs.items()}
        cout, cin, kh, kw = conv.weight.shape
        key = (
            f"{cout}x{cin}x{kh}x{kw}-s{conv.stride[0]}-p{padding_of(pad_step, conv)}-{in_shape[2]}x{in_shape[3]}"
            f"-n{in_shape[0]}-{_mask_digest(net.conv_index[st.module][3])}-{conv.weight.dtype}-{workload}"
            f"-grad_in{int(x.requires_grad)}"
        )
        choice = choose_fastest(key, candidates, baseline="dense", timer=timer)
        if choice == "dense":
            return None
        mod, cfg = picks[choice]
        mod.config = cfg
        return mod

    return _swap(net, "triton", formats[0], choose)


def _with_config(mod: nn.Module, cfg, x: torch.Tensor) -> torch.Tensor:
    mod.config = cfg
    return mod(x)


def _fwd_bwd(fn: Callable[[], torch.Tensor], grad: torch.Tensor, leaves: list[torch.Tensor]):
    def run() -> None:
        for t in leaves:
            t.grad = None
        fn().backward(grad)

    return run


def sparse_layers(net: nn.Module) -> list[str]:
    """Names of the modules of ``net`` that run on the sparse kernels."""
    from .kernels import SparseConv2d

    return [name for name, m in net.named_modules() if isinstance(m, SparseConv2d)]
