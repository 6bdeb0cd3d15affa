"""Tickets: the toolkit's unit. Architecture + initial weights + one 0/1 mask per prunable weight + provenance.

:func:`load_ticket` reads, never executing a pickle (``torch.load(weights_only=True)`` only):

a) the toolkit's own ticket file, ``.pt`` or ``.safetensors`` (its format: :mod:`~lipdeploy.ticket.codec`);
b) the LIP paper code's pair: a dict of ``'<module path>.weight_mask'`` tensors plus the network's state dict given
   as ``weights``;
c) a state dict of a model pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``);
d) a plain state dict whose exact zeros define the mask;
e) a progressive-GAN generator file (pytorch_GAN_zoo's checkpoint, its generator's state dict in the zoo's layouts,
   pruned or as masks only: :mod:`lipdeploy.generator_files`), the architecture from the checkpoint's ``config``.

The architecture is inferred from tensor names and shapes; what shapes cannot tell (upsampling mode, activation,
sigmoid) defaults to the paper configuration and can be overridden.

The package's modules: :mod:`~lipdeploy.ticket.model` (the :class:`Ticket` type), :mod:`~lipdeploy.ticket.codec`
(the own file format), :mod:`~lipdeploy.ticket.files` (safe tensor-file reading), :mod:`~lipdeploy.ticket.architecture`
(inference and state-dict checks), :mod:`~lipdeploy.ticket.importers` (the other layouts) and
:mod:`~lipdeploy.ticket.loading` (:func:`load_ticket`). The names below are the public API; import them from here.
"""

from __future__ import annotations

from .architecture import infer_arch
from .codec import FORMAT, VERSION
from .files import StateDict, as_state_dict, read_tensor_file
from .importers import ticket_from_model
from .loading import load_ticket
from .model import BatchNormMode, Ticket

__all__ = [
    "FORMAT",
    "VERSION",
    "BatchNormMode",
    "StateDict",
    "Ticket",
    "as_state_dict",
    "infer_arch",
    "load_ticket",
    "read_tensor_file",
    "ticket_from_model",
]
