"""sparsify: compacted network with SparseConv2d layers; same output and same fitting as the masked network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipdeploy.backends import sparse_layers, sparsify
from lipdeploy.compaction import CompactNet, compact
from lipdeploy.fit_result import PrunedGradients
from lipdeploy.kernels import SparseConv2d
from lipdeploy.networks import DeepDecoderSpec, SkipSpec, make_input
from lipdeploy.testing import random_mask_ticket as _ticket

SMALL = SkipSpec(in_channels=8, channels_down=(8, 16, 16), channels_up=(8, 16, 16), channels_skip=(4, 4, 4))
SMALL_ZERO = SkipSpec(
    in_channels=8, channels_down=(8, 16, 16), channels_up=(8, 16, 16), channels_skip=(4, 4, 4), pad="zero"
)
TINY = SkipSpec(in_channels=4, channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2, 2))
SPECS = {"skip": SMALL, "skip-zero": SMALL_ZERO, "dd": DeepDecoderSpec(k=16, depth=3)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("arch", list(SPECS))
@pytest.mark.parametrize("bn", ["image", "running"])
def test_torch_backend_matches_masked_network(arch, bn):
    spec = SPECS[arch]

    def edit(masks):  # a few dead output channels too, so folding and (zero padding) materialising are exercised
        first = next(iter(masks))
        masks[first][:2] = 0

    ticket = _ticket(spec, 0.8, edit=edit)
    net = sparsify(ticket, backend="reference", bn=bn)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert not convs and sparse_layers(net)
    if arch == "skip":  # reflection padding folded into the sparse convs
        assert not any(isinstance(m, nn.ReflectionPad2d) for m in net.modules())
    x = make_input(spec, 32, 32)
    with torch.no_grad():
        err = (net(x) - ticket.build(bn=bn)(x)).abs().max().item()
    assert err <= 1e-5


def test_sparsify_copies_a_compacted_network():
    ticket = _ticket(SMALL, 0.9)
    dense = compact(ticket)
    net = sparsify(dense, backend="reference")
    assert isinstance(net, CompactNet) and sparse_layers(net) and not sparse_layers(dense)
    x = make_input(SMALL, 32, 32)
    with torch.no_grad():
        assert (net(x) - dense(x)).abs().max().item() <= 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU branch of the dispatcher")
def test_auto_on_cpu_is_the_compacted_dense_network():
    ticket = _ticket(SMALL, 0.9)
    net = sparsify(ticket, backend="auto")
    assert not sparse_layers(net)
    x = make_input(SMALL, 32, 32)
    with torch.no_grad():
        assert (net(x) - ticket.build()(x)).abs().max().item() <= 1e-5


def _effective(net: CompactNet) -> dict[str, torch.Tensor]:
    out = {}
    for key, m in net.ops.items():
        if isinstance(m, SparseConv2d):
            out[key] = m.dense_weight().detach()
    return out


def test_one_adam_step_matches_the_masked_network():
    """Fitting the sparse module moves the same weights by the same amounts as fitting the masked network."""
    ticket = _ticket(SMALL, 0.85, seed=2)
    x = make_input(SMALL, 32, 32).double()
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9)).double()

    ref = ticket.build().double()
    pruned = PrunedGradients.of(ref, ticket.masks)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    nn.functional.mse_loss(ref(x), target).backward()
    pruned()
    opt.step()
    ref_w = {n: p.detach() for n, p in ref.named_parameters()}

    net = sparsify(compact(ticket.build().double()), backend="reference")
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    nn.functional.mse_loss(net(x), target).backward()
    opt.step()
    compacted = compact(ticket)  # same layers as net (same ticket), for the reference mapping
    checked = 0
    for key, w in _effective(net).items():
        layer = compacted.convs[key]
        name, rows, cols, mask = layer.reference, layer.rows, layer.cols, layer.mask
        want = ref_w[f"{name}.weight"][rows][:, cols] * mask
        assert torch.allclose(w, want, atol=1e-7), key
        moved = (w != ticket.build().double().get_submodule(name).weight[rows][:, cols]) & mask
        checked += int(moved.sum())
    assert checked > 1000  # the step did move the kept weights


def test_triton_backend_interpreted_forward_and_grad():
    pytest.importorskip("triton")
    ticket = _ticket(TINY, 0.7, seed=1)
    x = make_input(TINY, 16, 16)
    net = sparsify(ticket, backend="triton-csr")
    ref = sparsify(ticket, backend="reference")
    out = net(x)
    with torch.no_grad():
        assert (out - ticket.build()(x)).abs().max().item() <= 1e-4
    out.square().mean().backward()
    ref(x).square().mean().backward()
    grads = {n: p.grad for n, p in ref.named_parameters()}
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.allclose(p.grad, grads[n], atol=1e-4, rtol=1e-3), n


@pytest.mark.gpu
def test_auto_on_cuda_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path))
    ticket = _ticket(SMALL, 0.9)
    x = make_input(SMALL, 64, 64).cuda()
    net = sparsify(ticket, backend="auto", example_input=x)
    with torch.no_grad():
        want = ticket.build().cuda()(x)
        assert (net(x) - want).abs().max().item() <= 1e-3  # cuDNN layers may use TF32
    assert (tmp_path / "backend_choice.json").exists()


def _sparse_aware_timer(monkeypatch, costs: dict[str, float]):
    """A timer that runs the candidate and prices it by what actually ran: ``costs[format]`` if a SparseConv2d of
    that format ran, ``costs["dense"]`` otherwise (decides the dispatcher's choice without wall-clock timing)."""
    ran: list[str] = []
    forward = SparseConv2d.forward

    def spy(self, x):
        ran.append(self.format)
        return forward(self, x)

    monkeypatch.setattr(SparseConv2d, "forward", spy)

    def timer(fn):
        ran.clear()
        fn()
        return costs[ran[-1]] if ran else costs["dense"]

    return timer


@pytest.mark.parametrize("workload", ["forward", "fit"])
def test_auto_dispatch_keeps_the_fastest_candidate_per_layer(tmp_path, monkeypatch, workload):
    """The CUDA dispatcher's logic, run on CPU (Triton interpreter) with a timer that prices what actually ran."""
    from lipdeploy.backends import BACKENDS
    from lipdeploy.backends.sparsify import _dispatch
    from lipdeploy.kernels import cached_times
    from lipdeploy.kernels.sparse_conv import candidate_configs

    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path))
    ticket = _ticket(TINY, 0.8)
    x = make_input(TINY, 16, 16)
    want = ticket.build()(x).detach()

    csr_and_kernel = [BACKENDS["triton-csr"], BACKENDS["triton-kernel"]]
    timer = _sparse_aware_timer(monkeypatch, {"dense": 2.0, "csr": 1.5, "kernel": 1.0})
    net = _dispatch(compact(ticket), x, csr_and_kernel, workload, timer=timer)
    layers = [m for m in net.modules() if isinstance(m, SparseConv2d)]
    n_convs = sum(isinstance(m, nn.Conv2d) for m in compact(ticket).modules())
    assert len(layers) == n_convs and all(m.format == "kernel" and m.config is not None for m in layers)
    out = net(x)
    assert (out - want).abs().max().item() <= 1e-5
    if workload == "fit":
        out.square().mean().backward()
        assert all(m.values.grad is not None for m in layers)
    entries = __import__("json").loads((tmp_path / "backend_choice.json").read_text())
    # one entry per distinct (shape, input size, mask pattern, ...): identical layers share a verdict
    assert 0 < len(entries) <= n_convs and all(k.endswith(("-grad_in0", "-grad_in1")) for k in entries)
    n_cand = 1 + 2 * len(candidate_configs(256, torch.device("cpu")))
    assert all(len(e["ms"]) == n_cand and e["choice"].startswith("triton-kernel:") for e in entries.values())
    if workload == "fit":  # only the first conv reads the fixed network input: no input gradient to time there
        assert sum(k.endswith("-grad_in0") for k in entries) >= 1 and any(k.endswith("-grad_in1") for k in entries)
    key = next(iter(entries)).split("|", 1)[1]
    assert cached_times(key)["dense"] == 2.0

    # cached verdicts are reused: a timer that would now keep everything dense is never consulted
    slow = _sparse_aware_timer(monkeypatch, {"dense": 1.0, "csr": 5.0, "kernel": 5.0})
    again = _dispatch(compact(ticket), x, csr_and_kernel, workload, timer=slow)
    assert len(sparse_layers(again)) == n_convs

    # a fresh cache with sparse slower (or within the 5% margin) keeps every layer on the dense path
    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path / "other"))
    close = _sparse_aware_timer(monkeypatch, {"dense": 1.0, "csr": 0.97, "kernel": 1.2})
    dense = _dispatch(compact(ticket), x, csr_and_kernel, workload, timer=close)
    assert not sparse_layers(dense)
    assert (dense(x) - want).abs().max().item() <= 1e-5


