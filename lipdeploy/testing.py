"""Small reference networks and ticket files in every format ``load_ticket`` reads, for tests and examples.

The files are made the way the real tools make them: ``torch.nn.utils.prune`` on a reference-layout network, and the
LIP paper code's pair (a dict of ``'<module path>.weight_mask'`` tensors + the initial state dict).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from .masks import prunable_shapes
from .networks import ArchSpec, SkipSpec, conv_layers
from .patterns import PATTERNS
from .ticket import Ticket, load_ticket, ticket_from_model


def tiny_skip(**overrides) -> SkipSpec:
    """A 3-level skip net (~20k parameters) with the paper's structure: cheap enough for CPU tests."""
    args = dict(in_channels=8, channels_down=(8, 16, 16), channels_up=(8, 16, 16), channels_skip=(4, 4, 4))
    args.update(overrides)
    return SkipSpec(**args)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm affine parameters, running statistics and biases non-trivial random values (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
    return model


def random_mask_ticket(spec: ArchSpec, sparsity: float, seed: int = 0, edit=None) -> Ticket:
    """A ticket with random masks (each weight pruned with probability ``sparsity``) on randomised BN and biases.

    ``edit(masks)`` may change the masks in place first (kill channels, layers, branches).
    """
    torch.manual_seed(seed)
    model = randomize_(spec.build(), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    masks = PATTERNS["unstructured"].random_masks(prunable_shapes(model), sparsity, gen, exact=False)
    if edit is not None:
        edit(masks)
    return ticket_from_model(model, spec, masks)


def pruned_model(spec: ArchSpec, amount: float, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(model pruned globally by L1 magnitude with torch.nn.utils.prune, its initial state dict)."""
    torch.manual_seed(seed)
    model = randomize_(spec.build(), seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    params = [(conv, "weight") for conv in conv_layers(model).values()]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return model, init


def write_ticket_files(folder: str | Path, spec: ArchSpec | None = None, amount: float = 0.5) -> dict[str, dict]:
    """Write one ticket in each format; returns ``{format: {"path": ..., "weights": ... or None}}``.

    Formats: ``own-pt``, ``own-safetensors``, ``paper-masks`` (needs ``weights``), ``torch-prune``,
    ``state-dict-zeros``. All hold the same masks and initial weights.
    """
    folder = Path(folder)
    spec = spec or tiny_skip()
    model, init = pruned_model(spec, amount)
    sd = model.state_dict()
    masks = {k: v.clone() for k, v in sd.items() if k.endswith(".weight_mask")}
    files = {
        "torch-prune": folder / "pruned_state.pt",
        "paper-masks": folder / "masks.pt",
        "init": folder / "init.pt",
        "state-dict-zeros": folder / "zeros_state.pt",
    }
    torch.save(sd, files["torch-prune"])
    torch.save(masks, files["paper-masks"])
    torch.save(init, files["init"])
    ticket = load_ticket(files["paper-masks"], weights=files["init"])
    torch.save(ticket.state_dict(), files["state-dict-zeros"])
    ticket.save(folder / "ticket.pt")
    ticket.save(folder / "ticket.safetensors")
    return {
        "own-pt": {"path": folder / "ticket.pt", "weights": None},
        "own-safetensors": {"path": folder / "ticket.safetensors", "weights": None},
        "paper-masks": {"path": files["paper-masks"], "weights": files["init"]},
        "torch-prune": {"path": files["torch-prune"], "weights": None},
        "state-dict-zeros": {"path": files["state-dict-zeros"], "weights": None},
    }


def masked_reference_output(ticket: Ticket, x: torch.Tensor, weights: str = "init") -> torch.Tensor:
    """The oracle: the reference network with its masks applied, DIP BatchNorm semantics."""
    with torch.no_grad():
        return ticket.build(weights)(x)
