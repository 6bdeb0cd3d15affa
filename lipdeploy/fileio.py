"""Atomic output: write to a temporary file beside the target, then rename, so no half-written file is ever left."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


def check_output_path(path: str | Path, force: bool = False) -> Path:
    """Refuse an existing output (unless ``force``) and an output folder that is missing or not writable."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name")
    if path.exists() and not force:
        raise InputError(path, "already exists (use --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(path, f"output folder {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``, on failure remove it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: object, indent: int = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, creating the folder (benchmarks rewrite it after every row, so a
    run cut off by a time limit keeps what it measured)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
