"""Channel tickets to high sparsity: the pruning rule (per-layer normalised scores, a minimum width) reaches 83-95%
without draining any layer, on the weights that made the old global rule collapse; the tickets compact exactly to a
narrower dense network."""

from __future__ import annotations

import math

import pytest
import torch

from lipdeploy.compaction import compact
from lipdeploy.masks import Mask, density, prunable_shapes
from lipdeploy.networks import SkipSpec, make_input
from lipdeploy.patterns import PATTERNS, Pattern, prune
from lipdeploy.testing import randomize_
from lipdeploy.ticket import ticket_from_model

SPEC = SkipSpec(in_channels=8, channels_down=(32, 32, 32), channels_up=(32, 32, 32), channels_skip=(4, 4, 4))
# the up-path convolutions whose small weights drained them to one channel under global mean-|w| ranking
UP = ("1.1.7.1.1.7.3.1.weight", "1.1.7.1.1.7.6.1.weight", "1.1.7.3.1.weight", "3.1.weight", "6.1.weight")


class RawChannel(Pattern):
    """The old channel rule: raw mean |w| ranked globally, one unit kept per layer."""

    name = "raw-channel"

    def units(self, t, layer_name, is_output_layer):
        return t.reshape(t.shape[0] * t.shape[1], -1) if is_output_layer else t.reshape(t.shape[0], -1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = randomize_(SPEC.build(), 0)
    shapes = prunable_shapes(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n in shapes}
    for n in UP:  # as after the fit: the up path's weights are small as a whole
        weights[n] = weights[n] * 0.2
    return model, weights


def _widths(masks, last):
    return {n: int((m.reshape(m.shape[0], -1).sum(1) > 0).sum()) for n, m in masks.items() if n != last}


def test_old_rule_collapses_new_rule_keeps_every_layer(setup):
    model, w = setup
    last = list(w)[-1]
    old = new = Mask.ones_like({n: t.shape for n, t in w.items()})
    for k in range(1, 14):
        old = prune(w, old, 0.2, RawChannel())
        new = prune(w, new, 0.2, PATTERNS["channel"])
        d = density(new)
        assert abs(d - 0.8**k) < 0.02, k  # targets still count weights: 59% at round 4, 83% at 8, 95% at 13
        widths = _widths(new, last)
        for n, width in widths.items():  # the minimum width: half the network's kept fraction, at least one
            assert width >= max(1, math.ceil(w[n].shape[0] * d * 0.5 - 1e-9)), (k, n, width)
        assert PATTERNS["channel"].check(new[last], last, True) is None
        assert new[last].sum() > 0  # (a colour's kernels may all go: see the report of issue 12)
        if k == 4:
            old_widths = _widths(old, last)
            assert min(old_widths[n] for n in UP) == 1  # the regression: the up path drained to one channel
            assert min(widths[n] for n in UP) >= 7  # now at least the floor: 7 of 32 channels at 59%
            assert max(widths.values()) >= 2 * min(widths[n] for n in UP)  # layers still differ by their weights
    assert 1 - density(new) > 0.94


def test_channel_ticket_compacts_exactly_to_a_narrower_dense_network(setup):
    model, w = setup
    masks = Mask.ones_like({n: t.shape for n, t in w.items()})
    for _ in range(10):  # 89%
        masks = prune(w, masks, 0.2, PATTERNS["channel"])
    ticket = ticket_from_model(model, SPEC, masks)
    x = make_input(SPEC, 32, 32, seed=3)
    with torch.no_grad():
        want = ticket.build(bn="running")(x.clone())
        net = compact(ticket, bn="running")
        got = net(x.clone())
    assert (got - want).abs().max().item() <= 1e-5
    params = sum(p.numel() for p in net.parameters())
    assert params < 0.2 * sum(p.numel() for p in model.parameters())
    last = list(masks)[-1]
    for layer in net.layers:  # every kept layer is dense but for the output conv's kernels
        if f"{layer.name}.weight" != last:
            assert layer.zero_kernels_after == 0, layer.name
