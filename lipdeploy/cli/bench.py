"""``lipdeploy bench``: dense DIP vs deep decoder vs LIPs (quality, latency, memory), resumable and shardable."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import asdict
from fnmatch import fnmatchcase
from pathlib import Path

import click

from ..bundled import require_bundled_ticket
from ..errors import InputError
from ..fileio import check_regular_file
from ..fit_config import FitConfig
from ..limits import check_threads
from .options import examples, json_option, quiet_option, setting_options

EXAMPLES = examples(
    "lipdeploy bench --preset ci -o bench_ci            # a smoke test: minutes, numbers meaningless",
    "lipdeploy bench --preset cpu --list-jobs -o bench_cpu",
    "lipdeploy bench --preset cpu --shard 0/2 --threads 1 -o bench_cpu > shard0.log",
    "lipdeploy bench --report-only -o bench_cpu",
)


def _split(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


@click.command("bench", epilog=EXAMPLES)
@click.option(
    "--preset",
    "preset_name",
    type=click.Choice(["ci", "cpu", "paper", "fidelity", "evidence", "gan"]),
    default="ci",
    show_default=True,
    help="Settings bundle (bench/harness/presets.py; printed in the report). ci is a smoke test; gan: generator "
    "priors (bench/harness/gan.py; of the other options only --iters applies).",
)
@click.option(
    "--task",
    type=click.Choice(["denoise", "inpaint", "sr"]),
    default=None,
    show_default="the preset's",
    help="Inverse problem.",
)
@click.option(
    "--images", multiple=True, show_default="the preset's", help="scikit-image photograph names, comma-separated."
)
@click.option(
    "--sparsities",
    multiple=True,
    help="LIP/random sparsities, comma-separated fractions; each is rounded to the nearest IMP round "
    "(sparsity 1 - 0.8^k).",
)
@click.option(
    "--ticket",
    "tickets",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Also benchmark this ticket file (repeatable).",
)
@click.option("--example", is_flag=True, help="Also benchmark the bundled example ticket.")
@setting_options(
    FitConfig, "iters", iters={"unset": True, "show_default": "the preset's", "help": "Iterations per quality fit."}
)
@setting_options(
    FitConfig,
    "iters",
    iters={
        "unset": True,
        "show_default": "the preset's",
        "help": "Iterations per IMP round.",
        "flag": "--imp-iters",
        "dest": "imp_iters",
    },
)
@click.option(
    "--seeds",
    type=int,
    default=None,
    show_default="the preset's",
    help="Fit every quality job with this many seeds (input code, its perturbation, and the init of networks "
    "without a ticket); observations stay fixed per image. Rows carry the seed; each seed is its own job.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    show_default="1",
    help="torch (and ONNX Runtime) CPU threads per job, with either executor (a fit's PSNR depends on its thread "
    "count, so the default is a Ray task's one). On a loaded machine 1 also avoids OpenMP oversubscription.",
)
@click.option("--shard", default="0/1", show_default=True, help="Run jobs with index % n == i (i/n).")
@click.option(
    "--executor",
    type=click.Choice(["serial", "ray"]),
    default="serial",
    show_default=True,
    help="Who runs the jobs: this process, one after the other; or Ray tasks on a cluster (pip install "
    "'lipdeploy[ray]'), one CPU each (--threads N: N), whose rows and files come back into OUT.",
)
@click.option(
    "--address",
    default=None,
    help="With --executor ray: the cluster's head HOST:PORT, or 'auto' (the one `ray start` made here). "
    "Default: a local Ray instance for this run.",
)
@click.option(
    "--jobs",
    "job_patterns",
    multiple=True,
    help="Only jobs whose key matches one of these globs, comma-separated (e.g. 'quality/*/coffee,find/coffee/*'); "
    "processes with different filters may share a results folder. See --list-jobs for the keys.",
)
@click.option(
    "--redo",
    "redo_patterns",
    multiple=True,
    help="Run the finished jobs whose key matches one of these globs again (comma-separated); their new rows replace "
    "the old ones, e.g. --jobs 'latency/*' --redo 'latency/*' to re-time every model in one run (latency ratios mean "
    "something only within one run). Other jobs follow the usual rules.",
)
@click.option("--list-jobs", is_flag=True, help="Print this shard's job keys (done or to do) and exit.")
@click.option(
    "-o",
    "--output",
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, readable=False),
    help="Results folder.",
)
@click.option("--report-only", is_flag=True, help="Only rebuild the report from the rows files in the folder.")
@quiet_option(help="No progress bar: one line per job (with an ETA) on stderr instead.")
@json_option("the run's statistics")
def bench_command(
    preset_name,
    task,
    images,
    sparsities,
    tickets,
    example,
    iters,
    imp_iters,
    seeds,
    threads,
    shard,
    executor,
    address,
    job_patterns,
    redo_patterns,
    list_jobs,
    out,
    report_only,
    quiet,
    as_json,
) -> None:
    """Benchmark the dense DIP, deep decoders and LIP tickets: PSNR/SSIM, latency, memory, time to quality.

    Resumable: finished jobs (rows in OUT/rows-*.jsonl) are skipped. Shards written into one folder merge; the report
    (rows.csv, rows.json, report.md, PNG plots) is rebuilt from all rows files every time. On a terminal a progress
    bar runs; with the log redirected each job prints one line with an ETA. Latency rows record the load average
    and are flagged when it exceeded the core count.
    """
    outp = Path(out)
    if report_only:
        _rebuild_report(preset_name, outp)
        return
    from ..runlock import check_output_folder  # imports torch: loaded to run, not for --help

    check_output_folder(outp)  # a read-only or impossible folder is refused before any work
    if seeds is not None and seeds < 1:
        raise InputError(None, f"--seeds must be >= 1, got {seeds}")
    if preset_name == "gan":
        preset = _gan_preset(iters, task=task, images=images, sparsities=sparsities, imp_iters=imp_iters, seeds=seeds,
                             ticket=tickets, example=example)  # fmt: skip
    else:
        preset = _dip_preset(preset_name, task, images, sparsities, iters, imp_iters, seeds)
    if example:
        tickets = (*tickets, str(require_bundled_ticket()))
    for t in tickets:
        check_regular_file(t, "ticket file")  # a FIFO would hang the job that reads it
    bench = _make_bench(preset_name, preset, outp, shard, tuple(tickets), executor, address, _set_threads(threads))
    only = _key_filter(bench, _split(job_patterns), "--jobs")
    redo = _key_filter(bench, _split(redo_patterns), "--redo")
    if list_jobs:
        _list_jobs(bench, outp, only)
        return
    created = not outp.exists()
    try:
        stats = bench.run(progress=not quiet, only=only, redo=redo)
    except InputError:
        if created:
            _remove_if_no_results(outp)  # a rejected run leaves no folder holding only preset.json
        raise
    if as_json:
        click.echo(json.dumps({**asdict(stats), "shard": shard, "report": str(outp / "report.md")}, indent=2))
        return
    click.echo(
        f"shard {shard}: {stats.in_shard} of {stats.planned} jobs; ran {stats.ran}, skipped {stats.skipped} "
        f"(already done), {len(stats.failed)} failed; {stats.fits} fits; {stats.seconds:.1f} s"
    )
    for f in stats.failed:
        click.echo(f"  failed: {f}", err=True)
    click.echo(f"report: {outp / 'report.md'}")


def _rebuild_report(preset_name: str, outp: Path) -> None:
    """``--report-only``: the report of the results folder ``outp``, rebuilt from its rows files."""
    if not outp.is_dir():
        raise InputError(outp, "no such results folder")
    if preset_name == "gan":
        from ..bench.cpu.gan_report import main as gan_report  # matplotlib: loaded to run, not for --help

        gan_report([str(outp)])
        click.echo(f"report rebuilt -> {outp / 'report.md'}")
        return
    from ..bench.report import build_report  # ~0.2 s of imports: loaded to rebuild, not for --help

    info = build_report(outp)
    click.echo(f"report rebuilt: {info['rows']} rows from {info['jobs']} jobs -> {outp / 'report.md'}")


def _set_threads(threads: int | None) -> int:
    """``--threads`` checked and applied to torch (1 when not given)."""
    if threads is not None:
        check_threads(threads, "--threads")  # the same bound as run's: 10^6 threads segfaulted OpenMP
        if threads < 1:
            raise InputError(None, f"--threads must be >= 1, got {threads}")
    threads = threads or 1
    import torch  # module level would load it for `lipdeploy bench --help`; runlock has loaded it by now

    torch.set_num_threads(threads)
    return threads


def _make_bench(preset_name, preset, outp: Path, shard: str, tickets: tuple[str, ...], executor: str, address,
                threads: int):  # fmt: skip
    """The Bench (GanBench for the gan preset) of this shard of the run, its jobs run by ``executor``."""
    # the harness imports torch and the whole library: loaded to run, not for `lipdeploy bench --help`
    from ..bench.harness import Bench, parse_shard
    from ..bench.harness.executor import make_executor
    from ..bench.harness.gan import GanBench

    shard_t = parse_shard(shard)
    if address and executor != "ray":
        raise InputError(None, "--address needs --executor ray")
    job_executor = make_executor(executor, address, threads)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if preset_name == "gan":
        return GanBench(preset, outp, shard_t, log=log, executor=job_executor)
    return Bench(preset, outp, shard_t, tickets, log=log, executor=job_executor)


def _list_jobs(bench, outp: Path, only) -> None:
    """``--list-jobs``: this shard's job keys (those ``only`` keeps), each marked done or todo."""
    from ..bench.harness import shard_jobs  # with the harness (see _make_bench)

    done = bench.store.done() if outp.is_dir() else set()
    for job in shard_jobs(bench.jobs(), bench.shard):
        if only is None or only(job):
            click.echo(f"{'done' if job.key in done else 'todo'}  {job.key}")


