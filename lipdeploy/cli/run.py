"""``lipdeploy run``: run an exported model in ONNX Runtime, write the image, print the latency."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import InputError
from ..fileio import check_output_path
from ..limits import activation_bytes, check_memory, check_size, check_threads
from .options import SEED, examples, force_option, json_option, parse_size, quiet_option

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def open_session(model_path: Path, provider: str = "cpu", threads: int = 0):
    """An ONNX Runtime session for ``model_path`` (InputError for a missing or unreadable model / provider)."""
    import onnxruntime as ort  # slow to import: loaded to run a model, not for `lipdeploy run --help`

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


def check_io(model_path: Path, sess) -> None:
    """Refuse a model that is not an image decoder as lipdeploy writes them, before running it: at most one input, a
    float32 tensor of rank 4 (the noise code), and one float32 output of rank 4 with 1 or 3 channels (the image)."""
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) > 1:
        raise InputError(model_path, f"the model has {len(inputs)} inputs; a lipdeploy model has one (the noise code)")
    for arg, what in [(a, "input") for a in inputs] + [(a, "output") for a in outputs[:1]]:
        if arg.type != "tensor(float)":
            raise InputError(
                model_path, f"{what} {arg.name!r} is {arg.type}, not a float32 tensor: not a lipdeploy model"
            )
        if arg.shape is None or len(arg.shape) != 4:
            rank = "unknown" if arg.shape is None else len(arg.shape)
            raise InputError(model_path, f"{what} {arg.name!r} has rank {rank}, not 4 (NCHW): not a lipdeploy model")
    if len(outputs) != 1:
        raise InputError(model_path, f"the model has {len(outputs)} outputs; a lipdeploy model has one (the image)")
    channels = outputs[0].shape[1]
    if isinstance(channels, int) and channels not in (1, 3):
        raise InputError(
            model_path, f"the output has {channels} channels, not an image's 1 or 3: not a lipdeploy model"
        )


def check_image(model_path: Path, image: Any) -> None:
    """The computed image: ``[1, 1|3, H, W]``, every value finite (else nothing is written)."""
    if not isinstance(image, np.ndarray) or image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
        shape = list(getattr(image, "shape", []))
        raise InputError(model_path, f"the model's output has shape {shape}, not an image [1, 3, H, W]")
    if not np.isfinite(image).all():
        raise InputError(model_path, "the model's output is not finite (NaN or Inf): no image written")


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
        from ..networks import arch_from_dict, make_input  # torch: only to make a lipdeploy model's input

        try:
            arch = arch_from_dict(contract["architecture"])
        except (TypeError, ValueError) as exc:
            raise InputError(None, f"the model's architecture metadata is malformed ({exc})") from None
        if h % arch.stride or w % arch.stride:
            raise InputError(None, f"size {h}x{w}: height and width must be multiples of {arch.stride}")
        if h < arch.min_side or w < arch.min_side:
            raise InputError(None, f"size {h}x{w}: this network needs sides of at least {arch.min_side} pixels")
        check_memory(activation_bytes(arch, h, w, training=False), f"running the model at {h}x{w}")
        expected = inputs[0].shape[1]
        if isinstance(expected, int) and expected != arch.input_channels:
            raise InputError(
                None, f"the model's input has {expected} channels but its metadata says {arch.input_channels}"
            )
        code = make_input(arch, h, w, seed=seed).numpy()
    else:  # not a lipdeploy model: feed U(0, 0.1) noise of the input's channel count at the requested size
        import torch  # slow to import: only when running a model

        from ..limits import MAX_CHANNELS

        channels = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else 32
        if not 1 <= channels <= MAX_CHANNELS:
            raise InputError(None, f"the model's input has {channels} channels (at most {MAX_CHANNELS} are supported)")
        code = (torch.rand((1, channels, h, w), generator=torch.Generator().manual_seed(seed)) * 0.1).numpy()
    return {inputs[0].name: code.astype(np.float32)}, (h, w)


EXAMPLES = examples(
    "lipdeploy run model.onnx --size 64x64 -o decoded.png",
    "lipdeploy run model.onnx --size 256x256 --threads 1 --repeat 20 --json -o decoded.png",
)


@click.command("run", epilog=EXAMPLES)
@click.argument("model", type=click.Path(path_type=Path, readable=False))
@click.option(
    "--size",
    default=None,
    metavar="HxW",
    show_default="256x256; fixed for embedded models",
    help="Image size.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the noise code.")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, readable=False), required=True, help="Output image (PNG)."
)
@click.option(
    "--provider",
    type=click.Choice(sorted(PROVIDERS)),
    default="cpu",
    show_default=True,
    help="ONNX Runtime execution provider.",
)
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Intra-op threads (0 = ONNX Runtime's choice).",
)
@click.option("--repeat", type=click.IntRange(1), default=5, show_default=True, help="Timed runs after the first.")
@force_option
@json_option("the timings")
@quiet_option(help="Print only the output image's path.")
def run_command(model, size, seed, output, provider, threads, repeat, force, as_json, quiet) -> None:
    """Run MODEL (an ONNX file from `lipdeploy export`) in ONNX Runtime and write the image it decodes."""
    # torch (for the PNG writer) loads when running a model, not for `lipdeploy run --help`
    import torch

    from ..images import save_image

    check_output_path(output, force)
    check_threads(threads, "--threads")
    parsed = check_size(*parse_size(size), "--size") if size else None
    t0 = time.perf_counter()
    sess = open_session(model, provider, threads)
    load_s = time.perf_counter() - t0
    check_io(model, sess)
    feeds, (h, w) = make_feeds(sess, model_contract(sess), parsed, seed)
    t1 = time.perf_counter()
    try:
        image = sess.run(None, feeds)[0]
    except Exception as exc:  # ONNX Runtime refuses the shapes or fails inside the graph
        raise InputError(model, f"ONNX Runtime cannot run it ({str(exc).strip().splitlines()[0][:160]})") from None
    check_image(model, image)
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
    elif quiet:
        click.echo(str(output))
    else:
        click.echo(
            f"wrote {output} ({image.shape[3]}x{image.shape[2]}); {report['provider']}: "
            f"load {report['load_ms']:.0f} ms, first run {report['first_run_ms']:.1f} ms, "
            f"median {report['median_ms']:.1f} ms over {repeat} runs"
        )
        if not feeds:
            click.echo("(embedded code: the model has no input, so ONNX Runtime computes the image once, at load)")
