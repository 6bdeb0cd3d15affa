"""Smoke tests of the GPU benchmark scripts on CPU (Triton interpreter, narrow layers).

The scripts exist for the rare session with a GPU; a bug found there costs device time. These runs exercise every
code path (masks, formats, variants, JSON output) and check the numbers that do not depend on speed: the sparse
kernels' error against the reference, speedup columns consistent with the times, and one row per requested case.
"""

from __future__ import annotations

import json

import pytest

from lipdeploy.bench.gpu import layers as gpu_layers
from lipdeploy.bench.gpu import network as gpu_network


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gpu_layers_runs_on_cpu_and_writes_every_case(tmp_path):
    out = tmp_path / "layers.json"
    argv = ["--device", "cpu", "--channels", "4", "--sizes", "8", "--sparsities", "0.9", "-o", str(out)]
    argv += ["--layers", "conv3x3_128_s2", "conv3x3_132_s1", "--masks", "imp", "random"]
    assert gpu_layers.main(argv) == 0
    data = json.loads(out.read_text())
    assert "cpu" in data["meta"]["gpu"] and data["complete"] is True
    rows = data["rows"]
    cases = {(r["layer"], r["mask"], r["backend"], r["pass"]) for r in rows}
    for layer in ("conv3x3_128_s2", "conv3x3_132_s1"):
        for mask in ("imp", "random"):
            for backend in ("masked_dense", "triton_csr", "triton_kernel"):
                for p in ("fwd", "fwd+bwd"):
                    assert (layer, mask, backend, p) in cases
    dense = {(r["layer"], r["pass"]): r["ms"] for r in rows if r["backend"] == "dense"}
    for r in rows:
        assert r["ms"] > 0
        assert r["speedup_vs_dense"] == pytest.approx(dense[(r["layer"], r["pass"])] / r["ms"])
        if r["backend"].startswith("triton"):
            assert r["max_abs_err"] < 1e-5
        if r["backend"] == "triton_csr":  # the kernel format stores whole kernels (more entries than nonzeros)
            assert r["nnz"] == round(0.1 * r["cin"] * r["cout"] * r["k"] ** 2)
    # the 132 -> 128 layer keeps its 4 extra inputs when narrowed
    assert {r["cin"] - r["cout"] for r in rows if r["layer"] == "conv3x3_132_s1"} == {4}


