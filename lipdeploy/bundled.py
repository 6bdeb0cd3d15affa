"""The files that ship inside the package (``lipdeploy/data``, see its README for how each was made): the example
ticket (``--example``) and the demo face generator (``--example-generator``). Light on purpose: the CLI reads these
paths before it imports torch."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

DATA = Path(__file__).resolve().parent / "data"
TICKET_NAME = "example_ticket.pt"
GENERATOR_NAME = "example_generator.pth"


def bundled_ticket_path() -> Path:
    """Where the example ticket lives in the installed package."""
    return DATA / TICKET_NAME


def bundled_generator_path() -> Path:
    """Where the demo generator lives in the installed package."""
    return DATA / GENERATOR_NAME


def require_bundled_ticket() -> Path:
    """The example ticket's path, checked to be installed."""
    return _installed(bundled_ticket_path(), "example ticket", "pass a TICKET")


def require_bundled_generator() -> Path:
    """The demo generator's path, checked to be installed."""
    return _installed(bundled_generator_path(), "example generator", "pass --generator")


def _installed(path: Path, what: str, instead: str) -> Path:
    if not path.is_file():
        raise InputError(path, f"the bundled {what} is missing from this installation; {instead}")
    return path
