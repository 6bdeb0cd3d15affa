"""The traced network: a flat, topologically ordered list of :class:`Node` (one per op), with channel counts and
resolutions.

A node's tensor is a vector ``[N, C]`` (``rank`` 2, e.g. a latent code or a linear layer's output) or a map
``[N, C, H, W]`` (``rank`` 4). A map's resolution is either relative to the network input (``scale``: the output of a
stride-2 conv on an image-sized input is at 1/2) or absolute (``size``: after a vector was viewed as a 4x4 map, as in a
generator). Tracing (:mod:`~lipdeploy.compaction.trace`) creates the nodes through the rules table
(:mod:`~lipdeploy.compaction.rules`); planning and building read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from .rules import Rule


@dataclass
class Node:
    """One op of the traced network.

    ``kind``: the rule's kind ("input", "conv", "linear", "bn", "act", ...); ``inputs``: indices of the nodes it reads;
    ``channels``: its output channels (features of a vector); ``name``: the reference module path ("1.1.4.1",
    "scaleLayers.0.0.module") or, for a function of a traced forward, its graph name; ``module``: the reference module
    (None for functions and concatenations); ``params``: what the rule needs beyond the module (a constant factor, the
    signs of a sum, a view's shape).
    """

    kind: str
    inputs: list[int]
    channels: int
    name: str
    module: nn.Module | None = None
    scale: Fraction | None = Fraction(1)
    size: tuple[int, int] | None = None
    rank: int = 4
    rule: Rule | None = field(default=None, repr=False)
    params: dict[str, Any] = field(default_factory=dict)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """This op's output H x W when the network input is ``height`` x ``width`` ((1, 1) for a vector)."""
        if self.rank == 2:
            return 1, 1
        if self.size is not None:
            return self.size
        return math.ceil(height * self.scale), math.ceil(width * self.scale)


def consumers(nodes: list[Node]) -> list[list[int]]:
    """For each node, the nodes that read it."""
    out: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for s in n.inputs:
            out[s].append(i)
    return out
