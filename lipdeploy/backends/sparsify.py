"""Genuinely sparse networks: compaction first, then each remaining conv on the backend that runs it best.

:func:`sparsify` compacts the network exactly (:func:`lipdeploy.compact`: removes what provably cannot matter), then
replaces each remaining ``[ReflectionPad2d] -> Conv2d`` with the module a backend of ``lipdeploy.backends.BACKENDS``
builds from the layer's :class:`~lipdeploy.compaction.CompactLayer`. The sparse backends hold only the masked weights
(a :class:`lipdeploy.kernels.SparseConv2d`; the reflection padding moves into it, which reflects its indices instead of
materialising a padded copy). The result is trainable: ``SparseConv2d.values`` are the only conv weights, so a fitting
(Adam included) moves exactly the ticket's weights and never a pruned one.

``backend="auto"`` is the per-layer dispatcher: sparsity must never make a layer slower. On CPU it returns the
compacted dense network (PyTorch's dense conv beats a scalar sparse loop there). On CUDA each conv is timed at its
real input shape (from ``example_input``) for the ``workload`` ("fit": forward + backward; "forward"): the ``"dense"``
backend (cuDNN on the compacted dense weight) against every registered backend that is ``dispatched`` and
``supports`` the layer, each in each of its kernel configs (``Backend.configs``; the block-sparse "triton-bsr*"
backends offer none on a layer without an empty block, where they cannot win), through
:func:`lipdeploy.kernels.choose_fastest`. A candidate must beat dense by 5% to be kept. Verdicts and all candidates'
times are cached in ``~/.cache/lipdeploy/backend_choice.json`` keyed by GPU name, layer shape, stride, padding, input
size, mask fingerprint, the layer's sparsity pattern and workload, so a network tunes once per GPU (seconds, plus
Triton's one-off compiles).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from ..compaction import CompactLayer, CompactNet, Step, compact
from ..kernels import BsrConv2d, SparseConv2d, Timer, choose_fastest
from ..ticket import BatchNormMode, Ticket
from .registry import AUTO, BACKENDS, Backend, resolve
from .sparse_kernels import SparseKernelBackend, packing_formats

__all__ = ["sparsify", "sparse_layers"]

Workload = Literal["fit", "forward"]
BASELINE = "dense"
"""The backend every dispatched candidate must beat (by ``choose_fastest``'s margin)."""


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
    backend: str = AUTO,
    weights: Literal["init", "fitted"] = "init",
    bn: BatchNormMode = "image",
    example_input: torch.Tensor | None = None,
    format: str | None = None,
    workload: Workload = "fit",
) -> CompactNet:
    """Compact exactly, then run every conv on ``backend`` (a name of ``BACKENDS``) or per layer the fastest ("auto").

    ``ticket_or_module``: a :class:`Ticket`, a reference-layout network (its zeros are its mask), or an already
    compacted :class:`CompactNet` (copied, not modified). ``backend``: one of ``sorted(BACKENDS)``: "triton-csr" /
    "triton-kernel" (the Triton kernels; CUDA, or CPU under ``TRITON_INTERPRET=1``), "reference" (the kernels' dense
    PyTorch reference: same module and parameters, for testing and CPU fitting), "dense" (the compacted network as
    it is), "triton-bsr" / "triton-bsr32x16" (the block-sparse tensor-core kernels, 16x16 / 32x16 channel blocks per
    tap: exact for any mask, fast for block tickets; TF32 products on CUDA, as PyTorch's dense conv); or "auto" (see
    the module docstring; ``example_input`` gives the input size to time at on CUDA, default the paper's 256 x 256;
    the network must already be on the GPU or is moved there). ``format``: the sparse packing ("csr" unstructured,
    "kernel" whole-kernel granular) of "reference", or the only packing "auto" tries. ``workload`` (for "auto"): what
    the layers are timed on, "fit" (forward + backward, for fitting the ticket) or "forward" (inference). Output
    equals the masked network's up to float rounding; gradients flow to the kept weights only.
    """
    name = resolve(backend)
    if format is not None and format not in packing_formats():
        raise ValueError(f"format must be one of {', '.join(repr(f) for f in packing_formats())}, got {format!r}")
    if workload not in ("fit", "forward"):
        raise ValueError(f"workload must be 'fit' or 'forward', got {workload!r}")
    chosen = BACKENDS.get(name)
    if format is not None and chosen is not None:
        if not isinstance(chosen, SparseKernelBackend):
            raise ValueError(f"format applies to the sparse kernel backends, not to {name!r}")
        if chosen.implementation == "triton" and chosen.format != format:
            raise ValueError(f"format {format!r} contradicts backend {name!r}")
        chosen = chosen.with_format(format)
    if isinstance(ticket_or_module, CompactNet):
        net = copy.deepcopy(ticket_or_module)
    else:
        net = compact(ticket_or_module, weights=weights, bn=bn)
    if name == AUTO:
        device = _device(net)
        if not torch.cuda.is_available():
            return net  # CPU: the compacted dense network is the fast path
        if device.type != "cuda":
            net = net.cuda()
        return _dispatch(net, example_input, _dispatched(format), workload)
    if name == BASELINE:
        return net  # compaction already runs every conv on PyTorch's dense conv

    def every_layer(st: Step, layer: CompactLayer, pad: int | None, pad_step: Step | None):
        if not chosen.supports(layer):
            raise ValueError(f"backend {name!r} does not support layer {layer.reference!r} ({layer.key})")
        return _build_on(chosen, layer, pad)

    return _swap(net, every_layer)


