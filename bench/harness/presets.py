"""Benchmark presets: every setting of a ``lipdeploy bench`` run, defined here and only here.

A preset is a frozen dataclass so a run's settings are one hashable, printable value: the report prints it verbatim
and every row carries its name, so numbers from different presets are never mixed silently.

- ``ci``: a narrower DIP of the paper's structure (5 levels x 16 channels) on 64x64 crops, few iterations. It exists
  to exercise every code path (finding tickets included) in well under 5 minutes on 2 CPU cores; its PSNRs say
  nothing about the paper's claims.
- ``cpu``: the paper's network on 128x128 crops, 1000 fitting iterations (500 per IMP round): a workstation's run.
  Its cost is dominated by IMP (10 rounds x 500 iterations per image, 38-49 min on one core of a 2-core AMD EPYC) and
  by the ~1000-iteration fits of the full-width network (4-7 min each): at least 12.5 core-hours measured with the
  structured frontier (bench/RESULTS.md), so about two hours with ``--shard i/8`` (or ``--jobs`` filters) on an
  8-core workstation. Kernel/channel tickets (4 rounds, 59%)
  are found on the first image only (each is another IMP run).
- ``paper``: the paper's settings (full images cropped to multiples of 32, 3000 iterations per fit and per IMP round);
  meant for a GPU.
- ``fidelity``: the paper's claims across its range: chains to 0.8^24 on denoising, inpainting and x4
  super-resolution, random pruning and matched deep decoders at the same points, tickets transferred across images
  and tasks; sized for ~8 core-hours on a 2-core machine (the reasons for each size are at the preset).

The cpu preset's structured frontier adds block-16 and channel tickets at 59/83/89/95% on its three images with
random-block rows and matched narrow-DIP rows. Its channel tickets use per-layer normalised scores with a minimum width
(``channel_rule`` in their provenance) and are named ``lip-channel-norm-*`` (find kind ``channel-norm``), so they never
collide with the committed ``lip-channel-59`` rows, which were found by global mean |w| scores with no minimum width
(their tickets carry no ``channel_rule``) and stay as measured, labelled by the report.
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


# Find kinds: the name of a ticket chain (a find job, a tickets folder) -> (pattern in lipdeploy.patterns.PATTERNS,
# random pruning?). "channel" and "channel-norm" run the same pattern; "channel-norm" is a separate chain name so that
# a results folder whose "channel" chain was found by global mean |w| scores (the cpu preset's) gets a chain of the
# per-layer normalised rule beside it instead of continuing the old chain with a different rule.
FIND_KINDS: dict[str, tuple[str, bool]] = {
    "unstructured": ("unstructured", False),
    "random": ("unstructured", True),
    "kernel": ("kernel", False),
    "channel": ("channel", False),
    "channel-norm": ("channel", False),
    "block": ("block", False),
    "block32x16": ("block32x16", False),
    "block16x8": ("block16x8", False),
    "random-block": ("block", True),
    "random-channel": ("channel", True),
}


def pct(sparsity: float) -> int | str:
    """Sparsity as the percentage used in method names: whole below 95% ("lip-unstructured-89", as the first presets
    named them), one decimal from 95% on ("random-99.5"), where a whole number would round 99.53% up to "100"."""
    if 100 * sparsity < 95:
        return int(round(100 * sparsity))
    return f"{100 * sparsity:.1f}"


@dataclass(frozen=True)
class Preset:
    """All settings of one benchmark run.

    ``sparsities``: IMP rounds of the unstructured LIP / random tickets (sparsity 1 - 0.8^k);
    ``structured_rounds``: rounds for the kernel- and channel-granularity tickets (each costs a full IMP run, so the
    cheap presets ask for fewer). ``crop``: side of the centre crop (None = the whole image cropped to multiples of
    the network stride). ``imp_iters``: fitting iterations per IMP round; ``iters``: per quality fit.
    ``structured_images``: images on which kernel/channel tickets are found and fitted (None = every image).

    The structured frontier: ``frontier`` names find kinds (:data:`FIND_KINDS`) whose tickets are fitted
    at ``frontier_rounds`` on ``frontier_images`` (None = every image), ``frontier_random`` the random baselines of
    the same structure, and ``narrow_dip`` adds, per channel-kind point, the dense DIP of uniformly reduced width
    with the ticket's parameter count (``dip-narrow-*``).

    Several tasks: ``tasks`` (None = ``(task,)``). With more than one, every method name carries its task
    (``lip-unstructured-95@sr``), so rows of different tasks never average together; ``transfer_tasks`` fits tickets
    found on one task on another (pairs ``(from, to)``) at ``transfer_rounds`` (None = the largest of ``rounds``);
    ``transfer_images`` transfers each image's ticket to the other images of the preset at those rounds on every
    task. ``multi_image``: images on which one multi-image ticket is found (:func:`lipdeploy.imp.find_ticket` given
    several images), fitted on the preset's images not among them at the transfer rounds.

    Seeds: every quality and transfer fit runs ``seeds`` times, with fit seeds ``seed``, ``seed + 1``, ...
    (:attr:`seed_list`): the seed sets the network input code and its per-step perturbation, and for a network
    without a ticket (dense DIP, deep decoders, narrow DIPs) its initialisation; a ticket keeps the initial weights
    IMP rewinds to, and every observation stays fixed per image (its own seed). ``keep_jobs``: globs over job keys
    in priority order: the plan keeps only the jobs matching one (the first glob's jobs first), so a preset can
    measure a few comparisons without the rest of the plan (empty = every job).
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
    frontier: tuple[str, ...] = ()
    frontier_rounds: tuple[int, ...] = ()
    frontier_images: tuple[str, ...] | None = None
    frontier_random: tuple[str, ...] = ()
    narrow_dip: bool = False
    tasks: tuple[str, ...] | None = None
    dd_matched: bool = True
    transfer_tasks: tuple[tuple[str, str], ...] = ()
    transfer_rounds: tuple[int, ...] | None = None
    transfer_images: bool = False
    multi_image: tuple[str, ...] = ()
    seeds: int = 1
    keep_jobs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def sparsities(self) -> tuple[float, ...]:
        return tuple(round_sparsity(k) for k in self.rounds)

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The fit seeds of every quality job: ``seed`` (whose job keys carry no seed) then ``seed + 1``, ..."""
        return tuple(self.seed + i for i in range(max(1, self.seeds)))

    @property
    def task_list(self) -> tuple[str, ...]:
        """The tasks evaluated, the first being ``task``'s default."""
        return self.tasks or (self.task,)

    @property
    def multi_task(self) -> bool:
        """Whether method names carry their task (``@task``)."""
        return len(self.task_list) > 1

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
                f"- seeds per fit: {max(1, self.seeds)} ({', '.join(map(str, self.seed_list))})",
            ]
            + (
                [
                    f"- structured frontier: {', '.join(self.frontier)} at "
                    + ", ".join(f"{pct(round_sparsity(k))}%" for k in self.frontier_rounds)
                    + (f"; random {', '.join(self.frontier_random)}" if self.frontier_random else "")
                    + ("; matched narrow DIPs" if self.narrow_dip else "")
                ]
                if self.frontier
                else []
            )
            + ([f"- tasks: {', '.join(self.task_list)}"] if self.multi_task else [])
            + [f"- {n}" for n in self.notes]
        )


