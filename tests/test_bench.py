"""End-to-end tests of ``lipdeploy bench`` on a tiny preset: rows, report files, resume, shard merge, CLI.

One module-scoped run (two images, every method family, every CPU runner, the memory probe) is shared by most tests;
the shard test uses a cheaper plan (no memory probe, one runner) because it runs everything twice more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lipdeploy.bench.harness import Bench, RowStore, engine, parse_shard, plan
from lipdeploy.bench.harness.presets import PRESETS, Preset, rounds_for
from lipdeploy.bench.plots import quality_latency_plot
from lipdeploy.bench.report import build_report
from lipdeploy.cli import cli
from lipdeploy.errors import InputError
from lipdeploy.networks import SkipSpec
from lipdeploy.ticket import load_ticket

TINY_NET = SkipSpec(in_channels=8, channels_down=(8,) * 5, channels_up=(8,) * 5, channels_skip=(2,) * 5)


def tiny_preset(**changes) -> Preset:
    base = PRESETS["ci"].replace(
        name="test",
        net=TINY_NET,
        crop=64,
        images=("astronaut", "coffee"),
        iters=6,
        imp_iters=3,
        rounds=(2,),
        structured_rounds=(1,),
        dd_ks=(16,),
        latency_warmup=0,
        latency_repeats=1,
        log_every=2,
        latency_methods=("dense", "lip-unstructured-36", "dd-matched-36", "lip-channel-20"),
    )
    return base.replace(name="test", **changes) if changes else base


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: with other processes on a 2-core machine, two OpenMP threads spin against each other and
    tiny-network fits run ten to a hundred times slower (measured: 18 s vs 0.08 s for the same fit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("bench")
    bench = Bench(tiny_preset(), out)
    stats = bench.run(progress=False)
    return out, bench, stats


def test_first_run_finishes_every_planned_job(run_dir):
    out, bench, stats = run_dir
    assert stats.failed == []
    _, jobs = RowStore.read_all(out)
    assert set(jobs) == {j.key for j in bench.jobs()}
    assert stats.ran == stats.planned and stats.fits > 0


def test_rows_cover_every_method_and_metric_group(run_dir):
    out, bench, _ = run_dir
    rows, _ = RowStore.read_all(out)
    by_method: dict[str, set[str]] = {}
    for r in rows:
        if r.get("method"):
            by_method.setdefault(r["method"], set()).add(r["metric"])
    families = {r["family"] for r in rows if r.get("family")}
    assert families >= {"dense", "dd", "dd-matched", "lip", "random", "lip-kernel", "lip-channel", "transfer"}
    quality = {"psnr_best", "psnr_final", "ssim_best", "ssim_final", "fit_seconds"}
    memory = {
        "params",
        "nonzeros",
        "bytes_ticket",
        "bytes_onnx_dense",
        "bytes_onnx_sparse",
        "peak_rss_step_bytes",
        "optimizer_state_bytes_dense",
        "optimizer_state_bytes_sparse",
    }
    for m in bench.jobs():
        if m.kind == "quality":
            assert quality <= by_method[m.method.name], m.key
        if m.kind == "memory":
            assert memory <= by_method[m.method.name], m.key
    lat = {(r["method"], r["runner"]) for r in rows if r["metric"] == "forward_ms"}
    assert ("dense", "torch-cpu") in lat and ("lip-unstructured-36", "torch-cpu") in lat
    assert any(r["metric"] == "step_ms" for r in rows)
    # sparse tickets store fewer bytes than the dense ONNX of the same network
    mem = {(r["method"], r["metric"]): r["value"] for r in rows if r["image"] == "-"}
    assert mem[("lip-unstructured-36", "bytes_onnx_sparse")] < mem[("lip-unstructured-36", "bytes_onnx_dense")]
    assert mem[("lip-unstructured-36", "optimizer_state_bytes_sparse")] < mem[("dense", "optimizer_state_bytes_dense")]
    assert mem[("dense", "peak_rss_step_bytes")] > 0
    # the matched deep decoder has about the LIP's parameter count
    lip_p, dd_p = mem[("lip-unstructured-36", "params")], mem[("dd-matched-36", "params")]
    assert abs(dd_p - lip_p) / lip_p < 0.2


def test_report_files_and_claims(run_dir):
    out, _, _ = run_dir
    for name in (
        "rows.csv",
        "rows.json",
        "report.md",
        "environment.json",
        "preset.json",
        "psnr_vs_params.png",
        "latency_vs_sparsity.png",
        "psnr_over_time.png",
        "headline.md",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "## Claims from the paper" in md and "Claim 2" in md and "Claim 3" in md
    assert "## Preset" in md and '"name": "test"' in md
    assert "time to quality" in md
    data = json.loads((out / "rows.json").read_text())
    assert data["environments"][0]["torch"] and data["preset"]["name"] == "test"
    assert any(r["metric"] == "time_to_quality_s" for r in data["rows"])
    assert any(r["image"] == "mean" and r["metric"] == "psnr_best" for r in data["rows"])
    header = (out / "rows.csv").read_text().splitlines()[0].split(",")
    assert {"method", "image", "metric", "value", "unit", "cpu", "torch", "preset"} <= set(header)


def test_rerun_skips_finished_jobs(run_dir):
    out, _, first = run_dir
    rows_before = (out / "rows-0-1.jsonl").read_text()
    fits_before = engine.COUNTERS["fits"]
    stats = Bench(tiny_preset(), out).run(progress=False)
    assert stats.ran == 0 and stats.skipped == first.planned and stats.fits == 0
    assert engine.COUNTERS["fits"] == fits_before
    assert (out / "rows-0-1.jsonl").read_text() == rows_before


def test_torn_last_line_is_ignored(run_dir, tmp_path):
    out, _, _ = run_dir
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "rows-0-1.jsonl", copy / "rows-0-1.jsonl")
    rows, jobs = RowStore.read_all(copy)
    with open(copy / "rows-0-1.jsonl", "a") as f:
        f.write('{"type": "row", "job": "quality/x/y", "metric": "psnr_b')  # a crash mid-write
    rows2, jobs2 = RowStore.read_all(copy)
    assert len(rows2) == len(rows) and set(jobs2) == set(jobs)


def test_two_shards_merge_to_the_unsharded_job_set(tmp_path):
    preset = tiny_preset(granularities=("unstructured",), memory_probe=False, onnx_sizes=False, images=("astronaut",))
    runners = ["torch-cpu"]
    keys = {j.key for j in plan(preset, runners=runners)}
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    # shards on "different machines": separate folders; each computes the tickets it needs itself
    Bench(preset, a, (0, 2), runners=runners).run(progress=False)
    Bench(preset, b, (1, 2), runners=runners).run(progress=False)
    _, ja = RowStore.read_all(a)
    _, jb = RowStore.read_all(b)
    assert set(ja) != keys and set(jb) != keys
    merged.mkdir()
    for src in (a, b):
        for p in src.glob("rows-*.jsonl"):
            shutil.copy(p, merged / p.name)
        for p in src.glob("environment-*.json"):
            shutil.copy(p, merged / p.name)
        shutil.copytree(src / "curves", merged / "curves", dirs_exist_ok=True)
    shutil.copy(a / "preset.json", merged / "preset.json")
    info = build_report(merged)
    _, jm = RowStore.read_all(merged)
    assert set(jm) == keys
    assert info["jobs"] == len(keys)
    md = (merged / "report.md").read_text()
    assert "shard 0/2" in md and "shard 1/2" in md


def test_shard_parsing_and_rounds():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(InputError):
            parse_shard(bad)
    assert rounds_for(0.89) == 10 and rounds_for(0.59) == 4 and rounds_for(0.83) == 8


def test_matched_deep_decoder_k():
    assert engine.dd_params(64) == 25_536 and engine.dd_params(128) == 100_224
    assert engine.matched_dd_k(25_536) == 64 and engine.matched_dd_k(100_000) == 128


def test_presets_are_printed_and_frozen():
    for p in PRESETS.values():
        assert p.name in p.describe()
        with pytest.raises(AttributeError):
            p.iters = 1  # type: ignore[misc]


def test_cli_report_only_and_errors(run_dir, tmp_path):
    out, _, _ = run_dir
    runner = CliRunner()
    res = runner.invoke(cli, ["bench", "--report-only", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "report rebuilt" in res.output
    res = runner.invoke(cli, ["bench", "--report-only", "-o", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such results folder" in res.output
    res = runner.invoke(cli, ["bench", "--shard", "2/2", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--shard" in res.output
    res = runner.invoke(cli, ["bench", "--help"])
    assert res.exit_code == 0 and "--preset" in res.output and "--shard" in res.output


def test_paths_are_stable(run_dir):
    out, _, _ = run_dir
    assert (out / "tickets" / "astronaut" / "unstructured" / "round_02.pt").is_file()
    assert any(Path(out / "curves").glob("dense__astronaut.json"))


def test_user_ticket_is_benchmarked(tmp_path):
    from lipdeploy.testing import tiny_skip, write_ticket_files

    (tmp_path / "t").mkdir()
    files = write_ticket_files(tmp_path / "t", tiny_skip(), amount=0.7)
    path = str(files["own-pt"]["path"])
    preset = tiny_preset(
        images=("astronaut",), memory_probe=False, onnx_sizes=False, latency_methods=("ticket-ticket",)
    )
    bench = Bench(preset, tmp_path / "out", tickets=(path,), runners=["torch-cpu"])
    stats = bench.run(progress=False, only=lambda j: "ticket-" in j.key)
    assert stats.failed == [] and stats.ran == 3  # quality, memory, latency
    rows, _ = RowStore.read_all(tmp_path / "out")
    got = {(r["method"], r["metric"]) for r in rows}
    assert ("ticket-ticket", "psnr_best") in got and ("ticket-ticket", "forward_ms") in got
    sp = next(r["sparsity"] for r in rows if r["metric"] == "psnr_best")
    assert 0.65 < sp < 0.75


def test_structured_tickets_only_on_the_presets_structured_images():
    keys = {j.key for j in plan(tiny_preset(structured_images=("coffee",)), runners=["torch-cpu"])}
    assert "find/coffee/kernel" in keys and "quality/lip-channel-20/coffee" in keys
    assert "find/astronaut/kernel" not in keys and "quality/lip-channel-20/astronaut" not in keys
    # an image list without the structured images falls back to the run's first image
    keys = {j.key for j in plan(tiny_preset(structured_images=("chelsea",)), runners=["torch-cpu"])}
    assert "find/astronaut/kernel" in keys and "find/coffee/kernel" not in keys
    assert PRESETS["cpu"].structured_images == ("astronaut",)


def test_concurrent_runs_sharing_a_folder_find_a_ticket_once(tmp_path):
    """Two runners with different job filters both need astronaut's IMP tickets: the find lock makes the second
    wait and reuse the first's round files instead of fitting IMP again into the same folder."""
    import threading

    preset = tiny_preset(granularities=("unstructured",), memory_probe=False, onnx_sizes=False, images=("astronaut",))
    wanted = ("quality/lip-unstructured-36/astronaut", "quality/dd-matched-36/astronaut")
    fits0 = engine.COUNTERS["fits"]
    errors: list[BaseException] = []

    def run(key: str) -> None:
        try:
            stats = Bench(preset, tmp_path, runners=["torch-cpu"]).run(progress=False, only=lambda j: j.key == key)
            assert stats.failed == []
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in wanted]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _, jobs = RowStore.read_all(tmp_path)
    assert set(jobs) == {*wanted, "find/astronaut/unstructured"}
    # IMP: the dense fit of round 0 plus one per pruning round, once; plus the two quality fits
    assert engine.COUNTERS["fits"] - fits0 == (max(preset.rounds) + 1) + 2