def _dispatched(format: str | None = None) -> list[Backend]:
    """The backends "auto" times against dense, in name order (restricted to one sparse packing if given)."""
    return [
        b
        for _, b in sorted(BACKENDS.items())
        if b.dispatched and (format is None or getattr(b, "format", None) == format)
    ]


def _device(net: nn.Module) -> torch.device:
    """Where ``net`` lives (a compacted network whose output is provably constant may have no parameters)."""
    for t in (*net.parameters(), *net.buffers()):
        return t.device
    return torch.device("cpu")


def _build_on(backend: Backend, layer: CompactLayer, pad: int | None) -> tuple[nn.Module, bool]:
    """(module of ``backend`` for ``layer``, whether it took over the reflection pad of amount ``pad`` in front)."""
    if pad is not None and backend.fuses_reflection_pad:
        return backend.build(layer, padding=pad, padding_mode="reflect"), True
    return backend.build(layer), False


# A chooser gets (conv step, its layer, the amount and step of a fusable reflection pad in front, or None twice) and
# returns (module to run, whether it fused the pad) or None to keep the compacted dense conv.
Chooser = Callable[[Step, CompactLayer, "int | None", "Step | None"], "tuple[nn.Module, bool] | None"]


def _swap(net: CompactNet, choose: Chooser) -> CompactNet:
    """Replace each conv of ``net`` (in place) by what ``choose`` returns; a fused reflection pad leaves the program."""
    fuse = _fusable_pads(net)
    steps = list(net.steps)
    drop: set[int] = set()
    for k, st in enumerate(net.steps):
        if st.kind != "module" or not isinstance(net.ops[st.module], nn.Conv2d):
            continue
        pad, pad_step = fuse.get(k, (None, None))
        picked = choose(st, net.convs[st.module], pad, pad_step)
        if picked is None:
            continue
        module, fused = picked
        net.ops[st.module] = module
        if fused:
            steps[k] = Step(st.out, "module", st.module, (pad_step.inputs[0],))
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


