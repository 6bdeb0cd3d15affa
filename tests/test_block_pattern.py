"""Block granularity: Bo x Bi channel blocks of one kernel tap; edge blocks, scores, IMP, random baseline, validation
on load, and exactness of compaction, ``inspect`` data and ONNX export for random block masks (dead layers included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipdeploy.analysis import block_report, block_stats
from lipdeploy.compaction import compact
from lipdeploy.errors import InputError
from lipdeploy.fit import FitConfig
from lipdeploy.images import standard_image
from lipdeploy.imp import ImpConfig, find_ticket, prune
from lipdeploy.masks import Mask, density, prunable_shapes
from lipdeploy.networks import SkipSpec, make_input
from lipdeploy.patterns import PATTERNS, block_pattern, detect, get_pattern, parse_block
from lipdeploy.tasks import Denoise
from lipdeploy.testing import randomize_
from lipdeploy.ticket import load_ticket, ticket_from_model

# 32-channel input, 20-channel encoder (a 16 + 4 edge), 4-channel skips, 3-channel output, 24-channel concat inputs
SPEC = SkipSpec(in_channels=32, channels_down=(20, 32), channels_up=(20, 32), channels_skip=(4, 4))
EDGE_SHAPES = [(3, 132, 3, 3), (4, 128, 1, 1), (128, 32, 3, 3), (128, 132, 3, 3), (20, 36, 1, 1)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(seed=0):
    torch.manual_seed(seed)
    return randomize_(SPEC.build(), seed)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in prunable_shapes(model)}


# ------------------------------------------------------------------------------------------------ registry, units


def test_registered_sizes_and_helpers():
    assert get_pattern("block") is get_pattern("block16x16") is block_pattern(16, 16)
    assert get_pattern("block").block == (16, 16) and get_pattern("block").name == "block"
    assert block_pattern(32, 16) is PATTERNS["block32x16"] and PATTERNS["block16x8"].block == (16, 8)
    assert all(PATTERNS[n].kernel_format == "bsr" and PATTERNS[n].description for n in ("block", "block32x16"))
    assert parse_block("32x16") == (32, 16)
    with pytest.raises(ValueError):
        parse_block("12x16")
    with pytest.raises(InputError, match="granularity must be one of block, block16x16, block16x8, block32x16"):
        ImpConfig(granularity="blocks")
    assert ImpConfig(granularity="block32x16").granularity == "block32x16"


@pytest.mark.parametrize("shape", EDGE_SHAPES)
@pytest.mark.parametrize("name", ["block", "block32x16", "block16x8"])
def test_units_fold_round_trip_with_edge_blocks(shape, name):
    p = PATTERNS[name]
    w = torch.randn(shape)
    u = p.units(w, "w", False)
    nbo, nbi, kk = p.grid(shape)
    assert u.shape == (nbo * nbi * kk, p.block[0] * p.block[1])
    assert torch.equal(p.fold(u, torch.Size(shape), "w", False), w)
    # unit (ob, ib, tap) holds exactly W[ob*Bo:(ob+1)*Bo, ib*Bi:(ib+1)*Bi, ky, kx]
    bo, bi = p.block
    ob, ib, t = nbo - 1, nbi - 1, kk - 1
    got = u[(ob * nbi + ib) * kk + t].reshape(bo, bi)
    edge = w[ob * bo :, ib * bi :, t // shape[3], t % shape[3]]
    assert torch.equal(got[: edge.shape[0], : edge.shape[1]], edge)
    assert float(got[edge.shape[0] :].abs().sum() + got[:, edge.shape[1] :].abs().sum()) == 0.0  # padding


def test_rms_score_does_not_favour_block_size():
    p = get_pattern("block")
    w = torch.full((20, 20, 1, 1), 0.5)  # one full 16x16 block, two edge blocks (16x4, 4x16) and a 4x4 corner
    m = torch.ones_like(w)
    s = p.scores(p.units(w, "w", False), p.units(m, "w", False))
    assert torch.allclose(s, torch.full_like(s, 0.5))


# ------------------------------------------------------------------------------------------------ IMP


@pytest.mark.parametrize("name", ["block", "block32x16", "block16x8"])
def test_imp_prunes_whole_blocks_everywhere(name):
    w = _weights(_model())
    ones = Mask.ones_like({n: t.shape for n, t in w.items()})
    masks = ones
    for k in range(1, 6):
        masks = prune(w, masks, 0.2, granularity=name)
        assert abs(density(masks) - 0.8**k) < 0.03, (name, k)
    p = PATTERNS[name]
    for n, m in masks.items():
        assert p.check(m, n) is None
        assert m.sum() > 0  # every layer keeps a block; the output conv keeps every colour
    last = list(masks)[-1]
    assert bool((masks[last].reshape(3, -1).sum(1) > 0).all())
    assert detect(masks) in {name, "block32x16"}  # a coarser block mask also fits a finer one's check
    # nothing silently left dense: every layer (edge blocks, 1x1 skips, the output conv) is prunable by blocks
    per_layer = prune(w, ones, 0.5, "layer", name)
    for n, m in per_layer.items():
        if p.units(m, n, False).shape[0] > 1:
            assert float(m.mean()) < 1.0 and p.check(m, n) is None, n
    # the random baseline removes the same number of weights per round (up to one block)
    rand = prune(w, ones, 0.2, granularity=name, random=True, generator=torch.Generator().manual_seed(0))
    mag = prune(w, ones, 0.2, granularity=name)
    assert abs(density(rand) - density(mag)) <= 16 * 16 * 9 / sum(t.numel() for t in w.values())
    assert all(p.check(m, n) is None for n, m in rand.items())


def test_block_check_and_validation_on_load(tmp_path):
    model = _model()
    w = _weights(model)
    masks = prune(w, Mask.ones_like(model), 0.5, granularity="block")
    bad = masks.copy()
    name = "1.1.1.1.weight"
    bad[name] = bad[name].clone()
    bad[name][0, 0, 0, 0] = 1 - bad[name][0, 0, 0, 0]
    reason = get_pattern("block").check(bad[name], name)
    assert reason is not None and "partly kept" in reason and name in reason
    good = ticket_from_model(model, SPEC, masks).replace(provenance={"granularity": "block", "block": [16, 16]})
    good.save(tmp_path / "good.pt")
    assert detect(load_ticket(tmp_path / "good.pt").masks) in ("block", "block32x16")
    ticket_from_model(model, SPEC, bad).replace(provenance={"granularity": "block"}).save(tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"bad\.pt.*granularity 'block'.*1\.1\.1\.1\.weight"):
        load_ticket(tmp_path / "bad.pt")
    # the same masks labelled unstructured load fine (no block promise)
    ticket_from_model(model, SPEC, bad).replace(provenance={"granularity": "unstructured"}).save(tmp_path / "u.pt")
    load_ticket(tmp_path / "u.pt")


def test_find_records_block_size(tmp_path):
    torch.manual_seed(0)
    model = SPEC.build()
    start = ticket_from_model(model, SPEC, Mask.ones_like(model))
    clean = standard_image("coffee")[:, :, 100:132, 200:232].contiguous()
    imp = ImpConfig(rounds=1, granularity="block32x16")
    paths = find_ticket(start, clean, Denoise(), tmp_path, imp, FitConfig(iters=2))
    t = load_ticket(paths[1])
    assert t.provenance["block"] == [32, 16] and t.provenance["settings"]["block"] == [32, 16]
    assert t.provenance["granularity"] == "block32x16" and "RMS" in t.provenance["pruning"]
    assert all(PATTERNS["block32x16"].check(m, n) is None for n, m in t.masks.items())
    assert block_report(t)["block"] == [32, 16]


# ------------------------------------------------------------------------------------------------ exactness


def random_block_ticket(seed: int, name: str = "block", dead: tuple[str, ...] = (), top: float = 1.0):
    """Random block masks with each layer's block sparsity drawn from 0-100% (0-``top``) (``dead`` layers: all blocks
    off)."""
    model = _model(seed)
    p = PATTERNS[name]
    gen = torch.Generator().manual_seed(seed)
    masks = Mask()
    for n, shape in prunable_shapes(model).items():
        ones = p.units(torch.ones(shape), n, False)
        draws = torch.rand(ones.shape[0], generator=gen)
        keep = draws >= top * float(torch.rand((), generator=gen))
        if top < 1.0:
            keep[draws.argmax()] = True
        if n in dead:
            keep[:] = False
        masks[n] = p.fold(ones * keep[:, None].float(), shape, n, False)
    return ticket_from_model(model, SPEC, masks).replace(provenance={"granularity": name})


DEAD = ("1.1.1.1.weight", "1.1.7.1.0.1.1.weight")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["block", "block16x8"])
def test_compaction_and_inspect_exact_on_random_block_masks(seed, name):
    ticket = random_block_ticket(seed, name, dead=DEAD if seed % 2 else ())
    x = make_input(SPEC, 32, 32, seed=3)
    for bn in ("running", "image"):
        with torch.no_grad():
            want = ticket.build(bn=bn).double()(x.double())
            got = compact(ticket, bn=bn)(x.clone())
        assert (got.double() - want).abs().max().item() <= 1e-5, bn
    p = PATTERNS[name]
    rows = block_stats(ticket, p.block)
    for row in rows:
        m = ticket.masks[row.name + ".weight"]
        bm = p.block_mask(m)
        assert row.kept_blocks == row.full_blocks == int(bm.sum()) and row.blocks == bm.numel()
        assert row.name + ".weight" not in DEAD or seed % 2 == 0 or row.kept_blocks == 0
        assert float(m.sum()) == pytest.approx(
            sum(  # kept weights = sum of kept blocks' real sizes
                float(u.sum()) for u, k in zip(p.units(torch.ones_like(m), "", False), bm.reshape(-1), strict=True) if k
            )
        )
    rep = block_report(ticket)
    assert rep["block"] == list(p.block)
    assert rep["totals"]["kept_blocks"] == sum(r.kept_blocks for r in rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_onnx_export_of_block_tickets_is_exact_and_one_bit_per_block(seed, tmp_path):
    from lipdeploy.export import export_onnx, ort_session

    ticket = random_block_ticket(seed, "block", dead=DEAD[1:] if seed else (), top=0.9)
    summary = export_onnx(ticket, tmp_path / "b.onnx")
    export_onnx(ticket, tmp_path / "d.onnx", weights_format="dense")
    assert summary.parity_max_abs <= 1e-4 and summary.sparse_vs_dense_max_abs == 0.0
    code = make_input(SPEC, 64, 96, seed=0).numpy()
    sess_b, sess_d = ort_session(str(tmp_path / "b.onnx")), ort_session(str(tmp_path / "d.onnx"))
    feed = {sess_b.get_inputs()[0].name: code}
    a, b = sess_b.run(None, feed)[0], sess_d.run(None, {sess_d.get_inputs()[0].name: code})[0]
    assert np.array_equal(a, b)
    assert any(p["encoding"].startswith("block") for p in summary.packed), [p["encoding"] for p in summary.packed]


def test_inspect_cli_reports_block_structure(tmp_path):
    """``lipdeploy inspect`` shows kept blocks per layer and the block density of a block ticket (table and JSON)."""
    import json

    from click.testing import CliRunner

    from lipdeploy.cli import cli

    model = _model(3)
    masks = PATTERNS["block16x8"].random_masks(prunable_shapes(model), 0.6, torch.Generator().manual_seed(3))
    ticket = ticket_from_model(model, SPEC, masks, source_format="test")
    ticket = ticket.replace(provenance={**ticket.provenance, "granularity": "block16x8", "block": [16, 8]})
    path = tmp_path / "block.pt"
    ticket.save(path)
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", str(path), "--size", "64x64", "--json"])
    assert res.exit_code == 0, res.output
    blocks = json.loads(res.output)["blocks"]
    expected = block_report(load_ticket(path))
    assert blocks == json.loads(json.dumps(expected)) and blocks["block"] == [16, 8]
    assert 0.0 < blocks["totals"]["block_density"] < 1.0
    table = runner.invoke(cli, ["inspect", str(path), "--size", "64x64"])
    assert table.exit_code == 0 and "blocks of 16x8 channels per tap" in table.output


def test_find_cli_block_option(tmp_path):
    """``find --granularity block --block 16x8`` prunes 16x8 blocks and records the size; --block alone is refused."""
    from click.testing import CliRunner

    from lipdeploy.cli import cli
    from lipdeploy.images import save_image

    img = tmp_path / "img.png"
    save_image(standard_image("astronaut")[..., 100:164, 180:244], img)
    runner = CliRunner()
    args = ["find", str(img), "--task", "denoise", "--channels", "16,16", "--rounds", "1", "--iters", "2", "-q"]
    res = runner.invoke(cli, [*args, "--granularity", "block", "--block", "16x8", "-o", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    ticket = load_ticket(tmp_path / "t" / "round_01.pt")
    assert ticket.provenance["granularity"] == "block16x8" and list(ticket.provenance["block"]) == [16, 8]
    bad = runner.invoke(cli, [*args, "--block", "16x8", "-o", str(tmp_path / "u")])
    assert bad.exit_code == 2 and "--block goes with --granularity block" in bad.output
