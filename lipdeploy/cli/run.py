"""``lipdeploy run``: run an exported model in ONNX Runtime, write the image, print the latency.

A model file is untrusted: before ONNX Runtime sees it, the graph is read with ``onnx`` and checked. Only the
operators ``lipdeploy export`` writes are accepted (:data:`EXPORTER_OPS`: no loops, no tensors whose size is computed
at run time); the shapes of every tensor at the requested size are inferred and must be known, the image within the
toolkit's image limits and their sum within the memory budget (:func:`lipdeploy.limits.check_memory`). ONNX Runtime
then runs in a child process that is stopped after ``--timeout`` seconds.
"""

from __future__ import annotations

import json
import math
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import InputError
from ..fileio import atomic_output, check_output_path, check_regular_file
from ..limits import (
    MAX_CHANNELS,
    MAX_TENSOR_FILE_BYTES,
    MemoryEstimate,
    check_memory,
    check_size,
    check_threads,
)
from .options import SEED, examples, force_option, json_option, parse_size, quiet_option

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
MAX_BATCH = 1024  # generator samples per run: a 32 x 32 grid of 256-px images is already 8k pixels a side

# Every operator `lipdeploy export` writes, in any of its forms (dense / packed sparse weights, fp16, int8, embedded
# code, BatchNorm as running statistics; tests/test_hostile_onnx.py pins it against all of them). No loops (Loop,
# Scan), branches (If) or Expand / Tile / Range; the one operator whose output size is data, ConstantOfShape, passes
# only where check_graph infers that size (a constant shape) and finds it within the image and memory limits.
EXPORTER_OPS = frozenset(
    {
        "Add", "BatchNormalization", "BitShift", "Cast", "Concat", "Constant", "Conv", "CumSum", "DequantizeLinear",
        "Div", "Gather", "Identity", "InstanceNormalization", "LeakyRelu", "Mod", "Mul", "Pad", "QuantizeLinear",
        "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Sqrt", "Sub", "Tanh", "Unsqueeze",
        # sparse packing (export/sparse_pack.py): escape symbols, zero buffers of a constant shape (check_graph
        # refuses any tensor whose shape it cannot infer); a generator's linear layer and pixel norm
        "ConstantOfShape", "Equal", "Not", "ScatterElements", "Where", "Gemm", "ReduceSum",
    }
)  # fmt: skip

# Bytes per element of the ONNX tensor types a graph may hold (TensorProto enum -> bytes).
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}

# The default --timeout: ONNX Runtime's start in a fresh process and its graph optimisation (the constant folding that
# unpacks sparse weights), plus every run at a pessimistic 0.5 GMAC/s (one CPU thread does 10-50 GMAC/s on these
# convolutions: the paper network at 512x512, 1.6e11 MACs, takes ~3 s single-threaded).
TIMEOUT_START_S = 60.0
TIMEOUT_MAC_PER_S = 0.5e9


def read_model(model_path: Path):
    """The model's graph, parsed with ``onnx`` (nothing executed): InputError for a file that is not a regular file,
    too large, not an ONNX model, or one whose weights live in external files."""
    import onnx  # slow to import: loaded to run a model, not for `lipdeploy run --help`

    check_regular_file(model_path, "ONNX model")
    size = model_path.stat().st_size
    if size > MAX_TENSOR_FILE_BYTES:
        raise InputError(model_path, f"model of {size / 2**30:.1f} GiB is too large")
    check_memory(3 * size, f"reading {model_path.name}")  # the file, its parsed proto, ONNX Runtime's copy
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx its own types, for a file that is not a model
        raise InputError(
            model_path, f"ONNX Runtime cannot load it (not an ONNX model: {str(exc).strip()[:120]})"
        ) from None
    if model.ir_version <= 0 or not len(model.opset_import) or not len(model.graph.output):
        raise InputError(model_path, "ONNX Runtime cannot load it (not an ONNX model: no version, opset or output)")
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise InputError(model_path, f"initializer {init.name!r} is stored in an external file: refused")
    return model


