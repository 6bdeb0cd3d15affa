"""Tickets: the toolkit's unit. Architecture + initial weights + one 0/1 mask per prunable weight + provenance.

:func:`load_ticket` reads, never executing a pickle (``torch.load(weights_only=True)`` only):

a) the toolkit's own ticket file, ``.pt`` or ``.safetensors`` (format below);
b) the LIP paper code's pair: a dict of ``'<module path>.weight_mask'`` tensors plus the network's state dict given
   as ``weights``;
c) a state dict of a model pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``);
d) a plain state dict whose exact zeros define the mask;
e) a progressive-GAN generator file (pytorch_GAN_zoo's checkpoint, its generator's state dict in the zoo's layouts,
   pruned or as masks only: :mod:`lipdeploy.generator_files`), the architecture from the checkpoint's ``config``.

The architecture is inferred from tensor names and shapes; what shapes cannot tell (upsampling mode, activation,
sigmoid) defaults to the paper configuration and can be overridden.

Own file format (version 1). Conv weights are stored only at kept positions, so a 90%-sparse ticket is ~7x smaller
than the dense state dict:

- ``format`` = ``"lipdeploy.ticket"``, ``version`` = 1, ``arch`` (``ArchSpec.to_dict()``), ``provenance`` (plain data);
- ``shapes``: prunable weight name -> shape (list of ints), in forward order;
- ``tensors``: flat name -> tensor, with names
  ``mask/<name>`` (uint8, ``numpy.packbits`` of the flattened 0/1 mask, big-endian bit order),
  ``init/<name>`` (prunable weights: 1-D float values at kept positions, row-major; other tensors: as in the state
  dict) and, for a fitted network, ``fitted/<name>`` likewise.

The ``.safetensors`` variant holds the same ``tensors``; ``format``, ``version``, ``arch``, ``provenance`` and
``shapes`` are JSON strings in its metadata.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import InputError
from .fileio import atomic_output, check_regular_file, check_zip_members
from .generator_files import GeneratorFile, is_checkpoint_content, is_generator_content, read_generator_file
from .limits import MAX_TENSOR_FILE_BYTES, TENSOR_SLACK_BYTES, check_memory, parameter_count
from .masks import Mask, Masks, apply_masks_
from .masks import density as masks_density
from .networks import ArchSpec, DeepDecoderSpec, SkipSpec, arch_from_dict, prunable_names

FORMAT = "lipdeploy.ticket"
VERSION = 1
StateDict = dict[str, torch.Tensor]
BatchNormMode = Literal["image", "running"]


@dataclass
class Ticket:
    """A lottery image prior: ``build()`` gives the masked network.

    ``init`` is the full state dict of the reference network at the rewind point (parameters and BatchNorm buffers);
    ``fitted``, when present, the weights after fitting. ``masks`` holds every prunable weight's 0/1 mask.
    """

    arch: ArchSpec
    init: StateDict
    masks: Masks
    fitted: StateDict | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def density(self) -> float:
        """Kept fraction of the prunable (convolution) weights."""
        return masks_density(self.masks)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def prunable_count(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def kept_count(self) -> int:
        return sum(int(m.count_nonzero()) for m in self.masks.values())

    def state_dict(self, weights: Literal["init", "fitted"] = "init") -> StateDict:
        """The masked state dict (pruned weights exactly zero)."""
        if weights == "fitted" and self.fitted is None:
            raise InputError(self.source, "the ticket holds no fitted weights")
        src = self.init if weights == "init" else self.fitted
        out = {k: v.clone() for k, v in src.items()}
        for name, mask in self.masks.items():
            out[name] = out[name] * mask
        return out

    def build(self, weights: Literal["init", "fitted"] = "init", bn: BatchNormMode = "image") -> nn.Sequential:
        """The masked reference network.

        ``bn="image"`` (default, DIP semantics): the module is in training mode, so BatchNorm normalises with the
        current image's statistics. ``bn="running"``: eval mode, BatchNorm uses its running statistics.
        """
        model = self.arch.build()
        model.load_state_dict(self.state_dict(weights))
        apply_masks_(model, self.masks)
        return model.train(bn == "image")

    def replace(self, **changes: Any) -> Ticket:
        """A copy with some fields changed."""
        fields = {k: getattr(self, k) for k in ("arch", "init", "masks", "fitted", "provenance", "source")}
        fields.update(changes)
        return Ticket(**fields)

    def save(self, path: str | Path) -> None:
        """Write the ticket atomically: ``.safetensors`` for the safetensors variant, anything else as ``.pt``."""
        path = Path(path)
        for group, sd in (("initial", self.init), ("fitted", self.fitted)):
            for key, value in (sd or {}).items():  # our own loader refuses them: never write a ticket it cannot read
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise InputError(
                        path, f"not written: the {group} weights contain NaN or Inf (in {key!r}; did the fit diverge?)"
                    )
        tensors, meta = _encode(self)
        # written through Python file objects: a full disk is then an OSError that atomic_output reports in one line
        # (torch.save and safetensors' save_file given a path turn it into their own error types)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            if path.suffix == ".safetensors":
                f.write(safetensors_bytes(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))
            else:
                torch.save({**meta, "tensors": tensors}, f)


# --------------------------------------------------------------------------------------------------- own format


def _encode(ticket: Ticket) -> tuple[StateDict, dict[str, Any]]:
    tensors: StateDict = {}
    for name, mask in ticket.masks.items():
        bits = np.packbits(mask.reshape(-1).numpy().astype(bool))
        tensors[f"mask/{name}"] = torch.from_numpy(bits)
    for group, sd in (("init", ticket.init), ("fitted", ticket.fitted)):
        if sd is None:
            continue
        for name, value in sd.items():
            if name in ticket.masks:
                value = value.reshape(-1)[ticket.masks[name].reshape(-1).bool()]
            tensors[f"{group}/{name}"] = value.detach().contiguous().clone()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": ticket.arch.to_dict(),
        "provenance": _plain(ticket.provenance),
        "shapes": {name: list(m.shape) for name, m in ticket.masks.items()},
    }
    return tensors, meta


def _plain(value: Any) -> Any:
    """Provenance as plain data only (what weights_only loading and JSON both accept)."""
    return json.loads(json.dumps(value, default=str))


def _decode(path: Path, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Ticket:
    if meta.get("version") != VERSION:
        raise InputError(path, f"unsupported ticket version {meta.get('version')!r} (this lipdeploy reads {VERSION})")
    try:
        arch = arch_from_dict(meta["arch"])
        shapes = {name: torch.Size(_header_shape(name, s)) for name, s in _header_mapping("shapes", meta["shapes"])}
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InputError(path, f"malformed ticket header: {_first_line(exc)}") from None
    provenance = meta.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise InputError(
            path, f"malformed ticket header: provenance must be a mapping, not a {type(provenance).__name__}"
        )
    # the header's network is what gets materialised (dense initial and fitted weights, float masks): 3 W, checked
    # before allocating it (a 4096-channel header in a small sparse file would unpack to tens of GB)
    check_memory(3 * 4 * parameter_count(arch), f"loading {path.name} ({arch.describe()})")
    expected = _prunable_shapes(arch)
    if list(shapes) != list(expected) or any(tuple(shapes[k]) != tuple(v) for k, v in expected.items()):
        bad = next((k for k in shapes if k not in expected or tuple(shapes[k]) != tuple(expected[k])), None)
        where = f" ({bad!r}: {list(shapes[bad])})" if bad is not None else ""
        raise InputError(path, f"malformed ticket header: the shapes do not match {arch.describe()}{where}")
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(path, f"malformed ticket: entry {key!r} of 'tensors' is not a named tensor")
    masks: StateDict = {}
    for name, shape in shapes.items():
        bits = tensors.get(f"mask/{name}")
        if bits is None:
            raise InputError(path, f"ticket has no mask for {name!r}")
        n = shape.numel()
        flat = np.unpackbits(bits.numpy().astype(np.uint8), count=n) if bits.numel() * 8 >= n else None
        if flat is None:
            raise InputError(path, f"mask for {name!r} is shorter than its shape {list(shape)}")
        masks[name] = torch.from_numpy(flat.astype(np.float32)).reshape(shape)
    groups: dict[str, StateDict] = {"init": {}, "fitted": {}}
    for key, value in tensors.items():
        group, _, name = key.partition("/")
        if group in groups:
            if name in masks:
                mask = masks[name].reshape(-1).bool()
                if value.dim() != 1 or value.numel() != int(mask.sum()):
                    raise InputError(path, f"{key!r} holds {value.numel()} values but its mask keeps {int(mask.sum())}")
                full = torch.zeros(mask.numel(), dtype=value.dtype)
                full[mask] = value
                value = full.reshape(masks[name].shape)
            groups[group][name] = value
        elif group != "mask":
            raise InputError(path, f"unexpected tensor {key!r} in ticket")
    if not groups["init"]:
        raise InputError(path, "ticket holds no initial weights")
    ticket = Ticket(
        arch=arch,
        init=groups["init"],
        masks=masks,
        fitted=groups["fitted"] or None,
        provenance=dict(provenance),
        source=str(path),
    )
    _check_state(path, arch, ticket.init)
    if ticket.fitted is not None:
        _check_state(path, arch, ticket.fitted)
    ticket.masks = Mask.validated(masks, _prunable_shapes(arch), str(path))
    _check_block_structure(path, ticket)
    return ticket


def _check_block_structure(path: Path, ticket: Ticket) -> None:
    """A ticket whose provenance says it was found at a block granularity must hold block masks (the bsr kernels
    and the block storage of the export rely on it): :class:`InputError` naming the file and the first bad layer."""
    # the patterns registry (~0.1 s to import): loaded only for a ticket found at a block granularity
    from .patterns import PATTERNS, Block, block_pattern
    from .patterns.block import BLOCK_SIZES

    gran = ticket.provenance.get("granularity")
    pattern = PATTERNS.get(gran) if isinstance(gran, str) else None
    block = ticket.provenance.get("block")
    if block is not None:
        if not (
            isinstance(block, (list, tuple))
            and len(block) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b in BLOCK_SIZES for b in block)
        ):
            raise InputError(path, f"provenance has an invalid block size {block!r} (sides in {BLOCK_SIZES})"[:200])
        if pattern is None or isinstance(pattern, Block):
            pattern = block_pattern(int(block[0]), int(block[1]))
    if not isinstance(pattern, Block):
        return
    last = list(ticket.masks)[-1] if ticket.masks else None
    for name, mask in ticket.masks.items():
        reason = pattern.check(mask, name, name == last)
        if reason is not None:
            raise InputError(path, f"provenance says granularity {gran!r} but layer {reason}")


# --------------------------------------------------------------------------------------------------- reading files


def read_tensor_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a ``.pt``/``.pth`` (weights_only) or ``.safetensors`` file: (content, safetensors metadata)."""
    path = check_regular_file(path)
    size = path.stat().st_size
    if size > MAX_TENSOR_FILE_BYTES:
        limit = MAX_TENSOR_FILE_BYTES / 2**30
        raise InputError(path, f"file of {size / 2**30:.1f} GiB is too large (at most {limit:g} GiB)")
    check_memory(2 * size, f"reading {path.name}")  # the file's bytes and the tensors made from them
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                content = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for bad headers and short files
            raise InputError(path, f"unreadable or truncated safetensors file ({_first_line(exc)})") from None
        _check_tensors(path, content, path.stat().st_size)
        return content, meta
    check_zip_members(path, size)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of odd files: our message says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # the weights-only unpickler met a class or function reference
            raise InputError(
                path, "refused: the pickle holds objects other than tensors and plain data (it was not executed)"
            ) from None
        raise InputError(path, "unreadable or truncated file (not a PyTorch tensor file, or a corrupt one)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InputError(path, f"unreadable or truncated file ({_load_problem(exc)})") from None
    except Exception as exc:  # a byte-mutated file can make the unpickler raise anything (KeyError, struct.error, ...)
        raise InputError(path, f"unreadable or truncated file (corrupt data: {type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a dict of tensors, found {type(obj).__name__}")
    _check_tensors(path, obj, path.stat().st_size)
    return obj, {}


def _load_problem(exc: BaseException) -> str:
    """torch.load's complaint in our words: its "Weights only load failed ... In PyTorch 2.6 ..." essay and zip
    internals say nothing useful about a bad file."""
    text = _first_line(exc)
    if "weights only load failed" in text.lower() or "pytorch" in text.lower() or "zip archive" in text.lower():
        return "not a PyTorch tensor file, or a truncated or corrupt one"
    return text


def _check_tensors(path: Path, obj: Any, file_bytes: int, depth: int = 0) -> None:
    """Refuse, before anything reads their values, tensors a file of ``file_bytes`` cannot really hold (an expanded,
    stride-0 tensor, or more elements than the file's bytes: a reduction over them would allocate their full size) and
    complex or otherwise non-real dtypes. Walks nested dicts and lists of the loaded object."""
    if depth > 8:
        raise InputError(path, "malformed file: its data is nested too deeply")
    if isinstance(obj, torch.Tensor):
        _check_tensor(path, "tensor", obj, file_bytes)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, torch.Tensor):
                _check_tensor(path, key, value, file_bytes)
            elif isinstance(value, (dict, list, tuple)):
                _check_tensors(path, value, file_bytes, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_tensors(path, value, file_bytes, depth + 1)


def _check_tensor(path: Path, key: Any, value: torch.Tensor, file_bytes: int) -> None:
    if value.is_complex() or value.dtype in (torch.quint8, torch.qint8, torch.qint32):
        raise InputError(path, f"tensor {key!r} has dtype {str(value.dtype).replace('torch.', '')}: real tensors only")
    numel = value.numel()
    if numel > 1 and any(st == 0 and n > 1 for st, n in zip(value.stride(), value.shape, strict=True)):
        raise InputError(path, f"tensor {key!r} is an expanded (stride-0) view of shape {list(value.shape)}: refused")
    if numel * value.element_size() > file_bytes + TENSOR_SLACK_BYTES:
        raise InputError(
            path, f"tensor {key!r} claims {numel:,} elements of shape {list(value.shape)}, more than the file holds"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _header_mapping(what: str, value: Any) -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a mapping, not a {type(value).__name__}")
    return list(value.items())


def _header_shape(name: Any, shape: Any) -> list[int]:
    """A shape from a ticket header: a list of non-negative integers (ValueError otherwise)."""
    if not isinstance(shape, (list, tuple)) or len(shape) > 8:
        raise ValueError(f"shape of {name!r} must be a list of at most 8 sizes, got {shape!r}"[:200])
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"shape of {name!r} must hold non-negative integers, got {shape!r}"[:200])
    return list(shape)


def as_state_dict(path: Path, obj: Mapping[str, Any]) -> StateDict:
    """A loaded file's tensors as a state dict (a ``state_dict`` entry unwrapped, a DataParallel ``module.`` prefix
    dropped); anything else is refused in one line naming ``path``."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    out: StateDict = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor: not a state dict")
        out[key] = value
    if out and all(k.startswith("module.") for k in out):  # saved from DataParallel
        out = {k[len("module.") :]: v for k, v in out.items()}
    if not out:
        raise InputError(path, "holds no tensors")
    return out


def _check_finite(path: Path, sd: Mapping[str, torch.Tensor]) -> None:
    for key, value in sd.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(path, f"weights contain NaN or Inf (in {key!r})")


# --------------------------------------------------------------------------------------------------- architecture


def _shape_model(arch: ArchSpec) -> nn.Module:
    """The reference network on the meta device: names and shapes only, no weight initialisation (loading a ticket
    asks for them several times, and initialising the paper network's 2.2M weights each time is wasted work)."""
    with torch.device("meta"):
        return arch.build()


def _prunable_shapes(arch: ArchSpec) -> dict[str, torch.Size]:
    model = _shape_model(arch)
    params = dict(model.named_parameters())
    return {name: params[name].shape for name in prunable_names(model)}


def _reference_shapes(arch: ArchSpec) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in _shape_model(arch).state_dict().items()}


def _check_state(path: Path | str | None, arch: ArchSpec, sd: StateDict) -> None:
    """Fill missing BatchNorm counters (older PyTorch); refuse missing/unexpected tensors and wrong shapes."""
    ref = _reference_shapes(arch)
    for key in ref:
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise InputError(path, f"weights do not match {arch.describe()}: " + "; ".join(parts))
    for key, shape in ref.items():
        if not key.endswith("num_batches_tracked") and not sd[key].is_floating_point():
            raise InputError(
                path, f"weight {key!r} has dtype {str(sd[key].dtype).replace('torch.', '')}: floating point expected"
            )
        if tuple(sd[key].shape) != tuple(shape):
            raise InputError(
                path, f"weight {key!r} has shape {list(sd[key].shape)}, the architecture needs {list(shape)}"
            )
    _check_finite(Path(str(path)), sd)


def infer_arch(shapes: Mapping[str, torch.Size | tuple[int, ...]], **overrides: Any) -> ArchSpec:
    """Infer the architecture from parameter names and shapes (a state dict's, or a mask dict's weight names).

    Raises ``ValueError`` when the names fit neither a DIP skip network nor a deep decoder.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    candidates: list[ArchSpec] = []
    for build in (_infer_deep_decoder, _infer_skip_reflection, _infer_skip_zero):
        try:
            spec = build(shapes, overrides)
        except (KeyError, IndexError, TypeError, ValueError):
            spec = None
        if spec is not None:
            candidates.append(spec)
    for spec in candidates:
        ref = _reference_shapes(spec)
        weights = {k: v for k, v in ref.items() if k.endswith((".weight", ".bias"))}
        if all(shapes.get(k) == tuple(v) for k, v in weights.items()) and all(
            k in ref for k in shapes if k.endswith((".weight", ".bias"))
        ):
            return spec
    raise ValueError(
        "cannot infer the architecture: the tensor names and shapes fit neither a DIP skip net nor a deep decoder"
    )


def _infer_deep_decoder(shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Any]) -> ArchSpec | None:
    convs = sorted(
        (int(m.group(1)), shape) for k, shape in shapes.items() if (m := re.fullmatch(r"(\d+)\.1\.weight", k))
    )
    if len(convs) < 2 or any(len(s) != 4 or s[2:] != (1, 1) for _, s in convs):
        return None
    k = convs[0][1][1]
    return DeepDecoderSpec(k=k, depth=len(convs) - 2, out_channels=convs[-1][1][0], **_only(DeepDecoderSpec, overrides))


def _infer_skip_reflection(shapes, overrides):
    return _infer_skip(shapes, overrides, "reflection")


def _infer_skip_zero(shapes, overrides):
    return _infer_skip(shapes, overrides, "zero")


def _infer_skip(shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Any], pad: str) -> ArchSpec | None:
    c = "1" if pad == "reflection" else "0"  # index of the Conv2d inside Sequential(ReflectionPad2d, Conv2d)
    down, up, skip = [], [], []
    f_skip = 1
    prefix = ""
    in_ch = None
    while True:
        if f"{prefix}1.0.1.{c}.weight" in shapes:  # Concat(skip, deeper): the skip branch's conv
            w = shapes[f"{prefix}1.0.1.{c}.weight"]
            skip.append(w[0])
            f_skip = w[-1]
            deeper = f"{prefix}1.1."
        else:
            skip.append(0)
            deeper = f"{prefix}1."
        wd = shapes[f"{deeper}1.{c}.weight"]
        if in_ch is None:
            in_ch = wd[1]
        down.append(wd[0])
        f_down = wd[-1]
        wu = shapes[f"{prefix}3.{c}.weight"]
        up.append(wu[0])
        f_up = wu[-1]
        need1x1 = f"{prefix}6.{c}.weight" in shapes
        if any(k.startswith(f"{deeper}7.") for k in shapes):
            prefix = f"{deeper}7."
        else:
            break
    final = "9" if need1x1 else "6"
    out = shapes[f"{final}.{c}.weight"][0]
    spec_args = dict(
        in_channels=in_ch,
        out_channels=out,
        channels_down=tuple(down),
        channels_up=tuple(up),
        channels_skip=tuple(skip),
        filter_size_down=f_down,
        filter_size_up=f_up,
        filter_skip_size=f_skip,
        pad=pad,
        bias=f"{final}.{c}.bias" in shapes,
        need1x1_up=need1x1,
    )
    spec_args.update(_only(SkipSpec, overrides))
    return SkipSpec(**spec_args)


def _only(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in overrides.items() if k in names and v is not None}


# --------------------------------------------------------------------------------------------------- load_ticket


def load_ticket(
    path: str | Path, weights: str | Path | None = None, net: str | None = None, **arch_overrides: Any
) -> Ticket:
    """Load a ticket in any supported format (see the module docstring).

    ``weights``: a state dict file with the network's (initial) weights; required for a mask-only file (the paper's
    pair), and for the state-dict formats it becomes the initial weights while the file's own weights become the
    fitted ones. ``net``: which generator of a progressive-GAN checkpoint (``"netG"``, the default and the paper's,
    or ``"avgG"``), in ``path`` or ``weights``. ``arch_overrides`` (e.g. ``upsample_mode="nearest"``,
    ``act="ReLU"``) set what shapes cannot tell. Raises :class:`InputError` (naming the file and the problem) for any
    bad input.
    """
    try:
        return _load_ticket(path, weights, net, **arch_overrides)
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, RecursionError) as exc:
        # a malformed file that passed the format checks and failed deeper: still one line about the file
        raise InputError(path, f"malformed ticket ({type(exc).__name__}: {_first_line(exc)})") from None


def _load_ticket(
    path: str | Path, weights: str | Path | None = None, net: str | None = None, **arch_overrides: Any
) -> Ticket:
    path = Path(path)
    obj, meta = read_tensor_file(path)
    is_ticket_file = meta.get("format") == json.dumps(FORMAT) or obj.get("format") == FORMAT
    if not is_ticket_file and is_generator_content(obj):
        return _generator_ticket(path, obj, weights, net, arch_overrides)
    if net is not None and not (weights is not None and is_ticket_file):
        raise InputError(path, f"net={net!r} picks a network of a progressive-GAN checkpoint; this file is not one")
    if is_ticket_file:
        if meta:
            try:
                header = {k: json.loads(v) for k, v in meta.items()}
            except json.JSONDecodeError as exc:
                raise InputError(path, f"malformed safetensors metadata ({exc})") from None
            ticket = _decode(path, header, obj)
        else:
            tensors = obj.get("tensors")
            if not isinstance(tensors, dict):
                raise InputError(path, "malformed ticket: no 'tensors' dict")
            ticket = _decode(path, obj, tensors)
        if arch_overrides:
            ticket.arch = _override(ticket.arch, arch_overrides)
        if weights is not None:
            init = _load_weights(Path(weights), ticket.arch, net)
            ticket = ticket.replace(init=init)
        return ticket

    sd = as_state_dict(path, obj)
    mask_keys = [k for k in sd if k.endswith(".weight_mask")]
    orig_keys = [k for k in sd if k.endswith(".weight_orig")]
    if mask_keys and not orig_keys and len(mask_keys) == len(sd):
        source_format = "paper-masks"
        if weights is None:
            raise InputError(path, "mask-only file (the paper's masks): pass the network's weights with --weights")
        raw_masks = {k[: -len("_mask")]: v for k, v in sd.items()}
        wpath = Path(weights)
        wsd = _plain_state(wpath, as_state_dict(wpath, read_tensor_file(wpath)[0]))
        arch = _infer_or_fail(wpath, wsd, arch_overrides)
        _check_state(wpath, arch, wsd)
        init, fitted = wsd, None
    elif mask_keys or orig_keys:
        source_format = "torch-prune"
        raw_masks = {k[: -len("_mask")]: v for k, v in sd.items() if k.endswith(".weight_mask")}
        _check_finite(path, sd)
        file_sd = _plain_state(path, sd)
        arch = _infer_or_fail(path, file_sd, arch_overrides)
        _check_state(path, arch, file_sd)
        init, fitted = file_sd, None
    else:
        source_format = "state-dict-zeros"
        _check_finite(path, sd)
        arch = _infer_or_fail(path, sd, arch_overrides)
        _check_state(path, arch, sd)
        raw_masks = {name: (sd[name] != 0).float() for name in _prunable_shapes(arch)}
        init, fitted = sd, None
    masks = Mask.validated(raw_masks, _prunable_shapes(arch), str(path))
    if weights is not None and source_format != "paper-masks":
        init, fitted = _load_weights(Path(weights), arch), init
    provenance = {"source_format": source_format, "source_file": path.name}
    if weights is not None:
        provenance["weights_file"] = Path(weights).name
    return Ticket(arch=arch, init=init, masks=masks, fitted=fitted, provenance=provenance, source=str(path))


def _plain_state(path: Path, sd: StateDict) -> StateDict:
    """Fold torch.nn.utils.prune's reparametrisation: ``weight = weight_orig * weight_mask``."""
    out: StateDict = {}
    for key, value in sd.items():
        if key.endswith(".weight_orig"):
            base = key[: -len("_orig")]
            mask = sd.get(base + "_mask")
            if mask is None:
                raise InputError(path, f"{key!r} has no matching {base + '_mask'!r}")
            if mask.shape != value.shape:
                raise InputError(
                    path, f"mask {base + '_mask'!r} has shape {list(mask.shape)} but the weight has {list(value.shape)}"
                )
            out[base] = value * mask
        elif key.endswith(".weight_mask"):
            continue
        else:
            out[key] = value
    return out


