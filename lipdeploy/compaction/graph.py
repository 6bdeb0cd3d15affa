"""Graph tracing: a reference-layout network (nested ``Sequential`` / ``Concat``) as a flat, ordered op list.

Every op of the list records its kind, inputs, channel count, reference path and resolution relative to the network
input (``scale``), which is all that planning and building need to know about the network's structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from ..networks import Concat


@dataclass
class _Node:
    kind: str  # input, conv, bn, act, up, pad, sigmoid, cat
    inputs: list[int]
    channels: int
    name: str
    module: nn.Module | None = None
    scale: Fraction = Fraction(1)


def _graph(model: nn.Module, in_channels: int) -> list[_Node]:
    """Flatten a reference-layout network (nested Sequential / Concat) into a topologically ordered op list."""
    nodes = [_Node("input", [], in_channels, "input")]

    def add(kind: str, src: list[int], channels: int, name: str, module: nn.Module | None, scale: Fraction) -> int:
        nodes.append(_Node(kind, src, channels, name, module, scale))
        return len(nodes) - 1

    def walk(module: nn.Module, src: int, prefix: str) -> int:
        n = nodes[src]
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                src = walk(child, src, f"{prefix}{name}.")
            return src
        if isinstance(module, Concat):
            outs = [walk(child, src, f"{prefix}{name}.") for name, child in module.named_children()]
            if module.dim != 1:
                raise ValueError("compaction supports channel concatenation only (Concat(dim=1))")
            return add(
                "cat", outs, sum(nodes[o].channels for o in outs), prefix.rstrip("."), None, nodes[outs[0]].scale
            )
        name = prefix.rstrip(".")
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.dilation != (1, 1) or module.in_channels != n.channels:
                raise ValueError(f"conv {name!r}: only groups=1, dilation=1 convs that match their input are supported")
            if module.padding_mode not in ("zeros", "reflect"):
                raise ValueError(f"conv {name!r}: padding_mode {module.padding_mode!r} not supported")
            s = module.stride[0]
            if module.kernel_size[0] != module.kernel_size[1] or module.stride[0] != module.stride[1]:
                raise ValueError(f"conv {name!r}: only square kernels and strides are supported")
            scale = n.scale / s  # 'same'-padded strided convs on sizes that are multiples of the stride
            return add("conv", [src], module.out_channels, name, module, scale)
        if isinstance(module, nn.BatchNorm2d):
            return add("bn", [src], n.channels, name, module, n.scale)
        if isinstance(module, (nn.LeakyReLU, nn.ReLU)):
            return add("act", [src], n.channels, name, module, n.scale)
        if isinstance(module, nn.Sigmoid):
            return add("sigmoid", [src], n.channels, name, module, n.scale)
        if isinstance(module, nn.Upsample):
            sf = module.scale_factor
            if sf is None or (isinstance(sf, tuple) and len(set(sf)) != 1):
                raise ValueError(f"upsample {name!r}: needs one scale_factor")
            sf = sf[0] if isinstance(sf, tuple) else sf
            if float(sf) != int(sf):
                raise ValueError(f"upsample {name!r}: integer scale factors only")
            return add("up", [src], n.channels, name, module, n.scale * int(sf))
        if isinstance(module, nn.ReflectionPad2d):
            return add("pad", [src], n.channels, name, module, n.scale)
        if isinstance(module, nn.Identity):
            return src
        raise ValueError(f"compaction does not know module {name!r} ({type(module).__name__})")

    walk(model, 0, "")
    return nodes


def _consumers(nodes: list[_Node]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for s in n.inputs:
            out[s].append(i)
    return out