def check_ops(model_path: Path, model) -> None:
    """Refuse any operator :data:`EXPORTER_OPS` does not list, another domain's operators, local functions and
    subgraphs: the graph must be one ``lipdeploy export`` could have written."""
    if len(model.functions):
        raise InputError(model_path, "the model defines local functions: not a lipdeploy export, refused")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in EXPORTER_OPS:
            op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise InputError(
                model_path,
                f"operator {op} (node {node.name or node.output[0]!r}) is not one lipdeploy export writes: "
                "refused (only lipdeploy's own models run)"[:300],
            )
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise InputError(model_path, f"node {node.name!r} holds a subgraph: refused")


def _value_shape(value) -> tuple[int, list[int | str | None]]:
    """(element type, dims: int, symbolic name or None) of a graph input or output."""
    t = value.type.tensor_type
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return t.elem_type, dims


def graph_inputs(model) -> list:
    """The graph's real inputs (initializers listed as inputs are not)."""
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def check_io(model_path: Path, model) -> None:
    """Refuse a model that is not an image decoder as lipdeploy writes them, before running it: at most one input, a
    float32 tensor of rank 4 (the noise code) or 2 (a generator's latent [batch, latent_dim]), and one float32 output
    of rank 4 with 1 or 3 channels (the image)."""
    inputs, outputs = graph_inputs(model), list(model.graph.output)
    if len(inputs) > 1:
        raise InputError(model_path, f"the model has {len(inputs)} inputs; a lipdeploy model has one (the noise code)")
    for arg, what in [(a, "input") for a in inputs] + [(a, "output") for a in outputs[:1]]:
        elem, dims = _value_shape(arg)
        if not arg.type.HasField("tensor_type") or elem != 1:
            raise InputError(model_path, f"{what} {arg.name!r} is not a float32 tensor: not a lipdeploy model")
        ranks = (4, 2) if what == "input" else (4,)
        if not arg.type.tensor_type.HasField("shape") or len(dims) not in ranks:
            rank = "unknown" if not arg.type.tensor_type.HasField("shape") else len(dims)
            want = "4 (NCHW) or 2 (a latent)" if what == "input" else "4 (NCHW)"
            raise InputError(model_path, f"{what} {arg.name!r} has rank {rank}, not {want}: not a lipdeploy model")
    if len(outputs) != 1:
        raise InputError(model_path, f"the model has {len(outputs)} outputs; a lipdeploy model has one (the image)")
    channels = _value_shape(outputs[0])[1][1]
    if isinstance(channels, int) and channels > 0 and channels not in (1, 3):
        raise InputError(
            model_path, f"the output has {channels} channels, not an image's 1 or 3: not a lipdeploy model"
        )


def check_image(model_path: Path, image: Any, batch: int = 1) -> None:
    """The computed images: ``[batch, 1|3, H, W]``, every value finite (else nothing is written)."""
    shape_ok = isinstance(image, np.ndarray) and image.ndim == 4 and image.shape[1] in (1, 3)
    if not shape_ok or image.shape[0] != batch:
        shape = list(getattr(image, "shape", []))
        raise InputError(model_path, f"the model's output has shape {shape}, not images [{batch}, 3, H, W]")
    if not np.isfinite(image).all():
        raise InputError(model_path, "the model's output is not finite (NaN or Inf): no image written")


def model_contract(model) -> dict[str, Any]:
    """The lipdeploy input contract from the model's metadata ({} for a model lipdeploy did not write)."""
    props = {p.key: p.value for p in model.metadata_props}
    out: dict[str, Any] = {}
    for key in ("input_contract", "architecture"):
        if key in props:
            try:
                out[key] = json.loads(props[key])
            except json.JSONDecodeError:
                pass
    return out


