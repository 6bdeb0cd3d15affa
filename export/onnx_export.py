"""Export a ticket to an ONNX model that ONNX Runtime alone runs, exactly, as small as its structure allows.

Pipeline (:func:`export_onnx`):

1. ``lipdeploy.compact`` turns the masked network into its exact compacted form (dead channels removed, constants
   folded into biases, per-image BatchNorm as instance normalisation): the graph the device runs.
2. ``torch.onnx.export`` (TorchScript exporter: robust for these static-topology nets) with dynamic height and width;
   reflection padding becomes ``Pad(mode=reflect)``, bilinear upsampling ``Resize(half_pixel)``, per-image BatchNorm
   ``InstanceNormalization`` (same eps), eval-mode BatchNorm ``BatchNormalization``.
3. Post-processing with the onnx API: optional embedded noise code (no graph input), int8 quantisation
   (``onnxruntime.quantization.quantize_static`` with calibration on noise codes, Conv weights per channel), sparse
   packing of the convolution weights (:mod:`lipdeploy.export.sparse_pack`), fp16 weight storage.
4. Checks before anything is written: ``onnx.checker``; ONNX Runtime's output against the masked PyTorch reference
   (the oracle, ``ticket.build``) at a test size; an fp32 export whose error exceeds ``tolerance`` is refused.
5. Model and manifest (``model.manifest.json``) are written atomically: no half-written file is ever left.

fp16 choice: weights are *stored* as fp16 and cast to fp32 once at session load (ONNX Runtime constant-folds the Cast),
so compute stays fp32. Edge CPUs mostly lack fast fp16 arithmetic (ONNX Runtime's CPU provider has few fp16 kernels
and would insert casts around the rest), so an fp16 graph would be slower and less accurate for the same file size.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lipdeploy import __version__
from lipdeploy.analysis import ticket_block_size
from lipdeploy.compaction import CompactionReport, compact
from lipdeploy.environment import import_onnxruntime
from lipdeploy.errors import InputError
from lipdeploy.fileio import atomic_output_set, check_output_path, dumps_record
from lipdeploy.limits import activation_bytes, check_memory, check_work
from lipdeploy.limits import check_size as check_size_limit
from lipdeploy.networks import make_input
from lipdeploy.ticket import Ticket

from .graph_tidy import fold_small_constants, shorten_names
from .sparse_pack import PackedTensor, pack_initializers

INPUT_NAME = "code"
LATENT_NAME = "latent"
OUTPUT_NAME = "image"
PARITY_BATCH = 2  # a generator's parity batch: more than one sample, so a batch-size bug shows
NOISE_SCALE = 0.1
DEFAULT_TOLERANCE = 1e-4

WeightsChoice = Literal["init", "fitted"]
BatchNormChoice = Literal["image", "running"]


class ExportError(RuntimeError):
    """The exported graph failed a check (e.g. fp32 parity); nothing was written."""


@dataclass
class ExportSummary:
    """What an export produced and measured. Errors are max abs differences on the network's own output scale
    ([0, 1] for a DIP or deep decoder, nominally [-1, 1] for a generator, whose parity runs on a batch of latents)."""

    path: str
    manifest_path: str
    architecture: str
    weights: str
    bn: str
    weights_format: str
    dtype: str
    quantize: str | None
    embed_input: tuple[int, int] | None
    seed: int
    opset: int
    density: float
    file_bytes: int
    dense_fp32_bytes: int  # the same graph with dense fp32 weights (what --weights-format dense --dtype fp32 gives)
    parity_size: tuple[int, int]
    parity_max_abs: float  # final model (ONNX Runtime) vs the masked PyTorch network
    fp32_parity_max_abs: float  # fp32 graph before fp16 / int8 vs the masked PyTorch network
    sparse_vs_dense_max_abs: float | None  # packed vs dense-weight graph, both in ONNX Runtime (0.0 = bit-exact)
    precision_psnr_db: float | None  # fp16 / int8 output vs the fp32 reference output, PSNR in dB (range 1)
    psnr_change_db: float | None  # with a target image: PSNR(reduced, target) - PSNR(fp32 network, target)
    removed: dict[str, Any] = field(default_factory=dict)
    packed: list[dict[str, Any]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    model_input: str = ""  # the graph input in words, e.g. "latent 'latent' [N, 512], batch N dynamic"

    @property
    def size_ratio(self) -> float:
        return self.file_bytes / self.dense_fp32_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_ratio"] = self.size_ratio
        return d


# --------------------------------------------------------------------------------------------------- input


def is_generator(arch: Any) -> bool:
    """A latent-input prior (a GAN generator): its exported input is the latent ``[batch, latent_dim]``."""
    return hasattr(arch, "latent_dim")


@dataclass(frozen=True)
class ModelInput:
    """The exported graph's input and how parity and calibration inputs are drawn.

    A noise-code prior (DIP, deep decoder) takes ``code`` ``[1, C, H, W]`` (height and width dynamic); a generator
    takes ``latent`` ``[batch, latent_dim]`` (batch dynamic) and makes ``[batch, 3, R, R]``.
    """

    name: str
    axes: dict[int, str]
    output_axes: dict[int, str]
    image_size: tuple[int, int]  # the parity image size
    arch: Any = field(repr=False)

    @property
    def generator(self) -> bool:
        return self.name == LATENT_NAME

    def describe(self) -> str:
        if self.generator:
            return f"latent {self.name!r} [N, {self.arch.latent_dim}], batch N dynamic"
        return f"noise code {self.name!r} [1, C, H, W], H and W dynamic"

    def draw(self, seed: int) -> torch.Tensor:
        """One input at the parity size (a generator: :data:`PARITY_BATCH` latents)."""
        if self.generator:
            from lipdeploy.generator import make_latent  # the generator module: only for generator exports

            return make_latent(self.arch, PARITY_BATCH, seed=seed)
        return make_input(self.arch, *self.image_size, seed=seed, scale=NOISE_SCALE)


def model_input(arch: Any, test_size: tuple[int, int]) -> ModelInput:
    """The input of ``arch``'s exported model, with parity at ``test_size`` (a generator's own resolution)."""
    if is_generator(arch):
        side = arch.resolution
        return ModelInput(LATENT_NAME, {0: "batch"}, {0: "batch"}, (side, side), arch)
    code_dims = {2: "height", 3: "width"} if code_factor(arch) == 1 else {2: "code_height", 3: "code_width"}
    return ModelInput(INPUT_NAME, code_dims, {2: "height", 3: "width"}, tuple(test_size), arch)


def code_factor(arch: Any) -> int:
    """How much smaller than the image the noise code is (the deep decoder's, and a user network's that upsamples)."""
    if arch.kind == "dd":
        return arch.stride
    return int(getattr(arch, "output_scale", 1))


def traced_activation_bytes(arch: Any, height: int, width: int) -> int:
    """A user network's activations at an image of ``height`` x ``width``, from its traced graph's shapes."""
    from lipdeploy.compaction.trace import activation_bytes as traced_bytes  # tracer: only for user networks

    _, c, ih, iw = arch.input_shape(height, width)
    return traced_bytes(arch.build().to("meta"), c, 4, 1, ih, iw)


def generator_activation_bytes(arch: Any, batch: int) -> int:
    """A generator's activations for ``batch`` latents: every op's output of its traced graph, float32."""
    from lipdeploy.compaction.trace import activation_bytes as traced_bytes  # tracer: only for generators

    return traced_bytes(arch.build().to("meta"), arch.latent_dim, 2, batch)


# --------------------------------------------------------------------------------------------------- module


def export_module(ticket: Ticket, weights: WeightsChoice, bn: BatchNormChoice) -> tuple[nn.Module, dict[str, Any]]:
    """The compacted network to export (exact: see :mod:`lipdeploy.compaction`) and what compaction removed.

    The report is assembled from the compacted net's own per-layer records (``analyze_compaction`` would build the
    net a second time, which dominates export time); MAC counts are left out here (``lipdeploy inspect`` has them).
    """
    module = compact(ticket, weights=weights, bn=bn)
    params_before = sum(v.numel() for k, v in ticket.init.items() if v.is_floating_point() and "running" not in k)
    report = CompactionReport(
        layers=list(module.layers),
        height=0,
        width=0,
        bn=bn,
        params_before=params_before,
        params_after=sum(p.numel() for p in module.parameters()),
    ).to_dict()
    for key in ("height", "width"):
        report.pop(key, None)
    for d in [report.get("totals", {})] + report.get("layers", []):
        for key in ("macs_before", "macs_after", "out_hw"):
            d.pop(key, None)
    return module.eval(), _jsonable(report)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable(asdict(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _torch_to_onnx(module: nn.Module, example: torch.Tensor, opset: int, inp: ModelInput) -> onnx.ModelProto:
    """The module traced to ONNX by the TorchScript-based exporter (``dynamo=False``), tidied.

    Why not the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, torch 2.13 + onnxscript 0.7.2), compared on
    the bundled ticket (parity size 64x96): the same 118 nodes (26 Conv, 30 InstanceNormalization, ...) and the same
    parity (1.96e-5 max abs vs the masked network), but a 3.5% larger file (4,335,489 vs 4,188,052 bytes after this
    module's tidying: 232 value_info shape annotations), export 12x slower (37 s vs 2.9 s, 2-core CPU), opset >= 18
    only (the default here is 17, for older ONNX Runtimes) and onnxscript as a new dependency. Not smaller, so the
    legacy path stays; its deprecation warning is silenced because it is not actionable for the user. Revisit when
    the legacy exporter is removed.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[inp.name],
            output_names=[OUTPUT_NAME],
            dynamic_axes={inp.name: inp.axes, OUTPUT_NAME: inp.output_axes},
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    model = onnx.load_from_string(buf.getvalue())
    if inp.generator:
        _fix_image_dims(model, (inp.arch.dim_output, *inp.image_size))
    else:
        _name_output_dims(model)
    fold_small_constants(model)
    shorten_names(model)
    return model


def _name_output_dims(model: onnx.ModelProto) -> None:
    """The output image's shape as ``[1, 3, height, width]``: the tracer names the batch dimension after a node
    (``Sigmoidimage_dim_0``) although the code, hence the image, has batch 1."""
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[0].dim_param:
            dims[0].dim_value = 1  # setting dim_value clears dim_param (a oneof)


def _fix_image_dims(model: onnx.ModelProto, dims: tuple[int, int, int]) -> None:
    """A generator's output ``[batch, C, R, R]``: C and R are fixed (the tracer names some after nodes)."""
    out = model.graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(list(out)[1:], dims, strict=True):
        d.dim_value = int(v)  # setting dim_value clears dim_param (a oneof)


def _embed_input(model: onnx.ModelProto, code: np.ndarray, image_size: tuple[int, int]) -> None:
    """Turn the graph input into an initializer holding ``code``: the model then takes no input."""
    graph = model.graph
    (inp,) = [i for i in graph.input if i.name == INPUT_NAME]
    graph.input.remove(inp)
    graph.initializer.append(numpy_helper.from_array(code.astype(np.float32), INPUT_NAME))
    dims = graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(list(dims)[2:], image_size, strict=True):
        d.ClearField("dim_param")
        d.dim_value = int(v)


def _conv_weight_names(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
            if node.input[1] not in names:
                names.append(node.input[1])
    return names


def _dq_weight_names(model: onnx.ModelProto) -> list[str]:
    """Quantized weights: integer initializers feeding DequantizeLinear (QDQ format)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            if inits[node.input[0]].data_type in (TensorProto.INT8, TensorProto.UINT8) and node.input[0] not in out:
                out.append(node.input[0])
    return out


def _store_fp16(model: onnx.ModelProto, names: list[str]) -> None:
    """Store the named fp32 initializers as fp16, with a Cast back to fp32 (folded by ONNX Runtime at load)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    casts = []
    for name in names:
        init = inits[name]
        arr = numpy_helper.to_array(init).astype(np.float16)
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(arr, f"{name}__fp16"))
        casts.append(
            helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"cast_fp16/{name}", to=TensorProto.FLOAT)
        )
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + old)


