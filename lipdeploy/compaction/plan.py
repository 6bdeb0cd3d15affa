"""Planning: which channels are constant (and their values) and which live channels some consumer reads.

Constantness propagates forwards, readness backwards (see :mod:`lipdeploy.compaction` for why one pass of each reaches
the fixed point). The plan is pure data: building the compacted modules is :mod:`lipdeploy.compaction.build`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .graph import _graph, _Node


def _bn_running_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm, float64."""
    c = bn.num_features
    g = bn.weight.detach().double() if bn.weight is not None else torch.ones(c, dtype=torch.float64)
    b = bn.bias.detach().double() if bn.bias is not None else torch.zeros(c, dtype=torch.float64)
    if bn.track_running_stats and bn.running_mean is not None:
        s = g / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        return s, b - bn.running_mean.detach().double() * s
    return g, b  # no running statistics: eval-mode BatchNorm uses batch statistics; handled as "image" by the caller


def _image_bn(bn: nn.BatchNorm2d, mode: str) -> bool:
    return mode == "image" or not bn.track_running_stats or bn.running_mean is None


def _act_fn(module: nn.Module):
    if isinstance(module, nn.LeakyReLU):
        return lambda v: F.leaky_relu(v, module.negative_slope)
    return torch.relu


def _foldable(conv: nn.Conv2d) -> bool:
    """A constant input plane folds exactly into the bias when the conv adds no zero padding."""
    return (conv.padding[0] == 0 and conv.padding[1] == 0) or conv.padding_mode == "reflect"


@dataclass
class _Plan:
    nodes: list[_Node]
    const: list[torch.Tensor]  # float64 [C], NaN where the channel is not constant
    need: list[torch.Tensor]  # bool [C]: live and read by someone
    masks: dict[str, torch.Tensor]  # conv name -> bool kept-weight pattern
    materialise: dict[int, torch.Tensor]  # conv node -> bool [C_in]: constant inputs read as planes


def _plan(model: nn.Module, in_channels: int, bn: str, masks: dict[str, torch.Tensor] | None) -> _Plan:
    nodes = _graph(model, in_channels)
    pattern: dict[str, torch.Tensor] = {}
    for n in nodes:
        if n.kind == "conv":
            m = masks.get(n.name) if masks else None
            pattern[n.name] = (m != 0) if m is not None else (n.module.weight.detach() != 0)
    nan = float("nan")
    const: list[torch.Tensor] = []
    materialise: dict[int, torch.Tensor] = {}
    # ---- forward: constant channels and their values (float64)
    for i, n in enumerate(nodes):
        if n.kind == "input":
            const.append(torch.full((n.channels,), nan, dtype=torch.float64))
            continue
        src = const[n.inputs[0]]
        if n.kind == "conv":
            conv = n.module
            nzk = pattern[n.name].any(dim=(2, 3))  # [Cout, Cin] kernel has a kept weight
            is_const = ~torch.isnan(src)
            mat = is_const & (src != 0) & (not _foldable(conv)) & nzk.any(0)
            materialise[i] = mat
            live_in = ~is_const | mat
            row_live = (nzk & live_in.unsqueeze(0)).any(1)
            w = conv.weight.detach().double() * pattern[n.name]
            fold = torch.where(is_const & ~mat, src, torch.zeros_like(src))
            val = w.sum(dim=(2, 3)) @ fold
            if conv.bias is not None:
                val = val + conv.bias.detach().double()
            const.append(torch.where(row_live, torch.full_like(val, nan), val))
        elif n.kind == "bn":
            m = n.module
            if _image_bn(m, bn):
                beta = m.bias.detach().double() if m.bias is not None else torch.zeros(m.num_features).double()
                const.append(torch.where(torch.isnan(src), src, beta))
            else:
                s, t = _bn_running_affine(m)
                const.append(src * s + t)
        elif n.kind == "act":
            const.append(_act_fn(n.module)(src))
        elif n.kind == "sigmoid":
            const.append(torch.sigmoid(src))
        elif n.kind in ("up", "pad"):
            const.append(src.clone())
        elif n.kind == "cat":
            const.append(torch.cat([const[j] for j in n.inputs]))
        else:  # pragma: no cover
            raise AssertionError(n.kind)
    # ---- backward: which live channels are read (the output's live channels always are)
    need = [torch.zeros(n.channels, dtype=torch.bool) for n in nodes]
    last = len(nodes) - 1
    need[last] = torch.isnan(const[last])
    for i in range(last, 0, -1):
        n = nodes[i]
        nd = need[i]
        if n.kind == "conv":
            nzk = pattern[n.name].any(dim=(2, 3))
            read = nzk[nd].any(0) if bool(nd.any()) else torch.zeros(nzk.shape[1], dtype=torch.bool)
            s = n.inputs[0]
            need[s] |= read & torch.isnan(const[s])
            materialise[i] = materialise[i] & read
        elif n.kind == "cat":
            off = 0
            for j in n.inputs:
                c = nodes[j].channels
                need[j] |= nd[off : off + c]
                off += c
        else:
            need[n.inputs[0]] |= nd
    return _Plan(nodes, const, need, pattern, materialise)