def input_shape(model, contract: dict[str, Any], size: tuple[int, int] | None) -> tuple[list[int] | None, Any]:
    """The noise code's shape ``[1, C, H, W]`` at the requested size (None for a model without input), checked
    against the limits before anything is allocated; with the lipdeploy architecture when the metadata names one."""
    inputs = graph_inputs(model)
    ic = contract.get("input_contract", {})
    if not inputs:
        embedded = tuple(ic.get("image_size", (0, 0))) if isinstance(ic, dict) else (0, 0)
        if size is not None and embedded != (0, 0) and tuple(size) != embedded:
            raise InputError(None, f"this model decodes a fixed {embedded[0]}x{embedded[1]} image; drop --size")
        return None, None
    h, w = size or (256, 256)
    declared = _value_shape(inputs[0])[1]
    arch = None
    if "architecture" in contract and contract["architecture"].get("kind") != "factory":  # factory: user code
        from ..networks import arch_from_dict  # torch: only to make a lipdeploy model's input

        try:
            arch = arch_from_dict(contract["architecture"])
        except (TypeError, ValueError) as exc:
            raise InputError(None, f"the model's architecture metadata is malformed ({exc})") from None
        if h % arch.stride or w % arch.stride:
            raise InputError(None, f"size {h}x{w}: height and width must be multiples of {arch.stride}")
        if h < arch.min_side or w < arch.min_side:
            raise InputError(None, f"size {h}x{w}: this network needs sides of at least {arch.min_side} pixels")
        if isinstance(declared[1], int) and declared[1] != arch.input_channels:
            raise InputError(
                None, f"the model's input has {declared[1]} channels but its metadata says {arch.input_channels}"
            )
        channels = arch.input_channels
    else:  # not the toolkit's network: U(0, 0.1) noise of the input's channel count, at the size its contract gives
        channels = declared[1] if isinstance(declared[1], int) and declared[1] > 0 else 32
        h, w = _code_size(ic, h, w)
    if not 1 <= channels <= MAX_CHANNELS:
        raise InputError(None, f"the model's input has {channels} channels (at most {MAX_CHANNELS} are supported)")
    for axis, want in ((0, 1), (2, h), (3, w)):
        if isinstance(declared[axis], int) and declared[axis] > 0 and declared[axis] != want:
            raise InputError(
                None, f"the model's input is fixed at {declared}; it cannot take [1, {channels}, {h}, {w}]"
            )
    return [1, channels, h, w], arch


def _code_size(contract: Any, h: int, w: int) -> tuple[int, int]:
    """The noise code's H x W for an image of ``h`` x ``w`` when the input contract says the code is smaller (a
    network from the user's code that upsamples: ``code_downsample``); the image size otherwise."""
    factor = contract.get("code_downsample", 1) if isinstance(contract, dict) else 1
    multiple = contract.get("image_multiple_of", factor) if isinstance(contract, dict) else 1
    if not isinstance(factor, int) or not isinstance(multiple, int) or factor < 1 or multiple < 1:
        raise InputError(None, "the model's input contract is malformed (code_downsample, image_multiple_of)")
    if h % multiple or w % multiple:
        raise InputError(None, f"size {h}x{w}: height and width must be multiples of {multiple}")
    return h // factor, w // factor


def is_latent_model(model) -> bool:
    """The model's input is a latent vector ``[batch, latent_dim]`` (a generator)."""
    inputs = graph_inputs(model)
    return bool(inputs) and len(_value_shape(inputs[0])[1]) == 2


def latent_shape(model, contract: dict[str, Any], size: tuple[int, int] | None, batch: int) -> tuple[list[int], Any]:
    """A generator model's input ``[batch, latent_dim]`` and its spec when lipdeploy wrote it (None otherwise)."""
    declared = _value_shape(graph_inputs(model)[0])[1]
    arch = _generator_arch(contract)
    if arch is not None:
        dim = arch.latent_dim
        if size is not None and tuple(size) != (arch.resolution, arch.resolution):
            raise InputError(None, f"this generator makes {arch.resolution}x{arch.resolution} images; drop --size")
    else:
        dim = declared[1] if isinstance(declared[1], int) and declared[1] > 0 else 0
    if not 1 <= dim <= MAX_CHANNELS:
        raise InputError(None, f"the model's latent has {declared[1]} features (1 to {MAX_CHANNELS} are supported)")
    for axis, want in ((0, batch), (1, dim)):
        if isinstance(declared[axis], int) and declared[axis] > 0 and declared[axis] != want:
            raise InputError(None, f"the model's input is fixed at {declared}; it cannot take [{batch}, {dim}]")
    return [batch, dim], arch


