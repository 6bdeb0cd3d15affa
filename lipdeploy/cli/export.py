"""``lipdeploy export``: a ticket -> an ONNX model that ONNX Runtime alone runs (the toolkit's main command)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..bundled import require_bundled_ticket
from ..errors import InputError
from .options import (
    SEED,
    Reporter,
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
    import torch

    from ..export.onnx_export import ExportSummary
    from ..priors import PriorSpec


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def print_summary(summary: ExportSummary) -> None:
    """The export summary as a readable table."""
    # rich only for the table: `lipdeploy export --help` and --json do without it
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lipdeploy export -> {summary.path}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    removed = summary.removed.get("totals", {}) if isinstance(summary.removed, dict) else {}
    packed = [p for p in summary.packed if p["encoding"] != "dense"]
    rows = [
        ("network", summary.architecture),
        ("weights / BatchNorm", f"{summary.weights} / {summary.bn}"),
        ("sparsity", f"{1 - summary.density:.2%} of conv weights pruned"),
        (
            "compaction",
            (
                f"{removed.get('dead_outputs', 0)} constant + {removed.get('unread_outputs', 0)} unread channels "
                f"removed, params {removed.get('params_before', '?')} -> {removed.get('params_after', '?')}"
            )
            if removed
            else "-",
        ),
        (
            "storage",
            f"{summary.weights_format}, "
            + ("int8 weights + activations (static QDQ, per-channel)" if summary.quantize else summary.dtype)
            + (f"; {len(packed)} tensors packed sparse" if packed else ""),
        ),
        (
            "file size",
            f"{_fmt_bytes(summary.file_bytes)} = {summary.size_ratio:.3f}x the dense fp32 export "
            f"({_fmt_bytes(summary.dense_fp32_bytes)})",
        ),
        (
            "input",
            f"embedded code {summary.embed_input[0]}x{summary.embed_input[1]}, seed {summary.seed} (no input)"
            if summary.embed_input
            else summary.model_input,
        ),
        (
            f"parity @ {summary.parity_size[0]}x{summary.parity_size[1]}",
            f"max |ORT - PyTorch masked net| = {summary.parity_max_abs:.2e}",
        ),
    ]
    if summary.sparse_vs_dense_max_abs is not None:
        rows.append(("sparse vs dense weights", f"max abs {summary.sparse_vs_dense_max_abs:.2e} (0 = bit-exact)"))
    if summary.precision_psnr_db is not None:
        rows.append(("fp32 graph parity", f"{summary.fp32_parity_max_abs:.2e}"))
        rows.append(
            (
                f"{summary.quantize or summary.dtype} vs fp32 output",
                f"max abs {summary.parity_max_abs:.3g}, PSNR {summary.precision_psnr_db:.2f} dB",
            )
        )
    if summary.psnr_change_db is not None:
        rows.append(("PSNR change vs target", f"{summary.psnr_change_db:+.3f} dB"))
    rows.append(("manifest", summary.manifest_path))
    rows.append(("time", f"{summary.timings_s.get('total', 0):.1f} s"))
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def read_target(
    target: Path, arch: object, stride: int, embed: tuple[int, int] | None, test_size: tuple[int, int] | None
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """``--target``: the clean image (cropped to the network's ``stride``) and the parity size, the target's own
    unless ``--embed-input`` or ``--test-size`` set one, which it must then match."""
    if hasattr(arch, "latent_dim"):
        raise InputError(target, "--target is for noise-code priors; a generator's output is not fitted to one image")
    from ..images import crop_to_multiple, load_image  # torch loads when exporting, not for `lipdeploy export --help`

    target_img, _ = crop_to_multiple(load_image(target), stride)
    size = tuple(target_img.shape[2:])
    if test_size is None and embed is None:
        test_size = size
    elif (embed or test_size) != size:
        raise InputError(target, f"target is {size[0]}x{size[1]}, the parity size is {(embed or test_size)}")
    return target_img, test_size


EXAMPLES = examples(
    "lipdeploy export --example -o model.onnx",
    "lipdeploy export tickets/round_10.pt -o lip_fp16.onnx --dtype fp16",
    "lipdeploy export --example -o image.onnx --embed-input 64x64 && lipdeploy run image.onnx -o decoded.png",
)

# What each storage reaches against the masked PyTorch network (bundled ticket, 64x96 parity size, measured):
# fp32 2.0e-5 max abs, fp16 5.5e-3 (PSNR 63.7 dB vs fp32), int8 0.56 (PSNR 21.4 dB: a size experiment).
PRECISION_WARN_DB = 35.0  # an fp16 / int8 output below this PSNR vs fp32 differs visibly: warn


@click.command("export", epilog=EXAMPLES)
@ticket_options(required=False)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, readable=False), required=True, help="Output .onnx file."
)
@click.option(
    "--use",
    "use",
    type=click.Choice(["init", "fitted"]),
    default=None,
    help="Which weights to export (default: fitted when the ticket has them, else init).",
)
@click.option(
    "--bn",
    type=click.Choice(["image", "running"]),
    default="image",
    show_default=True,
    help="BatchNorm semantics: per-image statistics (what DIP computes) or eval-mode running statistics.",
)
@click.option(
    "--weights-format",
    type=click.Choice(["dense", "sparse"]),
    default="sparse",
    show_default=True,
    help="Store conv weights dense, or packed (positions + nonzero values, unpacked by ONNX Runtime at load).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Weight storage: fp32 (output within 1e-4 of PyTorch, checked; 2e-5 on the example) or fp16 (smaller; "
    "5e-3 max error, 64 dB vs fp32 on the example; measured and reported at export).",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Static int8 quantisation (QDQ): smallest file, but its error is measured and reported (~21 dB on the "
    "example ticket: a warning is printed below 35 dB).",
)
@click.option("--embed-input", "embed_input", default=None, metavar="HxW", help="Bake a fixed noise code in.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the noise code (embedded / parity).")
@click.option("--opset", type=click.IntRange(17, 21), default=17, show_default=True, help="ONNX opset version.")
@click.option("--test-size", "test_size", default=None, metavar="HxW", help="Size for the parity check.")
@click.option(
    "--target", type=click.Path(path_type=Path, readable=False), default=None, help="Clean image, for the PSNR change."
)
@force_option
@json_option("the summary")
@quiet_option(help="No summary table (the manifest has it); warnings still print.")
@arch_factory_option
def export_command(
    prior: PriorSpec,
    output: Path,
    use: str | None,
    bn: str,
    weights_format: str,
    dtype: str,
    quantize: str | None,
    embed_input: str | None,
    seed: int,
    opset: int,
    test_size: str | None,
    target: Path | None,
    force: bool,
    as_json: bool,
    quiet: bool,
    arch_factory: str | None,
) -> None:
    """Export TICKET (default: the bundled example) to an ONNX model run by ONNX Runtime alone.

    A generator (G.pth, or its ticket) exports with one input, the latent [batch, latent_dim] (batch dynamic), and
    its image [batch, 3, R, R] as output, on the generator's own scale.

    The graph is the exactly compacted network; in fp32 its output equals the masked PyTorch network's within 1e-4
    (checked at export, recorded in the manifest written beside the model as NAME.manifest.json). fp16 and int8
    change the output: their measured error and PSNR against fp32 are reported and recorded.
    """
    log = Reporter(silent=quiet)
    # onnx and torch load when exporting, not for `lipdeploy export --help`
    from ..export.onnx_export import ExportError, check_output_set, export_onnx

    check_output_set(output, force)
    if prior.ticket is None:
        prior = replace(prior, ticket=require_bundled_ticket())
        log(f"using the bundled example ticket {prior.ticket}")
    t = open_ticket(prior, arch_factory)
    stride = getattr(t.arch, "stride", 1)  # a generator's image size is fixed: export_onnx checks it
    embed = parse_size(embed_input, stride) if embed_input else None
    tsize = parse_size(test_size, stride) if test_size else None
    target_img = None
    if target is not None:
        target_img, tsize = read_target(target, t.arch, stride, embed, tsize)
    try:
        summary = export_onnx(
            t,
            output,
            weights=use,
            bn=bn,
            weights_format=weights_format,
            dtype=dtype,
            quantize=quantize,
            embed_input=embed,
            seed=seed,
            opset=opset,
            force=force,
            test_size=tsize,
            target=target_img,
        )
    except ExportError as exc:  # a failed check: one line, exit 2, nothing written
        raise InputError(output, str(exc)) from None
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    elif not quiet:
        print_summary(summary)
    if summary.precision_psnr_db is not None and summary.precision_psnr_db < PRECISION_WARN_DB:
        click.echo(
            f"warning: the {summary.quantize or summary.dtype} model's output differs from fp32 by up to "
            f"{summary.parity_max_abs:.3f} (PSNR {summary.precision_psnr_db:.1f} dB < {PRECISION_WARN_DB:.0f} dB): "
            "check it on your images before deploying",
            err=True,
        )
