"""``lipdeploy bench --executor ray``: a tiny sweep through a local Ray cluster (2 CPUs, one instance shared by the
module) gives the serial run's rows; a worker killed mid-job is retried; a job that raises is reported once and the
others finish; resumes skip finished jobs; without Ray the option says so in one line.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lipdeploy.bench.harness import Bench, RowStore
from lipdeploy.bench.harness.executor import RayExecutor, SerialExecutor, make_executor
from lipdeploy.bench.harness.presets import PRESETS, Preset
from lipdeploy.cli import cli
from lipdeploy.errors import InputError
from lipdeploy.networks import SkipSpec

TINY_NET = SkipSpec(in_channels=8, channels_down=(8,) * 5, channels_up=(8,) * 5, channels_skip=(2,) * 5)
RUNNERS = ["torch-cpu"]
# rows whose value is a time (or depends on one: a stored ticket's provenance records its fit's seconds)
TIMED = {"fit_seconds", "fit_step_ms", "find_seconds", "imp_round_seconds", "bytes_ticket"}


def tiny_preset() -> Preset:
    """One image, unstructured tickets only, no subprocess probes: every family a find feeds, in seconds."""
    return PRESETS["ci"].replace(
        name="test-ray",
        net=TINY_NET,
        crop=64,
        images=("astronaut",),
        iters=6,
        imp_iters=3,
        rounds=(2,),
        structured_rounds=(1,),
        granularities=("unstructured",),
        dd_ks=(16,),
        latency_warmup=0,
        latency_repeats=1,
        log_every=2,
        latency_methods=("dense", "lip-unstructured-36"),
        memory_probe=False,
        onnx_sizes=False,
    )


def deterministic(out: Path) -> dict[tuple, dict]:
    """Rows that do not depend on timing, by (job, metric, runner), without their environment id."""
    rows, _ = RowStore.read_all(out)
    return {
        (r["job"], r["metric"], r.get("runner")): {k: v for k, v in r.items() if k != "env"}
        for r in rows
        if r["metric"] not in TIMED and not r["job"].startswith("latency/")
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as each Ray task uses (one CPU per job): the serial reference fits the same way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs, CI's cores) for the module: starting one costs seconds."""
    ray = pytest.importorskip("ray")
    # the fault-injecting job runner below lives in this test module, which workers cannot import: ship it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def serial_dir(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("serial")
    stats = Bench(tiny_preset(), out, runners=RUNNERS).run(progress=False)
    assert stats.failed == []
    return out


class KillOnce:
    """Job runner that kills its own worker process (SIGKILL, as an OOM killer or a lost node would) the first time
    it runs job ``key``; a marker file says it already did, so Ray's retry runs the job normally."""

    def __init__(self, key: str, marker: Path) -> None:
        self.key, self.marker = key, str(marker)

    def __call__(self, bench: Bench, job) -> None:
        if job.key == self.key and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        Bench.run_job(bench, job)


def test_ray_run_gives_the_serial_rows_and_resumes(ray_cluster, serial_dir, tmp_path):
    out = tmp_path / "ray"
    lines: list[str] = []
    bench = Bench(tiny_preset(), out, runners=RUNNERS, log=lines.append, executor=RayExecutor())
    stats = bench.run(progress=False)
    assert stats.failed == [] and stats.ran == stats.planned and stats.fits > 0
    _, jobs = RowStore.read_all(out)
    assert set(jobs) == {j.key for j in bench.jobs()}
    assert deterministic(out) == deterministic(serial_dir)
    # what the workers wrote came back: IMP round files, curves; rows name the workers' environment
    assert (out / "tickets" / "astronaut" / "unstructured" / "round_02.pt").is_file()
    assert (out / "curves" / "lip-unstructured-36__astronaut.json").is_file()
    assert list(out.glob("environment-ray-*.json")) and (out / "report.md").is_file()
    assert len(lines) == stats.ran and lines[-1].startswith(f"[{stats.ran}/{stats.ran}] done")
    before = (out / "rows-0-1.jsonl").read_text()
    again = Bench(tiny_preset(), out, runners=RUNNERS, executor=RayExecutor()).run(progress=False)
    assert again.ran == 0 and again.skipped == stats.planned
    assert (out / "rows-0-1.jsonl").read_text() == before