def _generator_arch(contract: dict[str, Any]):
    """The generator spec in a lipdeploy model's metadata (None without one; InputError when malformed)."""
    meta = contract.get("architecture")
    if not isinstance(meta, dict) or meta.get("kind") != "pgan":
        return None
    from ..networks import arch_from_dict  # torch: only to read a lipdeploy model's architecture

    try:
        return arch_from_dict(meta)
    except (TypeError, ValueError) as exc:
        raise InputError(None, f"the model's architecture metadata is malformed ({exc})") from None


def latent_feeds(model, shape: list[int], arch: Any, seed: int) -> dict[str, np.ndarray]:
    """``shape[0]`` latents from N(0, I), seeded (``make_latent`` of the spec when lipdeploy wrote the model)."""
    import torch  # slow to import: only when running a model

    if arch is not None:
        from ..generator import make_latent  # torch: only for a lipdeploy generator

        latent = make_latent(arch, shape[0], seed=seed)
    else:
        latent = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return {graph_inputs(model)[0].name: latent.numpy().astype(np.float32)}


def image_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """A batch ``[B, C, H, W]`` as one image ``[1, C, H', W']``: ceil(sqrt(B)) columns filled row by row, ``pad``
    black pixels between the tiles."""
    b, c, h, w = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((1, c, rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad), dtype=images.dtype)
    for k in range(b):
        r, q = divmod(k, cols)
        grid[0, :, r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = images[k]
    return grid


def make_feeds(model, shape: list[int] | None, arch: Any, seed: int) -> dict[str, np.ndarray]:
    """The noise code of ``shape`` (checked by :func:`input_shape` and :func:`check_graph`), seeded."""
    if shape is None:
        return {}
    import torch  # slow to import: only when running a model

    if arch is not None:
        from ..networks import make_input  # torch: only to make a lipdeploy model's input

        code = make_input(arch, shape[2], shape[3], seed=seed).numpy()
    else:
        code = (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 0.1).numpy()
    return {graph_inputs(model)[0].name: code.astype(np.float32)}


def _shape_graph(model, shape: list[int] | None):
    """A light copy of ``model`` for shape inference: large weights become graph inputs of their shape (their values
    never decide a shape), the noise input gets the concrete ``shape``."""
    import onnx  # slow to import: loaded to run a model, not for `lipdeploy run --help`
    from onnx import helper

    graph = model.graph
    small, big = [], []
    for init in graph.initializer:
        (big if math.prod(init.dims) > 4096 else small).append(init)
    inputs = []
    for value in graph_inputs(model):
        dims = shape if shape is not None else [d if isinstance(d, int) else None for d in _value_shape(value)[1]]
        inputs.append(helper.make_tensor_value_info(value.name, _value_shape(value)[0], dims))
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in big]
    light = helper.make_graph(list(graph.node), graph.name or "g", inputs, list(graph.output), initializer=small)
    copy = helper.make_model(light, opset_imports=list(model.opset_import))
    copy.ir_version = model.ir_version
    return onnx.shape_inference.infer_shapes(copy, check_type=False, strict_mode=False, data_prop=True)


