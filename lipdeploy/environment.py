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
from types import ModuleType
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

    Nothing in the checkout is written: the commit is read from ``HEAD`` and the ref files, and ``dirty`` comes from
    ``git diff --quiet HEAD`` under ``GIT_OPTIONAL_LOCKS=0`` (``git status`` refreshes the index and takes
    ``.git/index.lock`` doing so, which makes a concurrent ``git commit`` in the same checkout fail).
    A result computed from an installed wheel has no commit; its ``lipdeploy`` version identifies the code instead.
    """
    where = Path(__file__).resolve().parent if path is None else Path(path)
    gitdir = _git_dir(where)
    if gitdir is None:
        return None, None
    commit = _read_head(gitdir)
    if commit is None:
        return None, None
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        diff = subprocess.run(
            ["git", "-C", str(where), "diff", "--no-ext-diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=5,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return commit, None
    return commit, {0: False, 1: True}.get(diff.returncode)


def _git_dir(where: Path) -> Path | None:
    """The ``.git`` folder of the checkout holding ``where`` (a worktree's ``.git`` file followed), or None."""
    for folder in (where, *where.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            try:
                text = dot.read_text().strip()
            except (OSError, UnicodeDecodeError):  # unreadable, or not text: not a checkout we can read
                return None
            if text.startswith("gitdir:"):
                linked = Path(text[len("gitdir:") :].strip())
                return linked if linked.is_absolute() else (folder / linked).resolve()
            return None
    return None


def _read_head(gitdir: Path) -> str | None:
    """The commit ``HEAD`` names: a detached hash, or its branch's ref file, or its line in ``packed-refs``."""
    try:
        head = (gitdir / "HEAD").read_text().strip()
    except (OSError, UnicodeDecodeError):  # unreadable, or not text: not a checkout we can read
        return None
    if not head.startswith("ref:"):
        return head if _is_hash(head) else None
    ref = head[len("ref:") :].strip()
    common = gitdir
    try:  # a linked worktree keeps its branches in the main repository's folder
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
    except (OSError, UnicodeDecodeError):  # unreadable, or not text: not a checkout we can read
        pass
    for folder in dict.fromkeys((gitdir, common)):
        try:
            value = (folder / ref).read_text().strip()
            return value if _is_hash(value) else None
        except (OSError, UnicodeDecodeError):  # unreadable, or not text: not a checkout we can read
            pass
        try:
            for line in (folder / "packed-refs").read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and _is_hash(parts[0]):
                    return parts[0]
        except (OSError, UnicodeDecodeError):  # unreadable, or not text: not a checkout we can read
            pass
    return None


def _is_hash(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def import_onnxruntime() -> ModuleType:
    """ONNX Runtime with its telemetry off; every module of the toolkit that runs ONNX Runtime imports it here.

    Importing ``onnxruntime`` 1.32 writes a device id and an event database under ``~/.cache/Microsoft/DeveloperTools``
    unless ``ORT_DISABLE_TELEMETRY=1`` is set before its first import (a user who sets it to 0 keeps it);
    ``disable_telemetry_events()`` turns off the events its sessions log (producer, graph and machine details).
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime  # slow to import: loaded only by the commands that run a model

    onnxruntime.disable_telemetry_events()
    return onnxruntime


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
