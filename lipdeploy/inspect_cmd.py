"""``lipdeploy inspect``: what a ticket's masks leave, layer by layer, and what it costs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .analysis import layer_stats
from .cli_common import open_ticket, parse_size, ticket_options


def inspect_report(ticket, height: int, width: int) -> dict:
    """The inspect report as plain data (what ``--json`` prints)."""
    rows = layer_stats(ticket, height, width)
    totals = {
        "weights": sum(r.weights for r in rows),
        "nonzeros": sum(r.nonzeros for r in rows),
        "unused_inputs": sum(r.unused_inputs for r in rows),
        "zero_outputs": sum(r.zero_outputs for r in rows),
        "zero_kernels": sum(r.zero_kernels for r in rows),
        "kernels": sum(r.kernels for r in rows),
        "flops_dense": sum(r.flops_dense for r in rows),
        "flops_nonzero": sum(r.flops_nonzero for r in rows),
    }
    params = sum(v.numel() for k, v in ticket.init.items() if v.is_floating_point() and "running" not in k)
    report = {
        "ticket": ticket.source,
        "architecture": ticket.arch.to_dict(),
        "description": ticket.arch.describe(),
        "size": [height, width],
        "parameters": params,
        "density": ticket.density,
        "provenance": ticket.provenance,
        "has_fitted_weights": ticket.fitted is not None,
        "layers": [r.to_dict() for r in rows],
        "totals": totals,
    }
    report["compaction"] = _compaction(ticket, height, width)
    return report


def _compaction(ticket, height: int, width: int) -> dict:
    from .compact import analyze_compaction

    return analyze_compaction(ticket, height=height, width=width).to_dict()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _gflop(x: int) -> str:
    return f"{x / 1e9:.2f}"


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze the table into 80 columns
        console = Console(width=160)
    h, w = report["size"]
    console.print(f"[bold]{report['ticket']}[/bold]: {report['description']}")
    t = report["totals"]
    console.print(
        f"parameters {report['parameters']:,}; prunable {t['weights']:,}, kept {t['nonzeros']:,} "
        f"(density {_pct(report['density'])}, sparsity {_pct(1 - report['density'])})"
    )
    if report["provenance"]:
        console.print("provenance: " + ", ".join(f"{k}={v}" for k, v in report["provenance"].items()))
    table = Table(title=f"per layer, FLOPs at {h}x{w}", show_lines=False)
    for col in ("layer", "shape", "stride", "out HxW", "density", "unused in", "zero out", "zero kernels"):
        table.add_column(col, justify="left" if col in ("layer", "shape") else "right")
    table.add_column("compacted in>out", justify="right")
    table.add_column("GFLOP dense", justify="right")
    table.add_column("GFLOP nonzero", justify="right")
    comp = report.get("compaction")
    after = {row["name"]: row for row in comp["layers"]} if comp else {}
    for r in report["layers"]:
        cout, cin, kh, kw = r["shape"]
        c = after.get(r["name"])
        compacted = f"{c['in_after']}>{c['out_after']}" if c else "-"
        table.add_row(
            r["name"],
            f"{cout}x{cin}x{kh}x{kw}",
            str(r["stride"]),
            f"{r['output_hw'][0]}x{r['output_hw'][1]}",
            _pct(r["density"]),
            f"{r['unused_inputs']}/{cin}",
            f"{r['zero_outputs']}/{cout}",
            f"{r['zero_kernels']}/{r['kernels']}",
            compacted,
            _gflop(r["flops_dense"]),
            _gflop(r["flops_nonzero"]),
        )
    table.add_row(
        "total",
        "",
        "",
        "",
        _pct(t["nonzeros"] / t["weights"] if t["weights"] else 1.0),
        str(t["unused_inputs"]),
        str(t["zero_outputs"]),
        f"{t['zero_kernels']}/{t['kernels']} ({_pct(t['zero_kernels'] / max(t['kernels'], 1))})",
        "",
        _gflop(t["flops_dense"]),
        _gflop(t["flops_nonzero"]),
        style="bold",
    )
    console.print(table)
    if comp is not None:
        console.print(f"[bold]compaction[/bold]: {comp['summary']}")


@click.command("inspect")
@ticket_options(required=True)
@click.option("--size", default="256x256", show_default=True, help="Image size HxW for the FLOP counts.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(
    ticket: Path, weights: Path | None, upsample: str | None, act: str | None, size: str, as_json: bool
) -> None:
    """Per-layer structure of TICKET: density, unused inputs, dead outputs, zero kernels, FLOPs, compaction."""
    t = open_ticket(ticket, weights, upsample, act)
    height, width = parse_size(size, t.arch.stride)
    report = inspect_report(t, height, width)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