def _dip_preset(preset_name, task, images, sparsities, iters, imp_iters, seeds):
    """The DIP preset ``preset_name`` with the options' changes."""
    from ..bench.harness.presets import get_preset, rounds_for  # the harness imports torch: loaded to run

    preset = get_preset(preset_name)
    changes = {}
    if task:
        changes["task"] = task
    if images:
        changes["images"] = tuple(_split(images))
    if sparsities:
        try:
            rounds = sorted({rounds_for(float(s)) for s in _split(sparsities)})
        except ValueError as exc:
            raise InputError(None, f"--sparsities: {exc}") from None
        changes["rounds"] = tuple(rounds)
    if iters is not None:
        changes["iters"] = iters
    if imp_iters is not None:
        changes["imp_iters"] = imp_iters
    if changes:
        preset = preset.replace(**changes)
    if seeds is not None:
        # more or fewer seeds change no fit: the preset keeps its name (its rows stay comparable with the others)
        preset = dataclasses.replace(preset, seeds=seeds)
    return preset


def _gan_preset(iters, **dip_only):
    """The gan preset (``--iters``: Adam steps of each latent fit); the DIP presets' options are refused."""
    from ..bench.harness.gan import GAN_PRESETS  # the harness imports torch: loaded to run

    given = [f"--{k.replace('_', '-')}" for k, v in dip_only.items() if v not in (None, (), False)]
    if given:
        raise InputError(None, f"{', '.join(given)}: not an option of the gan preset (DIP presets only)")
    preset = GAN_PRESETS["gan"]
    return preset.replace(iters=iters) if iters is not None else preset


def _remove_if_no_results(folder: Path) -> None:
    """Delete a results folder this run created if no job finished in it (no rows file has a line)."""
    if any(p.stat().st_size for p in folder.glob("rows-*.jsonl")):
        return
    shutil.rmtree(folder, ignore_errors=True)


def _key_filter(bench, patterns: list[str], flag: str):
    """A job predicate matching any of ``patterns`` (fnmatch on job keys), or None without patterns; a pattern that
    matches no job of the run is refused (a typo would otherwise silently do nothing)."""
    if not patterns:
        return None
    keys = [j.key for j in bench.jobs()]
    for pat in patterns:
        if not any(fnmatchcase(k, pat) for k in keys):
            raise InputError(None, f"{flag} {pat!r} matches no job of this run (see --list-jobs)")

    def matches(job) -> bool:
        return any(fnmatchcase(job.key, pat) for pat in patterns)

    return matches
