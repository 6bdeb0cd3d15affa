"""Planning: which channels are constant (and their values) and which live channels some consumer reads.

Constantness propagates forwards, readness backwards (see :mod:`lipdeploy.compaction` for why one pass of each reaches
the fixed point), each op by its rule (:mod:`~lipdeploy.compaction.rules`). The plan is pure data: building the
compacted modules is :mod:`lipdeploy.compaction.build`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .graph import Node
from .rules import WeightRule
from .trace import trace


@dataclass
class Plan:
    nodes: list[Node]
    bn: str
    pattern: dict[str, torch.Tensor]  # conv / linear name -> bool kept-weight pattern
    const: list[torch.Tensor]  # float64 [C], NaN where the channel is not constant
    need: list[torch.Tensor]  # bool [C]: live and read by someone
    materialise: dict[int, torch.Tensor]  # conv node -> bool [C_in]: constant inputs read as planes


def make_plan(
    model: nn.Module, in_channels: int, bn: str, masks: dict[str, torch.Tensor] | None, rank: int = 4
) -> Plan:
    """Trace ``model`` and plan its compaction; ``masks`` by layer path (None, or a layer missing: its zeros)."""
    nodes = trace(model, in_channels, rank)
    pattern: dict[str, torch.Tensor] = {}
    for n in nodes:
        if isinstance(n.rule, WeightRule):
            m = masks.get(n.name) if masks else None
            pattern[n.name] = (m != 0) if m is not None else (n.module.weight.detach() != 0)
    plan = Plan(nodes, bn, pattern, [], [torch.zeros(n.channels, dtype=torch.bool) for n in nodes], {})
    plan.const.append(torch.full((in_channels,), float("nan"), dtype=torch.float64))
    for i, n in enumerate(nodes[1:], start=1):
        plan.const.append(n.rule.constants(i, n, plan))
    last = len(nodes) - 1
    plan.need[last] = torch.isnan(plan.const[last])  # the output's live channels are always read
    for i in range(last, 0, -1):
        nodes[i].rule.needed(i, nodes[i], plan)
    return plan
