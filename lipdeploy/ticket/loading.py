""":func:`load_ticket`: any supported file to a :class:`~lipdeploy.ticket.Ticket`, by what the file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError, first_line
from ..generator_files import is_generator_content
from .architecture import with_overrides
from .codec import decode_content, is_ticket_content
from .files import read_tensor_file
from .importers import generator_ticket, load_weights, state_dict_ticket
from .model import Ticket


def load_ticket(
    path: str | Path, weights: str | Path | None = None, net: str | None = None, **arch_overrides: Any
) -> Ticket:
    """Load a ticket in any supported format (see :mod:`lipdeploy.ticket`).

    ``weights``: a state dict file with the network's (initial) weights; required for a mask-only file (the paper's
    pair), and for the state-dict formats it becomes the initial weights while the file's own weights become the
    fitted ones. ``net``: which generator of a progressive-GAN checkpoint (``"netG"``, the default and the paper's,
    or ``"avgG"``), in ``path`` or ``weights``. ``arch_overrides`` (e.g. ``upsample_mode="nearest"``,
    ``act="ReLU"``) set what shapes cannot tell. Raises :class:`InputError` (naming the file and the problem) for any
    bad input.
    """
    try:
        return _load_ticket(path, weights, net, **arch_overrides)
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, RecursionError) as exc:
        # a malformed file that passed the format checks and failed deeper: still one line about the file
        raise InputError(path, f"malformed ticket ({type(exc).__name__}: {first_line(exc)})") from None


def _load_ticket(
    path: str | Path, weights: str | Path | None = None, net: str | None = None, **arch_overrides: Any
) -> Ticket:
    path = Path(path)
    obj, meta = read_tensor_file(path)
    is_ticket_file = is_ticket_content(obj, meta)
    if not is_ticket_file and is_generator_content(obj):
        return generator_ticket(path, obj, weights, net, arch_overrides)
    if net is not None and not (weights is not None and is_ticket_file):
        raise InputError(path, f"net={net!r} picks a network of a progressive-GAN checkpoint; this file is not one")
    if not is_ticket_file:
        return state_dict_ticket(path, obj, weights, arch_overrides)
    ticket = Ticket.from_parts(decode_content(path, obj, meta), source=str(path))
    if arch_overrides:
        ticket.arch = with_overrides(ticket.arch, arch_overrides)
    if weights is not None:
        ticket = ticket.replace(init=load_weights(Path(weights), ticket.arch, net))
    return ticket
