"""The :class:`Pattern` interface (how a sparsity pattern structures a mask) and the pruning step all patterns share.

A pattern says what its pruning *unit* is by viewing a weight (or mask) of shape ``[O, I, kh, kw]`` as
``[units, positions]``: a unit is kept or removed as a whole. Everything else is generic and lives here: IMP's
scores (mean |w| per unit, so units of different sizes compete fairly), the random baseline's scores, the
shape check, random and magnitude masks, and :func:`prune`, which removes a fraction of the kept weights by unit.

The core names storage formats but never imports the code that implements them (``lipdeploy.kernels``,
``lipdeploy.export``): a pattern's :attr:`Pattern.kernel_format` is the ``format`` string the kernels' packer takes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import torch

from ..errors import InputError
from ..masks import Mask, Masks

Scope = Literal["global", "layer"]

POSITION_CODES: tuple[str, ...] = ("bitmap", "kernel-bitmap", "gaps2", "gaps4", "gaps8")
"""The ONNX sparse-storage position codes (see ``lipdeploy.export.sparse_pack``): each suits any mask, and the export
picks the smallest per layer, so every built-in pattern allows all of them."""


class Pattern:
    """One sparsity pattern: subclass it, set the class attributes, implement :meth:`units` (and :meth:`fold` when
    :meth:`units` is not a plain reshape), and register an instance with ``lipdeploy.patterns.register_pattern``.

    ``is_output_layer``: the network's image-producing convolution (by default the last prunable layer). Patterns
    whose units would delete a whole output channel of it (a colour) use smaller units there.
    """

    name: str = ""
    description: str = ""  # one line, for listings and help
    unit: str = "unit"  # what one unit is called in messages ("kernel", "output channel")
    rank: int = 0  # how coarse the units are: detect() prefers the highest-ranked pattern a mask fits
    kernel_format: str = "csr"  # the sparse-kernel packing format that suits the pattern's masks
    position_codes: tuple[str, ...] = POSITION_CODES  # ONNX position codes its masks may be stored with
    score_name: str = "L1 magnitude"  # what :meth:`scores` ranks by (for provenance)

    # ------------------------------------------------------------------------------------------- what a unit is

    def units(self, t: torch.Tensor, layer_name: str, is_output_layer: bool) -> torch.Tensor:
        """``t`` (a weight or mask ``[O, I, kh, kw]``) as ``[units, positions]``."""
        raise NotImplementedError

    def fold(self, units: torch.Tensor, shape: torch.Size, layer_name: str, is_output_layer: bool) -> torch.Tensor:
        """Inverse of :meth:`units`: a ``[units, positions]`` tensor back to the weight's ``shape`` (contiguous)."""
        return units.reshape(shape).contiguous()

    # ------------------------------------------------------------------------------------------- scores

    def scores(self, weight_units: torch.Tensor, mask_units: torch.Tensor) -> torch.Tensor:
        """IMP's score per unit: the mean |w| over the unit's positions (pruned positions count as zero), i.e. the L1
        norm per weight, so global pruning compares 1x1 and 3x3 kernels, and channels of different fan-in, fairly
        (a raw norm would empty the small-fan-in layers first). ``weight_units`` are already masked."""
        return weight_units.abs().sum(1) / mask_units.shape[1]

    def min_kept_units(self, n_units: int, layer_name: str, is_output_layer: bool, density: float) -> int:
        """How many of a layer's ``n_units`` units (alive or not) a pruning step must leave, ``density`` being the
        whole network's kept fraction of weights after the step: the best-scoring ones are protected from
        :func:`prune` (never more than the layer still has). One by default, so no layer is ever emptied; a pattern
        may ask for a minimum width (see ``channel``)."""
        return 1

    def settings(self) -> dict[str, object]:
        """Pattern parameters that IMP records in a run's settings and provenance (a run resumes only with equal
        settings): none by default."""
        return {}

    def random_scores(self, n_units: int, generator: torch.Generator | None) -> torch.Tensor:
        """The random baseline's score per unit: one uniform draw each from ``generator``, in unit order."""
        return torch.rand((n_units,), generator=generator)

    # ------------------------------------------------------------------------------------------- validation

    def check(self, mask: torch.Tensor, name: str, is_output_layer: bool = False) -> str | None:
        """Is ``mask`` (a 0/1 mask of layer ``name``) of this pattern? ``None`` if so (every unit wholly kept or
        wholly removed), else a one-line reason."""
        u = self.units(mask, name, is_output_layer)
        partial = ~((u == 0).all(1) | (u != 0).all(1))
        n = int(partial.sum())
        if n:
            return f"{name}: {n} of {u.shape[0]} {self.unit}s are partly kept (not a {self.name} mask)"
        return None

    # ------------------------------------------------------------------------------------------- mask makers

    def random_masks(
        self,
        shapes: Mapping[str, Sequence[int]],
        sparsity: float,
        generator: torch.Generator,
        protect: Collection[str] | None = None,
        *,
        exact: bool = True,
    ) -> Mask:
        """A random mask of this pattern with about ``sparsity`` of each layer's weights removed.

        Per layer, in order, one uniform draw per unit from ``generator``. ``exact=True`` keeps the
        ``max(1, round((1 - sparsity) * units))`` highest-drawn units (the layer's sparsity is exact up to one unit);
        ``exact=False`` keeps each unit whose draw is ``>= sparsity`` (independent coin flips). ``protect``: the
        output layers (default: the last layer of ``shapes``; pass ``()`` for none), pruned by smaller units where
        the pattern would otherwise remove a colour.
        """
        # 1.0 is allowed: with exact=False it empties every layer (tests build whole dead networks this way)
        _check_fraction(sparsity, "sparsity", closed=True)
        out = Mask()
        guarded = _protected(shapes, protect)
        for name, shape in shapes.items():
            shape = torch.Size(shape)
            is_out = name in guarded
            ones = self.units(torch.ones(shape), name, is_out)
            draws = torch.rand(ones.shape[0], generator=generator)
            if exact:
                keep_n = max(1, round((1.0 - sparsity) * draws.numel()))
                flags = torch.zeros(draws.numel())
                flags[torch.topk(draws, keep_n).indices] = 1.0
            else:
                flags = (draws >= sparsity).float()
            out[name] = self.fold(ones * flags[:, None], shape, name, is_out)
        return out

    def magnitude_masks(
        self,
        weights: Mapping[str, torch.Tensor],
        sparsity: float,
        scope: Scope = "global",
        protect: Collection[str] | None = None,
    ) -> Mask:
        """One-shot magnitude pruning of dense ``weights``: one :func:`prune` step removing ``sparsity`` of all
        weights (``scope="global"``) or of each layer's (``"layer"``), with IMP's scores and rules."""
        _check_fraction(sparsity, "sparsity")
        dense = Mask.ones_like({name: w.shape for name, w in weights.items()})
        return prune(weights, dense, sparsity, self, scope, protect=protect)

    def __repr__(self) -> str:
        return f"<Pattern {self.name!r}: {self.description}>"


