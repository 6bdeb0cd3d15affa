"""The bundled example ticket: a small real ticket made by this project's own ``lipdeploy find`` (see
``lipdeploy/data/README.md`` for the exact command), so ``lipdeploy export --example`` works out of the box."""

from __future__ import annotations

from pathlib import Path

import lipdeploy
from lipdeploy.errors import InputError

BUNDLED_TICKET_NAME = "example_ticket.pt"


def bundled_ticket_path() -> Path:
    """Path of the bundled example ticket (inside the installed package's ``data`` folder)."""
    return Path(lipdeploy.__file__).resolve().parent / "data" / BUNDLED_TICKET_NAME


def require_bundled_ticket() -> Path:
    path = bundled_ticket_path()
    if not path.is_file():
        raise InputError(path, "the bundled example ticket is missing from this installation; pass a TICKET")
    return path
