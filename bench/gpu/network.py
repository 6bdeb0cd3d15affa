"""Whole-network GPU benchmark: the paper's DIP network, dense vs masked vs compacted vs Triton-sparse.

``python -m lipdeploy.bench.gpu.network -o bench/results/h100.json``

For each image size, mask kind and sparsity it times (median ms, ``triton.testing.do_bench``) one forward pass and one
fitting step (MSE loss, backward, Adam) of:

- ``dense``: the unpruned network, PyTorch defaults (cuDNN, TF32 allowed as PyTorch allows it by default) -- the
  baseline users actually run; speedups are relative to it, measured in the same run;
- ``masked``: the same network with the mask's zeros (what a LIP fit runs on backend "masked"; the fitting step
  includes the fused pass that masks the pruned gradients, :class:`lipdeploy.fit_result.PrunedGradients`);
- ``compact``: :func:`lipdeploy.compaction.compact` (exact channel compaction, dense cuDNN convs);
- ``sparse``: :func:`lipdeploy.backends.sparsify` with ``backend="triton-csr"`` (every conv on the sparse kernels);
- ``auto``: :func:`lipdeploy.backends.sparsify` with ``backend="auto"`` (per layer, the fastest of cuDNN and the
  sparse kernels in both formats x a few kernel configs, tuned for the forward pass for the forward rows and for
  forward + backward for the fitting-step rows; ``build_s`` includes that one-off tuning).

Masks: ``imp`` = global L1 magnitude pruning over all conv weights, as the paper's IMP prunes, applied to the
*initial* weights (a stand-in: real IMP prunes fitted weights after each round; ``--fit-steps N`` fits the dense
network N Adam steps on a random image first, then prunes by magnitude of those weights); ``random`` = uniform random
at the same density in every layer; ``block-imp`` / ``block-random``: the same on whole 16 x 16 blocks of one kernel
tap (the ``block`` pattern, what the tensor-core bsr kernels skip). BatchNorm: per-image statistics (DIP's semantics).
Without CUDA it prints one line and exits with status 2. Nothing runs at import (Triton is imported only when a
kernel runs).

``--fit-step`` (``--sizes 256 512 --sparsities 0.5 0.8 0.9``) times the engine's whole fitting step instead
(:func:`lipdeploy.fit.fit`: forward, backward, Adam, output average, PSNR tracking, backtracking): dense, then per
sparsity the ``--fit-variants``: ``masked`` and ``sparse`` (``--fit-backend``) on the first ``--masks`` kind, ``bsr``
on a ``--block-mask`` ticket fitted on the 16 x 16 tensor-core kernels (backend "triton-bsr"), each
eager and captured in a CUDA graph (``lipdeploy.captured``), with the convolutions' ms vs the other kernels' ms and the
launches per step from torch.profiler (:func:`run_fit_step`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

from lipdeploy.backends import sparse_layers, sparsify
from lipdeploy.compaction import analyze_compaction, compact
from lipdeploy.fit import MASKED, FitConfig, FitResult, fit, simulate
from lipdeploy.fit_result import PrunedGradients
from lipdeploy.kernels import SparseConv2d
from lipdeploy.masks import Mask, prunable_shapes
from lipdeploy.networks import SkipSpec, make_input
from lipdeploy.patterns import PATTERNS
from lipdeploy.tasks import Denoise, Observation
from lipdeploy.ticket import Ticket, ticket_from_model

from ..script import Results, needs_gpu, parser, refuse, script_environment
from ..timing import device_ms

VARIANTS = ("dense", "masked", "compact", "sparse", "auto")
MASK_KINDS = ("imp", "random", "block-imp", "block-random")
FIT_VARIANTS = ("masked", "sparse", "bsr")
BSR_BACKEND = "triton-bsr"
"""The fitting step's ``bsr`` rows: the 16 x 16 packing, the block masks' own block size."""


def _masks(model, kind: str, sparsity: float, seed: int) -> Mask:
    """The network's masks: all ones at sparsity 0; ``imp``: one global magnitude-pruning step of the unstructured
    pattern; ``random``: an independent coin flip per weight (density about ``1 - sparsity`` in every layer);
    ``block-imp`` / ``block-random``: the same with the ``block`` pattern's 16 x 16 blocks as units (block RMS
    scores; ``block-random`` keeps exactly ``1 - sparsity`` of each layer's blocks, so every layer has empty blocks
    for the bsr kernels to skip)."""
    if sparsity <= 0:
        return Mask.ones_like(model)
    weights = {n: p.detach() for n, p in model.named_parameters() if n in prunable_shapes(model)}
    if kind.startswith("block"):
        pattern = PATTERNS["block"]
        if kind == "block-imp":
            return pattern.magnitude_masks(weights, sparsity)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        masks = pattern.random_masks(prunable_shapes(model), sparsity, gen)
        return Mask({n: m.to(weights[n].device) for n, m in masks.items()})
    unstructured = PATTERNS["unstructured"]
    if kind == "imp":
        return unstructured.magnitude_masks(weights, sparsity)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    masks = unstructured.random_masks(prunable_shapes(model), sparsity, gen, protect=(), exact=False)
    return Mask({n: m.to(weights[n].device) for n, m in masks.items()})


def _spec(args: argparse.Namespace) -> SkipSpec:
    """The paper's network, or for smoke tests on CPU (where the Triton interpreter is slow) the same network narrower
    (``--channels``: every level's width) and shallower (``--levels``: fewer scales, so images as small as
    ``2**levels`` pixels fit)."""
    c, levels = getattr(args, "channels", None), getattr(args, "levels", None)
    if not c and not levels:
        return SkipSpec()
    paper = SkipSpec()
    n = levels or len(paper.channels_down)
    return SkipSpec(
        channels_down=(c or paper.channels_down[0],) * n,
        channels_up=(c or paper.channels_up[0],) * n,
        channels_skip=(paper.channels_skip[0],) * n,
    )


def _fit_dense(model, x, steps: int, seed: int) -> None:
    if steps <= 0:
        return
    gen = torch.Generator(device="cpu").manual_seed(seed)
    target = torch.rand((1, 3, *x.shape[2:]), generator=gen).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), target).backward()
        opt.step()


def _step_fn(net, x, target, masks=None):
    """A plain fitting step of ``net`` (MSE, backward, Adam); with ``masks``, the pruned gradients masked in the fused
    pass between backward and the update."""
    pruned = PrunedGradients.of(net, masks) if masks is not None else PrunedGradients()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x), target).backward()
        pruned()
        opt.step()

    return step


def _bench(fn, rep: int, dev) -> float:
    return device_ms(fn, dev, rep_ms=rep, warmup_ms=max(25, rep // 4))


def run(args: argparse.Namespace) -> Results:
    """Every size x mask x sparsity x variant; the results file is rewritten after every row."""
    dev = torch.device(getattr(args, "device", "cuda"))
    gpu = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (smoke test only)"
    settings = {k: getattr(args, k, None) for k in ("fit_steps", "rep", "seed", "channels", "levels")}
    results = Results(args.output, script_environment(gpu=gpu, **settings), printer=_print)
    spec = _spec(args)
    for size in args.sizes:
        torch.manual_seed(args.seed)
        base = spec.build().to(dev).train()
        x = make_input(spec, size, size, seed=args.seed).to(dev)
        target = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(1)).to(dev)
        _fit_dense(base, x, args.fit_steps, args.seed)
        init_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}

        def fresh(init_sd=init_sd):
            m = spec.build().to(dev).train()
            m.load_state_dict(init_sd)
            return m

        with torch.no_grad():
            dense = fresh()
            t_dense_fwd = _bench(lambda dense=dense, x=x: dense(x), args.rep, dev)
        t_dense_step = _bench(_step_fn(fresh(), x, target), args.rep, dev)
        results.add(_row(size, "-", 0.0, "dense", t_dense_fwd, t_dense_step, t_dense_fwd, t_dense_step))
        for kind in args.masks:
            for sp in args.sparsities:
                masks = _masks(base, kind, sp, args.seed)
                ticket = ticket_from_model(base.cpu(), spec, {k: v.cpu() for k, v in masks.items()})
                base.to(dev)
                rep = analyze_compaction(ticket, size, size)
                extra = {"density": ticket.density, "compaction": rep.totals()}
                for variant in args.variants:
                    if variant == "dense":
                        continue
                    t0 = time.perf_counter()
                    try:
                        fwd_net, step_net, step_masks = _variant(variant, ticket, dev, x)
                    except Exception as exc:  # one failing variant must not lose the others' numbers
                        results.add({"size": size, "mask": kind, "sparsity": sp, "variant": variant,
                                     "error": f"{type(exc).__name__}: {exc}"[:300]})  # fmt: skip
                        continue
                    build_s = time.perf_counter() - t0
                    with torch.no_grad():
                        t_fwd = _bench(lambda n=fwd_net, x=x: n(x), args.rep, dev)
                    if any(p.requires_grad for p in step_net.parameters()):
                        t_step = _bench(_step_fn(step_net, x, target, step_masks), args.rep, dev)
                    else:  # compaction proved the output constant: nothing left to fit
                        t_step = None
                    row = _row(size, kind, sp, variant, t_fwd, t_step, t_dense_fwd, t_dense_step)
                    row.update(extra, build_s=round(build_s, 3))
                    if variant in ("sparse", "auto"):
                        row["sparse_layers"] = len(sparse_layers(fwd_net))
                        row["sparse_layers_fit"] = len(sparse_layers(step_net))
                        row["sparse_choices_fit"] = _choices(step_net)
                    results.add(row)  # saved at once: a cut-off run keeps what it measured
                    del fwd_net, step_net
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
    return results


def _variant(variant: str, ticket, dev, x):
    if variant == "masked":
        return ticket.build().to(dev), ticket.build().to(dev), {k: v.to(dev) for k, v in ticket.masks.items()}
    if variant == "compact":
        return compact(ticket).to(dev), compact(ticket).to(dev), None
    if variant == "sparse":
        net = sparsify(compact(ticket).to(dev), backend="triton-csr")
        return net, sparsify(compact(ticket).to(dev), backend="triton-csr"), None
    if variant == "auto":
        fwd = sparsify(compact(ticket).to(dev), backend="auto", example_input=x, workload="forward")
        return fwd, sparsify(compact(ticket).to(dev), backend="auto", example_input=x, workload="fit"), None
    raise ValueError(variant)


def _choices(net) -> dict[str, str]:
    """Layer -> "format:config" for each conv that runs on the sparse kernels (what the dispatcher picked)."""
    return {
        name: f"{m.format}:{m.config.tag if m.config is not None else 'default'}"
        for name, m in net.named_modules()
        if isinstance(m, SparseConv2d)
    }


def _row(size, kind, sp, variant, t_fwd, t_step, d_fwd, d_step) -> dict:
    return {
        "size": size,
        "mask": kind,
        "sparsity": sp,
        "variant": variant,
        "forward_ms": round(t_fwd, 4),
        "step_ms": None if t_step is None else round(t_step, 4),
        "forward_speedup": round(d_fwd / t_fwd, 3),
        "step_speedup": None if t_step is None else round(d_step / t_step, 3),
    }


def _print(row: dict) -> None:
    if "error" in row:
        print(f"{row['size']:>5} {row['mask']:>7} {row['sparsity']:>6.0%} {row['variant']:>8}  error: {row['error']}")
        return
    if not getattr(_print, "head", False):
        print(
            f"{'size':>5} {'mask':>7} {'sparse':>6} {'variant':>8} {'fwd ms':>9} {'x dense':>8} "
            f"{'step ms':>9} {'x dense':>8}"
        )
        _print.head = True  # type: ignore[attr-defined]
    step = "        -        -" if row["step_ms"] is None else f"{row['step_ms']:>9.3f} {row['step_speedup']:>8.2f}"
    print(
        f"{row['size']:>5} {row['mask']:>7} {row['sparsity']:>6.0%} {row['variant']:>8} {row['forward_ms']:>9.3f} "
        f"{row['forward_speedup']:>8.2f} {step}",
        flush=True,
    )


# ---- the engine's fitting step, eager vs captured: ``--fit-step`` ----

_CONV_KERNEL = ("conv", "cudnn", "xmma", "implicit", "gemm", "dgrad", "wgrad", "winograd", "sparse", "csr", "bsr")
_LAUNCH_API = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
               "cudaMemcpyAsync", "cudaMemsetAsync")  # fmt: skip


def _profile_fit(fit_once, cuda: bool) -> dict[str, float]:
    """Launches and conv / other time of one call of ``fit_once`` under torch.profiler.

    CUDA: launches = host calls that put work on the GPU (kernel launches, graph launches: a replayed graph is one),
    times = device time of the kernels, split by name into convolutions (cuDNN, GEMM, the sparse kernels) and the
    rest. CPU (smoke mode): launches = top-level aten ops (what would each be a launch), times = their self CPU time
    (kernels run by the Triton interpreter are no aten ops: the bsr kernels' time counts nowhere there).
    """
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fit_once()
    conv = other = 0.0
    launches = 0
    for e in prof.events():
        name = e.name
        if cuda:
            if name in _LAUNCH_API:
                launches += 1
            if e.device_type == torch.autograd.DeviceType.CUDA:
                t = e.device_time_total / 1000.0  # us -> ms
                if any(k in name.lower() for k in _CONV_KERNEL):
                    conv += t
                else:
                    other += t
        elif e.device_type == torch.autograd.DeviceType.CPU and name.startswith("aten::"):
            parent = e.cpu_parent
            if parent is None or not parent.name.startswith("aten::"):
                launches += 1
            t = e.self_cpu_time_total / 1000.0
            if "conv" in name.lower():
                conv += t
            else:
                other += t
    return {"launches": launches, "conv_ms": conv, "other_ms": other}


FIT_WARMUP, FIT_PROFILED = 2, 3
"""``--fit-step``'s profiled fits: one of ``FIT_WARMUP`` iterations and one of ``FIT_WARMUP + FIT_PROFILED``; their
difference over ``FIT_PROFILED`` is one step's launches and times (setup, warm-up and capture cancel out)."""

FitCase = tuple[str, str, Ticket, str]
"""A ``--fit-step`` case: variant, mask kind, ticket, fit backend."""


def _fit_cases(
    base: torch.nn.Module,
    spec: SkipSpec,
    sparsity: float,
    args: argparse.Namespace,
    dense_ticket: Ticket,
    variants: Sequence[str],
    block_kind: str,
) -> list[FitCase]:
    """The cases fitted at ``sparsity``: at 0 the dense network (on the masked backend: the reference); else
    ``masked`` and ``sparse`` (``--fit-backend``) on the first ``--masks`` kind, ``bsr`` on a ``block_kind`` ticket."""
    if sparsity <= 0:
        return [("dense", "-", dense_ticket, MASKED)]
    cases: list[FitCase] = []
    if "masked" in variants or "sparse" in variants:
        kind = args.masks[0]
        ticket = ticket_from_model(base, spec, dict(_masks(base, kind, sparsity, args.seed).items()))
        cases += [(v, kind, ticket, b) for v, b in (("masked", MASKED), ("sparse", args.fit_backend))
                  if v in variants]  # fmt: skip
    if "bsr" in variants:
        blocks = ticket_from_model(base, spec, dict(_masks(base, block_kind, sparsity, args.seed).items()))
        cases.append(("bsr", block_kind, blocks, BSR_BACKEND))
    return cases


@dataclass
class _FitStepSize:
    """One image size of ``--fit-step``: the observation and ground truth every case fits, the results, and the
    dense rows (by label) every speedup is measured against."""

    results: Results
    size: int
    obs: Observation
    clean: torch.Tensor
    device: torch.device
    iters: int
    dense: dict[str, dict] = field(default_factory=dict)

    def measure(self, ticket: Ticket, backend: str, capture: str) -> dict:
        """The fit's own per-step times over ``iters`` iterations, per-step launches and conv / other ms from the
        profiler (:data:`FIT_WARMUP`, :data:`FIT_PROFILED`), and the restored image (``output``)."""

        def fit_for(iters: int) -> FitResult:
            config = FitConfig(iters=iters, log_every=iters, device=str(self.device), backend=backend, capture=capture)
            return fit(ticket, self.obs, config, gt=self.clean)

        cuda = self.device.type == "cuda"
        res = fit_for(self.iters)
        short = _profile_fit(lambda: fit_for(FIT_WARMUP), cuda)
        long = _profile_fit(lambda: fit_for(FIT_WARMUP + FIT_PROFILED), cuda)
        per_step = {k: max(0.0, (long[k] - short[k]) / FIT_PROFILED) for k in short}
        return {"step_ms": res.step_ms, "step_ms_median": res.step_ms_median, **per_step, "output": res.output}

    def add_case(self, sparsity: float, case: FitCase, captured: str) -> None:
        """``case``'s rows, eager then ``captured``: times, speedups over the dense rows, and the captured fit's
        largest difference to the eager fit's image. A failing fit becomes an error row."""
        variant, kind, ticket, backend = case
        eager_out = None
        for capture in ("off", captured):
            label = f"{variant}_{'eager' if capture == 'off' else 'captured'}"
            try:
                m = self.measure(ticket, backend, capture)
            except Exception as exc:  # one failing variant must not lose the others' numbers
                self.results.add({"size": self.size, "sparsity": sparsity, "variant": label, "capture": capture,
                                  "error": f"{type(exc).__name__}: {exc}"[:300]})  # fmt: skip
                continue
            out = m.pop("output")
            if sparsity <= 0:
                self.dense[label] = m
            row = {"size": self.size, "mask": kind, "sparsity": sparsity, "variant": label, "backend": backend,
                   "capture": capture}  # fmt: skip
            row.update({k: round(v, 4) for k, v in m.items()})
            for base_label in ("dense_eager", "dense_captured"):
                if base_label in self.dense:
                    # medians: the mean of the first fit on a card carries its one-time costs (CUDA
                    # context, cuDNN heuristics, Triton compiles): dense eager at 256 px on an H100,
                    # 2026-11-27, mean 182.3 ms per step against a median of 17.0 ms
                    ratio = self.dense[base_label]["step_ms_median"] / m["step_ms_median"]
                    row[f"speedup_vs_{base_label}"] = round(ratio, 3)
            if eager_out is None:
                eager_out = out
            else:
                row["max_abs_diff_vs_eager"] = float((out - eager_out).abs().max())
            self.results.add(row)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def run_fit_step(args: argparse.Namespace) -> Results:
    """The engine's whole fitting step (``lipdeploy.fit.fit``: forward, backward, Adam, average, PSNR tracking,
    backtracking) per size x sparsity: dense / masked / sparse / bsr network, eager (``capture="off"``) vs captured
    (``capture="cuda-graph"``; ``"sync-free"`` on CPU, where nothing is captured).

    Sparsities run in the order given (most important first: rows are saved as they come), after the dense rows
    every speedup is measured against. ``masked`` (the masked reference network) and ``sparse`` (``--fit-backend``)
    fit the first ``--masks`` kind; ``bsr`` fits a ``--block-mask`` ticket on backend "triton-bsr" (mask
    ``block-*``, backend ``triton-bsr``: the rows ``gpu.verdict`` reads for its block fitting-step targets).

    ``step_ms`` is the fit's own per-step time (``FitResult.step_ms``: loop time over iterations, setup and capture
    excluded). Per-step launches and conv / other ms come from the profiler as the difference between a fit of
    ``W + P`` and one of ``W`` iterations, divided by ``P``: setup, warm-up and capture cancel out.
    ``max_abs_diff_vs_eager`` checks that the captured fit restored the same image.
    """
    dev = torch.device(getattr(args, "device", "cuda"))
    cuda = dev.type == "cuda"
    gpu = torch.cuda.get_device_name() if cuda else "cpu (smoke test only)"
    keys = ("fit_iters", "seed", "channels", "levels", "fit_backend", "fit_variants", "block_mask")
    settings = {k: getattr(args, k, None) for k in keys}
    results = Results(args.output, script_environment(gpu=gpu, mode="fit-step", **settings), printer=_print_fit)
    spec = _spec(args)
    captured = "cuda-graph" if cuda else "sync-free"
    variants = getattr(args, "fit_variants", None) or FIT_VARIANTS
    block_kind = getattr(args, "block_mask", "block-random")
    for size in args.sizes:
        torch.manual_seed(args.seed)
        base = spec.build().train()
        clean = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(1))
        at_size = _FitStepSize(results, size, simulate(Denoise(), clean, seed=0), clean, dev, args.fit_iters)
        dense_ticket = ticket_from_model(base, spec, dict(Mask.ones_like(base).items()))
        for sp in dict.fromkeys([0.0, *(s for s in args.sparsities if s > 0)]):  # dense first, then as given
            for case in _fit_cases(base, spec, sp, args, dense_ticket, variants, block_kind):
                at_size.add_case(sp, case, captured)
    return results