CI_NET = SkipSpec(channels_down=(16,) * 5, channels_up=(16,) * 5, channels_skip=(4,) * 5)

# the evidence preset's denoising fits on each image, cheapest answer first (the comparisons it is there to answer)
EVIDENCE_DENOISE = (
    "lip-unstructured-59", "lip-unstructured-89", "dd-matched-89", "lip-unstructured-95.6", "random-95.6",
    "lip-unstructured-98.8", "random-98.8", "lip-channel-norm-59", "dip-narrow-59", "lip-block-89",
)  # fmt: skip

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
        # the structured frontier: block-16 and normalised-rule channel chains to 14 rounds on every image, fitted at
        # 59/83/89/95%. Each chain is 15 IMP fits of 500 iterations of the full-width network (~52 min per image on
        # one core), each point a ~7 min fit: ~10 core-hours for the whole frontier (6 chains, 48 fits, latency and
        # memory). Random blocks cost no IMP (random scores need no fitted weights); narrow DIPs are cheap fits.
        frontier=("block", "channel-norm"),
        frontier_rounds=(4, 8, 10, 14),
        frontier_random=("random-block",),
        narrow_dip=True,
        # printed verbatim in the report (its text is part of the committed results' report.md)
        notes=(
            "lip-channel-59 was found by the channel pattern's earlier rule (global mean |w|, no minimum width); "
            "lip-channel-norm-* by the current one (per-layer normalised scores, minimum width)",
        ),
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
        # a fit's best PSNR moves ~0.2 dB from seed to seed, the size of the gaps the paper reports:
        # three seeds per fit give every comparison an interval
        seeds=3,
    ),
    # The paper's claims at a 2-core machine's scale: at most ~8 core-hours. The sizes and why:
    # - 96x96 crops: the smallest side at which x4 super-resolution still has a 24x24 observation (64 px would leave
    #   16x16, and DOMAIN.md notes sides under 64 are fragile); a fitting step of the paper's network costs ~0.25 s on
    #   one core there (0.12 s at 64 px, 0.42 s at 128 px);
    # - two images, so every ticket can also be transferred to an image it was not found on;
    # - chains of 24 IMP rounds (99.5% = 1 - 0.8^24, the paper's extreme) of 300 iterations each: 25 fits x 300 x
    #   0.25 s = ~31 min per (task, image); 300 iterations is where the paper's loop has fitted a 64x64 crop (31.2 dB,
    #   DOMAIN.md), enough for the magnitudes IMP ranks;
    # - evaluation fits of 500 iterations at 59, 89, 95.6, 98.8 and 99.5% (LIP, random at IMP's per-round kept
    #   counts, matched deep decoder) and the dense DIP: 11 DIP fits x ~2 min per (task, image);
    # - so 3 tasks x 2 images x ~55 min = ~5.5 h, transfers across tasks (4 directions x 2 points x 2 images) and
    #   across images (3 tasks x 2 points x 2 images) ~1 h; the multi-image chain (denoising, 25 rounds of one
    #   network fitted to three images) and its 4 held-out fits ~0.7 h: ~7.2 core-hours in all.
    # Measured (2-core AMD EPYC, two single-thread processes): a fitting step costs ~0.14 s, not the 0.25 s
    # assumed above: a 24-round chain took 1003-1009 s, a 500-iteration DIP fit 66-77 s, a matched deep decoder up to
    # 105 s; the whole preset 4.4 core-hours (job times summed, rows files), 2.4 hours of wall time.
    # Numbers at 500 iterations and 96 px are not the paper's (3000 iterations, full images): the report compares
    # methods on the same crops and budgets, it does not reproduce the paper's absolute PSNRs.
    "fidelity": Preset(
        name="fidelity",
        description="the paper's claims to 99.5% sparsity on denoising, inpainting and x4 SR at 96x96; ~8 core-hours",
        net=SkipSpec(),
        crop=96,
        images=("astronaut", "coffee"),
        iters=500,
        imp_iters=300,
        rounds=(4, 10, 14, 20, 24),
        structured_rounds=(),
        granularities=("unstructured",),
        dd_ks=(64,),
        transfer=False,
        tasks=("denoise", "inpaint", "sr"),
        transfer_tasks=(("denoise", "inpaint"), ("denoise", "sr"), ("inpaint", "denoise"), ("sr", "denoise")),
        transfer_rounds=(10, 14),
        transfer_images=True,
        # one denoising ticket found on three other photographs at once (the paper's multi-image IMP: one network,
        # the loss summing the per-image MSEs; its cost is about one chain's), fitted on astronaut and coffee at the
        # transfer rounds: a colour portrait of a cat, a colour photograph of a rocket, a greyscale street scene
        multi_image=("chelsea", "rocket", "camera"),
        latency_methods=(),  # quality only: latency and memory per structure are the cpu preset's job
        memory_probe=False,
        onnx_sizes=False,
        latency_warmup=1,
        latency_repeats=3,
        log_every=10,
    ),
    # The decisive comparisons of the cpu and fidelity presets with 3 seeds, in the cheapest configuration that
    # still answers them, sized for ~2 hours of one core. Measured (2-core AMD EPYC, one thread): a fitting step of
    # the paper's network costs 171 ms at 64 px and 328 ms at 96 px, so
    # - 64x64 crops (the smallest side DOMAIN.md calls safe), two images (a transferred ticket needs a second one);
    # - 300 iterations per fit (where the paper's loop has fitted a 64x64 crop: 31.2 dB, DOMAIN.md), 120 per IMP
    #   round (the chains to 98.8% are 21 fits long: 120 keeps the four chains of 104 fits under 40 min);
    # - only the jobs the comparisons read (``keep_jobs``, cheapest answer first): dense; the LIP at 59 / 89% and the
    #   matched deep decoder at 89%; LIP and random at 95.6 / 98.8%; coffee's denoising 89% ticket on astronaut; the
    #   channel LIP at 59% and its narrow DIP; the block-16 LIP at 89%; coffee's inpainting 95.6% ticket on
    #   astronaut beside astronaut's own;
    # - so 104 IMP fits x 120 + 78 fits x 300 = ~35,900 steps x ~0.175 s = ~1.75 core-hours.
    "evidence": Preset(
        name="evidence",
        description="the decisive comparisons with 3 seeds: 64x64 crops, 300 iterations; ~1.75 core-hours",
        net=SkipSpec(),
        crop=64,
        images=("astronaut", "coffee"),
        iters=300,
        imp_iters=120,
        rounds=(4, 10, 14, 20),
        structured_rounds=(),
        granularities=("unstructured",),
        dd_ks=(),
        transfer=False,
        tasks=("denoise", "inpaint"),
        transfer_rounds=(10, 14),
        transfer_images=True,
        frontier=("block", "channel-norm"),
        frontier_rounds=(4, 10),
        narrow_dip=True,
        latency_methods=(),  # quality only
        memory_probe=False,
        onnx_sizes=False,
        seeds=3,
        # first every comparison on astronaut (3 seeds: n = 3 each), then coffee's fits (n = 6): on a shared
        # machine a run may get a third of a core (load average 6-10 on 2 cores), so a run cut short still answers
        # every comparison once
        keep_jobs=(
            "quality/dense@denoise/*",
            "find/astronaut/unstructured@denoise",
            *(f"quality/{m}@denoise/astronaut*" for m in EVIDENCE_DENOISE),
            "transfer/transfer-89-from-coffee@denoise/astronaut*",
            "quality/lip-unstructured-95.6@inpaint/astronaut*",
            "transfer/transfer-95.6-from-coffee@inpaint/astronaut*",
            *(f"quality/{m}@denoise/coffee*" for m in EVIDENCE_DENOISE),
        ),
        log_every=10,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} ({', '.join(PRESETS)})") from None
