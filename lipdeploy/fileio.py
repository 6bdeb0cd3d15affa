"""Files in and out: the one check every reader makes before opening a path, and atomic output.

Reading: :func:`check_regular_file` refuses, before anything opens it, a path that is missing, a folder, unreadable,
or not a regular file (a FIFO would block the reader forever, a device would stream without end).

Writing: to a temporary file beside the target, then rename, so no half-written file is ever left. A full disk (or
quota) while writing or renaming is one :class:`InputError` naming the output, with every temporary removed.
``exclusive`` output sets create their files and never replace one: of two processes writing the same new output, the
second is refused instead of silently replacing the first's file.

Temporary files are named ``.<name>.<pid>.<random>.tmp``; one whose process is gone (a run that was killed) is stale
and removed by the next write of the same name (:func:`clean_stale_temporaries`). ``force`` replaces regular files
only, keeping their permission bits: a device node, a FIFO or a socket (or a link to one) is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError
from .limits import MAX_ARCHIVE_MEMBERS, TENSOR_SLACK_BYTES

_TMP_RE = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp")


def _special_kind(mode: int) -> str | None:
    for test, kind in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return None


def check_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a :class:`Path` if it names a readable regular file (a symbolic link to one included); otherwise
    :class:`InputError`: no such file, a directory, a device / FIFO / socket, or unreadable. Every reader of a user's
    path calls this before opening it: ``open()`` on a FIFO blocks until a writer comes, forever in practice."""
    path = Path(path)
    try:
        st = path.stat()  # follows a symbolic link: what open() would reach
    except FileNotFoundError:
        raise InputError(path, "no such file" if not path.is_symlink() else "is a dangling symbolic link") from None
    except OSError as exc:
        raise InputError(path, f"cannot examine the {what} ({exc.strerror or exc})") from None
    article = "an" if what[:1] in "aeiouAEIOU" else "a"
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, f"is a directory, not {article} {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, f"is {_special_kind(st.st_mode) or 'not a regular file'}, not {article} {what}: refused")
    if not os.access(path, os.R_OK):
        raise InputError(path, "cannot be read (permission denied)")
    return path