def _load_weights(path: Path, arch: ArchSpec, net: str | None = None) -> StateDict:
    content = read_tensor_file(path)[0]
    if is_generator_content(content):
        sd = _generator_weights(path, read_generator_file(path, content, net or "netG"))
    elif net is not None:
        raise InputError(path, f"net={net!r} picks a network of a progressive-GAN checkpoint; this file is not one")
    else:
        sd = _plain_state(path, as_state_dict(path, content))
    _check_state(path, arch, sd)
    return sd


# --------------------------------------------------------------------------------------------------- generators


def _generator_ticket(
    path: Path, content: Mapping[str, Any], weights: str | Path | None, net: str | None, overrides: Mapping[str, Any]
) -> Ticket:
    """A ticket from a progressive-GAN generator file, with ``weights`` (a checkpoint) as the initial weights for a
    mask-only or bare file; the architecture comes from the file's config, else from the weights' config."""
    given = sorted(k for k, v in overrides.items() if v is not None)
    if given:
        raise InputError(path, f"{', '.join(given)} do not apply to a progressive-GAN generator (its config says all)")
    source = read_generator_file(path, content, net or "netG")
    base = None
    if weights is not None:
        wpath = Path(weights)
        base = read_generator_file(wpath, read_tensor_file(wpath)[0], net or "netG")
    elif net is not None and not is_checkpoint_content(content):
        raise InputError(path, f"net={net!r} picks a network of a progressive-GAN checkpoint; this file is not one")
    masks_only = source.layout == "pgan-masks"
    if masks_only and base is None:
        raise InputError(path, "mask-only file (the generator's masks): pass the generator's checkpoint as weights")
    arch = source.spec or (base.spec if base is not None else None)
    if arch is None:
        hint = "pass the generator's checkpoint as weights" if base is None else f"{Path(weights).name} has none either"
        raise InputError(path, f"no 'config' to tell the generator's architecture: {hint}")
    state = {} if masks_only else _generator_weights(path, source)
    raw_masks = {k[: -len("_mask")]: v for k, v in source.state.items() if k.endswith(".weight_mask")}
    if state:
        _check_state(path, arch, state)
    init, fitted = state, None
    if base is not None:
        init, fitted = _generator_weights(Path(weights), base), (state or None)
        _check_state(Path(weights), arch, init)
    shapes = _prunable_shapes(arch)
    if not raw_masks:  # a plain network: its exact zeros are the mask (none in a dense pre-trained generator)
        raw_masks = {name: (state[name] != 0).float() for name in shapes}
    provenance: dict[str, Any] = {"source_format": source.layout, "source_file": path.name}
    if source.net is not None or (base is not None and base.net is not None):
        provenance["net"] = net or "netG"
    if weights is not None:
        provenance["weights_file"] = Path(weights).name
    masks = Mask.validated(raw_masks, shapes, str(path))
    return Ticket(arch=arch, init=init, masks=masks, fitted=fitted, provenance=provenance, source=str(path))


