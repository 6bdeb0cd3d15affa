"""A pre-trained generator as an image prior: the generator file, optionally one of its tickets, the image to fit.

A generator ticket (a round of ``lipdeploy find --generator``) holds the generator's own weights as ``init`` (GAN IMP
rewinds to them) and, once retrained under its masks, those weights as ``fitted``: the sparse generator a restoration
uses. A ticket is refused for a generator it was not made from (another architecture or other weights): its masks
would select meaningless weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .generator import PGANSpec
from .images import centre_crop, resize_image
from .ticket import Ticket, load_ticket


def load_generator(path: str | Path, net: str | None = None) -> Ticket:
    """The generator of a progressive-GAN file (zoo checkpoint, state dict or ticket) as a ticket; ``net`` picks the
    checkpoint's ``netG`` (default) or ``avgG``."""
    ticket = load_ticket(path, **({"net": net} if net else {}))
    if not isinstance(ticket.arch, PGANSpec):
        raise InputError(path, f"is not a progressive-GAN generator ({ticket.arch.describe()})")
    return ticket


def same_generator(ticket: Ticket, generator: Ticket) -> str | None:
    """Why ``ticket`` was not made from ``generator`` (None when it was): another architecture, or other weights."""
    if ticket.arch != generator.arch:
        return f"it is a ticket for {ticket.arch.describe()}, not for {generator.arch.describe()}"
    for key, value in generator.init.items():
        other = ticket.init.get(key)
        if other is None or other.shape != value.shape:
            return f"its weights do not match the generator's ({key!r})"
        if key in ticket.masks:  # a ticket stores only the kept weights: compare those
            keep = ticket.masks[key].bool()
            if not torch.equal(other[keep], value[keep]):
                return f"its initial weights differ from the generator's (first in {key!r}): another generator"
        elif not torch.equal(other, value):
            return f"its initial weights differ from the generator's (first in {key!r}): another generator"
    return None


def generator_prior(
    generator_path: str | Path, ticket_path: str | Path | None = None, net: str | None = None
) -> tuple[nn.Module, Ticket, str]:
    """The network to fit latents of (the generator, or its ticket's sparse generator), its ticket and a label."""
    generator = load_generator(generator_path, net)
    if ticket_path is None:
        return generator.build("init").eval(), generator, f"dense generator {Path(generator_path).name}"
    ticket = load_ticket(ticket_path)
    reason = same_generator(ticket, generator)
    if reason is not None:
        raise InputError(ticket_path, f"not a ticket of {Path(generator_path).name}: {reason}")
    weights = "fitted" if ticket.fitted is not None else "init"
    label = f"ticket {Path(ticket_path).name} ({ticket.sparsity:.1%} sparse, {weights} weights)"
    return ticket.build(weights).eval(), ticket, label


def fit_to_resolution(img: torch.Tensor, resolution: int) -> tuple[torch.Tensor, str | None]:
    """``img`` ([1, 3, H, W] on [0, 1]) as the generator's ``resolution`` square: centre-cropped to a square, then
    resized; the message says what changed (None when nothing did)."""
    h, w = img.shape[2], img.shape[3]
    msgs = []
    if h != w:
        side = min(h, w)
        img, _ = centre_crop(img, side, side)
        msgs.append(f"cropped the centre {side}x{side} of {w}x{h}")
        h = w = side
    if h != resolution:
        img = resize_image(img, resolution, resolution)
        msgs.append(f"resized {w}x{h} to {resolution}x{resolution}")
    if not msgs:
        return img, None
    return img, "; ".join(msgs) + " (the generator's resolution)"


__all__ = ["fit_to_resolution", "generator_prior", "load_generator", "same_generator"]