def _check_fraction(x: float, what: str, closed: bool = False) -> None:
    if not (0.0 <= x <= 1.0 if closed else 0.0 <= x < 1.0):
        raise InputError(None, f"{what} must be in [0, 1{']' if closed else ')'}, got {x}")


def _protected(names: Mapping[str, object], protect: Collection[str] | None) -> set[str]:
    """The output layers: ``protect``, or by default the last layer (the network's image-producing convolution)."""
    if protect is None:
        return {list(names)[-1]} if names else set()
    return set(protect)


def prune(
    weights: Mapping[str, torch.Tensor],
    masks: Masks,
    rate: float,
    pattern: Pattern,
    scope: Scope = "global",
    random: bool = False,
    generator: torch.Generator | None = None,
    protect: Collection[str] | None = None,
) -> Mask:
    """New masks with ``rate`` of the currently kept weights removed, lowest-scoring units of ``pattern`` first.

    ``weights``: the (fitted) weights to score, by prunable name; ``masks``: the current masks (same names). With
    ``scope="global"`` units of all layers compete; with ``"layer"`` each layer loses ``rate`` of its own weights.
    Targets count weights, not units (so densities follow (1 - rate)^k at every pattern, up to one unit), and every
    layer keeps at least its best unit (its :meth:`Pattern.min_kept_units` best units: when every remaining unit is at
    that floor the step removes less than ``rate``). ``random``: score units by ``generator`` draws instead (the
    random baseline).
    ``protect``: the output layers (default: the last layer).
    """
    names = list(masks)
    guarded = _protected(masks, protect)
    positions = sum(masks[name].numel() for name in names)
    after = (1.0 - rate) * sum(float(masks[name].count_nonzero()) for name in names) / positions if positions else 1.0
    per_layer = []  # (name, is output layer, unit view of mask, scores, kept per unit, candidate flags)
    for name in names:
        m = masks[name].float()
        w = weights[name].detach().float().cpu() * m
        is_out = name in guarded
        mu, wu = pattern.units(m, name, is_out), pattern.units(w, name, is_out)
        kept = mu.sum(1)
        scores = pattern.random_scores(kept.shape[0], generator) if random else pattern.scores(wu, mu)
        alive = kept > 0
        cand = alive.clone()
        n_alive = int(alive.sum())
        floor = min(n_alive, max(1, pattern.min_kept_units(kept.shape[0], name, is_out, after)))
        if floor == 1:  # every layer keeps its best unit
            best = torch.where(alive, scores, torch.full_like(scores, -1.0)).argmax()
            cand[best] = False
        elif floor > 1:  # ... or its ``floor`` best units (ties: lower index first, as argmax)
            order = torch.argsort(-torch.where(alive, scores, torch.full_like(scores, -1.0)), stable=True)
            cand[order[:floor]] = False
        per_layer.append((name, is_out, mu, scores, kept, cand))

    prune_flags: dict[str, torch.Tensor] = {
        name: torch.zeros(mu.shape[0], dtype=torch.bool) for name, _, mu, *_ in per_layer
    }
    groups = [per_layer] if scope == "global" else [[entry] for entry in per_layer]
    for group in groups:
        total_kept = sum(float(e[4].sum()) for e in group)
        target = round(rate * total_kept)
        if target <= 0:
            continue
        scores = torch.cat([e[3][e[5]] for e in group])
        sizes = torch.cat([e[4][e[5]] for e in group])
        owner = torch.cat([torch.full((int(e[5].sum()),), gi, dtype=torch.long) for gi, e in enumerate(group)])
        index = torch.cat([torch.nonzero(e[5]).flatten() for e in group])
        order = torch.argsort(scores, stable=True)
        csum = torch.cumsum(sizes[order], 0)
        # the shortest prefix reaching the target, or one shorter if that lands closer (units larger than 1 weight)
        n = int(torch.searchsorted(csum, torch.tensor(float(target)), right=False)) + 1
        n = min(n, len(order))
        if n > 1 and abs(float(csum[n - 2]) - target) < abs(float(csum[n - 1]) - target):
            n -= 1
        chosen = order[:n]
        for gi, e in enumerate(group):
            sel = chosen[owner[chosen] == gi]
            prune_flags[e[0]][index[sel]] = True

    out = Mask()
    for name, is_out, mu, *_ in per_layer:
        keep_units = (~prune_flags[name]).float()[:, None]
        out[name] = pattern.fold(mu * keep_units, masks[name].shape, name, is_out)
    return out
