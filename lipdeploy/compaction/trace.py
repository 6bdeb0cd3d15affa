"""Tracing: a network as a flat, ordered list of :class:`~lipdeploy.compaction.graph.Node`, through the rules table.

Containers are walked: ``nn.Sequential`` child by child, DIP's ``Concat`` branch by branch (then a channel
concatenation with its centre crop). A module with a rule (:data:`~lipdeploy.compaction.rules.MODULE_RULES`) becomes
one node. Any other module is traced with ``torch.fx``, stopping at modules that have a rule and at containers; the
functions its ``forward`` calls need a rule too (:data:`~lipdeploy.compaction.rules.FUNCTION_RULES`), and values that
do not depend on the input (Python constants, buffers, arithmetic on them) are evaluated. Anything else is refused
with one line naming the module path and class.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..networks import Concat
from .graph import Node
from .rules import CONCAT_RULE, FUNCTION_RULES, module_rule

CONTAINERS = (nn.Sequential, Concat)


class UnsupportedLayer(ValueError):
    """A layer type (or a function in a traced forward) that the rules table has no rule for."""


class _Tracer(fx.Tracer):
    """Stops at modules with a rule, at containers and at every other ``torch.nn`` module (refused, by name)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            return False
        if _plain_sequential(m):
            return False
        return module_rule(m) is not None or isinstance(m, CONTAINERS) or type(m).__module__.startswith("torch.nn")


def trace(model: nn.Module, channels: int, rank: int) -> list[Node]:
    """``model`` as a topologically ordered op list; the input has ``channels`` channels and ``rank`` 2 (a vector
    [N, C]) or 4 (a map [N, C, H, W] at the resolution everything else is relative to)."""
    nodes = [Node("input", [], channels, "input", rank=rank)]
    _Walker(nodes).walk(model, 0, "")
    return nodes


def activation_bytes(model: nn.Module, channels: int, rank: int, batch: int, height: int = 1, width: int = 1) -> int:
    """Every op's output of ``model`` as float32 for ``batch`` inputs of ``height`` x ``width`` (a bound of one
    forward pass's activation memory, from the traced graph's shapes alone)."""
    nodes = trace(model, channels, rank)
    return 4 * batch * sum(n.channels * math.prod(n.output_hw(height, width)) for n in nodes)


