"""Sparsity patterns: the registry, each pattern's check / detect and mask makers, and a plug-in pattern added at run
time that IMP accepts by name and whose tickets compact exactly."""

from __future__ import annotations

import pytest
import torch

from lipdeploy import compact
from lipdeploy.errors import InputError
from lipdeploy.fit import FitConfig
from lipdeploy.images import standard_image
from lipdeploy.imp import ImpConfig, find_ticket, prune
from lipdeploy.masks import Mask, density
from lipdeploy.networks import make_input
from lipdeploy.patterns import (
    PATTERNS,
    Pattern,
    detect,
    detect_layer,
    get_pattern,
    pattern_names,
    register_pattern,
    unregister_pattern,
)
from lipdeploy.testing import random_mask_ticket, tiny_skip
from lipdeploy.ticket import load_ticket, ticket_from_model

BUILT_IN = ("block", "block16x8", "block32x16", "channel", "kernel", "unstructured")


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = tiny_skip().build()
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 4}


def shapes_of(weights):
    return {n: w.shape for n, w in weights.items()}


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_the_built_in_patterns():
    assert set(BUILT_IN) <= set(PATTERNS) and pattern_names() == sorted(PATTERNS)
    assert {n: PATTERNS[n].kernel_format for n in BUILT_IN} == {
        "unstructured": "csr",
        "kernel": "kernel",
        "channel": "kernel",
        "block": "bsr",
        "block16x8": "bsr",
        "block32x16": "bsr",
    }
    assert all(get_pattern(n) is PATTERNS[n] and PATTERNS[n].description for n in BUILT_IN)
    known = "block, block16x16, block16x8, block32x16, channel, kernel, unstructured"
    with pytest.raises(InputError, match=f"unknown sparsity pattern 'rows' \\(known: {known}"):
        get_pattern("rows")
    with pytest.raises(InputError, match=f"granularity must be one of {known}"):
        ImpConfig(granularity="rows")
    with pytest.raises(ValueError, match="already registered"):
        register_pattern(type(PATTERNS["kernel"])())


# ------------------------------------------------------------------------------------------------ check / detect


def test_imp_tickets_are_detected_as_their_granularity(weights):
    ones = Mask.ones_like(shapes_of(weights))
    assert detect(ones) == "channel"  # dense fits every pattern: the most structured one names it
    for gran in BUILT_IN:
        masks = prune(weights, prune(weights, ones, 0.2, granularity=gran), 0.2, granularity=gran)
        # tiny_skip has at most 16 channels: a 16 x 16 block mask is also a 32 x 16 one (the coarser label wins)
        assert detect(masks) == gran or (gran.startswith("block") and detect(masks).startswith("block")), gran
        assert all(PATTERNS[gran].check(m, n, n == list(masks)[-1]) is None for n, m in masks.items())
    kernel_masks = prune(weights, ones, 0.3, granularity="kernel")
    reason = PATTERNS["channel"].check(kernel_masks["1.1.1.1.weight"], "1.1.1.1.weight")
    assert reason is not None and "output channels are partly kept" in reason
    # the channel pattern prunes the output conv by kernel: a per-layer label needs to know which layer that is
    channel_masks = prune(weights, ones, 0.3, granularity="channel")
    last = list(channel_masks)[-1]
    assert detect_layer(channel_masks[last], last, is_output_layer=True) == "channel"
    unstructured = random_mask_ticket(tiny_skip(), 0.5).masks
    assert detect(unstructured) == "unstructured"
    assert PATTERNS["kernel"].check(unstructured["1.1.1.1.weight"], "1.1.1.1.weight") is not None


# ------------------------------------------------------------------------------------------------ mask makers


@pytest.mark.parametrize("name", BUILT_IN)
def test_random_masks_density_and_structure(name, weights):
    pattern = PATTERNS[name]
    shapes = shapes_of(weights)
    for sparsity in (0.0, 0.5, 0.9):
        masks = pattern.random_masks(shapes, sparsity, torch.Generator().manual_seed(1))
        assert isinstance(masks, Mask) and list(masks) == list(shapes)
        assert detect(masks) == name or sparsity == 0.0 or detect(masks).startswith("block") == name.startswith("block")
        last = list(masks)[-1]
        for n, m in masks.items():
            units = pattern.units(m, n, n == last).shape[0]
            assert abs((1 - float(m.mean())) - sparsity) <= 0.5 / units + 1e-6 or float(m.sum()) > 0, (n, sparsity)
            assert m.sum() > 0  # every layer keeps a unit
        coin = pattern.random_masks(shapes, 0.5, torch.Generator().manual_seed(1), exact=False)
        assert abs(density(coin) - 0.5) < 0.1