def test_gpu_layers_blocks_rows_on_cpu(tmp_path):
    """``--blocks`` (issue 13): dense TF32 / fp32 once, then per block sparsity csr, bsr16 and bsr32, each forward and
    forward+backward, on a block32x16 mask; every sparse row checked against the exact fp32 layer."""
    out = tmp_path / "bsr.json"
    argv = ["--device", "cpu", "--channels", "4", "--sizes", "8", "--layers", "conv3x3_128_s1", "--blocks"]
    assert gpu_layers.main([*argv, "--block-sparsities", "0.75", "0", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["complete"] is True
    assert [(r["backend"], r["pass"]) for r in rows[:4]] == [
        ("dense", "fwd"), ("dense", "fwd+bwd"), ("dense_fp32", "fwd"), ("dense_fp32", "fwd+bwd")
    ]  # fmt: skip
    cases = {(r["sparsity"], r["backend"], r["pass"]) for r in rows[4:]}
    sparse = ("triton_csr", "triton_bsr16", "triton_bsr32")
    assert cases == {(sp, b, p) for sp in (0.75, 0.0) for b in sparse for p in ("fwd", "fwd+bwd")}
    dense = {r["pass"]: r["ms"] for r in rows if r["backend"] == "dense"}
    for r in rows:
        assert r["mask"] == "block32x16" and r["ms"] > 0 and r["max_abs_err"] < 1e-5
        assert r["speedup_vs_dense"] == pytest.approx(dense[r["pass"]] / r["ms"])
    bsr = [r for r in rows if r["backend"].startswith("triton_bsr")]
    assert {r["block"] for r in bsr} == {"16x16", "32x16"} and all(r["precision"] == "tf32" for r in bsr)
    at75 = {r["block_density"] for r in rows[4:] if r["sparsity"] == 0.75}
    assert len(at75) == 1 and 0.2 <= at75.pop() <= 0.3  # 4-channel layer: one block per tap, 2 of 9 taps kept
    assert {r["block_density"] for r in rows[4:] if r["sparsity"] == 0.0} == {1.0}


def test_gpu_network_runs_on_cpu_with_every_variant(tmp_path):
    out = tmp_path / "network.json"
    argv = ["--device", "cpu", "--channels", "4", "--sizes", "64", "--sparsities", "0.5", "--masks", "random"]
    assert gpu_network.main([*argv, "--rep", "1", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["complete"] is True
    assert [r["variant"] for r in rows] == ["dense", "masked", "compact", "sparse", "auto"]
    assert not [r for r in rows if "error" in r]
    for r in rows[1:]:
        ratio = rows[0]["forward_ms"] / r["forward_ms"]  # the row's speedup is rounded to 3 decimals
        assert r["forward_ms"] > 0 and abs(r["forward_speedup"] - ratio) <= 1e-3 + 1e-2 * ratio
        assert 0.4 < r["density"] < 0.6
    assert rows[3]["sparse_layers"] > 0  # the sparse variant really runs the Triton kernels


def test_gpu_scripts_refuse_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert gpu_layers.main(["--sizes", "8"]) == 2
    assert gpu_network.main(["--sizes", "64"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_gpu_layers_tune_times_every_grid_config_and_picks_the_fastest(tmp_path):
    import torch

    from lipdeploy.kernels.sparse_conv import config_grid

    out = tmp_path / "tune.json"
    argv = ["--device", "cpu", "--channels", "4", "--sizes", "8", "--sparsities", "0.9", "--masks", "imp"]
    argv += ["--layers", "conv3x3_128_s1", "--formats", "csr", "--tune", "-o", str(out)]
    assert gpu_layers.main(argv) == 0
    data = json.loads(out.read_text())
    tuned = [r for r in data["rows"] if r["backend"] == "triton_csr"]
    grid = {c.tag for c in config_grid(torch.device("cpu"))}
    assert {r["config"] for r in tuned if r["tuned"]} == grid and sum(not r["tuned"] for r in tuned) == 2
    assert all(r["max_abs_err"] < 1e-5 for r in tuned)  # every config is checked against the reference
    best = data["best_configs"]
    assert {b["pass"] for b in best} == {"fwd", "fwd+bwd"}
    for b in best:
        rows = [r for r in tuned if r["pass"] == b["pass"]]
        assert b["best_ms"] == min(r["ms"] for r in rows) and b["gain_vs_default"] >= 1.0


def test_gpu_layers_keeps_the_rows_of_a_run_cut_off(tmp_path, monkeypatch):
    """The device call has a hard time limit: rows measured before a kill (or a crash) must already be on disk."""
    out = tmp_path / "layers.json"
    real = gpu_layers.bench_shape
    calls = []

    def second_dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a timeout's signal looks like to the script
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu_layers, "bench_shape", second_dies)
    argv = ["--device", "cpu", "--channels", "4", "--sizes", "8", "--sparsities", "0.9", "--masks", "random"]
    argv += ["--formats", "csr", "--layers", "conv1x1_128", "conv3x3_128_s2", "-o", str(out)]
    with pytest.raises(KeyboardInterrupt):
        gpu_layers.main(argv)
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["rows"]
    assert {r["layer"] for r in data["rows"]} == {"conv3x3_128_s2"}  # LAYERS order: the first shape is done


def _layer_row(mask, backend, speedup, sparsity=0.9, pass_="fwd"):
    return {"layer": "conv3x3_128_s1", "hw": 256, "mask": mask, "sparsity": sparsity, "pass": pass_,
            "backend": backend, "speedup_vs_dense": speedup, "ms": 0.1}  # fmt: skip


def _net_row(mask, sparsity, fwd, step):
    return {"variant": "auto", "size": 256, "mask": mask, "sparsity": sparsity, "forward_speedup": fwd,
            "step_speedup": step, "step_ms": 1.0, "sparse_layers_fit": 3}  # fmt: skip


def test_gpu_verdict_checks_each_target_and_reports_missing_cases(tmp_path, capsys):
    from lipdeploy.bench.gpu import verdict as gpu_verdict

    layers = [_layer_row("imp", "triton_csr", 2.7), _layer_row("imp", "triton_kernel", 1.1),
              _layer_row("random", "triton_csr", 0.9), _layer_row("random", "dense", 9.0),
              _layer_row("random", "triton_csr", 5.0, pass_="fwd+bwd")]  # fmt: skip
    nets = [_net_row("imp", 0.9, 3.0, 2.1), _net_row("imp", 0.5, 1.0, 0.98), _net_row("random", 0.5, 1.2, 0.9)]
    got = gpu_verdict.verdicts(layers, nets)
    assert [v["target"] for v in got] == [
        "layer 128->128 3x3 @256, 90% imp, forward",
        "layer 128->128 3x3 @256, 90% random, forward",
        "fitting step @256, 90% imp",
        "fitting step @256, 90% random",
        "nothing slower @256, 50% imp (auto network)",
        "nothing slower @256, 50% random (auto network)",
    ]
    assert [v["status"] for v in got] == [
        "PASS",  # layer, imp: the better of the two formats counts (2.7)
        "FAIL",  # layer, random: 0.9 -- dense rows and other passes do not count
        "PASS",  # step, imp: 2.1
        "MISSING",  # step, random: the run never reached it
        "PASS",  # 50% imp: 0.98 is inside the noise allowance
        "FAIL",  # 50% random: the slower of forward and step decides (0.9)
    ]
    # the command reads a session folder by file-name pattern, one block per card
    (tmp_path / "gpu_target_H200.json").write_text(json.dumps({"rows": layers}))
    (tmp_path / "gpu_network_H200.json").write_text(json.dumps({"rows": nets, "complete": False}))
    assert gpu_verdict.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== H200" in out and out.count("PASS") == 3 and out.count("FAIL") == 2
    assert out.count("MISSING") == 1 + 5  # + issue 13's five block targets: no gpu_bsr / fitting-step files here
    assert gpu_verdict.main([str(tmp_path / "empty")]) == 2


def _bsr_row(backend, speedup, hw=256, sparsity=0.9, pass_="fwd"):
    return {"layer": "conv3x3_128_s1", "hw": hw, "mask": "block32x16", "sparsity": sparsity, "pass": pass_,
            "backend": backend, "speedup_vs_dense": speedup, "ms": 0.1}  # fmt: skip


def _step_row(size, sparsity, variant, eager, captured=None, mask="block"):
    row = {"size": size, "sparsity": sparsity, "variant": variant, "mask": mask, "step_ms": 1.0, "capture": "off",
           "speedup_vs_dense_eager": eager}  # fmt: skip
    if captured is not None:
        row["speedup_vs_dense_captured"] = captured
    return row


def test_gpu_verdict_checks_issue_13s_block_targets(tmp_path, capsys):
    from lipdeploy.bench.gpu import verdict as gpu_verdict

    bsr = [_bsr_row("triton_bsr16", 2.4), _bsr_row("triton_bsr32", 2.6), _bsr_row("dense_fp32", 9.0),
           _bsr_row("triton_bsr16", 9.0, hw=512), _bsr_row("triton_bsr16", 9.0, pass_="fwd+bwd")]  # fmt: skip
    steps = [
        _step_row(256, 0.8, "bsr_eager", 1.8, 1.1), _step_row(256, 0.8, "bsr_captured", 2.2, 1.4),  # best at 80%: 2.2
        _step_row(256, 0.9, "bsr_captured", 3.0, 2.0), _step_row(256, 0.8, "dense_captured", 1.5),  # dense: no count
        _step_row(512, 0.8, "sparse_captured", 5.0, mask="imp"),  # unstructured: not a block row
        _step_row(256, 0.5, "bsr_eager", 0.98), _step_row(256, 0.5, "bsr_captured", 1.3),
        _step_row(512, 0.5, "bsr_eager", 0.9),
    ]  # fmt: skip
    got = gpu_verdict.block_verdicts(bsr, steps)
    assert [v["target"] for v in got] == [
        "bsr layer 128->128 3x3 @256, 90% block, forward",
        "fitting step @256, >=80% block vs dense eager",
        "fitting step @512, >=80% block vs dense eager",
        "nothing slower @256, 50% block (fitting step)",
        "nothing slower @512, 50% block (fitting step)",
    ]
    assert [v["status"] for v in got] == ["PASS", "PASS", "MISSING", "PASS", "FAIL"]
    assert got[0]["ratio"] == 2.6 and "triton_bsr32" in got[0]["detail"]  # the better packing counts
    assert got[1]["ratio"] == 2.2 and "x1.40 vs dense captured" in got[1]["detail"]  # the slowest >= 80% level
    assert got[3]["ratio"] == 0.98 and got[4]["ratio"] == 0.9  # every sparse variant must not be slower
    # the command reads gpu_bsr_* and gpu_fitstep_* files (and fitting-step rows inside a network file)
    (tmp_path / "gpu_bsr_H100.json").write_text(json.dumps({"rows": bsr}))
    (tmp_path / "gpu_network_H100.json").write_text(json.dumps({"rows": steps}))
    assert gpu_verdict.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== H100" in out and "PASS    bsr layer 128->128 3x3 @256, 90% block, forward" in out
    assert "PASS    fitting step @256, >=80% block vs dense eager" in out


def test_gpu_verdict_derives_fitting_step_speedups_from_median_steps():
    """The H100 session of 2026-11-27: the first (dense eager) fit's mean step carried the card's one-time costs (mean
    182.3 ms, median 17.0 ms), so the speedups written from means read 42x where the medians give 4x."""
    from lipdeploy.bench.gpu import verdict as gpu_verdict

    def row(variant, mean, median, sp=0.0, eager=None):
        r = {"size": 256, "sparsity": sp, "variant": variant, "mask": "block-random" if sp else "-",
             "backend": "triton-bsr" if sp else "masked", "step_ms": mean, "step_ms_median": median}  # fmt: skip
        return r | ({"speedup_vs_dense_eager": eager} if eager else {})

    steps = [row("dense_eager", 182.3, 17.0), row("dense_captured", 4.92, 4.91)]
    steps += [row("bsr_eager", 311.2, 35.0, 0.8, eager=0.59), row("bsr_captured", 4.30, 4.30, 0.8, eager=42.4)]
    fixed = {r["variant"]: r for r in gpu_verdict._median_speedups(steps)}
    assert fixed["bsr_captured"]["speedup_vs_dense_eager"] == pytest.approx(17.0 / 4.30, rel=1e-3)
    assert fixed["bsr_captured"]["speedup_vs_dense_captured"] == pytest.approx(4.91 / 4.30, rel=1e-3)
    assert fixed["bsr_eager"]["speedup_vs_dense_eager"] == pytest.approx(17.0 / 35.0, rel=1e-3)
    line = gpu_verdict.block_verdicts([], steps)[1]
    assert line["status"] == "PASS" and line["ratio"] == pytest.approx(3.953, abs=1e-3)
    assert "x1.14 vs dense captured" in line["detail"]


def test_gpu_session_script_runs_every_step_and_packs_the_results(tmp_path):
    """bench/gpu/session.sh end to end in its CPU smoke mode: every step exits 0, every JSON is complete, the verdict
    is written, and everything comes back as the one tarball the device tool can return."""
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    res, out = tmp_path / "res", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "SMOKE": "1", "RES": str(res), "OUT": str(out), "PYTHON": sys.executable}
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", "bench/gpu/session.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [line for line in r.stdout.splitlines() if " rc=" in line]
    assert [s.split(":")[0] for s in steps] == [
        "gpu_target", "gpu_tests", "gpu_bsr", "gpu_fitstep", "gpu_network", "gpu_tune", "gpu_layers"
    ]  # fmt: skip
    assert all(" rc=0 " in s for s in steps), steps
    for name in ("gpu_target", "gpu_bsr", "gpu_fitstep", "gpu_network", "gpu_tune", "gpu_layers"):
        data = json.loads((res / f"{name}_cpu-smoke.json").read_text())
        assert data["complete"] is True and data["rows"], name
    bsr = json.loads((res / "gpu_bsr_cpu-smoke.json").read_text())["rows"]
    assert {r["backend"] for r in bsr} == {"dense", "dense_fp32", "triton_csr", "triton_bsr16", "triton_bsr32"}
    assert {r["sparsity"] for r in bsr if r["backend"] == "triton_bsr16"} == {0.9, 0.5}
    # the fitting step's block rows (what the verdict's issue-13 fitting-step lines read): dense, then bsr at 80%
    fit = json.loads((res / "gpu_fitstep_cpu-smoke.json").read_text())["rows"]
    assert [(r["sparsity"], r["variant"]) for r in fit] == [
        (0.0, "dense_eager"), (0.0, "dense_captured"), (0.8, "bsr_eager"), (0.8, "bsr_captured")
    ]  # fmt: skip
    block = [r for r in fit if r["sparsity"] > 0]
    assert all(r["mask"].startswith("block") and r["backend"] == "triton-bsr" and "error" not in r for r in block)
    assert all("speedup_vs_dense_eager" in r and "speedup_vs_dense_captured" in r for r in block)
    verdict = (res / "gpu_verdict_cpu-smoke.txt").read_text()
    assert verdict.count("MISSING") == 11  # the smoke sizes are not the targets' 256x256 / 512x512
    assert "bsr layer 128->128 3x3 @256, 90% block, forward" in verdict
    with tarfile.open(out / "gpu_session_cpu-smoke.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"gpu_target_cpu-smoke.json", "gpu_network_cpu-smoke.json", "gpu_verdict_cpu-smoke.txt"} <= names
    assert {"gpu_bsr_cpu-smoke.json", "gpu_fitstep_cpu-smoke.json"} <= names