def check_output_path(path: str | Path, force: bool = False) -> Path:
    """Refuse an existing output (unless ``force``), anything but a regular file even with ``force`` (a device node,
    a FIFO, a socket, a link to one of them), and an output folder that is missing or not writable."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name")
    try:
        st = path.stat()  # follows a symlink: what a write would reach
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(path, f"cannot examine the output ({exc.strerror or exc})") from None
    if st is not None:
        kind = _special_kind(st.st_mode)
        if kind is not None or not stat.S_ISREG(st.st_mode):
            raise InputError(path, f"is {kind or 'not a regular file'}; outputs replace regular files only")
        if not force:
            raise InputError(path, "already exists (use --force to overwrite)")
    elif path.is_symlink():
        raise InputError(path, "is a dangling symbolic link; give another output name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(path, f"output folder {parent} is not writable")
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or an odd pid): leave its file alone
    return True


def clean_stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove our temporaries (``.<name>.<pid>.<random>.tmp``) in ``folder`` whose writing process is gone: what a
    killed run left. ``name`` limits it to one target's. Returns what was removed."""
    folder = Path(folder) if str(folder) else Path(".")
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.fullmatch(entry.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        if _pid_alive(int(m.group("pid"))):
            continue
        try:
            if entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(entry)
        except OSError:
            pass
    return removed


# errno values that mean the disk (or the user's quota) is full: reported as one line naming the output
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _disk_full(path: Path) -> InputError:
    return InputError(path, "no space left on the device (or over quota) while writing it: nothing written")


def _prepare(path: Path) -> tuple[Path, int]:
    """A temporary file beside ``path`` and the mode the finished file gets."""
    folder = path.parent if str(path.parent) else Path(".")
    clean_stale_temporaries(folder, path.name)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InputError(
            path, f"is {_special_kind(st.st_mode) or 'not a regular file'}; outputs replace regular files only"
        )
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
    else:  # mkstemp creates 0600; give the file the permissions a plain open() would (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        if exc.errno in _FULL:
            raise _disk_full(path) from None
        raise
    os.close(fd)
    return Path(tmp), mode


@contextlib.contextmanager
def atomic_output(path: str | Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``, on failure remove it.

    The file gets the mode of the file it replaces (a 0600 file stays 0600), or what a plain ``open()`` would give
    (0666 less the umask). Stale temporaries of the same target left by a killed run are removed first.
    ``exclusive``: create ``path``, never replace it (see :func:`atomic_output_set`).
    """
    with atomic_output_set(path, exclusive=exclusive) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_output_set(*paths: str | Path, exclusive: bool = False) -> Iterator[list[Path]]:
    """Temporaries for files that belong together (a model and its manifest, an image and its record), renamed in
    the given order once all are written; put the file that describes the others last.

    Before the first rename the old versions of the later files are removed, so a reader, or a run killed between
    the renames, sees the old set, a new first file without its companions, or the new set: never a new file beside
    an old companion that describes something else.

    ``exclusive`` (an output the user did not allow to be replaced, no ``--force``): each file is created with a hard
    link, which fails if the name exists; one that another process created meanwhile is :class:`InputError` and the
    files of this set already created are removed again. A full disk is :class:`InputError` naming the first file.
    """
    targets = [Path(p) for p in paths]
    prepared: list[tuple[Path, int]] = []
    try:
        for target in targets:
            prepared.append(_prepare(target))
        yield [tmp for tmp, _ in prepared]
        if exclusive:
            _create_all(targets, prepared)
        else:
            for target in targets[1:]:
                target.unlink(missing_ok=True)
            for target, (tmp, mode) in zip(targets, prepared, strict=True):
                os.chmod(tmp, mode)
                os.replace(tmp, target)
    except OSError as exc:
        _remove(prepared)
        if exc.errno in _FULL:
            raise _disk_full(targets[0]) from None
        raise
    except BaseException:
        _remove(prepared)
        raise


def _remove(prepared: list[tuple[Path, int]]) -> None:
    for tmp, _ in prepared:
        tmp.unlink(missing_ok=True)


def _create_all(targets: list[Path], prepared: list[tuple[Path, int]]) -> None:
    """Link each temporary to its (new) target; on a name that exists, undo the links made and refuse."""
    made: list[Path] = []
    try:
        for target, (tmp, mode) in zip(targets, prepared, strict=True):
            os.chmod(tmp, mode)
            try:
                _create(tmp, target)
            except FileExistsError:
                raise InputError(
                    target, "was created by another process while this one was writing it: nothing written (--force)"
                ) from None
            made.append(target)
    except BaseException:
        for target in made:
            target.unlink(missing_ok=True)
        raise
    _remove(prepared)


def _create(tmp: Path, target: Path) -> None:
    """Give ``tmp``'s file the new name ``target``; FileExistsError if the name exists."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise
    except OSError as exc:  # a file system without hard links: claim the name with O_EXCL, then rename onto it
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.replace(tmp, target)


def atomic_write_bytes(path: str | Path, data: bytes, exclusive: bool = False) -> None:
    with atomic_output(path, exclusive=exclusive) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, exclusive: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), exclusive=exclusive)


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Inf) replaced by None: strict JSON has no NaN, and a metric that
    is not a number (a PSNR of identical images, a diverged fit) is recorded as null, deliberately."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps_record(obj: Any, indent: int | None = 2, default: Any = None) -> str:
    """A JSON record as strict JSON: non-finite floats become null (:func:`finite_json`), never NaN/Infinity."""
    if default is not None:
        obj = json.loads(json.dumps(obj, default=default))
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, obj: object, indent: int = 1) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically, creating the folder (benchmarks rewrite it after every
    row, so a run cut off by a time limit keeps what it measured)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps_record(obj, indent=indent) + "\n")


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON document in ``path`` (a regular file): InputError naming the file (and the line) for bytes that are not
    UTF-8 or not JSON."""
    path = check_regular_file(path, what)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno}: not valid JSON ({exc.msg})") from None


def read_json_lines(
    path: str | Path, check: Callable[[dict[str, Any]], str | None] | None = None, what: str = "JSON-lines file"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each line of a JSON-lines file whose records are JSON objects; ``check(record)``
    returns a problem (or None). A last line without its newline that does not parse is a write cut short (a crash
    mid-append) and is skipped; any other bad line is InputError naming the file and the line number."""
    path = check_regular_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    torn = lines[-1] != b""  # no newline at the end: the last line may be a partial write
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if last and torn:
                return
            why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"not valid JSON ({exc.msg})"
            raise InputError(path, f"line {number}: {why}") from None
        if not isinstance(record, dict):
            raise InputError(path, f"line {number}: a JSON {type(record).__name__}, not a record (an object)")
        problem = check(record) if check is not None else None
        if problem:
            raise InputError(path, f"line {number}: {problem}")
        yield number, record


def check_zip_members(path: Path, file_bytes: int | None = None) -> None:
    """Refuse, before ``torch.load`` inflates anything, a zip archive whose members declare more bytes than the file
    holds. ``torch.save`` stores members uncompressed, so its files always pass; a deflated member that expands past
    the file (a 2.5 MB file holding a 2.6 GB record) is a decompression bomb. A file that is not a zip archive is
    PyTorch's legacy format, whose storages are raw bytes of the file itself; ``torch.load`` judges it."""
    file_bytes = path.stat().st_size if file_bytes is None else file_bytes
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise InputError(path, f"archive holds {len(members):,} members (at most {MAX_ARCHIVE_MEMBERS:,}): refused")
    declared = sum(m.file_size for m in members)
    if declared > file_bytes + TENSOR_SLACK_BYTES:
        big = max(members, key=lambda m: m.file_size)
        raise InputError(
            path,
            f"archive member {big.filename!r} declares {big.file_size:,} bytes uncompressed, more than the file's "
            f"{file_bytes:,} (a decompression bomb): refused before reading it",
        )