def _quantize_int8(model: onnx.ModelProto, codes: list[np.ndarray]) -> onnx.ModelProto:
    name = model.graph.input[0].name
    import_onnxruntime()  # telemetry off before onnxruntime.quantization imports it
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(codes)

        def get_next(self):
            code = next(self.it, None)
            return None if code is None else {name: code}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint at WARNING on the root logger
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(
                    str(src),
                    str(dst),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"],
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
        finally:
            root.setLevel(level)
        qmodel = onnx.load(dst)
    del qmodel.graph.value_info[:]
    shorten_names(qmodel)
    return qmodel


# --------------------------------------------------------------------------------------------------- running


def ort_session(
    model: onnx.ModelProto | bytes | str | Path, threads: int = 0, optimized_path: str | None = None, spin: bool = True
):
    """An ONNX Runtime CPU session (default optimisation level: constant folding unpacks sparse weights at load).

    ``spin=False`` stops the intra-op worker threads from spinning after a run. Keep ORT's default (spinning) for one
    session serving requests; turn it off when several multi-threaded sessions run in alternation in one process (a
    benchmark's round-robin): each idle session's spinning workers take the cores from the one running. Measured on the
    2-core VM, paper network at 128 px, four 2-thread sessions interleaved: dense 58.0 ms spinning vs 29.5 ms not,
    the 50%-channel ticket 30.5 vs 11.1 ms (ratio 1.90x vs 2.66x, stable across repeats only without spinning)."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(src, Path):
        src = str(src)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, code: np.ndarray | None) -> np.ndarray:
    sess = ort_session(model)
    feeds = {} if code is None else {sess.get_inputs()[0].name: code}
    return sess.run(None, feeds)[0]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB of ``a`` against ``b`` for values spanning ``peak`` (1: the [0, 1] scale; a generator's [-1, 1]: 2);
    inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _check_size(size: tuple[int, int], stride: int, what: str, min_side: int = 1) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise InputError(None, f"{what} {h}x{w}: height and width must be positive multiples of {stride}")
    if h < min_side or w < min_side:
        raise InputError(None, f"{what} {h}x{w}: this network needs sides of at least {min_side} pixels")
    return check_size_limit(h, w, what)


def check_output_set(path: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Check the model and its manifest as one output set: (model path, manifest path).

    An existing manifest is refused without ``force`` even when the model is new: the output set's renames never
    leave a manifest without its model (the old one is removed before the model is renamed), so it is someone's file.
    """
    path = Path(path)
    manifest_path = manifest_path_for(path)
    check_output_path(path, force)
    check_output_path(manifest_path, force)  # even beside a new model: it may be a user's file
    return path, manifest_path


def _check_finite_output(out: np.ndarray, what: str, source: str | None) -> None:
    if not np.isfinite(out).all():
        raise InputError(
            source,
            f"{what} is not finite (NaN or Inf): the weights overflow or the BatchNorm statistics are invalid; "
            "nothing written",
        )


def manifest_path_for(path: str | Path) -> Path:
    """model.onnx -> model.manifest.json (beside the model)."""
    path = Path(path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.manifest.json")


# --------------------------------------------------------------------------------------------------- export


def _input_and_sizes(
    ticket: Ticket, embed_input: tuple[int, int] | None, test_size: tuple[int, int] | None
) -> tuple[ModelInput, tuple[int, int] | None]:
    """The model's input (parity size checked) and the checked embedded size; refuses what would not fit in memory."""
    arch = ticket.arch
    if is_generator(arch):
        if embed_input is not None:
            raise InputError(None, "a generator's input is its latent: a noise code cannot be embedded")
        side = arch.resolution
        if test_size is not None and tuple(test_size) != (side, side):
            raise InputError(None, f"test size {test_size[0]}x{test_size[1]}: the generator makes {side}x{side} images")
        # the reference (float32 and float64), the traced graph and ONNX Runtime each hold the activations
        check_memory(4 * generator_activation_bytes(arch, PARITY_BATCH), f"export of a {side}x{side} generator")
        return model_input(arch, (side, side)), None
    stride = arch.stride
    min_side = getattr(arch, "min_side", stride)
    if embed_input is not None:
        embed_input = _check_size(embed_input, stride, "embedded input size", min_side)
    if test_size is None:
        test_size = embed_input or (max(64, stride * 2), max(96, stride * 3))
    test_size = _check_size(test_size, stride, "test size", min_side)
    if arch.kind not in ("dip", "dd"):  # a network from the user's code: the toolkit's estimates do not know it
        check_memory(3 * traced_activation_bytes(arch, *test_size), f"export at {test_size[0]}x{test_size[1]}")
        return model_input(arch, test_size), embed_input
    # the reference, the traced graph and ONNX Runtime each hold the activations (x 3), plus int8 calibration runs
    check_work(
        arch,
        *test_size,
        training=False,
        what=f"export at {test_size[0]}x{test_size[1]}",
        extra_bytes=2 * activation_bytes(arch, *test_size, training=False),
    )
    return model_input(arch, test_size), embed_input


def export_onnx(
    ticket: Ticket,
    path: str | Path,
    *,
    weights: WeightsChoice | None = None,
    bn: BatchNormChoice = "image",
    weights_format: Literal["dense", "sparse"] = "sparse",
    dtype: Literal["fp32", "fp16"] = "fp32",
    quantize: Literal["int8"] | None = None,
    embed_input: tuple[int, int] | None = None,
    seed: int = 0,
    opset: int = 17,
    force: bool = False,
    test_size: tuple[int, int] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    calibration_codes: int = 4,
    target: np.ndarray | torch.Tensor | None = None,
    _before_write: Any = None,
) -> ExportSummary:
    """Export ``ticket`` to ``path`` (ONNX) plus ``<stem>.manifest.json``; returns what was measured.

    ``weights``: which weights to export; default the fitted ones when the ticket has them (a fitted ticket is an
    image decoder), else the initial ones. ``bn``: ``"image"`` = DIP semantics (per-image statistics), ``"running"``
    = eval-mode BatchNorm. ``embed_input=(h, w)`` bakes ``make_input(arch, h, w, seed)`` into the model (no graph
    input). ``test_size``: where parity is measured (default 64x96, or the embedded size). ``target``: the image the
    network was fitted to ([1, 3, H, W] at the test size); with it fp16 / int8 exports report the PSNR change against
    it, without it only the PSNR of the reduced-precision output against the fp32 output.
    Raises :class:`InputError` for bad options or paths, :class:`ExportError` when the fp32 graph misses the oracle
    by more than ``tolerance``; in both cases nothing is written.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    weights = _check_options(ticket, weights, bn, weights_format, dtype, quantize, opset)
    path, manifest_path = check_output_set(Path(path), force)
    inp, embed_input = _input_and_sizes(ticket, embed_input, test_size)
    graph = _graph(
        ticket, inp, t0, timings, weights=weights, bn=bn, weights_format=weights_format, dtype=dtype,
        quantize=quantize, embed_input=embed_input, seed=seed, opset=opset, calibration_codes=calibration_codes,
    )  # fmt: skip
    _set_metadata(graph.model, ticket, weights, bn, weights_format, dtype, quantize, embed_input, seed, graph.removed)
    _check_graph(graph.model)

    # 4: parity
    t2 = time.perf_counter()
    parity = _parity_fields(graph, tolerance, weights_format, dtype, quantize, inp.generator, target)
    timings["parity"] = time.perf_counter() - t2

    # 5: write atomically (model, then manifest beside it)
    data = graph.model.SerializeToString()
    summary = ExportSummary(
        path=str(path),
        manifest_path=str(manifest_path),
        architecture=ticket.arch.describe(),
        weights=weights,
        bn=bn,
        weights_format=weights_format,
        dtype=dtype,
        quantize=quantize,
        embed_input=embed_input,
        seed=seed,
        opset=opset,
        density=ticket.density,
        file_bytes=len(data),
        dense_fp32_bytes=graph.dense_fp32_bytes,
        parity_size=tuple(inp.image_size),
        **parity,
        removed=graph.removed,
        packed=[p.to_dict() for p in graph.packed],
        timings_s=timings,
        model_input=inp.describe(),
    )
    _write(summary, ticket, data, force, _before_write)
    timings["total"] = time.perf_counter() - t0
    return summary


class _Graph(NamedTuple):
    """The exported graph before its checks: the final ``model``, the fp32 graph it came from (for parity), the
    reference output and the input fed to both (None when embedded)."""

    model: onnx.ModelProto
    fp32_model: onnx.ModelProto
    dense_fp32_bytes: int
    reference: np.ndarray
    feed: np.ndarray | None
    packed: list[PackedTensor]
    removed: dict[str, Any]


def _graph(
    ticket: Ticket,
    inp: ModelInput,
    t0: float,
    timings: dict[str, float],
    *,
    weights: WeightsChoice,
    bn: BatchNormChoice,
    weights_format: str,
    dtype: str,
    quantize: str | None,
    embed_input: tuple[int, int] | None,
    seed: int,
    opset: int,
    calibration_codes: int,
) -> _Graph:
    """Steps 1-3 of the pipeline: the compacted module exported, then post-processed (embedded input, int8, weight
    storage); records ``torch_export`` (since ``t0``) and ``post_process`` in ``timings``."""
    # 1-2: compacted module -> ONNX
    module, removed = export_module(ticket, weights, bn)
    code_t = inp.draw(seed)
    reference = _reference(ticket, weights, bn, code_t)
    code = code_t.numpy()
    model = _torch_to_onnx(module, code_t, opset, inp)
    timings["torch_export"] = time.perf_counter() - t0

    # 3: post-processing
    feed: np.ndarray | None = code
    if embed_input is not None:
        _embed_input(model, code, embed_input)
        feed = None
    fp32_model = copy.deepcopy(model)
    dense_fp32_bytes = fp32_model.ByteSize()
    t1 = time.perf_counter()
    if quantize == "int8":
        calib = [code] + [inp.draw(seed + 1000 + i).numpy() for i in range(max(0, calibration_codes - 1))]
        if embed_input is not None:  # calibrate the graph with its input, then embed
            plain = _torch_to_onnx(module, code_t, opset, inp)
            model = _quantize_int8(plain, calib)
            _embed_input(model, code, embed_input)
        else:
            model = _quantize_int8(model, calib)
    packed = _store_weights(model, ticket, weights_format, dtype, quantized=quantize == "int8")
    timings["post_process"] = time.perf_counter() - t1
    return _Graph(model, fp32_model, dense_fp32_bytes, reference, feed, packed, removed)


def _check_graph(model: onnx.ModelProto) -> None:
    """``onnx.checker``'s full check; :class:`ExportError` with its complaint."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc


def _parity_fields(
    graph: _Graph,
    tolerance: float,
    weights_format: str,
    dtype: str,
    quantize: str | None,
    generator: bool,
    target: np.ndarray | torch.Tensor | None,
) -> dict[str, float | None]:
    """The parity and precision fields of :class:`ExportSummary`, measured in ONNX Runtime (see :func:`_parity`)."""
    exact = weights_format == "dense" and dtype == "fp32" and not quantize  # the fp32 graph is the final one
    packed_fp32 = weights_format == "sparse" and dtype == "fp32" and not quantize
    out, err, fp32_err, sparse_vs_dense = _parity(
        graph.fp32_model, None if exact else graph.model, graph.feed, graph.reference, tolerance, packed_fp32
    )
    precision_psnr = psnr_change = None
    if dtype != "fp32" or quantize:
        precision_psnr = psnr(out, graph.reference, peak=2.0 if generator else 1.0)
        if target is not None:
            psnr_change = _psnr_change(out, graph.reference, target)
    return {
        "parity_max_abs": err,
        "fp32_parity_max_abs": fp32_err,
        "sparse_vs_dense_max_abs": sparse_vs_dense,
        "precision_psnr_db": precision_psnr,
        "psnr_change_db": psnr_change,
    }


def _write(summary: ExportSummary, ticket: Ticket, data: bytes, force: bool, before_write: Any) -> None:
    """The model and its manifest as one output set (see atomic_output_set): the old manifest goes first, then the
    model is renamed into place, then the manifest naming the model's sha256. A reader, or a run killed in between,
    sees the old pair, a model without a manifest, or the new pair; never a manifest beside a model it does not
    describe."""
    manifest = _manifest(summary, ticket)
    manifest["model_sha256"] = hashlib.sha256(data).hexdigest()
    manifest_text = dumps_record(manifest, indent=2, default=str) + "\n"
    with atomic_output_set(Path(summary.path), Path(summary.manifest_path), exclusive=not force) as (model, man):
        model.write_bytes(data)
        man.write_text(manifest_text)
        if before_write is not None:  # test hook: inject a failure after the temporary files exist
            before_write()


def _check_options(ticket, weights, bn, weights_format, dtype, quantize, opset) -> WeightsChoice:
    """Refuse bad export options (InputError); the weights to export (default: fitted when the ticket has them)."""
    if weights is None:
        weights = "fitted" if ticket.fitted is not None else "init"
    if weights not in ("init", "fitted"):
        raise InputError(None, f"weights must be 'init' or 'fitted', not {weights!r}")
    if weights == "fitted" and ticket.fitted is None:
        raise InputError(ticket.source, "the ticket holds no fitted weights (use init)")
    if bn not in ("image", "running"):
        raise InputError(None, f"bn must be 'image' or 'running', not {bn!r}")
    if weights_format not in ("dense", "sparse"):
        raise InputError(None, f"weights format must be dense or sparse, not {weights_format!r}")
    if dtype not in ("fp32", "fp16"):
        raise InputError(None, f"dtype must be fp32 or fp16, not {dtype!r}")
    if quantize not in (None, "int8"):
        raise InputError(None, f"quantize must be int8, not {quantize!r}")
    if quantize and dtype != "fp32":
        raise InputError(None, "--quantize int8 and --dtype fp16 exclude each other")
    if opset < 17:
        raise InputError(None, f"opset {opset} is too old: 17 or newer")
    return weights


@torch.no_grad()
def _reference(ticket: Ticket, weights: WeightsChoice, bn: BatchNormChoice, code: torch.Tensor) -> np.ndarray:
    """The oracle's output for ``code``: the masked network in float64 (checked finite in float32 first).

    In float32 a channel that is constant (all its inputs pruned) leaves a rounding residue that the next per-image
    BatchNorm divides by sqrt(var + eps), i.e. amplifies up to ~1/sqrt(eps); measured on an 89% block ticket (64 px
    IMP round 10): float32 masked vs float64 masked 6.9e-2, compacted (exact: constants folded) vs float64 masked
    2.7e-6. Compared with float32, export refused it.
    """
    net = ticket.build(weights, bn=bn)
    # what a float32 runtime computes must be finite (weights near float32's range overflow there, not in float64)
    _check_finite_output(net(code.clone()).numpy(), "the network's output", ticket.source)
    return net.double()(code.clone().double()).float().numpy()


def _store_weights(model: onnx.ModelProto, ticket: Ticket, weights_format, dtype, quantized: bool) -> list:
    """fp16 storage and sparse packing of the conv weights (the quantized ones after int8); the packed tensors."""
    weight_names = _dq_weight_names(model) if quantized else _conv_weight_names(model)
    packed: list[PackedTensor] = []
    if dtype == "fp16":
        inits = {i.name: i for i in model.graph.initializer}
        _store_fp16(model, weight_names)
        weight_names = [f"{n}__fp16" for n in weight_names if n in inits]
    if weights_format == "sparse":
        packed = pack_initializers(model, weight_names, block=_block_size(ticket))
    return packed


def _parity(
    fp32_model: onnx.ModelProto,
    model: onnx.ModelProto | None,
    feed: np.ndarray | None,
    reference: np.ndarray,
    tolerance: float,
    packed_fp32: bool,
) -> tuple[np.ndarray, float, float, float | None]:
    """In ONNX Runtime: (the final model's output, its max abs error vs the oracle, the fp32 graph's, and for a
    ``packed_fp32`` model its difference to the fp32 graph). ``model`` None: the fp32 graph is the final one.
    ExportError when the fp32 graph (or a packed fp32 model) misses the oracle by more than ``tolerance``, or when the
    output is not finite."""
    fp32_out = _run(fp32_model, feed)
    fp32_err = float(np.abs(fp32_out - reference).max())
    if not math.isfinite(fp32_err) or fp32_err > tolerance:  # NaN > tol is False: test finiteness first
        raise ExportError(
            f"ONNX Runtime output differs from the masked network by {fp32_err:.2e} (> {tolerance:.0e}): "
            "nothing written"
        )
    out = fp32_out if model is None else _run(model, feed)
    err = float(np.abs(out - reference).max())
    if not math.isfinite(err):
        raise ExportError(f"the exported model's output is not finite (max error {err}): nothing written")
    if not packed_fp32:
        return out, err, fp32_err, None
    if err > tolerance:
        raise ExportError(f"sparse-packed graph differs from the masked network by {err:.2e}; nothing written")
    return out, err, fp32_err, float(np.abs(out - fp32_out).max())


def _psnr_change(out: np.ndarray, reference: np.ndarray, target: np.ndarray | torch.Tensor) -> float:
    """PSNR(reduced-precision output, target) - PSNR(fp32 network, target)."""
    tgt = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target, dtype=np.float32)
    if tgt.shape != reference.shape:
        raise InputError(None, f"target image shape {list(tgt.shape)} != output shape {list(reference.shape)}")
    return psnr(out, tgt) - psnr(reference, tgt)


def input_contract(ticket: Ticket, embed_input: tuple[int, int] | None, seed: int) -> dict[str, Any]:
    """How to feed the model (also read back by ``lipdeploy run``)."""
    arch = ticket.arch
    if is_generator(arch):
        side = arch.resolution
        return {
            "embedded": False,
            "name": LATENT_NAME,
            "dtype": "float32",
            "shape": ["batch", arch.latent_dim],
            "latent": "N(0, I): lipdeploy.generator.make_latent(spec, batch, seed)",
            "output": {"name": OUTPUT_NAME, "shape": ["batch", arch.dim_output, side, side], "range": [-1, 1]},
        }
    c = arch.input_channels
    if embed_input is not None:
        return {
            "embedded": True,
            "image_size": list(embed_input),
            "seed": seed,
            "noise": f"lipdeploy.make_input(arch, H, W, seed, scale={NOISE_SCALE})",
        }
    factor = code_factor(arch)
    shape = [1, c, "H", "W"] if factor == 1 else [1, c, f"H/{factor}", f"W/{factor}"]
    return {
        "embedded": False,
        "name": INPUT_NAME,
        "dtype": "float32",
        "layout": "NCHW",
        "shape": shape,
        "image_multiple_of": arch.stride,
        "code_downsample": factor,
        "noise": f"uniform U(0, {NOISE_SCALE}): lipdeploy.make_input(arch, H, W, seed, scale={NOISE_SCALE})",
        "output": {"name": OUTPUT_NAME, "shape": [1, 3, "H", "W"], "range": [0, 1]},
    }


def _block_size(ticket: Ticket) -> tuple[int, int] | None:
    """A block ticket's ``(Bo, Bi)`` (its weights may then be stored with one bit per block), else None."""
    return ticket_block_size(ticket)


def _set_metadata(model, ticket, weights, bn, weights_format, dtype, quantize, embed_input, seed, removed) -> None:
    props = {
        "lipdeploy_version": __version__,
        "architecture": json.dumps(ticket.arch.to_dict()),
        "architecture_description": ticket.arch.describe(),
        "sparsity": f"{ticket.sparsity:.6f}",
        "density": f"{ticket.density:.6f}",
        "provenance": json.dumps(_jsonable(ticket.provenance)),
        "weights": weights,
        "batchnorm": (
            "image: per-image statistics (DIP semantics, InstanceNormalization)"
            if bn == "image"
            else "running: eval-mode running statistics"
        ),
        "batchnorm_mode": bn,
        "input_contract": json.dumps(input_contract(ticket, embed_input, seed)),
        "weights_format": weights_format,
        "dtype": dtype,
        "quantize": quantize or "none",
        "removed": json.dumps(removed.get("totals", removed) if isinstance(removed, dict) else removed),
    }
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    model.producer_name = "lipdeploy"
    model.producer_version = __version__
    model.doc_string = f"lipdeploy export of {ticket.arch.describe()} ({ticket.sparsity:.1%} sparse, BN {bn})"


def _manifest(summary: ExportSummary, ticket: Ticket) -> dict[str, Any]:
    packed = summary.packed
    return {
        "format": "lipdeploy.export-manifest",
        "version": 1,
        "lipdeploy_version": __version__,
        "model": Path(summary.path).name,
        "file_bytes": summary.file_bytes,
        "dense_fp32_bytes": summary.dense_fp32_bytes,
        "size_ratio": summary.size_ratio,
        "architecture": ticket.arch.to_dict(),
        "density": ticket.density,
        "provenance": _jsonable(ticket.provenance),
        "options": {
            "weights": summary.weights,
            "bn": summary.bn,
            "weights_format": summary.weights_format,
            "dtype": summary.dtype,
            "quantize": summary.quantize,
            "embed_input": summary.embed_input,
            "seed": summary.seed,
            "opset": summary.opset,
        },
        "input_contract": input_contract(ticket, summary.embed_input, summary.seed),
        "removed": summary.removed,
        "stored_sparse": [p for p in packed if p["encoding"] != "dense"],
        "stored_dense": [p["name"] for p in packed if p["encoding"] == "dense"],
        "parity": {
            "reference": "ticket.build(weights, bn) in PyTorch, float64 (masked network)",
            "size": list(summary.parity_size),
            "max_abs": summary.parity_max_abs,
            "fp32_max_abs": summary.fp32_parity_max_abs,
            "sparse_vs_dense_max_abs": summary.sparse_vs_dense_max_abs,
            "precision_psnr_db": summary.precision_psnr_db,
            "psnr_change_db": summary.psnr_change_db,
        },
        "timings_s": summary.timings_s,
    }