def _generator_weights(path: Path, source: GeneratorFile) -> StateDict:
    """A generator file's weights, ``weight_orig`` folded with its mask; a mask-only file holds none."""
    if source.layout == "pgan-masks":
        raise InputError(path, "holds masks only, no weights")
    return _plain_state(path, source.state)


def _infer_or_fail(path: Path, sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> ArchSpec:
    try:
        return infer_arch({k: v.shape for k, v in sd.items()}, **overrides)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None


def _override(arch: ArchSpec, overrides: Mapping[str, Any]) -> ArchSpec:
    return dataclasses.replace(arch, **_only(type(arch), overrides))


def ticket_from_model(
    model: nn.Module, arch: ArchSpec, masks: Mapping[str, torch.Tensor] | None = None, **provenance: Any
) -> Ticket:
    """A ticket from a reference-layout model's current weights (masks default to its exact nonzeros)."""
    sd = _plain_state(Path("<model>"), {k: v.detach().clone() for k, v in model.state_dict().items()})
    shapes = _prunable_shapes(arch)
    if masks is None:  # a model pruned with torch.nn.utils.prune carries its masks; otherwise exact zeros define them
        state = model.state_dict()
        masks = {n: state[n + "_mask"] if n + "_mask" in state else (sd[n] != 0).float() for n in shapes}
    raw = dict(masks)
    return Ticket(arch=arch, init=sd, masks=Mask.validated(raw, shapes), provenance=dict(provenance))
