"""One writer per output folder, and resuming only what really is the same run.

``lipdeploy find`` writes a folder of round tickets over hours and continues it when rerun. Two processes on one folder
would interleave their rounds (each exits 0, the folder ends with one seed's files and the other's summary), and a
resume keyed on the image's *file name* would continue an old chain with a different image. So:

- :func:`folder_locked` holds an exclusive lock file (``.lipdeploy.lock``, via the ``filelock`` package: an OS lock,
  released even when the process is killed) for the whole run; a second process is refused at once, in one line. The
  file is removed when the run ends (the folder then holds only its results); a process that locked a file unlinked
  in between checks that the file it holds is still the one at the path, and is refused otherwise.
- :func:`resume_settings` adds the image's content hash and every fitting setting to what a resumed run must match.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock, Timeout

from .errors import InputError
from .fileio import clean_stale_temporaries
from .ticket import read_tensor_file

LOCK_NAME = ".lipdeploy.lock"
# FitConfig fields that change where a fit runs or how it reports, not what it computes
_NOT_RESUME_KEYS = ("device", "backend", "log_every", "capture")

F = TypeVar("F", bound=Callable[..., Any])


def image_digest(img: torch.Tensor) -> str:
    """sha256 of an image tensor's shape and float32 values: the content a run was made from, whatever its file name
    (after any crop or resize, which change what is fitted)."""
    arr = img.detach().to(torch.float32).cpu().contiguous()
    h = hashlib.sha256(repr(tuple(arr.shape)).encode())
    h.update(arr.numpy().tobytes())
    return h.hexdigest()


def resume_settings(clean: torch.Tensor, fit_config: Any) -> dict[str, Any]:
    """What a resumed run must share beyond the IMP settings: the image content and every fitting setting."""
    fit = {k: v for k, v in fit_config.to_dict().items() if k not in _NOT_RESUME_KEYS}
    return {"image_sha256": image_digest(clean), "fit": fit}


def check_output_folder(folder: str | Path) -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be written (or created)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "exists and is not a directory")
    probe = folder
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if probe.exists() and not probe.is_dir():
        raise InputError(folder, f"cannot be created: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "output folder" if probe == folder else f"folder {probe}"
        raise InputError(folder, f"{what} is not writable")
    return folder


def folder_locked(param: str = "out_dir") -> Callable[[F], F]:
    """Decorate a function writing into the folder given as argument ``param``: the folder is checked and created,
    locked for the call (a second process gets :class:`InputError`), cleared of our stale temporaries, and removed
    again when the call fails having written nothing into a folder it created."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            folder = check_output_folder(bound.arguments[param])
            created = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            lock_path = folder / LOCK_NAME
            lock = FileLock(str(lock_path), timeout=0)
            busy = InputError(
                folder, "another process is writing to this folder (it is locked); wait for it or use another"
            )
            try:
                lock.acquire()
            except Timeout:
                raise busy from None
            if not _holds_current_file(lock, lock_path):  # the previous holder unlinked it while we waited
                lock.release()
                raise busy
            try:
                clean_stale_temporaries(folder)
                return fn(*args, **kwargs)
            except BaseException:
                if created and {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
                    lock_path.unlink(missing_ok=True)
                    lock.release()
                    shutil.rmtree(folder, ignore_errors=True)
                raise
            finally:
                if lock.is_locked:
                    lock_path.unlink(missing_ok=True)  # while still held: no one can hold the unlinked file after us
                    lock.release()

        return wrapper  # type: ignore[return-value]

    return decorate


def _holds_current_file(lock: Any, path: Path) -> bool:
    """Whether the file descriptor ``lock`` holds is the file now at ``path`` (True where that cannot be told)."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if fd is None:
        return True
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def load_rewind_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A rewind-point state dict written by an earlier run, read as untrusted input (weights_only, tensors checked
    against the file size) and refused in one line when corrupt or not finite."""
    path = Path(path)
    obj, _ = read_tensor_file(path)
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(path, f"entry {key!r} is not a named tensor: not a rewind state (delete it to refit)")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(path, f"weights contain NaN or Inf (in {key!r}): delete it to refit the dense round")
        state[key] = value
    return state