def _plain_sequential(module: nn.Module) -> bool:
    """A Sequential that runs its children in order (a subclass with its own forward is traced instead)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


class _Walker:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes

    def add(self, node: Node, inputs: list[int]) -> int:
        node.inputs = inputs
        if node.channels == 0 and node.kind != "cat":  # function rules: channels and resolution of the first input
            src = self.nodes[inputs[0]]
            node.channels, node.scale, node.size, node.rank = src.channels, src.scale, src.size, src.rank
        self.nodes.append(node)
        return len(self.nodes) - 1

    def walk(self, module: nn.Module, src: int, prefix: str) -> int:
        name = prefix.rstrip(".")
        if _plain_sequential(module):
            for child_name, child in module.named_children():
                src = self.walk(child, src, f"{prefix}{child_name}.")
            return src
        if isinstance(module, Concat):
            if module.dim != 1:
                raise UnsupportedLayer(f"layer {name!r} (Concat): only channel concatenation (dim=1) is supported")
            outs = [self.walk(child, src, f"{prefix}{n}.") for n, child in module.named_children()]
            return self.concat(outs, name)
        if isinstance(module, nn.Identity):
            return src
        rule = module_rule(module)
        if rule is not None:
            try:
                node = rule.trace(module, name, self.nodes[src])
            except ValueError as exc:
                raise UnsupportedLayer(str(exc)) from None
            return self.add(node, [src])
        if type(module).__module__.startswith("torch.nn"):
            raise UnsupportedLayer(f"layer {name or '<root>'!r} ({type(module).__name__}): no compaction rule")
        return self.fx(module, src, prefix)

    def concat(self, outs: list[int], name: str) -> int:
        channels = sum(self.nodes[o].channels for o in outs)
        first = self.nodes[outs[0]]
        node = Node("cat", [], channels, name, None, first.scale, first.size, first.rank, rule=CONCAT_RULE)
        return self.add(node, outs)

    def fx(self, module: nn.Module, src: int, prefix: str) -> int:
        where = f"layer {prefix.rstrip('.') or '<root>'!r} ({type(module).__name__})"
        try:
            graph = _Tracer().trace(module)
        except Exception as exc:  # fx raises many types for untraceable Python (control flow on tensors, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedLayer(f"{where}: torch.fx cannot trace it ({first[:160]})") from None
        env: dict[fx.Node, Any] = {}
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedLayer(f"{where}: its forward takes {len(placeholders)} inputs; compaction needs one")
        out = None
        for n in graph.nodes:
            if n.op == "placeholder":
                env[n] = _Traced(src)
            elif n.op == "get_attr":
                env[n] = _attr(module, n.target)
            elif n.op == "call_module":
                env[n] = self.call_module(module, n, env, prefix)
            elif n.op in ("call_function", "call_method"):
                env[n] = self.call(n, env, prefix, where)
            elif n.op == "output":
                out = fx.node.map_arg(n.args[0], lambda a: env[a])
        if not isinstance(out, _Traced):
            raise UnsupportedLayer(f"{where}: its forward must return one tensor")
        return out.index

    def call_module(self, root: nn.Module, n: fx.Node, env: dict, prefix: str) -> Any:
        sub = root.get_submodule(n.target)
        args = fx.node.map_arg(n.args, lambda a: env[a])
        path = f"{prefix}{n.target}"
        if len(args) != 1 or n.kwargs or not isinstance(args[0], _Traced):
            if not any(isinstance(a, _Traced) for a in args):
                return sub(*args, **n.kwargs)  # a module applied to constants only: evaluate
            raise UnsupportedLayer(f"layer {path!r} ({type(sub).__name__}): called with more than one input")
        return _Traced(self.walk(sub, args[0].index, f"{path}."))

    def call(self, n: fx.Node, env: dict, prefix: str, where: str) -> Any:
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        traced = [a for a in _flat(args) + _flat(kwargs) if isinstance(a, _Traced)]
        if not traced:  # depends on constants only: evaluate it
            if n.op == "call_method":
                return getattr(args[0], n.target)(*args[1:], **kwargs)
            return n.target(*args, **kwargs)
        rule = FUNCTION_RULES.get(n.target) if n.op == "call_function" else None
        name = f"{prefix}{n.name}"
        if rule is None:
            what = n.target if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
            raise UnsupportedLayer(f"{_owner(n, prefix, where)}: no compaction rule for {n.op} {what!r}")
        values = {id(a): a for a in traced}
        try:
            node, inputs = (
                rule.from_call(name, args, kwargs, values)
                if rule is CONCAT_RULE
                else rule.from_call(name, args, values)
            )
        except ValueError as exc:
            raise UnsupportedLayer(f"{_owner(n, prefix, where)}: {exc}") from None
        if rule is CONCAT_RULE:
            return _Traced(self.concat([t.index for t in inputs], name))
        channels = {self.nodes[t.index].channels for t in inputs}
        if len(channels) != 1:
            problem = f"{name!r} combines tensors of {sorted(channels)} channels"
            raise UnsupportedLayer(f"{_owner(n, prefix, where)}: {problem}")
        return _Traced(self.add(node, [t.index for t in inputs]))


class _Traced:
    """A traced tensor: the index of the node computing it."""

    def __init__(self, index: int) -> None:
        self.index = index


def _flat(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    return [value]


def _attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, torch.Tensor) else obj


def _owner(n: fx.Node, prefix: str, where: str) -> str:
    """'layer PATH (Class)' of the innermost module whose forward made the fx node (``where``: the traced one)."""
    stack = n.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        return f"layer {prefix + path!r} ({getattr(cls, '__name__', cls)})"
    return where
