"""Benchmark presets: every setting of a ``lipdeploy bench`` run, defined here and only here.

A preset is a frozen dataclass so a run's settings are one hashable, printable value: the report prints it verbatim
and every row carries its name, so numbers from different presets are never mixed silently.

- ``ci``: a narrower DIP of the paper's structure (5 levels x 16 channels) on 64x64 crops, few iterations. It exists
  to exercise every code path (finding tickets included) in well under 5 minutes on 2 CPU cores; its PSNRs say
  nothing about the paper's claims.
- ``cpu``: the paper's network on 128x128 crops, 1000 fitting iterations (500 per IMP round): a workstation's run.
  Its cost is dominated by IMP (10 rounds x 500 iterations per image, 38-49 min on one core of a 2-core AMD EPYC) and
  by the ~1000-iteration fits of the full-width network (~7 min each): 6.7 core-hours measured in all, so about an
  hour with ``--shard i/8`` (or ``--jobs`` filters) on an 8-core workstation. Kernel/channel tickets (4 rounds, 59%)
  are found on the first image only (each is another IMP run).
- ``paper``: the paper's settings (full images cropped to multiples of 32, 3000 iterations per fit and per IMP round);
  meant for a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lipdeploy.networks import SkipSpec

# Fraction of the remaining weights IMP prunes per round (the paper's 20%): after k rounds density is 0.8^k.
PRUNE_RATE = 0.2


def rounds_for(sparsity: float, rate: float = PRUNE_RATE) -> int:
    """Number of IMP rounds whose density (1 - rate)^k is closest to ``1 - sparsity``."""
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    k = math.log(1.0 - sparsity) / math.log(1.0 - rate)
    return max(1, round(k))


def round_sparsity(k: int, rate: float = PRUNE_RATE) -> float:
    """Nominal sparsity after ``k`` IMP rounds."""
    return 1.0 - (1.0 - rate) ** k


def pct(sparsity: float) -> int:
    """Sparsity as a whole percentage, the label used in method names ("lip-unstructured-89")."""
    return int(round(100 * sparsity))


@dataclass(frozen=True)
class Preset:
    """All settings of one benchmark run.

    ``sparsities``: IMP rounds of the unstructured LIP / random tickets (sparsity 1 - 0.8^k);
    ``structured_rounds``: rounds for the kernel- and channel-granularity tickets (each costs a full IMP run, so the
    cheap presets ask for fewer). ``crop``: side of the centre crop (None = the whole image cropped to multiples of
    the network stride). ``imp_iters``: fitting iterations per IMP round; ``iters``: per quality fit.
    ``structured_images``: images on which kernel/channel tickets are found and fitted (None = every image).
    """

    name: str
    description: str
    net: SkipSpec
    crop: int | None
    images: tuple[str, ...]
    iters: int
    imp_iters: int
    rounds: tuple[int, ...]
    structured_rounds: tuple[int, ...]
    granularities: tuple[str, ...] = ("unstructured", "kernel", "channel")
    structured_images: tuple[str, ...] | None = None
    dd_ks: tuple[int, ...] = (64, 128)
    dd_depth: int = 5
    transfer: bool = True
    lr: float = 0.01
    seed: int = 0
    task: str = "denoise"
    latency_warmup: int = 2
    latency_repeats: int = 10
    latency_methods: tuple[str, ...] | None = None  # methods that get latency/memory jobs (None = every method)
    memory_probe: bool = True  # peak RSS of a fitting step, one fresh process per method
    onnx_sizes: bool = True  # export dense and sparse ONNX files per method (bytes on disk)
    log_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def sparsities(self) -> tuple[float, ...]:
        return tuple(round_sparsity(k) for k in self.rounds)

    def replace(self, **changes: Any) -> Preset:
        """A copy with some settings changed (the name gets a ``+custom`` suffix unless given)."""
        if "name" not in changes and changes:
            changes["name"] = self.name if self.name.endswith("+custom") else f"{self.name}+custom"
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["net"] = self.net.to_dict()
        d["net_description"] = self.net.describe()
        d["sparsities"] = [round(s, 4) for s in self.sparsities]
        d["structured_sparsities"] = [round(round_sparsity(k), 4) for k in self.structured_rounds]
        for k, v in list(d.items()):
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def describe(self) -> str:
        """Multi-line description for the report."""
        crop = f"{self.crop}x{self.crop} centre crops" if self.crop else "full images cropped to multiples of 32"
        sp = ", ".join(f"{pct(s)}% ({k} rounds)" for k, s in zip(self.rounds, self.sparsities, strict=True))
        ssp = ", ".join(f"{pct(round_sparsity(k))}%" for k in self.structured_rounds) or "none"
        if self.structured_rounds and self.structured_images is not None:
            ssp += f" on {', '.join(self.structured_images)}"
        return "\n".join(
            [
                f"- preset **{self.name}**: {self.description}",
                f"- network: {self.net.describe()}",
                f"- images: {', '.join(self.images)} (scikit-image), {crop}; task {self.task}",
                f"- fitting: Adam lr {self.lr}, {self.iters} iterations per fit, {self.imp_iters} per IMP round",
                f"- LIP / random sparsities: {sp}; kernel/channel tickets at {ssp}",
                f"- deep decoders: k in {list(self.dd_ks)} and parameter-matched, d={self.dd_depth}",
                f"- latency: median of {self.latency_repeats} runs after {self.latency_warmup} warm-up",
            ]
        )


CI_NET = SkipSpec(channels_down=(16,) * 5, channels_up=(16,) * 5, channels_skip=(4,) * 5)

PRESETS: dict[str, Preset] = {
    "ci": Preset(
        name="ci",
        description="smoke test of every code path; narrow network, tiny crops, few iterations (numbers meaningless)",
        net=CI_NET,
        crop=64,
        images=("astronaut", "coffee"),
        iters=150,
        imp_iters=50,
        rounds=(2, 4),
        structured_rounds=(2,),
        dd_ks=(64, 128),
        latency_warmup=1,
        latency_repeats=5,
        log_every=5,
    ),
    "cpu": Preset(
        name="cpu",
        description="paper network on 128x128 crops, 1000 iterations; a CPU workstation's run",
        net=SkipSpec(),
        crop=128,
        images=("astronaut", "coffee", "chelsea"),
        iters=1000,
        imp_iters=500,
        rounds=(4, 8, 10),
        # 4 rounds = 59% of kernels / channels: a structured ticket removes whole units, so moderate sparsity is
        # where it can still match the dense DIP; each extra round is another ~4.5 min IMP fit per granularity
        structured_rounds=(4,),
        structured_images=("astronaut",),
        latency_warmup=2,
        latency_repeats=7,
        log_every=10,
    ),
    "paper": Preset(
        name="paper",
        description="the paper's settings (full images, 3000 iterations per fit and per IMP round); for a GPU",
        net=SkipSpec(),
        crop=None,
        images=("astronaut", "coffee", "chelsea"),
        iters=3000,
        imp_iters=3000,
        rounds=(4, 8, 10, 14),
        structured_rounds=(4, 8, 10),
        latency_warmup=5,
        latency_repeats=20,
        log_every=10,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} ({', '.join(PRESETS)})") from None