def test_random_masks_reproduce_the_benchmark_draws():
    shape = torch.Size([16, 8, 3, 3])
    # bench/gpu/layers.py make_mask(shape, sparsity, "random", gen): keep the top round((1-s)*n) of rand(n)
    gen = torch.Generator().manual_seed(0)
    score = torch.rand(shape.numel(), generator=gen)
    want = torch.zeros(shape.numel())
    want[torch.topk(score, max(1, round(0.2 * shape.numel()))).indices] = 1.0
    got = PATTERNS["unstructured"].random_masks({"w": shape}, 0.8, torch.Generator().manual_seed(0))["w"]
    assert torch.equal(got, want.view(shape))
    # bench/gpu/network.py and lipdeploy.testing: one Bernoulli draw per weight, layer after layer
    shapes = {"a": shape, "b": torch.Size([3, 16, 1, 1])}
    gen = torch.Generator().manual_seed(5)
    want2 = {n: (torch.rand(s, generator=gen) >= 0.7).float() for n, s in shapes.items()}
    got2 = PATTERNS["unstructured"].random_masks(shapes, 0.7, torch.Generator().manual_seed(5), exact=False)
    assert all(torch.equal(got2[n], want2[n]) for n in shapes)


def test_channel_random_masks_protect_the_output_layer(weights):
    shapes = shapes_of(weights)
    last = list(shapes)[-1]
    guarded = PATTERNS["channel"].random_masks(shapes, 0.5, torch.Generator().manual_seed(0))
    assert bool((guarded[last].reshape(3, -1).sum(1) > 0).all())  # no colour lost: pruned by kernel there
    bare = PATTERNS["channel"].random_masks(shapes, 0.5, torch.Generator().manual_seed(0), protect=())
    assert PATTERNS["channel"].check(bare[last], last) is None


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_are_one_imp_step(name, scope, weights):
    masks = PATTERNS[name].magnitude_masks(weights, 0.6, scope)
    assert abs(density(masks) - 0.4) < (0.002 if name == "unstructured" else 0.05)
    want = prune(weights, Mask.ones_like(shapes_of(weights)), 0.6, scope, name)
    assert all(torch.equal(masks[n], want[n]) for n in want)
    if name == "unstructured" and scope == "global":
        pruned = torch.cat([weights[n][m == 0].abs() for n, m in masks.items()])
        kept = torch.cat([weights[n][m == 1].abs() for n, m in masks.items()])
        assert float(pruned.max()) <= float(kept.min())
    with pytest.raises(InputError, match="sparsity must be in"):
        PATTERNS[name].magnitude_masks(weights, 1.0)


# ------------------------------------------------------------------------------------------------ a plug-in pattern


class Tap(Pattern):
    """Toy plug-in: a unit is one kernel tap (ky, kx) across all channel pairs of a layer; not a plain reshape, so it
    also exercises :meth:`Pattern.fold`."""

    name = "tap"
    description = "whole kernel taps across all channels"
    unit = "tap"
    rank = 50  # a whole tap of all channels: coarser than any block (tiny_skip's taps are single blocks)
    kernel_format = "csr"

    def units(self, t, layer_name, is_output_layer):
        return t.permute(2, 3, 0, 1).reshape(t.shape[2] * t.shape[3], -1)

    def fold(self, units, shape, layer_name, is_output_layer):
        o, i, kh, kw = shape
        return units.reshape(kh, kw, o, i).permute(2, 3, 0, 1).contiguous()


@pytest.fixture
def tap():
    pattern = register_pattern(Tap())
    yield pattern
    unregister_pattern("tap")


def test_a_plug_in_pattern_works_by_name_in_imp_and_compacts_exactly(tap, tmp_path):
    assert "tap" in pattern_names()
    torch.manual_seed(0)
    spec = tiny_skip()
    model = spec.build()
    start = ticket_from_model(model, spec, Mask.ones_like(model))
    w = {n: start.init[n] for n in start.masks}
    masks = prune(w, start.masks, 0.3, granularity="tap")
    assert detect(masks) == "tap" and abs(density(masks) - 0.7) < 0.05
    assert any(PATTERNS["kernel"].check(m, n) is not None for n, m in masks.items())  # taps, not whole kernels

    clean = standard_image("coffee")[:, :, 100:132, 200:232].contiguous()
    from lipdeploy.tasks import Denoise

    paths = find_ticket(start, clean, Denoise(), tmp_path, ImpConfig(rounds=1, granularity="tap"), FitConfig(iters=2))
    ticket = load_ticket(paths[1])
    assert ticket.provenance["granularity"] == "tap" and detect(ticket.masks) == "tap"
    assert ticket.density == pytest.approx(0.8, abs=0.05)
    x = make_input(spec, 32, 32, seed=3)
    with torch.no_grad():
        want = ticket.build()(x)
        got = compact(ticket)(x.clone())
    assert (got - want).abs().max().item() <= 1e-5
