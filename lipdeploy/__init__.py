"""lipdeploy: deploy sparse deep image priors (lottery image priors).

Importing the package does no CUDA or Triton work; kernels compile on first use.
"""

from .compact import CompactionReport, analyze_compaction, compact
from .errors import InputError
from .networks import DeepDecoderSpec, SkipSpec, make_input, paper_skip
from .sparse import sparsify
from .ticket import Ticket, load_ticket, ticket_from_model

__version__ = "0.1.0"

__all__ = [
    "DeepDecoderSpec",
    "InputError",
    "SkipSpec",
    "Ticket",
    "__version__",
    "load_ticket",
    "make_input",
    "paper_skip",
    "ticket_from_model",
    "CompactionReport",
    "analyze_compaction",
    "compact",
    "sparsify",
]
