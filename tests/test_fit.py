"""The fitting engine: real restoration, exact masks, backtracking, labelled metrics, the three tasks."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from lipdeploy.fit import BEST_LABEL, FINAL_LABEL, FitConfig, fit, simulate
from lipdeploy.images import standard_image
from lipdeploy.imp import prune
from lipdeploy.networks import DeepDecoderSpec, make_input
from lipdeploy.tasks import Denoise, Inpaint, Observation, SuperResolution
from lipdeploy.testing import tiny_skip
from lipdeploy.ticket import ticket_from_model


@pytest.fixture(scope="module")
def patch() -> torch.Tensor:
    return standard_image("coffee")[:, :, 100:164, 200:264].contiguous()


def dense_ticket(spec=None, seed=0):
    spec = spec or tiny_skip()
    torch.manual_seed(seed)
    model = spec.build()
    masks = {n: torch.ones_like(p) for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 4}
    return ticket_from_model(model, spec, masks)


def test_denoising_raises_psnr_well_above_the_noisy_input(patch):
    obs = simulate(Denoise(), patch, seed=0)
    # 60 iterations on a 64x64 patch (measured: 27.2 dB at 40, 28.8 dB at 80, from 20.6 dB); ema 0.9 because
    # 0.99 lags behind at so few steps
    res = fit(dense_ticket(), obs, FitConfig(iters=60, ema=0.9, log_every=20), gt=patch)
    assert res.input_psnr == pytest.approx(20.6, abs=0.5)
    assert res.psnr_best > res.input_psnr + 5
    assert res.psnr_final > res.input_psnr + 4
    assert res.psnr_best >= res.psnr_final - 1e-6
    assert 1 <= res.best_iter <= 60
    assert 0 < res.ssim_final <= 1 and res.ssim_best is not None
    assert res.output.shape == patch.shape and res.best_output.shape == patch.shape
    assert [h["iter"] for h in res.history] == [20, 40, 60]
    rec = res.metrics_record()
    assert rec["psnr_best_label"] == BEST_LABEL and "oracle" in BEST_LABEL
    assert rec["psnr_final_label"] == FINAL_LABEL and "final iteration" in FINAL_LABEL
    assert res.step_ms > 0 and len(res.step_times) == 60


def test_pruned_weights_stay_exactly_zero_and_kept_ones_train():
    ticket = dense_ticket()
    w = {n: ticket.init[n] for n in ticket.masks}
    masks = prune(w, ticket.masks, 0.6, random=True, generator=torch.Generator().manual_seed(0))
    ticket = ticket.replace(masks=masks)
    clean = torch.rand(1, 3, 32, 32)
    res = fit(ticket, Denoise().observe(clean), FitConfig(iters=12))
    changed = kept = 0
    for name, m in masks.items():
        fitted = res.state_dict[name]
        assert torch.count_nonzero(fitted[m == 0]) == 0, name
        # kept weights move (a few get zero gradient: inputs that random pruning left constant, hence 0 after BN)
        layer_changed = int((fitted[m == 1] != ticket.init[name][m == 1]).sum())
        assert layer_changed > 0.5 * int(m.sum()), name
        changed, kept = changed + layer_changed, kept + int(m.sum())
    assert changed > 0.9 * kept
    # a bare module with masks is fitted in place, masks enforced too
    model = ticket.arch.build()
    model.load_state_dict(ticket.init)
    res2 = fit(model, Denoise().observe(clean), FitConfig(iters=5), masks=masks, arch=ticket.arch)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert torch.count_nonzero(params[name].detach()[m == 0]) == 0
    assert res2.psnr_best is None and res2.psnr_final is None


class _Direct(nn.Module):
    """A 'network' whose output is its own parameter: lets a test corrupt the weights at a chosen step."""

    def __init__(self, shape):
        super().__init__()
        self.img = nn.Parameter(torch.full(shape, 0.5))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 30:
            with torch.no_grad():
                self.img.fill_(40.0)  # a blow-up: PSNR to the observation collapses
        return torch.sigmoid(self.img * 4 - 2)


def test_backtracking_restores_last_good_weights():
    target = torch.rand(1, 3, 16, 16) * 0.6 + 0.2
    obs = Denoise().observe(target)
    model = _Direct(target.shape)
    x = torch.zeros(1, 1, 16, 16)
    res = fit(model, obs, FitConfig(iters=60, lr=0.05, ema=0.0), net_input=x, gt=target)
    assert res.backtracks == 1
    assert float(model.img.detach().abs().max()) < 10  # the corrupted weights were replaced by the snapshot
    assert res.psnr_final > 20
    res_off = fit(_Direct(target.shape), obs, FitConfig(iters=60, lr=0.05, ema=0.0, backtrack_db=0), net_input=x)
    assert res_off.backtracks == 0


def test_inpainting_and_super_resolution_fits(patch):
    small = patch[:, :, :32, :32].contiguous()
    t = dense_ticket()
    res = fit(t, simulate(Inpaint(), small, 0), FitConfig(iters=8), gt=small)
    assert res.output.shape == small.shape and math.isfinite(res.psnr_final)
    assert res.input_noise_std == 0.03
    sr = SuperResolution(factor=4)
    obs = simulate(sr, patch, 0)
    res = fit(t, obs, FitConfig(iters=6), gt=patch)
    assert res.output.shape == (1, 3, 64, 64)
    assert res.metric_label.startswith("PSNR/SSIM on Y")
    assert res.psnr_final == pytest.approx(sr.psnr_t(res.output, patch).item(), abs=1e-4)


def test_deep_decoder_and_rewind_snapshots():
    spec = DeepDecoderSpec(k=8, depth=3)
    t = dense_ticket(spec)
    clean = torch.rand(1, 3, 32, 32)
    res = fit(t, Observation("denoise", clean, (32, 32)), FitConfig(iters=6), snapshot_at={0, 3, 6})
    assert set(res.snapshots) == {0, 3, 6}
    for k, v in t.init.items():
        assert torch.equal(res.snapshots[0][k], v)
    assert not torch.equal(res.snapshots[3]["1.1.weight"], t.init["1.1.weight"])
    assert torch.equal(res.snapshots[6]["1.1.weight"], res.state_dict["1.1.weight"])
    assert make_input(spec, 32, 32).shape == (1, 8, 4, 4)


def test_sparse_backend_fits_like_the_masked_network():
    """backend="sparse": the compacted network (+ sparse kernels where faster) fits the same as the masked one."""
    from lipdeploy.testing import pruned_model

    spec = tiny_skip()
    model, _ = pruned_model(spec, 0.7)
    ticket = ticket_from_model(model, spec)
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    obs = simulate(Denoise(), clean, seed=0)
    cfg = dict(iters=8, log_every=4)
    masked = fit(ticket, obs, FitConfig(backend="masked", **cfg), gt=clean)
    sparse = fit(ticket, obs, FitConfig(backend="sparse", **cfg), gt=clean)
    assert (masked.output - sparse.output).abs().max() < 1e-4
    # on CPU the compacted network's convs stay dense: their masks hold through fitting, kept weights move
    from lipdeploy.compaction import compact

    layout = compact(ticket)
    moved = 0
    for key, layer in layout.convs.items():
        fitted = sparse.state_dict[f"ops.{key}.weight"]
        assert bool((fitted[~layer.mask.bool()] == 0).all())
        moved += int((fitted != layout.ops[key].weight.detach()).sum())
    assert moved > 0


def test_dense_backend_fits_the_compacted_network_like_the_masked_one():
    """backend="dense" is the registered backend (``lipdeploy.backends.BACKENDS["dense"]``): the compacted network,
    every conv PyTorch's; it fits a ticket as the masked network does, in the compacted layout, pruned weights zero.
    backend="masked" keeps the reference layout (what IMP prunes from)."""
    from lipdeploy.compaction import compact
    from lipdeploy.testing import pruned_model

    spec = tiny_skip()
    model, _ = pruned_model(spec, 0.7)
    ticket = ticket_from_model(model, spec)
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    obs = simulate(Denoise(), clean, seed=0)
    cfg = dict(iters=8, log_every=4)
    masked = fit(ticket, obs, FitConfig(backend="masked", **cfg), gt=clean)
    dense = fit(ticket, obs, FitConfig(backend="dense", **cfg), gt=clean)
    assert (masked.output - dense.output).abs().max() < 1e-4
    assert abs(masked.psnr_best - dense.psnr_best) < 1e-3
    assert set(masked.state_dict) == set(ticket.build().state_dict())  # the reference layout
    layout = compact(ticket)
    assert layout.convs and all(f"ops.{key}.weight" in dense.state_dict for key in layout.convs)
    moved = 0
    for key, layer in layout.convs.items():
        fitted = dense.state_dict[f"ops.{key}.weight"]
        assert bool((fitted[~layer.mask.bool()] == 0).all())
        moved += int((fitted != layout.ops[key].weight.detach()).sum())
    assert moved > 0


def test_history_logs_elapsed_seconds():
    spec = tiny_skip()
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = fit(spec.build(), simulate(Denoise(), clean, seed=0), FitConfig(iters=6, log_every=2), gt=clean, arch=spec)
    times = [h["seconds"] for h in res.history]
    assert len(times) == 3 and times == sorted(times) and 0 < times[-1] <= res.seconds


def _masked_step(pruned_too: bool = True):
    """An eager step on a tiny ticket with 60% of its weights pruned at random; its model, masks and parameters."""
    from lipdeploy.fit import EagerStep
    from lipdeploy.fit_result import PrunedGradients
    from lipdeploy.masks import apply_masks_

    ticket = dense_ticket()
    w = {n: ticket.init[n] for n in ticket.masks}
    masks = prune(w, ticket.masks, 0.6, random=True, generator=torch.Generator().manual_seed(0))
    model = ticket.replace(masks=masks).build("init", bn="image").train()
    apply_masks_(model, masks)
    params = dict(model.named_parameters())
    pruned = PrunedGradients({params[n]: m for n, m in masks.items()} if pruned_too else None)
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    task = Denoise()
    step = EagerStep(
        model, simulate(task, clean, 0), task, make_input(ticket.arch, 32, 32), FitConfig(iters=4),
        input_noise_std=task.input_noise_std, generator=torch.Generator().manual_seed(1), gt=clean, pruned=pruned,
    )  # fmt: skip
    return step, masks, params


def test_pruned_gradients_are_exactly_zero_and_pruned_weights_stay_zero():
    """The step masks the gradients of pruned weights after backward (one fused pass): exactly zero there, not
    elsewhere, and the pruned weights are still exactly zero after Adam steps."""
    step, masks, params = _masked_step()
    assert len(step.pruned) == len(masks)
    for _ in range(4):
        step.run()
        for name, m in masks.items():
            grad = params[name].grad
            assert torch.count_nonzero(grad[m == 0]) == 0, name
            assert torch.count_nonzero(grad[m == 1]) > 0.5 * int(m.sum()), name
            assert torch.count_nonzero(params[name].detach()[m == 0]) == 0, name
    # without the masking the same positions do get gradients: the check above can fail
    bare, masks, params = _masked_step(pruned_too=False)
    bare.run()
    assert all(torch.count_nonzero(params[n].grad[m == 0]) > 0 for n, m in masks.items())


def test_pruned_gradients_equal_the_gradient_hooks_bit_for_bit():
    """The fused pass gives exactly the gradients a per-layer hook (grad * mask) gives, and skips full masks."""
    from lipdeploy.bench.cpu.masked_step import mask_with_hooks
    from lipdeploy.fit_result import PrunedGradients

    torch.manual_seed(0)
    spec = tiny_skip()
    model = spec.build().train()
    masks = {n: (torch.rand_like(p) > 0.7).float() for n, p in model.named_parameters() if p.dim() == 4}
    first = next(iter(masks))
    masks[first] = torch.ones_like(masks[first])
    x = make_input(spec, 32, 32)
    grads = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        params = dict(model.named_parameters())
        handles = [] if fused else mask_with_hooks(model, masks)
        pruned = PrunedGradients({params[n]: m for n, m in masks.items()} if fused else None)
        model(x).square().mean().backward()
        pruned()
        grads.append({n: params[n].grad.clone() for n in masks})
        for h in handles:
            h.remove()
    assert len(pruned) == len(masks) - 1  # the full mask is left out
    for name in masks:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_fit_config_checks_every_field_where_it_is_declared():
    from lipdeploy.errors import InputError
    from lipdeploy.fit_config import check_settings

    for bad, message in [
        (dict(iters=0), "iters must be >= 1"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(ema=1.0), "ema must be in [0, 1)"),
        (dict(ema_mode="mean"), "ema_mode must be one of paper, debiased"),
        (dict(input_noise_std=-0.1), "input_noise_std must be >= 0"),
        (dict(check_every=0), "check_every must be >= 1"),
        (dict(capture="graph"), "capture must be one of"),
        (dict(seed=-1), "seed must be an integer"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            FitConfig(**bad)
    config = FitConfig(iters=5)
    config.iters = 0  # changed after it was made: fit checks again
    with pytest.raises(InputError, match="iters must be >= 1"):
        check_settings(config)
    with pytest.raises(InputError, match="iters must be >= 1"):
        fit(dense_ticket(), Denoise().observe(torch.rand(1, 3, 32, 32)), config)


def test_commands_take_fit_options_from_the_config_fields():
    """restore, find and bench generate --iters & co. from FitConfig's fields: the defaults shown are the fields'
    (restore's --iters names the generator's too), a bad value is one error line naming the flag."""
    from click.testing import CliRunner

    from lipdeploy.cli import cli
    from lipdeploy.latent_fit import LatentFitConfig

    runner = CliRunner()
    restore_help = " ".join(runner.invoke(cli, ["restore", "--help"]).output.split())
    assert f"{FitConfig.iters}, the paper's; {LatentFitConfig.iters} with a generator" in restore_help
    assert f"--lr FLOAT Adam learning rate. [default: {FitConfig.lr}]" in restore_help
    assert "--ema-mode [paper|debiased]" in restore_help and "[default: debiased]" in restore_help
    find_help = " ".join(runner.invoke(cli, ["find", "--help"]).output.split())
    assert f"Fitting iterations per round. [default: {FitConfig.iters}]" in find_help
    for args, message in [
        (["restore", "x.png", "--task", "denoise", "--iters", "0", "-o", "x.png"], "--iters must be >= 1, got 0"),
        (["restore", "x.png", "--task", "denoise", "--ema", "1", "-o", "x.png"], "--ema must be in [0, 1), got 1.0"),
        (["find", "x.png", "--task", "denoise", "--lr", "inf", "-o", "d"], "--lr must be a finite number"),
        (["bench", "--imp-iters", "0", "-o", "d"], "--imp-iters must be >= 1, got 0"),
    ]:
        r = runner.invoke(cli, args)
        assert r.exit_code == 2 and r.output.strip().startswith(f"error: {message}"), r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_masked_step_benchmark_runs(tmp_path):
    """bench/cpu/masked_step.py end to end at a toy scale: one row per size with the three variants' times and the
    within-round ratios."""
    import json

    from lipdeploy.bench.cpu import masked_step

    out = tmp_path / "masked.json"
    masked_step.main(["--sizes", "64", "--rounds", "3", "--channels", "4", "-o", str(out)])
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert data["complete"] and row["size"] == 64 and 0.05 < row["density"] < 0.2
    for clock in ("cpu", "wall"):
        assert all(row[f"{clock}_{v}_ms"] > 0 for v in masked_step.VARIANTS)
        q1, q3 = row[f"{clock}_masked_fused_over_dense_quartiles"]
        assert 0 < q1 <= row[f"{clock}_masked_fused_over_dense_ratio"] <= q3
