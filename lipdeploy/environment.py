"""What a result needs to be reproduced: software versions, the machine, the commit, the date.

One function, :func:`environment`, used by every command and benchmark that writes results, so that all of them
record the same keys under the same names (a result row can then be joined with, or compared to, any other).
Optional packages are looked up by their installed metadata rather than imported: importing Triton or ONNX Runtime
takes seconds and may initialise a device, which a record of versions must not do.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import __version__

# Import name -> distribution names that provide it (first installed wins): GPU and nightly builds install the same
# module under another distribution name.
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "onnx": ("onnx", "onnx-weekly"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "ort-nightly"),
    "triton": ("triton", "pytorch-triton", "triton-nightly"),
}


def package_version(module: str) -> str | None:
    """Version of an optional package without importing it; ``None`` when it is not installed.

    An already imported module answers with its own ``__version__`` (what is actually running); otherwise the
    installed distribution's metadata is read.
    """
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return loaded.__version__
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(path: Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: this package), ``(None, None)`` outside one.

    A result computed from an installed wheel has no commit; its ``lipdeploy`` version identifies the code instead.
    """
    where = Path(__file__).resolve().parent if path is None else path
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip() or None, dirty


def environment() -> dict[str, Any]:
    """Where and with what a result was computed, as a JSON-ready dict.

    Keys: ``lipdeploy``, ``python``, ``torch``, ``numpy``, ``onnx``, ``onnxruntime``, ``triton`` (versions, ``None``
    when not installed), ``cuda`` and ``cudnn`` (the versions torch was built with, ``None`` on CPU builds),
    ``cudnn_allow_tf32`` (changes convolution results on Ampere and newer), ``platform``, ``machine``, ``host``,
    ``cpu`` (model), ``cpu_count``, ``torch_threads``, ``gpu`` (CUDA device 0's name, ``None`` without CUDA),
    ``git_commit`` and ``git_dirty`` (``None`` outside a checkout) and ``date`` (UTC, ISO 8601, seconds).
    Callers add what only they know (a preset, a shard, a load average) next to these keys.
    """
    commit, dirty = git_commit()
    return {
        "lipdeploy": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": package_version("numpy"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime"),
        "triton": package_version("triton"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
        "git_dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