def test_cli_job_filter_and_listing(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["bench", "--preset", "ci", "--threads", "1", "--list-jobs", "-o", str(tmp_path / "l")])
    assert res.exit_code == 0 and "todo  find/astronaut/unstructured" in res.output
    assert not (tmp_path / "l").exists()  # listing writes nothing
    res = runner.invoke(cli, ["bench", "--preset", "ci", "--jobs", "quality/nope/*", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "matches no job" in res.output
    args = ["bench", "--preset", "ci", "--threads", "1", "--quiet", "--jobs", "quality/dd-k64/*"]
    res = runner.invoke(cli, [*args, "-o", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    _, jobs = RowStore.read_all(tmp_path / "f")
    assert set(jobs) == {"quality/dd-k64/astronaut", "quality/dd-k64/coffee"}
    res = runner.invoke(cli, [*args, "--list-jobs", "-o", str(tmp_path / "f")])
    assert res.output.split() == ["done", "quality/dd-k64/astronaut", "done", "quality/dd-k64/coffee"]


def test_cli_redo_reruns_finished_jobs_and_their_new_rows_replace_the_old(tmp_path):
    runner = CliRunner()
    out = tmp_path / "f"
    args = ["bench", "--preset", "ci", "--threads", "1", "--quiet", "--jobs", "quality/dd-k64/*", "-o", str(out)]
    assert runner.invoke(cli, args).exit_code == 0
    rows1, jobs1 = RowStore.read_all(out)
    res = runner.invoke(cli, [*args, "--redo", "quality/dd-k64/coffee"])
    assert res.exit_code == 0, res.output
    assert "ran 1, skipped 1" in res.output  # astronaut stays done, coffee runs again
    rows2, jobs2 = RowStore.read_all(out)
    assert set(jobs2) == set(jobs1) and len(rows2) == len(rows1)  # replaced, not added
    assert jobs2["quality/dd-k64/coffee"]["finished_at"] > jobs1["quality/dd-k64/coffee"]["finished_at"]
    assert jobs2["quality/dd-k64/astronaut"] == jobs1["quality/dd-k64/astronaut"]
    assert (out / "rows-0-1.jsonl").read_text().count('"job": "quality/dd-k64/coffee", "kind"') == 2  # history kept
    res = runner.invoke(cli, [*args, "--redo", "latency/nope/*"])
    assert res.exit_code == 2 and "--redo 'latency/nope/*' matches no job" in res.output


def test_a_later_record_of_a_job_replaces_an_earlier_one_in_any_shard_file(tmp_path):
    def record(key, value, at=None):
        job = {"type": "job", "job": key, "kind": "quality", "seconds": 1.0, "rows": 1}
        row = {"type": "row", "job": key, "metric": "psnr_best", "value": value}
        return json.dumps(row) + "\n" + json.dumps(job | ({"finished_at": at} if at else {})) + "\n"

    (tmp_path / "rows-0-1.jsonl").write_text(record("q/a", 1.0) + record("q/b", 1.0, "2026-11-27T06:00:00"))
    (tmp_path / "rows-aux-1.jsonl").write_text(record("q/a", 2.0) + record("q/b", 2.0, "2026-11-27T07:00:00"))
    rows, jobs = RowStore.read_all(tmp_path)
    got = {r["job"]: r["value"] for r in rows}
    assert got == {"q/a": 1.0, "q/b": 2.0}  # legacy records: the first file's; timed records: the latest
    assert jobs["q/b"]["finished_at"] == "2026-11-27T07:00:00"


def test_latency_ratios_pair_each_model_with_dense_timed_in_the_same_run():
    from lipdeploy.bench.frontier import latency_vs_dense

    def lat(method, ms, env):
        return {"method": method, "metric": "forward_ms", "runner": "torch-cpu", "value": ms, "env": env}

    rows = [
        lat("dense", 160.0, "old"),
        lat("lip-a", 130.0, "old"),
        lat("dense", 80.0, "new"),
        lat("lip-b", 40.0, "new"),
    ]
    rows += [lat("lip-c", 20.0, "other-run")]  # no dense in its run: no ratio
    ratios = latency_vs_dense(rows, "torch-cpu")
    assert ratios["lip-a"] == pytest.approx(130 / 160) and ratios["lip-b"] == pytest.approx(0.5)
    assert "lip-c" not in ratios and latency_vs_dense(rows, "onnxruntime-cpu") == {}


def test_headline_latency_columns_show_only_timings_from_dense_s_run():
    """The headline's milliseconds are the deployable forms (compacted PyTorch, ONNX Runtime), and only those made in
    the same run as the dense model's: a masked-network timing or one from another run is not shown."""
    from lipdeploy.bench.report import headline

    def q(method, family):
        return {"method": method, "family": family, "metric": "psnr_best", "image": "mean", "value": 30.0}

    def lat(method, runner, ms, env):
        return {"method": method, "metric": "forward_ms", "runner": runner, "value": ms, "env": env}

    rows = [q("dense", "dense"), q("lip-a", "lip-channel"), q("lip-b", "lip-channel")]
    rows += [lat("dense", "torch-cpu-compact", 80.0, "run2"), lat("lip-a", "torch-cpu-compact", 12.5, "run2")]
    rows += [lat("lip-b", "torch-cpu-compact", 33.3, "run1"), lat("lip-a", "torch-cpu", 79.9, "run2")]
    lines = [ln.split(" | ") for ln in headline(rows, {}).splitlines() if ln.startswith("| ")]
    table = {cells[0].strip("| "): cells for cells in lines}
    assert table["dense"][6:8] == ["80.0", "-"] and table["lip-a"][6:8] == ["12.5", "-"]
    assert table["lip-b"][6:8] == ["-", "-"]  # timed, but not beside dense
    assert "79.9" not in headline(rows, {})  # the masked network's timing is not a headline figure


def test_quality_latency_plot_lists_collapsed_tickets_instead_of_drawing_them(tmp_path, monkeypatch):
    """A collapsed ticket (constant output: it compacts to almost nothing and "runs" 1000x faster) would squash the
    frontier on both axes: it goes into the panel's note, and the drawn lines hold only the others."""
    import matplotlib.axes

    from lipdeploy.bench.plots import PLOT_FLOOR_DB

    def q(method, family, value):
        return {"method": method, "family": family, "metric": "psnr_best", "image": "astronaut", "value": value}

    def lat(method, ms):
        return {"method": method, "metric": "forward_ms", "runner": "onnxruntime-cpu", "value": ms, "env": "run"}

    rows = [q("dense", "dense", 29.0), q("lip-block-83", "lip-block", 29.1), q("random-block-96", "random-block", 12.0)]
    rows += [lat("dense", 50.0), lat("lip-block-83", 49.0), lat("random-block-96", 0.01)]
    drawn, notes = [], []
    errorbar, text = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.text
    monkeypatch.setattr(
        matplotlib.axes.Axes, "errorbar", lambda ax, xs, ys, **kw: drawn.append(list(xs)) or errorbar(ax, xs, ys, **kw)
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes, "text", lambda ax, x, y, t, **kw: notes.append(t) or text(ax, x, y, t, **kw)
    )
    assert quality_latency_plot(tmp_path, rows) == ["quality_vs_latency.png"]
    assert 12.0 - 29.0 < PLOT_FLOOR_DB and min(x for xs in drawn for x in xs) == pytest.approx(49.0 / 50.0)
    assert any("random-block-96 -17.0 dB" in t for t in notes)


def test_deltas_vs_dense_are_paired_by_image():
    from lipdeploy.bench.verdicts import delta_vs_dense

    def row(method, image, value):
        return {"method": method, "image": image, "metric": "psnr_best", "value": value}

    rows = [row("dense", "a", 30.0), row("dense", "b", 25.0), row("lip", "a", 29.5), row("dd", "b", 24.0)]
    d = delta_vs_dense(rows)
    # unpaired means would say lip +2.0 (29.5 vs 27.5) and dd -3.5; paired, each is compared on its own image
    assert d["lip"] == (-0.5, 1) and d["dd"] == (-1.0, 1) and d["dense"] == (0.0, 2)


def test_claim_verdicts_read_the_interval_of_the_paired_differences():
    from lipdeploy.bench.verdicts import claims

    def row(method, image, value, sparsity=None):
        return {"method": method, "image": image, "metric": "psnr_best", "value": value, "sparsity": sparsity}

    rows = [row("dense", i, 30.0) for i in "abc"]
    rows += [row("lip-unstructured-89", i, v, 0.89) for i, v in zip("abc", (29.9, 29.8, 29.7), strict=True)]
    # the LIP leads random by +0.9, -0.1, -0.1 dB
    rows += [row("random-89", i, v, 0.89) for i, v in zip("abc", (29.0, 29.9, 29.8), strict=True)]
    rows += [row("dd-matched-89", i, 29.0) for i in "abc"]
    text = "\n".join(claims(rows))
    # -0.1 / -0.2 / -0.3 dB: t(0.975, 2) = 4.303 x 0.1 / sqrt(3) = 0.25 each side: [-0.45, +0.05] clears -0.5
    n3 = "(n=3: 3 image(s) x 1 seed(s), t)"
    assert f"lip-unstructured-89 (89.0% sparse) vs dense: -0.20 [-0.45, +0.05] dB {n3} -> holds" in text
    assert f"vs dd-matched-89: +0.80 [+0.55, +1.05] dB {n3} -> holds" in text
    # a mean lead carried by one image is within noise: +0.9 / -0.1 / -0.1, sd 0.58, interval [-1.20, +1.67]
    assert f"vs random-89: +0.23 [-1.20, +1.67] dB {n3} -> within noise" in text
    # a second seed per image makes n = 6 pairs
    rows += [{**r, "seed": 1, "value": r["value"] + 0.01} for r in list(rows)]
    assert "(n=6: 3 image(s) x 2 seed(s), t)" in "\n".join(claims(rows))


def test_report_reads_a_results_folder_without_the_harness():
    """report.py and the harness share the folder layout through bench/rows.py; the report imports no harness module
    (a copied results folder rebuilds without the fitting engine)."""
    import subprocess
    import sys

    code = "import sys, lipdeploy.bench.report; sys.exit(any('bench.harness' in m for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_latency_runners_name_their_conv_backend_from_the_registry():
    from lipdeploy.backends import BACKENDS
    from lipdeploy.bench.harness import LATENCY_RUNNERS, available_runners
    from lipdeploy.bench.harness.runners import runner

    for name, r in LATENCY_RUNNERS.items():
        assert r.name == name and r.conv_backend in BACKENDS, name
    # the committed CPU results' runner fields name runners of the table, so old rows and new rows share report columns
    rows, _ = RowStore.read_all(Path(__file__).resolve().parents[1] / "bench" / "results" / "cpu")
    assert {r["runner"] for r in rows if r["metric"] == "forward_ms"} <= set(LATENCY_RUNNERS)
    assert available_runners()[0] == "torch-cpu" and set(available_runners()) <= set(LATENCY_RUNNERS)
    assert runner("triton-cuda").sparse_only and not runner("torch-cpu").sparse_only
    with pytest.raises(ValueError, match="unknown latency runner"):
        runner("nope")


def test_script_results_are_rewritten_after_every_row(tmp_path):
    from lipdeploy.bench.script import Results, parser

    ap = parser("x", "doc", output=tmp_path / "default.json", device="cuda")
    args = ap.parse_args(["--out", str(tmp_path / "r")])
    assert args.output == tmp_path / "r" and args.device == "cuda"
    res = Results(args.output, {"torch": "t"})
    res.add({"a": 1})
    assert json.loads(args.output.read_text()) == {"meta": {"torch": "t"}, "rows": [{"a": 1}], "complete": False}
    res.add({"a": 2})
    done = res.finish(extra=3)
    assert json.loads(args.output.read_text()) == done and done["complete"] and len(done["rows"]) == 2


# ------------------------------------------------------------------------------ issue 12 frontier, issue 16 fidelity


def test_cpu_preset_keeps_its_committed_jobs_and_only_adds_new_ones():
    """The committed rows of bench/results/cpu stay valid: the frontier only appends jobs; the keys the first cpu
    preset planned come first, in the same order, and none of the new keys reuses an old method's name."""
    from lipdeploy.bench.harness.presets import PRESETS as P

    cpu = P["cpu"]
    old = cpu.replace(frontier=(), frontier_rounds=(), frontier_random=(), narrow_dip=False)
    runners = ["torch-cpu", "torch-cpu-compact", "onnxruntime-cpu"]
    before = [j.key for j in plan(old, runners=runners)]
    after = [j.key for j in plan(cpu, runners=runners)]
    assert after[: len(before)] == before
    new = after[len(before) :]
    assert new[:3] == ["find/astronaut/block", "find/astronaut/channel-norm", "find/astronaut/random-block"]
    assert not any("/lip-channel-59" in k for k in new)  # the earlier rule's method is not re-planned
    names = {k.split("/")[1] for k in new if k.startswith("quality/")}
    assert {"lip-block-95.6", "lip-channel-norm-83", "random-block-89", "dip-narrow-59"} <= names
    assert {k.split("/")[-1] for k in new if k.startswith("quality/")} == set(cpu.images)


def test_sparsity_labels_keep_whole_percentages_below_95():
    from lipdeploy.bench.harness.presets import pct, round_sparsity

    assert [pct(round_sparsity(k)) for k in (4, 8, 10)] == [59, 83, 89]
    assert [pct(round_sparsity(k)) for k in (14, 20, 24)] == ["95.6", "98.8", "99.5"]


def test_narrow_dip_matches_a_parameter_count():
    from lipdeploy.bench.harness.workspace import matched_width, skip_params

    for net in (SkipSpec(), TINY_NET, SkipSpec(channels_down=(37,) * 5, channels_up=(37,) * 5)):
        assert skip_params(net) == sum(p.numel() for p in net.build().parameters())
    w = matched_width(SkipSpec(), 2_217_831 // 10)
    narrow = SkipSpec(channels_down=(w,) * 5, channels_up=(w,) * 5)
    assert abs(skip_params(narrow) - 221_783) < 0.03 * 221_783


def test_fidelity_preset_plan_and_names():
    from lipdeploy.bench.harness.presets import PRESETS as P

    fid = P["fidelity"]
    keys = [j.key for j in plan(fid, runners=["torch-cpu"])]
    assert keys[:3] == ["quality/dense@denoise/astronaut", "quality/dd-k64@denoise/astronaut",
                        "find/astronaut/unstructured@denoise"]  # fmt: skip
    assert "quality/random-99.5@sr/coffee" in keys and "quality/dd-matched-98.8@inpaint/astronaut" in keys
    assert "transfer/xtask-89-from-denoise@sr/coffee" in keys
    assert "transfer/transfer-95.6-from-coffee@inpaint/astronaut" in keys
    assert not any(k.startswith(("latency/", "memory/")) for k in keys)
    assert not any("transfer-89-from-astronaut@denoise/astronaut" in k for k in keys)  # never onto its own image
    assert fid.to_dict()["tasks"] == ["denoise", "inpaint", "sr"]


def test_frontier_and_tasks_run_end_to_end(tmp_path):
    """A tiny preset with a block / channel-norm / random-block frontier with narrow DIPs, and a tiny two-task preset
    with transfers across tasks and images: every job finishes, rows name their task, and the new report parts are
    written."""
    front = tiny_preset(
        images=("astronaut",),
        granularities=("unstructured",),
        rounds=(1,),
        memory_probe=False,
        onnx_sizes=False,
        frontier=("block", "channel-norm"),
        frontier_rounds=(1, 2),
        frontier_random=("random-block",),
        narrow_dip=True,
        latency_methods=("dense", "lip-block-36", "lip-channel-norm-36", "dip-narrow-36"),
    )
    # the quality-latency plot's runtimes are the deployable forms (ONNX Runtime, compacted PyTorch): a masked
    # "torch-cpu" ticket costs what dense costs, so its timings alone give no plot
    stats = Bench(front, tmp_path / "f", runners=["torch-cpu", "torch-cpu-compact"]).run(progress=False)
    assert not stats.failed, stats.failed
    rows = json.loads((tmp_path / "f" / "rows.json").read_text())["rows"]
    q = {r["method"]: r for r in rows if r["metric"] == "psnr_best" and r["image"] == "astronaut"}
    assert {"lip-block-20", "lip-channel-norm-36", "random-block-36", "dip-narrow-36"} <= set(q)
    assert q["lip-channel-norm-36"]["channel_rule"].startswith("per-layer")
    assert q["dip-narrow-36"]["width"] < TINY_NET.channels_down[0]
    assert (tmp_path / "f" / "quality_vs_latency.png").exists()
    masked_only = [r for r in rows if r.get("runner") != "torch-cpu-compact"]
    assert quality_latency_plot(tmp_path / "masked", masked_only) == []
    assert "sparsest ticket within 0.5 dB of dense" in (tmp_path / "f" / "report.md").read_text()

    multi = tiny_preset(
        images=("astronaut", "coffee"),
        granularities=("unstructured",),
        rounds=(1, 2),
        crop=64,
        dd_ks=(),
        memory_probe=False,
        onnx_sizes=False,
        transfer=False,
        tasks=("denoise", "sr"),
        transfer_tasks=(("denoise", "sr"),),
        transfer_rounds=(2,),
        transfer_images=True,
        multi_image=("chelsea", "rocket"),
        latency_methods=(),
    )
    assert "find/chelsea+rocket/unstructured@denoise" in {j.key for j in plan(multi, runners=["torch-cpu"])}
    stats = Bench(multi, tmp_path / "m", runners=["torch-cpu"]).run(progress=False)
    assert not stats.failed, stats.failed
    rows = json.loads((tmp_path / "m" / "rows.json").read_text())["rows"]
    q = {(r["method"], r["image"]): r for r in rows if r["metric"] == "psnr_best" and r["image"] != "mean"}
    assert q[("lip-unstructured-36@sr", "coffee")]["task"] == "sr"
    assert q[("xtask-36-from-denoise@sr", "coffee")]["source_task"] == "denoise"
    assert q[("transfer-36-from-astronaut@denoise", "coffee")]["base_method"] == "transfer-36-from-astronaut"
    assert (tmp_path / "m" / "tickets" / "coffee" / "unstructured_sr" / "round_02.pt").exists()
    assert (tmp_path / "m" / "psnr_vs_sparsity_per_task.png").exists()
    md = (tmp_path / "m" / "report.md").read_text()
    assert "## Per task" in md and "xtask-36-from-denoise" in md
    claims_md = (tmp_path / "m" / "claims.md").read_text()
    assert "## The paper's claims at these settings" in md
    assert "no dense result" not in md  # one-task verdicts would pair "lip-...@sr" with a "dense" that is not there
    for task in ("denoise", "sr"):
        assert f"| LIP within 0.5 dB of dense up to 89% | {task} |" in claims_md
    assert "| a ticket found on another task within 0.5 dB of the image's own | sr |" in claims_md
    assert "| a ticket found on several other images at once" in claims_md
    multi_row = q[("multi-36-from-chelsea+rocket@denoise", "astronaut")]
    assert multi_row["source_image"] == "chelsea+rocket"
    t = load_ticket(tmp_path / "m" / "tickets" / "chelsea_rocket" / "unstructured_denoise" / "round_02.pt")
    assert [i["name"] for i in t.provenance["images"]] == ["chelsea", "rocket"]


def test_structured_imp_and_ticket_latency_scripts_run(tmp_path):
    """The two structured-ticket scripts end to end at a toy scale: one IMP round per pattern (and the random block
    baseline), the frontier summary and plot; then ONNX Runtime latency of the resulting tickets vs the dense one."""
    import json

    from lipdeploy.bench.cpu import structured_imp, ticket_latency

    out = tmp_path / "simp.json"
    argv = ["--patterns", "block", "channel", "--random", "block", "--rounds", "1", "--iters", "2"]
    assert structured_imp.main([*argv, "--work", str(tmp_path / "work"), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (
        data["complete"]
        and [r["chain"] for r in data["rows"]] == ["block"] * 2 + ["channel"] * 2 + ["random-block"] * 2
    )
    assert all(abs(r["sparsity"] - 0.2) < 0.01 for r in data["rows"] if r["round"] == 1)
    assert set(data["summary"]) == {"block", "channel", "random-block"} and out.with_suffix(".png").exists()
    lat = tmp_path / "lat.json"
    tickets = [str(tmp_path / "work" / "block" / f"round_0{r}.pt") for r in (0, 1)]
    assert ticket_latency.main([*tickets, "--size", "64", "--rounds", "2", "--warmup", "1", "-o", str(lat)]) == 0
    rows = json.loads(lat.read_text())["rows"]
    assert [r["density"] for r in rows][0] == 1.0 and rows[0]["speedup_vs_first"] == 1.0
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] for r in rows)


@pytest.mark.parametrize("output", ["/dev/null", "missing-folder/r.json", "."])
def test_bench_scripts_refuse_a_bad_results_path_before_measuring(output, tmp_path, capsys):
    """Every bench script's ``-o``: a device, a missing folder or a folder is refused at parse time (one ``error:``
    line, exit 2), not after minutes of measuring; an existing results file is rewritten as before."""
    from lipdeploy.bench.cpu import ticket_latency

    with pytest.raises(SystemExit) as exc:
        ticket_latency.main([str(tmp_path / "never-read.pt"), "-o", output])
    assert exc.value.code == 2
    assert "error: argument -o/--output/--out:" in capsys.readouterr().err


def _quality(method, family, sparsity, psnr_by_image):
    return [{"method": method, "family": family, "sparsity": sparsity, "metric": "psnr_best", "image": img, "value": v}
            for img, v in psnr_by_image.items()]  # fmt: skip


def _ort(method, ms):
    return {"method": method, "metric": "forward_ms", "runner": "onnxruntime-cpu", "value": ms, "image": "-"}


def test_issue_12_target_lines_name_what_meets_them_and_what_comes_closest():
    from lipdeploy.bench.frontier import target_lines

    rows = _quality("dense", "dense", None, {"a": 30.0, "b": 31.0})
    rows += _quality("lip-block-83", "lip-block", 0.83, {"a": 29.9, "b": 30.8})  # -0.15 dB
    rows += _quality("lip-block-95.6", "lip-block", 0.956, {"a": 28.0})  # -2.0 dB
    rows += _quality("lip-channel-norm-83", "lip-channel-norm", 0.83, {"a": 29.8})  # -0.2 dB
    rows += _quality("lip-channel-norm-95.6", "lip-channel-norm", 0.956, {"a": 29.0})  # -1.0 dB
    rows += _quality("lip-unstructured-89", "lip", 0.89, {"a": 30.0})  # not structured
    rows += [_ort("dense", 100.0), _ort("lip-block-83", 95.0), _ort("lip-channel-norm-83", 60.0)]
    rows += [_ort("lip-channel-norm-95.6", 30.0), _ort("lip-unstructured-89", 10.0)]
    speed, block = target_lines(rows)
    assert "not met; closest:" in speed
    one = "(n=1: 1 image(s) x 1 seed(s), n too small)"
    assert f"lip-channel-norm-83 (83.0% sparse, -0.20 dB {one}, 1.67x" in speed  # fastest near dense
    assert f"lip-channel-norm-95.6 (95.6% sparse, -1.00 dB {one}, 3.33x" in speed  # best of the fast
    assert "lip-unstructured" not in speed
    assert block.startswith("- target: a 16x16 block LIP at >= 80% within 0.5 dB of dense: met by lip-block-83")
    assert "-0.15 dB (n=2: 2 image(s) x 1 seed(s), n too small)" in block and "not by lip-block-95.6" in block

    rows.append(_ort("lip-channel-norm-83", 45.0))  # now 2.2x: the later row wins in _forward_ms
    speed, _ = target_lines(rows)
    assert "met by lip-channel-norm-83" in speed and "2.22x" in speed
    assert target_lines([r for r in rows if r["method"] != "dense"]) == []
    no_lat = [r for r in rows if r["metric"] != "forward_ms"]
    assert "not measured" in target_lines(no_lat)[0]
