"""The backends registry and the compaction hand-off: one vocabulary."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from lipdeploy.backends import AUTO, BACKENDS, Backend, register, resolve, sparse_layers, sparsify
from lipdeploy.backends.sparsify import _dispatched
from lipdeploy.compaction import CompactLayer, compact
from lipdeploy.fit import FitConfig, fit, fit_backends, simulate
from lipdeploy.networks import SkipSpec, make_input
from lipdeploy.tasks import Denoise
from lipdeploy.testing import random_mask_ticket

TINY = SkipSpec(in_channels=4, channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2, 2))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registry_names_and_aliases():
    assert sorted(BACKENDS) == ["dense", "reference", "triton-bsr", "triton-bsr32x16", "triton-csr", "triton-kernel"]
    assert all(isinstance(b, Backend) and b.name == n and b.description for n, b in BACKENDS.items())
    # dense is the baseline, reference never
    assert [b.name for b in _dispatched()] == ["triton-bsr", "triton-bsr32x16", "triton-csr", "triton-kernel"]
    assert [b.name for b in _dispatched("csr")] == ["triton-csr"]
    assert resolve(AUTO) == AUTO and resolve("triton-csr") == "triton-csr"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve("torch")  # an implementation's name, not a backend
    with pytest.raises(ValueError, match="backend must be one of auto, dense"):
        resolve("cudnn")
    with pytest.raises(ValueError, match="already registered"):
        register(BACKENDS["dense"])
    assert fit_backends() == [
        "auto", "masked", "sparse", "dense", "reference", "triton-bsr", "triton-bsr32x16", "triton-csr", "triton-kernel"
    ]  # fmt: skip


def test_compact_layers_are_the_hand_off():
    ticket = random_mask_ticket(TINY, 0.7, seed=1)
    net = compact(ticket)
    assert net.convs and set(net.convs) <= set(net.ops)
    ref = ticket.build()
    for key, layer in net.convs.items():
        conv = net.ops[key]
        assert isinstance(layer, CompactLayer) and layer.key == key and layer.kind == "conv"
        assert layer.weight is conv.weight and layer.bias is conv.bias  # the module's own tensors
        assert (layer.out_channels, layer.in_channels, layer.kernel_size, layer.kernel_size) == tuple(conv.weight.shape)
        assert layer.mask.dtype == torch.bool and layer.mask.shape == conv.weight.shape
        want = ref.get_submodule(layer.reference).weight.detach()[layer.rows][:, layer.cols] * layer.mask
        assert torch.equal(conv.weight.detach(), want)
        assert layer.pattern in ("unstructured", "kernel", "channel") or layer.pattern.startswith("block")
    assert sum(la.is_output_layer for la in net.convs.values()) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.stride = 2


def test_explicit_backends_by_registry_name():
    ticket = random_mask_ticket(TINY, 0.7, seed=2)
    x = make_input(TINY, 16, 16)
    want = ticket.build()(x).detach()
    dense = sparsify(ticket, backend="dense")
    assert not sparse_layers(dense) and any(isinstance(m, nn.Conv2d) for m in dense.modules())
    ref = sparsify(ticket, backend="reference", format="kernel")
    layers = [m for m in ref.modules() if type(m).__name__ == "SparseConv2d"]
    assert layers and all(m.format == "kernel" and m.implementation == "torch" for m in layers)
    with torch.no_grad():
        assert (dense(x) - want).abs().max().item() <= 1e-5 and (ref(x) - want).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="contradicts"):
        sparsify(ticket, backend="triton-csr", format="kernel")
    with pytest.raises(ValueError, match="format applies"):
        sparsify(ticket, backend="dense", format="csr")


def test_fit_runs_a_registered_backend_and_rejects_unknown_ones():
    ticket = random_mask_ticket(TINY, 0.7, seed=3)
    clean = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    obs = simulate(Denoise(), clean, seed=0)
    a = fit(ticket, obs, FitConfig(iters=3, backend="dense"), gt=clean)
    b = fit(ticket, obs, FitConfig(iters=3, backend="reference"), gt=clean)
    assert (a.output - b.output).abs().max() < 1e-3  # float32 rounding, amplified a little by Adam
    assert any(k.endswith(".values") for k in b.state_dict)  # the compacted network's sparse modules were fitted
    from lipdeploy.errors import InputError

    with pytest.raises(InputError, match="backend must be one of"):
        fit(ticket, obs, FitConfig(iters=1, backend="cudnn"))


def test_importing_the_package_imports_no_triton():
    code = "import sys, lipdeploy; lipdeploy.sparsify; import lipdeploy.fit; assert 'triton' not in sys.modules"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------------ block-sparse (bsr)

BLOCKY = SkipSpec(in_channels=4, channels_down=(16, 32), channels_up=(16, 32), channels_skip=(4, 4))
"""Wide enough for whole 16x16 and 32x16 blocks (and partial edge blocks: the 4-channel skips, the 3 colours)."""


def block_ticket(spec=BLOCKY, sparsity: float = 0.6, pattern: str = "block", seed: int = 1):
    """A ticket whose masks are random whole blocks of ``pattern`` (on the randomised weights of random_mask_ticket)."""
    from lipdeploy.patterns import PATTERNS

    def edit(masks):
        gen = torch.Generator().manual_seed(seed + 7)
        masks.update(PATTERNS[pattern].random_masks({k: v.shape for k, v in masks.items()}, sparsity, gen))

    return random_mask_ticket(spec, sparsity, seed=seed, edit=edit)


def test_bsr_backends_support_any_conv_but_offer_configs_only_where_blocks_are_empty():
    from lipdeploy.backends.bsr import MIN_EMPTY_BLOCKS, BsrBackend

    bsr16, bsr32 = BACKENDS["triton-bsr"], BACKENDS["triton-bsr32x16"]
    assert isinstance(bsr16, BsrBackend) and bsr16.block == (16, 16) and bsr32.block == (32, 16)
    assert bsr16.sparse and bsr16.dispatched and bsr16.fuses_reflection_pad
    unstructured = compact(random_mask_ticket(BLOCKY, 0.9, seed=4))
    blocky = compact(block_ticket())
    cpu = torch.device("cpu")
    for layer in (*unstructured.convs.values(), *blocky.convs.values()):
        assert bsr16.supports(layer) and bsr32.supports(layer)  # the packing is exact for any mask
    # 90% unstructured leaves (next to) no 16x16 block empty: nothing to skip, nothing to time
    assert all(bsr16.configs(la, 64, cpu) == [] for la in unstructured.convs.values())
    with_empty = [la for la in blocky.convs.values() if bsr16.empty_fraction(la) >= MIN_EMPTY_BLOCKS]
    assert with_empty and all(la.pattern.startswith("block") for la in with_empty)
    if importlib.util.find_spec("triton") is not None:
        assert all(len(bsr16.configs(la, 64, cpu)) == 1 for la in with_empty)  # CPU: the interpreter's default


def test_sparsify_on_bsr_equals_the_masked_network_and_trains_kept_weights_only():
    """sparsify(backend="triton-bsr") through Triton's interpreter: output of the masked network, gradients equal to
    the masked dense layers' at kept weights and exactly zero at pruned positions inside kept blocks."""
    pytest.importorskip("triton")
    from lipdeploy.kernels import BsrConv2d

    ticket = block_ticket()
    x = make_input(BLOCKY, 8, 8)
    net = sparsify(ticket, backend="triton-bsr")
    dense = sparsify(ticket, backend="dense")
    mods = {k: m for k, m in net.ops.items() if isinstance(m, BsrConv2d)}
    assert mods and len(sparse_layers(net)) == len(mods) == len(dense.convs)
    assert all(m.block == (16, 16) and m.precision == "tf32" and m.implementation == "triton" for m in mods.values())
    assert any(m.num_blocks < _all_blocks(m) for m in mods.values())  # whole blocks are skipped
    out = net(x)
    want = ticket.build()(x)
    assert (out - want).abs().max().item() <= 1e-5
    out.square().mean().backward()
    dense(x).square().mean().backward()
    for key, m in mods.items():
        layer = dense.convs[key]
        g = m.values.grad
        assert g is not None and bool((g[~m.elem_mask] == 0).all()), key  # pruned positions never move
        got = m.packed().with_values(g).to_dense()
        want_g = layer.weight.grad * layer.mask
        assert torch.allclose(got, want_g, atol=1e-5, rtol=1e-4), key
        assert bool((got[~layer.mask] == 0).all()), key


def _all_blocks(m) -> int:
    nbo, nbi = -(-m.shape[0] // m.block[0]), -(-m.shape[1] // m.block[1])
    return nbo * nbi * m.shape[2] * m.shape[3]