def test_sparsify_rejects_bad_format_and_workload():
    ticket = _ticket(TINY, 0.5)
    with pytest.raises(ValueError, match="format"):
        sparsify(ticket, backend="reference", format="bsr")
    with pytest.raises(ValueError, match="workload"):
        sparsify(ticket, backend="auto", workload="train")


# ------------------------------------------------------------------------------------------------ block-sparse (bsr)

BLOCKY = SkipSpec(in_channels=4, channels_down=(16, 32), channels_up=(16, 32), channels_skip=(4, 4))


def _block_ticket(pattern: str = "block32x16", sparsity: float = 0.6, seed: int = 1):
    """Random whole blocks of ``pattern`` (a 32x16 block mask is also a 16x16 one: both bsr packings skip work)."""
    from lipdeploy.patterns import PATTERNS

    def edit(masks):
        gen = torch.Generator().manual_seed(seed + 7)
        masks.update(PATTERNS[pattern].random_masks({k: v.shape for k, v in masks.items()}, sparsity, gen))

    return _ticket(BLOCKY, sparsity, seed=seed, edit=edit)


def _pricing_timer(monkeypatch, costs: dict[str, float]):
    """A timer that runs the candidate and prices what actually ran: ``costs["bsr16x16"]`` / ``costs["bsr32x16"]``
    for a BsrConv2d of that block, ``costs[format]`` for a SparseConv2d, ``costs["dense"]`` otherwise."""
    from lipdeploy.kernels import BsrConv2d

    ran: list[str] = []
    bsr_forward, sparse_forward = BsrConv2d.forward, SparseConv2d.forward

    def bsr_spy(self, x, bn_stats=False):
        ran.append(f"bsr{self.block[0]}x{self.block[1]}")
        return bsr_forward(self, x, bn_stats)

    def sparse_spy(self, x):
        ran.append(self.format)
        return sparse_forward(self, x)

    monkeypatch.setattr(BsrConv2d, "forward", bsr_spy)
    monkeypatch.setattr(SparseConv2d, "forward", sparse_spy)

    def timer(fn):
        ran.clear()
        fn()
        return costs[ran[-1]] if ran else costs["dense"]

    return timer


