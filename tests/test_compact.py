"""Exact structural compaction: the compacted module computes the masked network's output, with fewer channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipdeploy.compaction import CompactNet, analyze_compaction, compact
from lipdeploy.networks import DeepDecoderSpec, SkipSpec, make_input
from lipdeploy.testing import random_mask_ticket as _ticket
from lipdeploy.testing import randomize_
from lipdeploy.ticket import ticket_from_model

SMALL = SkipSpec(in_channels=8, channels_down=(8, 16, 16), channels_up=(8, 16, 16), channels_skip=(4, 4, 4))
SMALL_ZERO = SkipSpec(
    in_channels=8, channels_down=(8, 16, 16), channels_up=(8, 16, 16), channels_skip=(4, 4, 4), pad="zero"
)
DD = DeepDecoderSpec(k=16, depth=3)
SPECS = {"skip": SMALL, "skip-zero": SMALL_ZERO, "dd": DD}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: OpenMP threads only contend on a shared 2-core machine (50 ms per tiny op instead of 25 us)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _snap_constants(module, args):
    """Oracle hook: make channels that are constant up to float64 rounding exactly constant before a BatchNorm.

    A per-image BatchNorm divides by sqrt(var + eps), so it multiplies the rounding noise of a constant channel by up
    to 1/sqrt(eps) ~ 316; a few of them in a row turn a dead channel into normalised rounding noise. The masked network
    in exact arithmetic has exact constants there, and that is what compaction computes.
    """
    (x,) = args
    mean = x.mean(dim=(2, 3), keepdim=True)
    flat = (x - mean).abs().amax(dim=(2, 3), keepdim=True) <= 1e-9 * mean.abs().clamp(min=1.0)
    return (torch.where(flat, mean.expand_as(x), x),)


def _oracle(ticket, bn: str) -> nn.Module:
    ref = ticket.build(bn=bn).double()
    if bn == "image":
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_pre_hook(_snap_constants)
    return ref


def _check(ticket, bn: str, size: int = 32, direct32: bool = True) -> CompactNet:
    """Compacted (float64 and float32) vs the masked network in float64 with exact constants, <= 1e-9 / 1e-5;
    ``direct32``: also vs the plain float32 masked network (where no dead channel feeds a per-image BatchNorm)."""
    x = make_input(ticket.arch, size, size, seed=3)
    oracle = _oracle(ticket, bn)
    with torch.no_grad():
        want = oracle(x.double())
        net64 = compact(ticket.build(bn=bn).double(), bn=bn)
        got64 = net64(x.double())
        assert got64.dtype == torch.float64 and got64.shape == want.shape
        err = (got64 - want).abs().max().item()
        assert err <= 1e-9, f"float64: max abs error {err}"
        net = compact(ticket, bn=bn)
        got = net(x.clone())
        err = (got.double() - want).abs().max().item()
        ref32 = ticket.build(bn=bn)(x.clone())
        # no worse than the float32 masked network itself (the paper network at 64 px: 4.6e-5 from BN rounding)
        base = (ref32.double() - want).abs().max().item() if direct32 else 0.0
        assert err <= max(1e-5, 2 * base), f"float32 vs exact: max abs error {err} (masked float32: {base})"
        if direct32:
            err = (got - ref32).abs().max().item()
            assert err <= 1e-5, f"float32 vs float32 masked network: max abs error {err}"
    return net


def _layer(net: CompactNet, name: str):
    return next(la for la in net.layers if la.name == name)


@pytest.mark.parametrize("arch", list(SPECS))
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("bn", ["image", "running"])
def test_random_masks_exact(arch, sparsity, bn):
    ticket = _ticket(SPECS[arch], sparsity, seed=int(sparsity * 100))
    _check(ticket, bn)


@pytest.mark.parametrize("seed", range(4))
def test_intermediate_sparsities_float32(seed):
    """Sparsities where some but not all channels die (the interesting regime for small nets)."""
    for sparsity in (0.8, 0.93, 0.96):
        ticket = _ticket(SMALL, sparsity, seed=seed)
        for bn in ("image", "running"):
            _check(ticket, bn)


def _zero_rows(name, rows):
    def edit(masks):
        masks[name][rows] = 0

    return edit


@pytest.mark.parametrize("bn", ["image", "running"])
def test_dead_output_channels_are_removed(bn):
    # level 0, second 3x3 conv of the deeper branch: 3 of 8 outputs have all-zero weights (constant channels)
    ticket = _ticket(SMALL, 0.0, edit=_zero_rows("1.1.4.1.weight", [0, 2, 5]))
    net = _check(ticket, bn)
    la = _layer(net, "1.1.4.1")
    assert (la.out_before, la.out_after, la.dead_outputs) == (8, 5, 3)


@pytest.mark.parametrize("bn", ["image", "running"])
def test_unread_channels_shrink_the_producer(bn):
    def edit(masks):
        masks["9.1.weight"][:, [1, 4, 6]] = 0  # the final conv never reads 3 of the last 1x1 conv's outputs

    net = _check(_ticket(SMALL, 0.0, edit=edit), bn)
    la = _layer(net, "6.1")
    assert (la.out_after, la.unread_outputs, la.dead_outputs) == (5, 3, 0)
    assert _layer(net, "9.1").in_after == 5


def test_unread_propagates_to_a_fixed_point():
    """Removing unread outputs makes upstream channels unread too: 1.1.1.1 feeds only 1.1.4.1."""

    def edit(masks):
        masks["1.1.4.1.weight"][:, [0, 3]] = 0  # 1.1.4.1 never reads inputs 0 and 3

    net = _check(_ticket(SMALL, 0.0, edit=edit), "image")
    assert _layer(net, "1.1.1.1").out_after == 6
    assert _layer(net, "1.1.4.1").in_after == 6


@pytest.mark.parametrize("bn", ["image", "running"])
def test_whole_dead_layer(bn):
    def edit(masks):
        masks["1.1.4.1.weight"].zero_()  # level 0's deeper branch dies: everything below it is constant

    # the float32 masked network itself turns the dead branch into amplified rounding noise (see _snap_constants)
    net = _check(_ticket(SMALL, 0.0, edit=edit), bn, direct32=bn == "running")
    assert _layer(net, "1.1.4.1").out_after == 0
    assert _layer(net, "1.1.1.1").out_after == 0  # unread now
    deeper = [la for la in net.layers if la.name.startswith("1.1.7.")]
    assert deeper and all(la.out_after == 0 for la in deeper)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4  # skip conv, 3x3 up conv, 1x1 up conv, final conv: nothing from the dead branch
    assert _layer(net, "3.1").in_after == 4


@pytest.mark.parametrize("bn", ["image", "running"])
def test_whole_skip_branch_dead(bn):
    def edit(masks):
        for name in masks:
            if ".0.1.1." in f".{name}" or name.endswith("0.1.1.weight"):
                masks[name].zero_()

    ticket = _ticket(SMALL, 0.3, edit=edit)
    net = _check(ticket, bn)
    skips = [la for la in net.layers if la.name.endswith("0.1.1")]
    assert len(skips) == 3 and all(la.out_after == 0 and la.dead_outputs == 4 for la in skips)


@pytest.mark.parametrize("bn", ["image", "running"])
def test_zero_padding_materialises_constants(bn):
    """With zero padding a constant plane is not constant at the borders: it must be read, not folded."""
    ticket = _ticket(SMALL_ZERO, 0.0, edit=_zero_rows("1.1.1.0.weight", [0, 1, 2]))
    net = _check(ticket, bn)
    assert _layer(net, "1.1.1.0").out_after == 5
    la = _layer(net, "1.1.4.0")
    assert la.materialised_inputs == 3 and la.in_after == 8


def test_constant_output_channels_are_kept():
    def edit(masks):
        masks["9.1.weight"][1] = 0  # the green channel is constant: sigmoid(bias)

    net = _check(_ticket(SMALL, 0.5, edit=edit), "image")
    out = net(make_input(SMALL, 32, 32))
    assert out.shape[1] == 3
    assert torch.all(out[:, 1] == out[0, 1, 0, 0])


def test_full_input_contract_and_used_channels():
    def edit(masks):
        masks["1.0.1.1.weight"][:, 2] = 0
        masks["1.1.1.1.weight"][:, 2] = 0

    net = _check(_ticket(SMALL, 0.0, edit=edit), "image")
    assert net.input_channels == 8 and 2 not in net.input_channels_used and len(net.input_channels_used) == 7


def test_report_and_gradients_flow():
    ticket = _ticket(SMALL, 0.9, seed=5)
    rep = analyze_compaction(ticket, 64, 64)
    d = rep.to_dict()
    assert len(d["layers"]) == 16 and d["totals"]["macs_after"] <= d["totals"]["macs_before"]
    assert "removed output channels" in rep.format()
    net = compact(ticket)
    x = make_input(SMALL, 32, 32)
    net(x).square().mean().backward()
    assert any(p.grad is not None for p in net.parameters())


def test_onnx_export_standard_ops(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ticket = _ticket(SMALL_ZERO, 0.0, edit=_zero_rows("1.1.1.0.weight", [0, 1]))
    net = compact(ticket).eval()  # ImageNorm always uses the image's statistics, eval() changes nothing
    x = make_input(SMALL, 32, 32)
    path = tmp_path / "c.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "InstanceNormalization" in ops and "BatchNormalization" not in ops
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = ticket.build()(x).numpy()
    assert abs(got - want).max() <= 1e-5


def test_paper_network_imp_like_ticket():
    """Paper network at 64x64 with a global magnitude mask (~89%): exact at scale, unread final inputs found."""
    spec = SkipSpec()
    torch.manual_seed(0)
    model = spec.build()
    randomize_(model, 0)
    ws = {n: p.detach() for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 4}
    mags = torch.cat([w.abs().flatten() for w in ws.values()])
    thr = mags.kthvalue(int(0.89 * mags.numel())).values
    masks = {n: (w.abs() > thr).float() for n, w in ws.items()}
    ticket = ticket_from_model(model, spec, masks)
    for bn in ("image", "running"):
        net = _check(ticket, bn, size=64)
    la = _layer(net, "9.1")
    assert la.in_after < 128 and _layer(net, "6.1").out_after == la.in_after
    assert _layer(net, "6.1").unread_outputs == 128 - la.in_after
