"""Options shared by every command that takes a ticket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .ticket import Ticket, load_ticket


def ticket_options(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``TICKET`` argument, ``--weights`` (for mask-only files) and the architecture overrides shapes cannot tell."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option(
            "--act",
            type=click.Choice(["LeakyReLU", "ReLU", "none"]),
            default=None,
            help="Activation of a DIP network (default: LeakyReLU, the paper's).",
        )(fn)
        fn = click.option(
            "--upsample",
            type=click.Choice(["bilinear", "nearest"]),
            default=None,
            help="Upsampling mode (default: bilinear, the paper's).",
        )(fn)
        fn = click.option(
            "--weights",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="State dict with the network's initial weights (needed for mask-only files such as the paper's).",
        )(fn)
        fn = click.argument("ticket", type=click.Path(path_type=Path), required=required)(fn)
        return fn

    return decorate


def open_ticket(ticket: Path, weights: Path | None, upsample: str | None, act: str | None) -> Ticket:
    return load_ticket(ticket, weights=weights, upsample_mode=upsample, act=act)


def parse_size(text: str, multiple: int = 1) -> tuple[int, int]:
    """Parse ``HxW`` (or a single ``N`` for a square), requiring positive multiples of ``multiple``."""
    from .errors import InputError

    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise InputError(None, f"size {text!r} is not HxW (e.g. 256x256)") from None
    if len(parts) > 2 or h <= 0 or w <= 0:
        raise InputError(None, f"size {text!r} is not HxW with positive sides")
    if h % multiple or w % multiple:
        raise InputError(None, f"size {text!r}: height and width must be multiples of {multiple}")
    return h, w
