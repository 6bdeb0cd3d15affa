"""What every standalone benchmark script (``bench/cpu/``, ``bench/gpu/``) shares: its common command-line options,
the record of where it ran, and its results file.

A script run on a borrowed GPU may be killed at any moment by the device call's time limit: :class:`Results` rewrites
the whole JSON file atomically after every row (``"complete": false`` until :meth:`Results.finish`), so a run cut off
keeps every row it measured and a reader can tell a partial file from a finished one.

Results file layout: ``{"meta": {...}, "rows": [...], "complete": bool}`` plus what a script adds at the end;
``meta`` is :func:`lipdeploy.environment.environment` (versions, machine, commit, date) and the script's settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lipdeploy.environment import environment
from lipdeploy.errors import InputError
from lipdeploy.fileio import atomic_write_json, check_output_path


def parser(
    prog: str,
    doc: str | None,
    *,
    output: Path | None = None,
    device: str | None = None,
    quick: str | None = None,
    channels: bool = False,
) -> argparse.ArgumentParser:
    """An argument parser with the options the scripts share (the script adds its own after).

    ``prog``: the module path (``lipdeploy.bench.gpu.layers``); ``doc``: the script's docstring (first line shown as
    the description). ``-o/--output`` (also ``--out``) is the results file, default ``output`` (``None``: write
    nothing unless asked). ``device``: default device of a ``--device`` option, hidden from the help (``cpu`` runs a
    GPU script as a smoke test through Triton's interpreter); ``quick``: help text of a ``--quick`` flag;
    ``channels``: a hidden ``--channels N`` that narrows the network for smoke tests.
    """
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument(
        "-o", "--output", "--out", dest="output", type=_results_path, default=output, help="write the JSON here"
    )
    if device is not None:
        ap.add_argument("--device", default=device, help=argparse.SUPPRESS)
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
    if channels:
        ap.add_argument("--channels", type=int, help=argparse.SUPPRESS)
    return ap


def _results_path(value: str) -> Path:
    """``-o`` checked before anything is measured: a results file is rewritten as rows come, so an existing regular
    file is fine, a folder, a device or a missing folder is refused (argparse: one ``error:`` line, exit 2)."""
    try:
        return check_output_path(value, force=True)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def script_environment(**settings: Any) -> dict[str, Any]:
    """:func:`lipdeploy.environment.environment` with the script's ``settings`` added (they win on a name clash)."""
    return {**environment(), **settings}


def needs_gpu(name: str, device: str) -> str | None:
    """Why a GPU script cannot run here (``None`` when it can): CUDA asked for but missing, or no Triton."""
    import torch  # every script imports this module for its arguments: torch loads only to run

    if device == "cuda" and not torch.cuda.is_available():
        return f"{name}: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was benchmarked"
    try:
        import triton  # noqa: F401
    except ImportError:
        return f"{name}: needs the 'triton' package (pip install 'lipdeploy[triton]')"
    return None


def refuse(message: str) -> int:
    """Print why nothing was measured and return the exit status for it (2)."""
    print(message, file=sys.stderr)
    return 2


class Results:
    """The rows of one script run and its results file, rewritten after every added row.

    ``printer`` shows each row as it comes (a table line, a JSON line); ``None`` prints nothing.
    """

    def __init__(
        self, output: Path | None, meta: dict[str, Any], printer: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.output = output
        self.meta = meta
        self.rows: list[dict[str, Any]] = []
        self.printer = printer

    def add(self, *rows: dict[str, Any]) -> None:
        """Append ``rows``, print them, and rewrite the results file (still marked incomplete)."""
        for r in rows:
            self.rows.append(r)
            if self.printer is not None:
                self.printer(r)
        self.save(complete=False)

    def payload(self, complete: bool, **extra: Any) -> dict[str, Any]:
        return {"meta": self.meta, "rows": self.rows, "complete": complete, **extra}

    def save(self, complete: bool, **extra: Any) -> None:
        if self.output is not None:
            atomic_write_json(self.output, self.payload(complete, **extra))

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Write the file marked complete (with ``extra`` top-level entries) and say where; return the payload."""
        self.save(complete=True, **extra)
        if self.output is not None:
            print(f"wrote {len(self.rows)} rows to {self.output}")
        return self.payload(True, **extra)
