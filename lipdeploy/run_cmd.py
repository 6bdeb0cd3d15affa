"""``lipdeploy run``: run an exported model in ONNX Runtime, write the image, print the latency."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from .cli_common import parse_size
from .errors import InputError
from .fileio import check_output_path

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def open_session(model_path: Path, provider: str = "cpu", threads: int = 0):
    """An ONNX Runtime session for ``model_path`` (InputError for a missing or unreadable model / provider)."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise InputError(model_path, "no such file")
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise InputError(
            None, f"ONNX Runtime here has no {name} (available: {', '.join(ort.get_available_providers())})"
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), opts, providers=[name])
    except Exception as exc:
        raise InputError(
            model_path, f"ONNX Runtime cannot load it ({str(exc).strip().splitlines()[0][:160]})"
        ) from None


def model_contract(sess) -> dict[str, Any]:
    """The lipdeploy input contract from the model's metadata ({} for a model lipdeploy did not write)."""
    props = sess.get_modelmeta().custom_metadata_map
    out: dict[str, Any] = {}
    for key in ("input_contract", "architecture"):
        if key in props:
            try:
                out[key] = json.loads(props[key])
            except json.JSONDecodeError:
                pass
    return out


def make_feeds(sess, contract: dict[str, Any], size: tuple[int, int] | None, seed: int) -> tuple[dict, tuple[int, int]]:
    """Inputs for one run and the image size they give."""
    inputs = sess.get_inputs()
    ic = contract.get("input_contract", {})
    if not inputs:
        embedded = tuple(ic.get("image_size", (0, 0)))
        if size is not None and embedded != (0, 0) and tuple(size) != embedded:
            raise InputError(None, f"this model decodes a fixed {embedded[0]}x{embedded[1]} image; drop --size")
        return {}, embedded
    h, w = size or (256, 256)
    if "architecture" in contract:
        from .networks import arch_from_dict, make_input

        arch = arch_from_dict(contract["architecture"])
        if h % arch.stride or w % arch.stride:
            raise InputError(None, f"size {h}x{w}: height and width must be multiples of {arch.stride}")
        code = make_input(arch, h, w, seed=seed).numpy()
    else:  # not a lipdeploy model: feed U(0, 0.1) noise of the input's channel count at the requested size
        import torch

        channels = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else 32
        code = (torch.rand((1, channels, h, w), generator=torch.Generator().manual_seed(seed)) * 0.1).numpy()
    return {inputs[0].name: code.astype(np.float32)}, (h, w)


@click.command("run")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--size", default=None, metavar="HxW", help="Image size (default 256x256; fixed for embedded models).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise code.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output image (PNG).")
@click.option("--provider", type=click.Choice(sorted(PROVIDERS)), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="Intra-op threads (0 = ONNX Runtime default).")
@click.option("--repeat", type=click.IntRange(1), default=5, show_default=True, help="Timed runs after the first.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the timings as JSON.")
def run_command(model, size, seed, output, provider, threads, repeat, force, as_json) -> None:
    """Run MODEL (an ONNX file from `lipdeploy export`) in ONNX Runtime and write the image it decodes."""
    import torch

    from .images import save_image

    check_output_path(output, force)
    parsed = parse_size(size) if size else None
    t0 = time.perf_counter()
    sess = open_session(model, provider, threads)
    load_s = time.perf_counter() - t0
    feeds, (h, w) = make_feeds(sess, model_contract(sess), parsed, seed)
    t1 = time.perf_counter()
    image = sess.run(None, feeds)[0]
    first_s = time.perf_counter() - t1
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    save_image(torch.from_numpy(np.ascontiguousarray(image)), output)
    report = {
        "model": str(model),
        "output": str(output),
        "size": [int(image.shape[2]), int(image.shape[3])],
        "provider": PROVIDERS[provider],
        "load_ms": 1e3 * load_s,
        "first_run_ms": 1e3 * first_s,
        "median_ms": 1e3 * median,
        "runs": repeat,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"wrote {output} ({image.shape[3]}x{image.shape[2]}); {report['provider']}: "
            f"load {report['load_ms']:.0f} ms, first run {report['first_run_ms']:.1f} ms, "
            f"median {report['median_ms']:.1f} ms over {repeat} runs"
        )
        if not feeds:
            click.echo("(embedded code: the model has no input, so ONNX Runtime computes the image once, at load)")