def _print_fit(row: dict) -> None:
    if "error" in row:
        print(f"{row['size']:>5} {row['sparsity']:>6.0%} {row['variant']:>16}  error: {row['error']}")
        return
    print(
        f"{row['size']:>5} {row['sparsity']:>6.0%} {row['variant']:>16} step {row['step_ms_median']:>9.3f} ms  "
        f"conv {row['conv_ms']:>8.3f}  other {row['other_ms']:>8.3f}  launches {row['launches']:>7.1f}  "
        f"x dense eager {row.get('speedup_vs_dense_eager', float('nan')):>6.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = parser("lipdeploy.bench.gpu.network", __doc__, device="cuda", channels=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[256])
    p.add_argument("--levels", type=int, default=None, help="smoke tests: the network with this many scales (paper: 5)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--masks", nargs="+", default=["imp", "random"], choices=list(MASK_KINDS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--fit-steps", type=int, default=0, help="fit the dense network this many Adam steps before pruning")
    p.add_argument("--rep", type=int, default=200, help="do_bench time budget per measurement (ms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fit-step",
        action="store_true",
        help="instead: the engine's fitting step, eager vs captured (CUDA graph), with launch counts",
    )
    p.add_argument("--fit-iters", type=int, default=100, help="--fit-step: iterations per timed fit")
    p.add_argument("--fit-backend", default="auto", help="--fit-step: the sparse variant's backend (fit's backend=)")
    p.add_argument(
        "--fit-variants",
        nargs="+",
        default=list(FIT_VARIANTS),
        choices=list(FIT_VARIANTS),
        help="--fit-step: what runs at each sparsity besides the dense reference (bsr: a block ticket on triton-bsr)",
    )
    p.add_argument(
        "--block-mask",
        default="block-random",
        choices=[k for k in MASK_KINDS if k.startswith("block")],
        help="--fit-step: the bsr variant's 16x16 block mask",
    )
    args = p.parse_args(argv)
    why = needs_gpu("gpu.network", args.device)
    if why:
        return refuse(why)
    (run_fit_step(args) if args.fit_step else run(args)).finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
