"""``lipdeploy bench``: dense DIP vs deep decoder vs LIPs (quality, latency, memory), resumable and shardable."""

from __future__ import annotations

import click

from .errors import InputError


def _split(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


@click.command("bench")
@click.option(
    "--preset",
    "preset_name",
    type=click.Choice(["ci", "cpu", "paper"]),
    default="ci",
    show_default=True,
    help="Settings bundle (see lipdeploy/bench/presets.py; printed in the report).",
)
@click.option(
    "--task",
    type=click.Choice(["denoise", "inpaint", "sr"]),
    default=None,
    help="Inverse problem (default: the preset's, denoise).",
)
@click.option("--images", multiple=True, help="scikit-image photograph names, comma-separated (default: preset's).")
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
@click.option("--iters", type=int, default=None, help="Override iterations per quality fit.")
@click.option("--imp-iters", type=int, default=None, help="Override iterations per IMP round.")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="torch (and ONNX Runtime) CPU threads (default: torch's). On a loaded machine 1 avoids OpenMP "
    "oversubscription, which can slow 2-thread fits ten-fold.",
)
@click.option("--shard", default="0/1", show_default=True, help="Run jobs with index % n == i (i/n).")
@click.option(
    "--jobs",
    "job_patterns",
    multiple=True,
    help="Only jobs whose key matches one of these globs, comma-separated (e.g. 'quality/*/coffee,find/coffee/*'); "
    "processes with different filters may share a results folder. See --list-jobs for the keys.",
)
@click.option("--list-jobs", is_flag=True, help="Print this shard's job keys (done or to do) and exit.")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False), help="Results folder.")
@click.option("--report-only", is_flag=True, help="Only rebuild the report from the rows files in the folder.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def bench_command(
    preset_name,
    task,
    images,
    sparsities,
    tickets,
    iters,
    imp_iters,
    threads,
    shard,
    job_patterns,
    list_jobs,
    out,
    report_only,
    no_progress,
) -> None:
    """Benchmark the dense DIP, deep decoders and LIP tickets: PSNR/SSIM, latency, memory, time to quality.

    Resumable: finished jobs (rows in OUT/rows-*.jsonl) are skipped. Shards written into one folder merge; the report
    (rows.csv, rows.json, report.md, PNG plots) is rebuilt from all rows files every time.
    """
    from pathlib import Path

    from .bench.harness import Bench, parse_shard, shard_jobs
    from .bench.presets import get_preset, rounds_for
    from .bench.report import build_report

    outp = Path(out)
    if report_only:
        if not outp.is_dir():
            raise InputError(outp, "no such results folder")
        info = build_report(outp)
        click.echo(f"report rebuilt: {info['rows']} rows from {info['jobs']} jobs -> {outp / 'report.md'}")
        return
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
    if iters:
        changes["iters"] = iters
    if imp_iters:
        changes["imp_iters"] = imp_iters
    if changes:
        preset = preset.replace(**changes)
    for t in tickets:
        if not Path(t).exists():
            raise InputError(t, "no such ticket file")
    if threads is not None:
        if threads < 1:
            raise InputError(None, f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    shard_t = parse_shard(shard)
    patterns = _split(job_patterns)
    bench = Bench(preset, outp, shard_t, tuple(tickets), log=lambda m: click.echo(m, err=True))
    only = None
    if patterns:
        from fnmatch import fnmatchcase

        keys = [j.key for j in bench.jobs()]
        for pat in patterns:
            if not any(fnmatchcase(k, pat) for k in keys):
                raise InputError(None, f"--jobs {pat!r} matches no job of this run (see --list-jobs)")

        def only(job) -> bool:
            return any(fnmatchcase(job.key, pat) for pat in patterns)

    if list_jobs:
        done = bench.store.done() if outp.is_dir() else set()
        for job in shard_jobs(bench.jobs(), shard_t):
            if only is None or only(job):
                click.echo(f"{'done' if job.key in done else 'todo'}  {job.key}")
        return
    stats = bench.run(progress=not no_progress, only=only)
    click.echo(
        f"shard {shard}: {stats.in_shard} of {stats.planned} jobs; ran {stats.ran}, skipped {stats.skipped} "
        f"(already done), {len(stats.failed)} failed; {stats.fits} fits; {stats.seconds:.1f} s"
    )
    for f in stats.failed:
        click.echo(f"  failed: {f}", err=True)
    click.echo(f"report: {outp / 'report.md'}")
