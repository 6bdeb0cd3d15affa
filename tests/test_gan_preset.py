"""The gan preset through ``lipdeploy bench``: a tiny variant (1 round of 1 epoch, 3-step fits, 2 faces) serially,
resumed, in two shards and on Ray; the shards and the Ray tasks measure exactly what the serial run measured."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lipdeploy.bench.harness import gan
from lipdeploy.bench.rows import RowStore
from lipdeploy.cli.bench import bench_command
from lipdeploy.errors import InputError

TINY = gan.GAN_PRESETS["gan"].replace(
    name="gan-tiny", rounds=1, epochs=1, iters=3, restarts=1, eval_images=2, train_images=8, repeats=1,
    tasks=(gan.TASKS[0], gan.TASKS[2]), latency_methods=("imp-1",),
)  # fmt: skip


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setitem(gan.GAN_PRESETS, "gan", TINY)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def bench(*args: str) -> str:
    r = CliRunner().invoke(bench_command, ["--preset", "gan", "--quiet", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def per_face(out) -> dict[tuple[str, str], list[float]]:
    rows, _ = RowStore.read_all(out)
    return {(r["task"], r["method"]): r["psnr_per_image"] for r in rows if r.get("kind") == "quality"}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(gan.GAN_PRESETS, "gan", TINY)
        first = bench("-o", str(out))
    return out, first


def test_serial_run_measures_every_job_and_resumes(serial):
    out, first = serial
    keys = [j.key for j in gan.gan_plan(TINY)]
    assert f"ran {len(keys)}, skipped 0" in first
    assert {"gan-find/imp", "gan-cs/imp-init-1/200-ls", "gan-inpaint/random-1", "gan-latency/imp-1/ort-cpu"} <= set(
        keys
    )
    assert set(RowStore.read_all(out)[1]) == set(keys)
    faces = per_face(out)
    assert len(faces[("cs-200-ls", "dense")]) == 2 and ("cs-200-ls", "back-projection") in faces
    report = (out / "report.md").read_text()
    assert "dense - back-projection" in report and (out / "psnr_vs_sparsity.png").is_file()
    assert f"ran 0, skipped {len(keys)}" in bench("-o", str(out))  # the second run only reads
    (out / "report.md").unlink()
    assert "report rebuilt" in bench("-o", str(out), "--report-only") and (out / "report.md").is_file()


def test_shards_split_the_plan_and_measure_what_the_serial_run_did(serial, tmp_path):
    out = tmp_path / "sharded"
    bench("-o", str(out), "--shard", "1/2")  # shard 1 first: its fits need chains that shard 0 owns
    bench("-o", str(out), "--shard", "0/2")
    _, records = RowStore.read_all(out)
    assert set(records) == {j.key for j in gan.gan_plan(TINY)}
    finds = [json.loads(x) for p in out.glob("rows-*.jsonl") for x in p.read_text().splitlines()]
    assert sum(1 for r in finds if r.get("type") == "job" and r["job"] == "gan-find/imp") == 1  # found once
    assert per_face(out) == per_face(serial[0])


def test_the_dip_options_are_refused_for_the_gan_preset(tmp_path):
    r = CliRunner().invoke(bench_command, ["--preset", "gan", "--images", "coffee", "-o", str(tmp_path / "x")])
    assert isinstance(r.exception, InputError) and "--images: not an option of the gan preset" in str(r.exception)


def test_ray_tasks_measure_what_the_serial_run_did(serial, tmp_path):
    ray = pytest.importorskip("ray")
    from lipdeploy.bench.harness.executor import RayExecutor

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        torch.set_num_threads(1)
        stats = gan.GanBench(TINY, tmp_path / "ray", executor=RayExecutor()).run(progress=False)
    finally:
        ray.shutdown()
    assert stats.failed == [] and stats.ran == len(gan.gan_plan(TINY))
    assert per_face(tmp_path / "ray") == per_face(serial[0])
    assert (tmp_path / "ray" / "tickets" / "imp" / "round_01.pt").is_file()  # the chain came back to the driver