def check_graph(
    model_path: Path, model, shape: list[int] | None, repeat: int, batch: int = 1
) -> tuple[MemoryEstimate, float]:
    """Infer every tensor's shape at the input ``shape``; refuse a tensor whose shape cannot be known before running,
    an output image beyond the image limits and a sum of all tensors beyond the memory budget. Returns the memory
    estimate and the default timeout (:data:`TIMEOUT_START_S` + MACs at :data:`TIMEOUT_MAC_PER_S`)."""
    try:
        inferred = _shape_graph(model, shape)
    except Exception as exc:  # onnx raises InferenceError and others for a graph its shapes do not fit
        raise InputError(model_path, f"its shapes do not fit together ({str(exc).strip()[:160]})") from None
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        elem, dims = _value_shape(value)
        if not dims and not value.type.tensor_type.HasField("shape") or any(not isinstance(d, int) for d in dims):
            raise InputError(model_path, f"the shape of {value.name!r} cannot be known before running it: refused")
        shapes[value.name] = dims
        if elem not in _ELEMENT_BYTES:
            raise InputError(model_path, f"tensor {value.name!r} has an unsupported element type {elem}")
    elem_bytes = {
        v.name: _ELEMENT_BYTES[_value_shape(v)[0]] for v in [*inferred.graph.value_info, *inferred.graph.output]
    }
    out = shapes.get(model.graph.output[0].name, [])
    if len(out) != 4 or out[0] != batch or out[1] not in (1, 3):
        raise InputError(model_path, f"the model's output has shape {out}, not images [{batch}, 3, H, W]")
    check_size(out[2], out[3], f"{model_path.name}: its output image")
    weights = sum(math.prod(i.dims) * _ELEMENT_BYTES.get(i.data_type, 8) for i in model.graph.initializer)
    activations = sum(math.prod(d) * elem_bytes[name] for name, d in shapes.items())
    feed = 4 * math.prod(shape) if shape else 0
    estimate = MemoryEstimate(weights=weights, gradients=0, optimizer=0, copies=2 * weights, activations=activations,
                              extra=2 * feed)  # fmt: skip
    check_memory(estimate.total, f"running {model_path.name}", estimate.describe())
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes:
            kernel = shapes.get(node.input[1]) or next(
                (list(i.dims) for i in model.graph.initializer if i.name == node.input[1]), [1, 1, 1, 1]
            )
            macs += math.prod(shapes[node.output[0]]) * math.prod(kernel[1:])
    return estimate, TIMEOUT_START_S + (repeat + 1) * macs / TIMEOUT_MAC_PER_S


def _session_worker(model_path: str, provider: str, threads: int, feeds: dict, repeat: int) -> tuple[str, Any]:
    """In the child process: load the model, run it once, time ``repeat`` more runs: ("ok", results) or
    ("error", message)."""
    from ..environment import import_onnxruntime  # imports torch: only in the child that runs the model

    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(model_path, opts, providers=[provider])
    except Exception as exc:
        return "error", f"ONNX Runtime cannot load it ({str(exc).strip().splitlines()[0][:160]})"
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        image = sess.run(None, feeds)[0]
    except Exception as exc:  # ONNX Runtime refuses the shapes or fails inside the graph
        return "error", f"ONNX Runtime cannot run it ({str(exc).strip().splitlines()[0][:160]})"
    first_s = time.perf_counter() - t1
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return "ok", (load_s, first_s, times, image)


def session_worker_main() -> None:
    """The child process's entry point: the job pickled on stdin, the result pickled on stdout (both written by this
    module in the parent; the model itself is never unpickled)."""
    job = pickle.load(sys.stdin.buffer)
    result = _session_worker(*job)
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


def run_session(model_path: Path, provider: str, threads: int, feeds: dict, repeat: int, timeout: float):
    """(load s, first run s, timed runs s, image) from ONNX Runtime in a child process, killed after ``timeout``
    seconds (a graph that runs for ever cannot hang the command) or reported when it dies (InputError either way)."""
    job = pickle.dumps((str(model_path), PROVIDERS[provider], threads, feeds, repeat), protocol=pickle.HIGHEST_PROTOCOL)
    code = "from lipdeploy.cli.run import session_worker_main; session_worker_main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        out, _ = proc.communicate(job, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise InputError(model_path, f"ONNX Runtime did not finish within --timeout {timeout:.0f} s: stopped") from None
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0 or not out:
        raise InputError(model_path, f"ONNX Runtime died running it (exit status {proc.returncode})")
    status, payload = pickle.loads(out)
    if status == "error":
        raise InputError(model_path, payload)
    return payload