def _dispatch(
    net: CompactNet,
    example_input: torch.Tensor | None,
    backends: Sequence[Backend],
    workload: Workload,
    timer: Timer | None = None,
) -> CompactNet:
    """Per conv, the fastest of "dense" (cuDNN on the compacted weight) and each of ``backends`` that supports the layer
    x its kernel configs, timed at the layer's real input shape for ``workload`` ("forward", or "fit": forward +
    backward, the gradients a fitting step needs). ``timer``: see :func:`lipdeploy.kernels.choose_fastest` (tests pass
    one)."""
    device = _device(net)
    if example_input is None:
        if net.arch is None or not hasattr(net.arch, "input_shape"):
            raise ValueError("backend='auto' on CUDA needs example_input for a network without an architecture spec")
        example_input = torch.rand(net.arch.input_shape(256, 256), device=device) * 0.1
    example_input = example_input.to(device)
    shapes = _layer_inputs(net, example_input)
    needs_grad = _values_needing_grad(net)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def choose(st: Step, layer: CompactLayer, pad: int | None, pad_step: Step | None):
        conv: nn.Conv2d = net.ops[st.module]
        pad_op = net.ops[pad_step.module] if pad_step is not None else None
        in_shape = shapes[pad_step.module] if pad_step is not None else shapes[st.module]
        src = pad_step.inputs[0] if pad_step is not None else st.inputs[0]
        fit = workload == "fit"
        x = torch.randn(in_shape, generator=gen).to(device).requires_grad_(fit and src in needs_grad)
        dense_ops = [pad_op, conv] if pad_op is not None else [conv]

        def run_ops(ops: Sequence[nn.Module]) -> torch.Tensor:
            y = x
            for op in ops:
                y = op(y)
            return y

        def run_dense() -> torch.Tensor:
            return run_ops(dense_ops)

        out_pixels = int(in_shape[2] * in_shape[3]) // layer.stride**2
        # a backend with no config for this layer (e.g. bsr on a mask without an empty block) is not even built
        configs = {b.name: list(b.configs(layer, out_pixels, device)) for b in backends if b.supports(layer, device)}
        built = {b.name: (b, *_build_on(b, layer, pad)) for b in backends if configs.get(b.name)}
        runs: dict[str, Callable[[], torch.Tensor]] = {BASELINE: run_dense}
        picks: dict[str, tuple[nn.Module, bool, object]] = {}
        for b, mod, fused in built.values():
            ops = [mod] if fused or pad_op is None else [pad_op, mod]
            for cfg in configs[b.name]:
                name = b.candidate(cfg)
                picks[name] = (mod, fused, cfg)
                runs[name] = lambda mod=mod, ops=ops, cfg=cfg: _with_config(mod, cfg, lambda: run_ops(ops))
        params = [p for m in (*dense_ops, *(mod for _, mod, _ in built.values())) for p in m.parameters()]
        if fit:
            g = torch.randn(run_dense().shape, generator=gen).to(device)
            candidates = {n: _fwd_bwd(fn, g, [x, *params]) for n, fn in runs.items()}
        else:
            candidates = {n: torch.no_grad()(fn) for n, fn in runs.items()}
        cout, cin, kh, kw = layer.weight.shape
        key = (
            f"{cout}x{cin}x{kh}x{kw}-s{layer.stride}-p{f'r{pad}' if pad_op is not None else layer.padding[0]}"
            f"-{in_shape[2]}x{in_shape[3]}-n{in_shape[0]}-{_mask_digest(layer.mask)}-{layer.pattern}"
            f"-{layer.weight.dtype}-{workload}-grad_in{int(x.requires_grad)}"
        )
        choice = choose_fastest(key, candidates, baseline=BASELINE, timer=timer)
        if choice == BASELINE:
            return None
        mod, fused, cfg = picks[choice]
        if cfg is not None:
            mod.config = cfg
        return mod, fused

    return _swap(net, choose)


def _with_config(mod: nn.Module, cfg, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    if cfg is not None:
        mod.config = cfg
    return run()


def _fwd_bwd(fn: Callable[[], torch.Tensor], grad: torch.Tensor, leaves: list[torch.Tensor]):
    def run() -> None:
        for t in leaves:
            t.grad = None
        fn().backward(grad)

    return run


def sparse_layers(net: nn.Module) -> list[str]:
    """Names of the modules of ``net`` that run on the sparse kernels (``SparseConv2d`` and the block-sparse
    ``BsrConv2d``)."""
    return [name for name, m in net.named_modules() if isinstance(m, (SparseConv2d, BsrConv2d))]
