"""Safe reading of tensor files: ``.pt``/``.pth`` through ``torch.load(weights_only=True)`` (a pickle is never
executed) and ``.safetensors``, every tensor checked against the file's size before anything reads its values."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import InputError, first_line
from ..fileio import check_regular_file, check_zip_members
from ..limits import MAX_TENSOR_FILE_BYTES, TENSOR_SLACK_BYTES, check_memory

StateDict = dict[str, torch.Tensor]


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
            raise InputError(path, f"unreadable or truncated safetensors file ({first_line(exc)})") from None
        _check_tensors(path, content, path.stat().st_size)
        return content, meta
    check_zip_members(path, size)
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a dict of tensors, found {type(obj).__name__}")
    _check_tensors(path, obj, path.stat().st_size)
    return obj, {}


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, its every failure one :class:`InputError` about ``path``."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of odd files: our message says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
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


def _load_problem(exc: BaseException) -> str:
    """torch.load's complaint in our words: its "Weights only load failed ... In PyTorch 2.6 ..." essay and zip
    internals say nothing useful about a bad file."""
    text = first_line(exc)
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


def check_finite(path: Path, sd: Mapping[str, torch.Tensor]) -> None:
    """Refuse floating-point weights holding NaN or Inf, naming the first such tensor."""
    for key, value in sd.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(path, f"weights contain NaN or Inf (in {key!r})")