def test_auto_dispatch_picks_bsr_for_block_sparse_layers_when_cheapest(tmp_path, monkeypatch):
    """The dispatcher with the bsr backends among its candidates (CPU, Triton interpreter, a timer pricing what ran):
    the cheapest candidate wins per block-sparse layer, layers without empty blocks never time bsr, dense stays
    within the margin, and the output is the masked network's."""
    pytest.importorskip("triton")
    from lipdeploy.backends import BACKENDS
    from lipdeploy.backends.bsr import MIN_EMPTY_BLOCKS
    from lipdeploy.backends.sparsify import _dispatch
    from lipdeploy.kernels import BsrConv2d

    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path))
    ticket = _block_ticket()
    x = make_input(BLOCKY, 8, 8)
    want = ticket.build()(x).detach()
    backends = [BACKENDS[n] for n in ("triton-bsr", "triton-bsr32x16", "triton-csr")]
    layers = compact(ticket).convs
    worth = {n: {k for k, la in layers.items() if BACKENDS[n].empty_fraction(la) >= MIN_EMPTY_BLOCKS}
             for n in ("triton-bsr", "triton-bsr32x16")}  # fmt: skip
    assert worth["triton-bsr32x16"] and worth["triton-bsr32x16"] <= worth["triton-bsr"]
    assert all(layers[k].pattern.startswith("block") for k in worth["triton-bsr"])

    costs = {"dense": 2.0, "csr": 1.95, "bsr16x16": 1.2, "bsr32x16": 1.0}
    net = _dispatch(compact(ticket), x, backends, "forward", timer=_pricing_timer(monkeypatch, costs))
    picked = {k: m.block for k, m in net.ops.items() if isinstance(m, BsrConv2d)}
    assert picked == {k: (32, 16) if k in worth["triton-bsr32x16"] else (16, 16) for k in worth["triton-bsr"]}
    assert all(net.ops[k].config is not None for k in picked)
    # the other layers had no bsr candidate; csr is not faster than dense by the margin there (1.95 * 1.05 > 2)
    assert set(sparse_layers(net)) == {f"ops.{k}" for k in picked} and len(picked) < len(layers)
    with torch.no_grad():
        assert (net(x) - want).abs().max().item() <= 1e-5
    entries = __import__("json").loads((tmp_path / "backend_choice.json").read_text())
    chosen = {k: e for k, e in entries.items() if e["choice"].startswith("triton-bsr32x16:bsr.")}
    assert chosen and all(any(n.startswith("triton-bsr:") for n in e["ms"]) for e in chosen.values())  # both timed
    assert all("-block" in k for k in chosen)  # the cache key names the layer's pattern

    # 16x16 cheapest: it wins; a sparse candidate within the margin of dense: dense stays
    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path / "b16"))
    costs16 = {"dense": 2.0, "csr": 3.0, "bsr16x16": 1.0, "bsr32x16": 1.5}
    net16 = _dispatch(compact(ticket), x, backends, "forward", timer=_pricing_timer(monkeypatch, costs16))
    assert {m.block for m in net16.modules() if isinstance(m, BsrConv2d)} == {(16, 16)}
    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path / "close"))
    close = {"dense": 1.0, "csr": 3.0, "bsr16x16": 0.97, "bsr32x16": 0.98}
    kept = _dispatch(compact(ticket), x, backends, "forward", timer=_pricing_timer(monkeypatch, close))
    assert not sparse_layers(kept)
    with torch.no_grad():
        assert (kept(x) - want).abs().max().item() <= 1e-5