EXAMPLES = examples(
    "lipdeploy run model.onnx --size 64x64 -o decoded.png",
    "lipdeploy run generator.onnx --seed 3 --batch 16 -o samples.png",
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
    type=int,
    default=0,
    show_default=True,
    help="Intra-op threads (0 = ONNX Runtime's choice).",
)
@click.option(
    "--repeat", type=click.IntRange(1, 10_000), default=5, show_default=True, help="Timed runs after the first."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=86_400),
    default=None,
    show_default="sized to the model: 60 s + its convolutions at 0.5 GMAC/s per run",
    help="Seconds ONNX Runtime may take (loading, first run and the timed runs) before it is stopped.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_BATCH),
    default=1,
    show_default=True,
    help="Generator models: latents per run; a batch of several is written as one grid image, row by row.",
)
@force_option
@json_option("the timings")
@quiet_option(help="Print only the output image's path.")
def run_command(model, size, seed, output, provider, threads, repeat, timeout, batch, force, as_json, quiet) -> None:
    """Run MODEL (an ONNX file from `lipdeploy export`) in ONNX Runtime and write the image it decodes.

    A generator model (its input a latent [batch, latent_dim]) is fed latents from N(0, I) drawn with --seed; its
    images are mapped from [-1, 1] to [0, 1] (clipped), and a --batch of several is written as one grid.
    """
    check_output_path(output, force)
    check_threads(threads, "--threads")
    parsed = check_size(*parse_size(size), "--size") if size else None
    proto = read_model(model)
    check_ops(model, proto)
    check_io(model, proto)
    if provider == "cuda":
        from ..environment import import_onnxruntime  # imports torch: only to check for CUDA's provider

        if PROVIDERS["cuda"] not in import_onnxruntime().get_available_providers():
            raise InputError(None, f"ONNX Runtime here has no {PROVIDERS['cuda']}")
    latent = is_latent_model(proto)
    if latent:
        shape, arch = latent_shape(proto, model_contract(proto), parsed, batch)
    elif batch != 1:
        raise InputError(model, "--batch is for generator models; this model decodes one noise code")
    else:
        shape, arch = input_shape(proto, model_contract(proto), parsed)
    _, default_timeout = check_graph(model, proto, shape, repeat, batch)
    feeds = latent_feeds(proto, shape, arch, seed) if latent else make_feeds(proto, shape, arch, seed)
    del proto
    load_s, first_s, times, image = run_session(model, provider, threads, feeds, repeat, timeout or default_timeout)
    check_image(model, image, batch)
    median = statistics.median(times)
    size_hw = [int(image.shape[2]), int(image.shape[3])]
    if latent:  # a generator's images live on [-1, 1]
        image = image_grid(np.clip((image + 1.0) / 2.0, 0.0, 1.0))
    # torch (for the PNG writer) loads when running a model, not for `lipdeploy run --help`
    import torch

    from ..images import write_png  # imports torch

    with atomic_output(output, exclusive=not force) as tmp:
        write_png(torch.from_numpy(np.ascontiguousarray(image)), tmp)
    report = {
        "model": str(model),
        "output": str(output),
        "size": size_hw,
        "batch": batch,
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
            f"wrote {output} ({image.shape[3]}x{image.shape[2]}"
            + (f": a grid of {batch} images of {size_hw[1]}x{size_hw[0]}" if batch > 1 else "")
            + f"); {report['provider']}: "
            f"load {report['load_ms']:.0f} ms, first run {report['first_run_ms']:.1f} ms, "
            f"median {report['median_ms']:.1f} ms over {repeat} runs"
        )
        if not feeds:
            click.echo("(embedded code: the model has no input, so ONNX Runtime computes the image once, at load)")
