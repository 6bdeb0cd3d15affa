"""The one error type for bad input: it names the file and the problem, and the CLI prints it on one line."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input from the user: an unreadable file, a malformed ticket, an impossible option.

    ``str(err)`` is ``"<path>: <problem>"`` (or just the problem when no file is involved); the CLI prints it as
    ``error: ...`` and exits with status 2, without a traceback.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit`` characters: a
    library's multi-line complaint quoted inside one ``error: <file>: <problem>`` line."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