def test_auto_dispatch_fit_workload_trains_the_picked_bsr_layers(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    from lipdeploy.backends import BACKENDS
    from lipdeploy.backends.sparsify import _dispatch
    from lipdeploy.kernels import BsrConv2d

    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path))
    ticket = _block_ticket("block", 0.7, seed=2)
    x = make_input(BLOCKY, 8, 8)
    costs = {"dense": 2.0, "bsr16x16": 1.0}
    net = _dispatch(compact(ticket), x, [BACKENDS["triton-bsr"]], "fit", timer=_pricing_timer(monkeypatch, costs))
    picked = [m for m in net.modules() if isinstance(m, BsrConv2d)]
    assert picked
    out = net(x)
    assert (out - ticket.build()(x)).abs().max().item() <= 1e-5
    out.square().mean().backward()
    assert all(m.values.grad is not None and bool((m.values.grad[~m.elem_mask] == 0).all()) for m in picked)


def test_auto_dispatch_times_a_backend_added_after_a_layer_was_tuned(tmp_path, monkeypatch):
    """A verdict cached before bsr was a candidate must not hide it: the layers are timed again once bsr is offered
    (the cache stores which candidates it timed), and then reused; an entry without that list is timed again."""
    pytest.importorskip("triton")
    import json

    from lipdeploy.backends import BACKENDS
    from lipdeploy.backends.bsr import MIN_EMPTY_BLOCKS
    from lipdeploy.backends.sparsify import _dispatch
    from lipdeploy.kernels import BsrConv2d

    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path))
    ticket = _block_ticket("block", 0.7, seed=2)
    x = make_input(BLOCKY, 8, 8)
    layers = compact(ticket).convs
    worth = {k for k, la in layers.items() if BACKENDS["triton-bsr"].empty_fraction(la) >= MIN_EMPTY_BLOCKS}
    assert worth
    costs = {"dense": 2.0, "csr": 1.5, "bsr16x16": 1.0}
    csr, both = [BACKENDS["triton-csr"]], [BACKENDS["triton-csr"], BACKENDS["triton-bsr"]]

    before = _dispatch(compact(ticket), x, csr, "forward", timer=_pricing_timer(monkeypatch, costs))
    assert len(sparse_layers(before)) == len(layers)  # csr everywhere, the only sparse candidate then
    cache = tmp_path / "backend_choice.json"
    assert all(not any("bsr" in n for n in e["candidates"]) for e in json.loads(cache.read_text()).values())

    # bsr registered since: the layers with empty blocks are timed on it too, and it wins there
    after = _dispatch(compact(ticket), x, both, "forward", timer=_pricing_timer(monkeypatch, costs))
    assert {k for k, m in after.ops.items() if isinstance(m, BsrConv2d)} == worth
    entries = json.loads(cache.read_text())
    assert sum(any(n.startswith("triton-bsr:") for n in e["candidates"]) for e in entries.values()) >= 1

    # the same candidates again: cached, nothing timed (a timer that would keep everything dense is never asked)
    timed: list[str] = []
    slow = _pricing_timer(monkeypatch, {"dense": 0.1, "csr": 9.0, "bsr16x16": 9.0})
    again = _dispatch(compact(ticket), x, both, "forward", timer=lambda fn: (timed.append("x"), slow(fn))[1])
    assert not timed and {k for k, m in again.ops.items() if isinstance(m, BsrConv2d)} == worth
    # an entry that does not say which candidates it timed is not trusted: timed again (dense now wins everywhere)
    cache.write_text(json.dumps({k: {f: v for f, v in e.items() if f != "candidates"} for k, e in entries.items()}))
    untrusted = _dispatch(compact(ticket), x, both, "forward", timer=lambda fn: (timed.append("x"), slow(fn))[1])
    assert timed and not any(isinstance(m, BsrConv2d) for m in untrusted.ops.values())
