"""``lipdeploy inspect``: what a ticket's masks leave, layer by layer, and what it costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..analysis import block_report, layer_labels, layer_stats
from ..compaction import analyze_compaction
from ..errors import InputError
from ..fileio import atomic_write_text, check_output_path
from ..limits import check_size
from ..priors import PriorSpec
from .options import (
    arch_factory_option,
    examples,
    force_option,
    json_option,
    open_ticket,
    parse_size,
    quiet_option,
    ticket_options,
)

if TYPE_CHECKING:
    from rich.table import Table

    from ..ticket import Ticket

EXAMPLES = examples(
    "lipdeploy inspect --example",
    "lipdeploy inspect tickets/round_10.pt --size 512x512",
    "lipdeploy inspect masks.pt --weights init.pt --json -o report.json",
    "lipdeploy inspect celebaHQ_s6_i80000-6196db68.pth --net avgG",
    "lipdeploy inspect my_state.pt --arch-factory mynets:make_decoder --size 64x64",
)


def inspect_report(ticket: Ticket, height: int, width: int) -> dict[str, Any]:
    """The inspect report as plain data (what ``--json`` prints)."""
    rows = layer_stats(ticket, height, width)
    labels = layer_labels(ticket.arch)
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
        "layers": [{**r.to_dict(), "label": labels.get(r.name, r.name)} for r in rows],
        "totals": totals,
    }
    report["compaction"] = _compaction(ticket, height, width)
    report["blocks"] = block_report(ticket)  # None unless the masks are block-structured
    return report


def image_size(arch: Any, size: str | None) -> tuple[int, int]:
    """The image size the FLOPs are counted at: ``--size`` (default 256x256), a generator's own resolution."""
    side = getattr(arch, "resolution", None)
    if side is None:
        height, width = check_size(*parse_size(size or "256x256", arch.stride), "--size")
        min_side = getattr(arch, "min_side", arch.stride)
        if height < min_side or width < min_side:  # BatchNorm of a 1x1 level fails: one line, not a traceback
            raise InputError(None, f"--size {size}: this network needs sides of at least {min_side} pixels")
        return height, width
    if size is not None and parse_size(size) != (side, side):
        raise InputError(None, f"--size {size}: the generator makes {side}x{side} images")
    return side, side


def _compaction(ticket: Ticket, height: int, width: int) -> dict[str, Any]:
    return analyze_compaction(ticket, height=height, width=width).to_dict()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _gflop(x: int) -> str:
    return f"{x / 1e9:.2f}"


def print_report(report: dict[str, Any]) -> None:
    """The inspect report as tables: the ticket's summary, its provenance, the layers, the blocks, the compaction."""
    # rich only for the table: --json output does without it
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
        prov = Table(title="provenance", show_header=False, title_justify="left")
        prov.add_column("what", style="bold")
        prov.add_column("value", overflow="fold")
        for key, value in provenance_rows(report["provenance"]):
            prov.add_row(key, value)
        console.print(prov)
    table = Table(title=f"per layer, FLOPs at {h}x{w}", show_lines=False)
    table.add_column("layer (state-dict path)", justify="left", overflow="fold", min_width=34)
    for col in ("shape", "stride", "out HxW", "density", "unused in", "zero out", "zero kernels"):
        table.add_column(col, justify="left" if col == "shape" else "right", no_wrap=True)
    table.add_column("compacted in>out", justify="right", no_wrap=True)
    table.add_column("GFLOP dense", justify="right", no_wrap=True)
    table.add_column("GFLOP nonzero", justify="right", no_wrap=True)
    comp = report.get("compaction")
    after = {row["name"]: row for row in comp["layers"]} if comp else {}
    for r in report["layers"]:
        cout, cin, kh, kw = r["shape"]
        c = after.get(r["name"])
        compacted = f"{c['in_after']}>{c['out_after']}" if c else "-"
        label = r.get("label", r["name"])
        table.add_row(
            label if label == r["name"] else f"{label}\n[dim]{r['name']}[/dim]",
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
    blocks = report.get("blocks")
    if blocks:
        console.print(_blocks_table(blocks, {r["name"]: r.get("label", r["name"]) for r in report["layers"]}))
    if comp is not None:
        console.print(f"[bold]compaction[/bold]: {comp['summary']}")


def _blocks_table(blocks: dict[str, Any], labels: dict[str, str]) -> Table:
    """The block structure (``inspect``'s ``blocks`` entry) as a rich table."""
    from rich.table import Table  # rich only for the table: --json output does without it

    bo, bi = blocks["block"]
    bt = Table(title=f"blocks of {bo}x{bi} channels per tap", title_justify="left")
    for col in ("layer", "grid (out x in x taps)", "kept blocks", "block density"):
        bt.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for row in blocks["layers"]:
        go, gi, taps = row["grid"]
        bt.add_row(
            labels.get(row["name"], row["name"]),
            f"{go}x{gi}x{taps}",
            f"{row['kept_blocks']}/{row['blocks']}",
            _pct(row["block_density"]),
        )
    tot = blocks["totals"]
    bt.add_row("total", "", f"{tot['kept_blocks']}/{tot['blocks']}", _pct(tot["block_density"]), style="bold")
    return bt


_PROVENANCE_SHOWN = (
    "tool", "lipdeploy_version", "date", "image", "task", "round", "parent", "density", "granularity", "pruning",
    "scope", "rate", "iters", "seed", "psnr_best", "psnr_final", "psnr_measured",
)  # fmt: skip


def provenance_rows(provenance: dict[str, Any]) -> list[tuple[str, str]]:
    """A ticket's provenance as a short table: the keys a person asks about first (what made it, from what, how
    sparse, how good), floats rounded, the rest counted; the full record stays in ``--json``."""

    def short(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return ", ".join(f"{k}={short(v)}" for k, v in value.items() if not isinstance(v, dict))
        return str(value)

    rows = [(k, short(provenance[k])) for k in _PROVENANCE_SHOWN if k in provenance]
    rest = [k for k in provenance if k not in _PROVENANCE_SHOWN]
    if rest:
        rows.append(("...", f"{len(rest)} more ({', '.join(sorted(rest))}): see --json"))
    return rows


@click.command("inspect", epilog=EXAMPLES)
@ticket_options(required=True)
@click.option(
    "--size",
    default=None,
    show_default="256x256; a generator's own resolution",
    help="Image size HxW for the FLOP counts.",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="Also write the report as JSON to this file."
)
@json_option("the report")
@quiet_option(help="With -o FILE: write the file only, no table.")
@force_option
@arch_factory_option
def inspect_command(
    prior: PriorSpec,
    size: str | None,
    output: Path | None,
    as_json: bool,
    quiet: bool,
    force: bool,
    arch_factory: str | None,
) -> None:
    """Per-layer structure of TICKET: density, unused inputs, dead outputs, zero kernels, FLOPs, compaction.

    Layers are named by their place in the network (level, branch, conv) beside their state-dict path. TICKET may be
    a generator (G.pth: FLOPs per latent at its resolution).
    """
    if output is not None:
        check_output_path(output, force)
    t = open_ticket(prior, arch_factory)
    height, width = image_size(t.arch, size)
    report = inspect_report(t, height, width)
    if output is not None:
        atomic_write_text(output, json.dumps(report, indent=2) + "\n", exclusive=not force)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not (quiet and output is not None):  # --quiet -o FILE: only the file
        print_report(report)
