"""The :class:`Ticket` type: architecture + initial weights + one 0/1 mask per prunable weight + provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..errors import InputError
from ..fileio import atomic_output
from ..masks import Masks, apply_masks_
from ..masks import density as masks_density
from ..networks import ArchSpec
from .codec import TicketParts, encode
from .files import StateDict

BatchNormMode = Literal["image", "running"]


@dataclass
class Ticket:
    """A lottery image prior: ``build()`` gives the masked network.

    ``init`` is the full state dict of the reference network at the rewind point (parameters and BatchNorm buffers);
    ``fitted``, when present, the weights after fitting. ``masks`` holds every prunable weight's 0/1 mask.
    """

    arch: ArchSpec
    init: StateDict
    masks: Masks
    fitted: StateDict | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def from_parts(cls, parts: TicketParts, source: str | None = None) -> Ticket:
        """The ticket of a file's decoded parts (:func:`lipdeploy.ticket.codec.decode`)."""
        return cls(parts.arch, parts.init, parts.masks, parts.fitted, parts.provenance, source)

    @property
    def density(self) -> float:
        """Kept fraction of the prunable (convolution) weights."""
        return masks_density(self.masks)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def prunable_count(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def kept_count(self) -> int:
        return sum(int(m.count_nonzero()) for m in self.masks.values())

    def state_dict(self, weights: Literal["init", "fitted"] = "init") -> StateDict:
        """The masked state dict (pruned weights exactly zero)."""
        if weights == "fitted" and self.fitted is None:
            raise InputError(self.source, "the ticket holds no fitted weights")
        src = self.init if weights == "init" else self.fitted
        out = {k: v.clone() for k, v in src.items()}
        for name, mask in self.masks.items():
            out[name] = out[name] * mask
        return out

    def build(self, weights: Literal["init", "fitted"] = "init", bn: BatchNormMode = "image") -> nn.Sequential:
        """The masked reference network.

        ``bn="image"`` (default, DIP semantics): the module is in training mode, so BatchNorm normalises with the
        current image's statistics. ``bn="running"``: eval mode, BatchNorm uses its running statistics.
        """
        model = self.arch.build()
        model.load_state_dict(self.state_dict(weights))
        apply_masks_(model, self.masks)
        return model.train(bn == "image")

    def replace(self, **changes: Any) -> Ticket:
        """A copy with some fields changed."""
        fields = {k: getattr(self, k) for k in ("arch", "init", "masks", "fitted", "provenance", "source")}
        fields.update(changes)
        return Ticket(**fields)

    def save(self, path: str | Path) -> None:
        """Write the ticket atomically: ``.safetensors`` for the safetensors variant, anything else as ``.pt``."""
        path = Path(path)
        for group, sd in (("initial", self.init), ("fitted", self.fitted)):
            for key, value in (sd or {}).items():  # our own loader refuses them: never write a ticket it cannot read
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise InputError(
                        path, f"not written: the {group} weights contain NaN or Inf (in {key!r}; did the fit diverge?)"
                    )
        tensors, meta = encode(TicketParts(self.arch, self.init, self.masks, self.fitted, self.provenance))
        # written through Python file objects: a full disk is then an OSError that atomic_output reports in one line
        # (torch.save and safetensors' save_file given a path turn it into their own error types)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            if path.suffix == ".safetensors":
                f.write(safetensors_bytes(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))
            else:
                torch.save({**meta, "tensors": tensors}, f)
