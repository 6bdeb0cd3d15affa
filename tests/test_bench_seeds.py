"""Seeds as a dimension of ``lipdeploy bench`` (issue 25): the plan repeats every fit per seed, a run resumes per
seed, rows carry seed and threads, and the report pairs by (image, seed), reads intervals and states its noise floor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipdeploy.bench.harness import Bench, RowStore, plan
from lipdeploy.bench.harness.presets import PRESETS
from lipdeploy.bench.harness.workspace import Workspace
from lipdeploy.bench.verdicts import comparison_table, noise_floor, threads_note
from lipdeploy.networks import SkipSpec
from lipdeploy.tasks import make_task

TINY_NET = SkipSpec(in_channels=8, channels_down=(8,) * 5, channels_up=(8,) * 5, channels_skip=(2,) * 5)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_seeds_repeat_every_fit_and_keep_the_first_seed_s_keys():
    ci = PRESETS["ci"]
    one = plan(ci, runners=[])
    three = plan(ci.replace(seeds=3), runners=[])
    fits = [j for j in one if j.kind in ("quality", "transfer")]
    assert len(three) == len(one) + 2 * len(fits)
    keys = [j.key for j in three]
    assert set(j.key for j in one) <= set(keys)  # seed 0 keeps the keys folders were measured with
    i = keys.index("quality/dense/astronaut")
    assert keys[i + 1 : i + 3] == ["quality/dense/astronaut/seed1", "quality/dense/astronaut/seed2"]
    assert [j.seed for j in three[i : i + 3]] == [0, 1, 2]
    assert sum(k.startswith("find/") for k in keys) == sum(j.kind == "find" for j in one)  # tickets are not re-found


def test_keep_jobs_orders_the_plan_and_chains_stop_at_the_last_kept_ticket():
    ev = PRESETS["evidence"]
    jobs = plan(ev, runners=[])
    keys = [j.key for j in jobs]
    assert keys[0] == "quality/dense@denoise/astronaut" and len(keys) == len(set(keys))
    # every comparison on astronaut before any of coffee's LIP fits
    last_astronaut = max(
        i for i, k in enumerate(keys) if k.endswith(("astronaut", "astronaut/seed1", "astronaut/seed2"))
    )
    first_coffee_fit = min(i for i, k in enumerate(keys) if "/coffee" in k and "dense" not in k)  # fitted on coffee
    assert last_astronaut < first_coffee_fit
    assert all(j.seed in (0, 1, 2) for j in jobs if j.kind != "find")
    ws = Workspace(ev, Path("unused"), make_task(ev.task), None, None)  # type: ignore[arg-type]
    assert ws.max_rounds("unstructured@denoise") == 20
    assert ws.max_rounds("unstructured@inpaint") == 14  # its 95.6% ticket is the sparsest kept
    assert ws.max_rounds("block@denoise") == 10 and ws.max_rounds("channel-norm@denoise") == 4


def test_a_run_with_more_seeds_runs_only_the_new_seeds(tmp_path):
    preset = PRESETS["ci"].replace(
        name="test-seeds", net=TINY_NET, images=("astronaut",), iters=4, dd_ks=(16,), rounds=(1,),
        structured_rounds=(), granularities=("unstructured",), transfer=False, latency_methods=(), memory_probe=False,
        onnx_sizes=False, log_every=2, keep_jobs=("quality/dense/*", "quality/dd-k16/*"),
    )  # fmt: skip
    first = Bench(preset, tmp_path, runners=[]).run(progress=False)
    assert first.ran == 2 and first.failed == []
    again = Bench(preset.replace(name="test-seeds", seeds=3), tmp_path, runners=[]).run(progress=False)
    assert again.ran == 4 and again.skipped == 2  # seeds 1 and 2 of both methods; seed 0 was done
    rows, _ = RowStore.read_all(tmp_path)
    psnr = {(r["method"], r["seed"]): r["value"] for r in rows if r["metric"] == "psnr_best"}
    assert set(psnr) == {(m, s) for m in ("dense", "dd-k16") for s in (0, 1, 2)}
    assert len({psnr[("dense", s)] for s in (0, 1, 2)}) == 3  # the seed changes the fit
    assert {r["threads"] for r in rows if r["metric"] == "psnr_best"} == {1}
    assert (tmp_path / "curves" / "dense__astronaut__seed2.json").is_file()
    assert (tmp_path / "curves" / "dense__astronaut.json").is_file()  # seed 0's curve keeps its name


def _row(method, image, seed, value, **extra):
    return {"method": method, "image": image, "seed": seed, "metric": "psnr_best", "value": value, **extra}


def test_noise_floor_and_paired_comparisons():
    rows = []
    for s, (d, lip) in enumerate([(30.0, 29.9), (30.2, 30.0), (29.8, 29.8)]):
        rows += [_row("dense", "a", s, d), _row("lip-unstructured-89", "a", s, lip, sparsity=0.89)]
        rows += [_row("dense", "b", s, d - 2), _row("lip-unstructured-89", "b", s, lip - 2.1, sparsity=0.89)]
    nf = noise_floor(rows)
    # dense per image: 30.0 / 30.2 / 29.8 -> sd 0.2 on both images; the LIP: 29.9 / 30.0 / 29.8 -> sd 0.1
    assert nf["fit_sd"] == pytest.approx(((0.04 * 2 + 0.01 * 2) / 4) ** 0.5)
    assert nf["fit_df"] == 8 and nf["fit_groups"] == 4 and nf["seeds"] == 3
    # differences lip - dense: -0.1 / -0.2 / 0.0 on a, -0.2 / -0.3 / -0.1 on b: sd 0.1 within each image
    assert nf["diff_sd"] == pytest.approx(0.1) and nf["diff_df"] == 4
    table = "\n".join(comparison_table(rows))
    assert "| lip-unstructured-89 - dense | within 0.5 dB of dense | >= -0.5 | -0.15 [" in table
    assert "| 6: 2 image(s) x 3 seed(s) | t | holds |" in table


def test_mixed_thread_counts_are_reported():
    same = [_row("dense", "a", 0, 30.0, threads=1), _row("dense", "b", 0, 28.0, threads=1)]
    assert threads_note(same) == []
    mixed = [*same, _row("dense", "c", 0, 27.0, threads=2), _row("dense", "d", 0, 27.0)]
    (note,) = [ln for ln in threads_note(mixed) if ln]
    assert "1 thread(s): 2 fits" in note and "2 thread(s): 1 fits" in note and "not recorded thread(s): 1" in note
