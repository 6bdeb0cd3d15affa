"""Building: the compacted network from a traced graph and its plan (:func:`compact`).

:class:`Builder` holds what is being built (modules, program steps, the channels each value physically holds) and
the operations rules emit through (:meth:`Builder.module_step`, :meth:`Builder.weighted`, ...); each op's rule
(:mod:`~lipdeploy.compaction.rules`) decides what to emit.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..ticket import BatchNormMode, Ticket
from .graph import Node, consumers
from .layers import CompactLayer, LayerCompaction
from .modules import CompactNet, ConstMap, ConstPlanes, Step, reader_counts
from .plan import Plan, make_plan
from .rules import WeightRule, live, relative_ints, weighted_record


def input_of(arch: Any) -> tuple[int, int]:
    """(channels, rank) of the network input of ``arch``: a generator's latent vector, else a noise map."""
    if hasattr(arch, "latent_dim"):
        return int(arch.latent_dim), 2
    return int(arch.input_channels), 4


def model_input(model: nn.Module) -> tuple[int, int]:
    """(channels, rank) of a plain model's input, from its first Conv2d (a map) or Linear (a vector)."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ValueError("the model has no Conv2d or Linear layer")
    return (first.in_channels, 4) if isinstance(first, nn.Conv2d) else (first.in_features, 2)


def as_model(
    ticket_or_model: Ticket | nn.Module, weights: str, bn: str
) -> tuple[nn.Module, tuple[int, int], dict[str, torch.Tensor] | None, Any]:
    """(reference network, its input (channels, rank), masks by layer path or None (zeros are the mask), arch)."""
    if bn not in ("image", "running"):
        raise ValueError(f"bn must be 'image' or 'running', got {bn!r}")
    if isinstance(ticket_or_model, Ticket):
        t = ticket_or_model
        model = t.build(weights=weights, bn=bn)  # type: ignore[arg-type]
        masks = {name[: -len(".weight")]: m for name, m in t.masks.items()}
        return model, input_of(t.arch), masks, t.arch
    if isinstance(ticket_or_model, CompactNet):
        raise ValueError("already compacted")
    return ticket_or_model, model_input(ticket_or_model), None, None


class Builder:
    """The compacted network under construction, for one plan."""

    def __init__(self, plan: Plan, dtype: torch.dtype) -> None:
        self.plan = plan
        self.nodes, self.const, self.need, self.bn = plan.nodes, plan.const, plan.need, plan.bn
        self.readers = consumers(plan.nodes)
        self.dtype = dtype
        self.modules: dict[str, nn.Module] = {}
        self.steps: list[Step] = []
        self.layers: list[LayerCompaction] = []
        # kept channels of each node's tensor (input: all channels, so the input contract stays the same)
        self.kept: list[torch.Tensor] = []
        self.alias: dict[int, int] = {}  # node -> value id actually holding its tensor (folded BN aliases its conv)
        self.conv_step: dict[int, str] = {}  # node -> conv module key, for folding a following running BN
        self.conv_records: dict[str, tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def key(self, n: Node, kind: str) -> str:
        base = f"{kind}_{n.name.replace('.', '_')}" if n.name else kind
        k, i = base, 1
        while k in self.modules:
            k, i = f"{base}_{i}", i + 1
        return k

    def vid(self, i: int) -> int:
        return self.alias.get(i, i)

    def module_step(self, i: int, node: Node, kind: str, module: nn.Module) -> str:
        """``values[i] = module(values[node's input])``."""
        mk = self.key(node, kind)
        self.modules[mk] = module
        self.steps.append(Step(i, "module", mk, (self.vid(node.inputs[0]),)))
        return mk

    def multi_step(self, i: int, node: Node, kind: str, module: nn.Module, inputs: list[int]) -> None:
        """``values[i] = module(*values[inputs])`` (value ids)."""
        mk = self.key(node, kind)
        self.modules[mk] = module
        self.steps.append(Step(i, "sum", mk, tuple(inputs)))

    def const_module(self, values: torch.Tensor, node: Node) -> nn.Module:
        """Constant planes (or fixed maps, or constant features) at ``node``'s resolution."""
        if node.rank == 4 and node.size is None:
            down, up = relative_ints(node.scale)
            return ConstPlanes(values.to(self.dtype), down, up)
        return ConstMap(values.to(self.dtype), node.size if node.rank == 4 else None)

    def const_step(self, i: int, node: Node, values: torch.Tensor) -> None:
        """``values[i]`` = constants made from the network input's batch."""
        mk = self.key(node, "const")
        self.modules[mk] = self.const_module(values, node)
        self.steps.append(Step(i, "const", mk, ()))

    def fold_affine(self, i: int, s: int, scale: torch.Tensor, shift: torch.Tensor) -> bool:
        """Fold a per-channel affine into the conv producing node ``s`` when the affine is its only reader."""
        if s not in self.conv_step or len(self.readers[s]) != 1:
            return False
        c = self.modules[self.conv_step[s]]
        c.weight.mul_(scale.to(self.dtype).view(-1, 1, 1, 1))
        bias0 = c.bias.double() if c.bias is not None else torch.zeros(len(scale), dtype=torch.float64)
        if c.bias is None:
            c.bias = nn.Parameter(torch.zeros(len(scale), dtype=self.dtype))
        c.bias.copy_((bias0 * scale + shift).to(self.dtype))
        self.alias[i] = self.vid(s)
        return True

    def concat(self, i: int, node: Node) -> None:
        ins = tuple(self.vid(j) for j in node.inputs if len(self.kept[j]))
        if len(ins) == 1:
            self.alias[i] = ins[0]
        else:
            self.steps.append(Step(i, "cat", None, ins))

    def weighted(self, i: int, n: Node, rule: WeightRule) -> None:
        """A conv or linear layer: kept rows, present + materialised columns, constants folded into the bias."""
        m = n.module
        s = n.inputs[0]
        idx = self.kept[i]
        pat = self.plan.pattern[n.name]
        w_full = m.weight.detach().double() * pat
        stored_in = self.kept[s]  # channels present in the source tensor
        materialise = self.plan.materialise[i]
        mat = torch.nonzero(materialise).flatten()
        src_const = self.const[s]
        fold = ~live(src_const) & ~materialise
        dead = int((~live(self.const[i])).sum())
        unread = int((live(self.const[i]) & ~self.need[i]).sum())
        info = weighted_record(n.name, m, pat, dead, unread, len(mat))
        self.layers.append(info)
        if len(idx) == 0:
            info.removed_inputs = info.in_before
            return
        cols = torch.cat([stored_in, mat])
        w = w_full[idx][:, cols]
        b = m.bias.detach().double()[idx] if m.bias is not None else torch.zeros(len(idx), dtype=torch.float64)
        if bool(fold.any()):
            b = b + rule.kernels_sum(w_full[idx][:, fold]) @ src_const[fold]
        # input value: the source tensor, plus materialised constant planes
        pieces = [self.vid(s)] if len(stored_in) else []
        if len(mat):
            ck = self.key(n, "const")
            self.modules[ck] = self.const_module(src_const[mat], self.nodes[s])
            cid = -(len(self.steps) + 1) - 1000000
            self.steps.append(Step(cid, "const", ck, ()))
            pieces.append(cid)
        if len(pieces) == 2:
            cat_id = -(len(self.steps) + 1) - 2000000
            self.steps.append(Step(cat_id, "cat", None, tuple(pieces)))
            pieces = [cat_id]
        new = rule.make(m, len(cols), len(idx), m.bias is not None or bool(fold.any()), self.dtype)
        new.weight.copy_(w.to(self.dtype))
        if new.bias is not None:
            new.bias.copy_(b.to(self.dtype))
        mk = self.key(n, n.kind)
        self.modules[mk] = new
        self.steps.append(Step(i, "module", mk, (pieces[0],)))
        if n.kind == "conv":
            self.conv_records[mk] = (n.name, idx, cols, pat[idx][:, cols])
            self.conv_step[i] = mk
        info.in_after, info.out_after = len(cols), len(idx)
        info.removed_inputs = info.in_before - len(cols)
        nzk_after = rule.kernels(pat[idx][:, cols])  # cols are reference channel indices
        info.zero_kernels_after = int((~nzk_after).sum())
        info.nnz_after = int(pat[idx][:, cols].sum())

    def output(self) -> tuple[int, torch.Tensor | None]:
        """The output value: live channels computed, constant ones materialised, reference channel order restored.
        Returns (value id, permutation buffer or None)."""
        last = len(self.nodes) - 1
        out_const = self.const[last]
        out_id = self.vid(last)
        have = self.kept[last]
        cmask = ~live(out_const)
        if bool(cmask.any()):
            self.modules["const_output"] = self.const_module(out_const[cmask], self.nodes[last])
            cid = -3000000
            self.steps.append(Step(cid, "const", "const_output", ()))
            if not len(have):
                return cid, None
            cat_id = -3000001
            self.steps.append(Step(cat_id, "cat", None, (out_id, cid)))
            order, out_id = torch.cat([have, torch.nonzero(cmask).flatten()]), cat_id
        elif bool((have == torch.arange(len(have))).all()):
            return out_id, None
        else:
            order = have
        self.steps.append(Step(-3000002, "gather", "output_perm", (out_id,)))
        return -3000002, torch.argsort(order)


@torch.no_grad()
def build(model: nn.Module, inputs: tuple[int, int], bn: str, masks, arch) -> CompactNet:
    """The compacted network of ``model`` (input (channels, rank)) under ``masks``."""
    in_channels, rank = inputs
    plan = make_plan(model, in_channels, bn, masks, rank)
    b = Builder(plan, next(model.parameters()).dtype)
    for i, n in enumerate(plan.nodes):
        if n.kind == "input":
            b.kept.append(torch.arange(n.channels))
            continue
        # channels physically present: a conv computes the channels someone reads; per-channel ops process all the
        # channels of their source (a shared source may carry channels that only another consumer reads)
        b.kept.append(n.rule.kept(i, n, b))
        if len(b.kept[i]) or isinstance(n.rule, WeightRule):
            n.rule.build(i, n, b)
    out_id, perm = b.output()
    _activations_in_place(b.steps, b.modules)
    used = [int(c) for c in torch.nonzero(plan.need[0]).flatten()]
    # CompactLayers last: a following running-statistics BatchNorm folds into (and may add) the conv's parameters
    output_conv = next((n.name for n in reversed(plan.nodes) if n.kind == "conv"), None)
    convs = {
        mk: _compact_layer(mk, b.modules[mk], *rec, is_output_layer=rec[0] == output_conv)
        for mk, rec in b.conv_records.items()
    }
    net = CompactNet(b.steps, b.modules, out_id, in_channels, used, bn, b.layers, arch, convs)
    if perm is not None:
        net.register_buffer("output_perm", perm)
    return net.train(bn == "image")


def _compact_layer(
    key: str,
    conv: nn.Conv2d,
    reference: str,
    rows: torch.Tensor,
    cols: torch.Tensor,
    mask: torch.Tensor,
    is_output_layer: bool,
) -> CompactLayer:
    """The hand-off record of one compacted conv (its own parameters, not copies)."""
    return CompactLayer(
        key=key,
        reference=reference,
        kind="conv",
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size[0],
        stride=conv.stride[0],
        padding=(int(conv.padding[0]), int(conv.padding[1])),
        padding_mode=conv.padding_mode,
        weight=conv.weight,
        bias=conv.bias,
        mask=mask,
        rows=rows,
        cols=cols,
        is_output_layer=is_output_layer,
    )


def _activations_in_place(steps: list[Step], modules: dict[str, nn.Module]) -> None:
    """Let an activation overwrite its input when nothing else reads it, as the reference network's do.

    Out-of-place activations allocate a fresh full-resolution tensor per layer; on CPU the page faults of those
    allocations slowed the compacted paper network by about 30% (128x128, 1 thread: 203 ms vs 157 ms for the masked
    reference). The activations' inputs (normalisation, upsampling or conv outputs) are not needed by their backward.
    """
    uses = reader_counts(steps)
    for st in steps:
        m = modules.get(st.module) if st.kind == "module" else None
        if isinstance(m, (nn.LeakyReLU, nn.ReLU)) and uses.get(st.inputs[0], 0) == 1 and st.inputs[0] != 0:
            m.inplace = True


def compact(
    ticket_or_model: Ticket | nn.Module,
    weights: Literal["init", "fitted"] = "init",
    bn: BatchNormMode = "image",
) -> CompactNet:
    """The exactly compacted network: same output as the masked network (to float rounding), fewer channels.

    ``ticket_or_model``: a :class:`Ticket` (masked with its masks, ``weights`` picks init or fitted weights) or a
    network made of layers the rules table knows (:mod:`lipdeploy.compaction.rules`; containers walked, anything else
    traced with torch.fx) whose exact zeros are its mask. ``bn="image"``: DIP's per-image BatchNorm;
    ``bn="running"``: eval-mode BatchNorm with the running statistics. See the package docstring for the exactness
    rules. The result keeps the input contract (same input) and the dtype of the weights. A layer without a rule
    raises :class:`~lipdeploy.compaction.trace.UnsupportedLayer` (a ValueError) naming its path and class.
    """
    model, inputs, masks, arch = as_model(ticket_or_model, weights, bn)
    return build(model, inputs, bn, masks, arch)