def test_killed_worker_is_retried_and_a_needed_find_runs_first(ray_cluster, serial_dir, tmp_path):
    key = "quality/lip-unstructured-36/astronaut"
    marker = tmp_path / "killed"
    wanted = {key, "quality/dd-k16/astronaut"}
    executor = RayExecutor(job_runner=KillOnce(key, marker), max_retries=2)
    bench = Bench(tiny_preset(), tmp_path / "out", runners=RUNNERS, executor=executor)
    stats = bench.run(progress=False, only=lambda j: j.key in wanted)
    assert marker.exists(), "the worker was not killed"
    assert stats.failed == [] and stats.ran == 2
    _, jobs = RowStore.read_all(tmp_path / "out")
    assert set(jobs) == {*wanted, "find/astronaut/unstructured"}  # the LIP's IMP chain, run as its dependency
    got, ref = deterministic(tmp_path / "out"), deterministic(serial_dir)
    assert got and all(ref[k] == v for k, v in got.items())


def test_a_failing_job_is_reported_once_and_the_others_finish(ray_cluster, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a ticket")
    wanted = {"quality/ticket-broken/astronaut", "quality/dd-k16/astronaut", "quality/dense/astronaut"}
    bench = Bench(tiny_preset(), tmp_path / "out", tickets=(str(bad),), runners=RUNNERS, executor=RayExecutor())
    stats = bench.run(progress=False, only=lambda j: j.key in wanted)
    assert len(stats.failed) == 1 and stats.failed[0].startswith("quality/ticket-broken/astronaut: "), stats.failed
    assert f"InputError: {bad}: " in stats.failed[0]  # the user's file named, not the worker's copy
    assert stats.ran == 2
    _, jobs = RowStore.read_all(tmp_path / "out")
    assert set(jobs) == wanted - {"quality/ticket-broken/astronaut"}


def test_executor_choice_and_missing_ray(monkeypatch, tmp_path):
    assert isinstance(make_executor("serial"), SerialExecutor) and make_executor("serial").in_process
    runner = CliRunner()
    res = runner.invoke(cli, ["bench", "--preset", "ci", "--address", "auto", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--address needs --executor ray" in res.output
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(InputError, match="needs Ray"):
        make_executor("ray")
    res = runner.invoke(cli, ["bench", "--preset", "ci", "--executor", "ray", "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "needs Ray" in res.output and len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_ci_rows_are_the_same_serially_and_on_ray_with_default_threads(ray_cluster, tmp_path):
    """Issue 25: with default threads a serial run fits on one thread, as a Ray task does (the PSNR of a fit depends
    on its thread count), so both executors give identical quality rows, seeds included, and record the threads."""
    jobs = "quality/dense/astronaut*,quality/dd-k64/astronaut*,quality/lip-unstructured-59/astronaut*"
    args = ["bench", "--preset", "ci", "--iters", "20", "--imp-iters", "5", "--seeds", "2", "--jobs", jobs, "-q"]
    torch.set_num_threads(2)  # what torch starts with on a 2-core machine: the CLI's default must not keep it
    try:
        serial = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "serial")])
        assert serial.exit_code == 0, serial.output
        ray = CliRunner().invoke(cli, [*args, "--executor", "ray", "-o", str(tmp_path / "ray")])
        assert ray.exit_code == 0, ray.output
    finally:
        torch.set_num_threads(1)
    quality = {"psnr_best", "psnr_final", "ssim_best", "ssim_final"}

    def rows(out: Path) -> dict[tuple, dict]:
        return {k: v for k, v in deterministic(out).items() if k[1] in quality}

    a, b = rows(tmp_path / "serial"), rows(tmp_path / "ray")
    assert a == b and len(a) == 4 * 3 * 2  # 4 metrics x 3 methods x 2 seeds
    assert {r["threads"] for r in a.values()} == {1} and {r["seed"] for r in a.values()} == {0, 1}
    psnr = {k[0]: r["value"] for k, r in a.items() if k[1] == "psnr_best"}
    assert psnr["quality/dense/astronaut"] != psnr["quality/dense/astronaut/seed1"]  # seeds are different fits
