"""Whole-network GPU benchmark: the paper's DIP network, dense vs masked vs compacted vs Triton-sparse.

``python -m lipdeploy.bench.gpu_network -o bench/results/h100.json``

For each image size, mask kind and sparsity it times (median ms, ``triton.testing.do_bench``) one forward pass and one
fitting step (MSE loss, backward, Adam) of:

- ``dense``: the unpruned network, PyTorch defaults (cuDNN, TF32 allowed as PyTorch allows it by default) -- the
  baseline users actually run; speedups are relative to it, measured in the same run;
- ``masked``: the same network with the mask's zeros (what a LIP fit runs today; the fitting step includes the
  gradient-masking hooks that keep pruned weights at zero);
- ``compact``: :func:`lipdeploy.compact` (exact channel compaction, dense cuDNN convs);
- ``sparse``: :func:`lipdeploy.sparsify` with ``backend="triton"`` (every conv on the sparse kernels);
- ``auto``: :func:`lipdeploy.sparsify` with ``backend="auto"`` (per layer, the fastest of cuDNN and the sparse kernels
  in both formats x a few kernel configs, tuned for the forward pass for the forward rows and for forward + backward
  for the fitting-step rows; ``build_s`` includes that one-off tuning).

Masks: ``imp`` = global L1 magnitude pruning over all conv weights, as the paper's IMP prunes, applied to the
*initial* weights (a stand-in: real IMP prunes fitted weights after each round; ``--fit-steps N`` fits the dense
network N Adam steps on a random image first, then prunes by magnitude of those weights); ``random`` = uniform random
at the same density in every layer. BatchNorm: per-image statistics (DIP's semantics). Without CUDA it prints one
line and exits with status 2. Nothing runs at import.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

VARIANTS = ("dense", "masked", "compact", "sparse", "auto")


def _masks(model, kind: str, sparsity: float, seed: int):
    import torch

    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 4}
    if sparsity <= 0:
        return {n: torch.ones_like(w) for n, w in weights.items()}
    if kind == "imp":
        mags = torch.cat([w.abs().flatten() for w in weights.values()])
        k = int(round(sparsity * mags.numel()))
        thr = torch.kthvalue(mags.float().cpu(), max(1, k)).values.to(mags.device)
        return {n: (w.abs() > thr).float() for n, w in weights.items()}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return {n: (torch.rand(w.shape, generator=gen) >= sparsity).float().to(w.device) for n, w in weights.items()}


def _fit_dense(model, x, steps: int, seed: int) -> None:
    import torch

    if steps <= 0:
        return
    gen = torch.Generator(device="cpu").manual_seed(seed)
    target = torch.rand((1, 3, *x.shape[2:]), generator=gen).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), target).backward()
        opt.step()


def _step_fn(net, x, target, hooks_masks=None):
    import torch

    from lipdeploy.masks import freeze_pruned

    if hooks_masks is not None:
        freeze_pruned(net, hooks_masks)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x), target).backward()
        opt.step()

    return step


def _bench(fn, rep: int, dev) -> float:
    from .timing import device_ms

    return device_ms(fn, dev, rep_ms=rep, warmup_ms=max(25, rep // 4))


def run(args: argparse.Namespace) -> list[dict]:
    import torch
    import triton

    from lipdeploy.compact import analyze_compaction
    from lipdeploy.networks import SkipSpec, make_input
    from lipdeploy.sparse import sparse_layers, sparsify
    from lipdeploy.ticket import ticket_from_model

    dev = torch.device(getattr(args, "device", "cuda"))
    gpu = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (smoke test only)"
    meta = {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "python": platform.python_version(),
    }
    c = getattr(args, "channels", None)
    # --channels: the same network, narrower (smoke tests on CPU, where the Triton interpreter is slow)
    spec = SkipSpec(channels_down=(c,) * 5, channels_up=(c,) * 5) if c else SkipSpec()
    rows: list[dict] = []
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
        rows.append(_row(meta, size, "-", 0.0, "dense", t_dense_fwd, t_dense_step, t_dense_fwd, t_dense_step))
        _print(rows[-1])
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
                        fwd_net, step_net, hook_masks = _variant(variant, ticket, dev, x, sparsify)
                    except Exception as exc:  # one failing variant must not lose the others' numbers
                        rows.append({**meta, "size": size, "mask": kind, "sparsity": sp, "variant": variant,
                                     "error": f"{type(exc).__name__}: {exc}"[:300]})  # fmt: skip
                        print(f"{size:>5} {kind:>7} {sp:>6.0%} {variant:>8}  error: {rows[-1]['error']}")
                        continue
                    build_s = time.perf_counter() - t0
                    with torch.no_grad():
                        t_fwd = _bench(lambda n=fwd_net, x=x: n(x), args.rep, dev)
                    if any(p.requires_grad for p in step_net.parameters()):
                        t_step = _bench(_step_fn(step_net, x, target, hook_masks), args.rep, dev)
                    else:  # compaction proved the output constant: nothing left to fit
                        t_step = None
                    row = _row(meta, size, kind, sp, variant, t_fwd, t_step, t_dense_fwd, t_dense_step)
                    row.update(extra, build_s=round(build_s, 3))
                    if variant in ("sparse", "auto"):
                        row["sparse_layers"] = len(sparse_layers(fwd_net))
                        row["sparse_layers_fit"] = len(sparse_layers(step_net))
                        row["sparse_choices_fit"] = _choices(step_net)
                    rows.append(row)
                    _print(row)
                    _save(args.output, rows, complete=False)  # a cut-off run keeps what it measured
                    del fwd_net, step_net
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
    return rows


def _variant(variant: str, ticket, dev, x, sparsify):
    from lipdeploy.compact import compact

    if variant == "masked":
        return ticket.build().to(dev), ticket.build().to(dev), {k: v.to(dev) for k, v in ticket.masks.items()}
    if variant == "compact":
        return compact(ticket).to(dev), compact(ticket).to(dev), None
    if variant == "sparse":
        net = sparsify(compact(ticket).to(dev), backend="triton")
        return net, sparsify(compact(ticket).to(dev), backend="triton"), None
    if variant == "auto":
        fwd = sparsify(compact(ticket).to(dev), backend="auto", example_input=x, workload="forward")
        return fwd, sparsify(compact(ticket).to(dev), backend="auto", example_input=x, workload="fit"), None
    raise ValueError(variant)


def _save(path: Path | None, rows: list[dict], complete: bool) -> None:
    if path is not None:
        from lipdeploy.fileio import atomic_write_json

        atomic_write_json(path, {"rows": rows, "complete": complete})


def _choices(net) -> dict[str, str]:
    """Layer -> "format:config" for each conv that runs on the sparse kernels (what the dispatcher picked)."""
    from lipdeploy.kernels import SparseConv2d

    return {
        name: f"{m.format}:{m.config.tag if m.config is not None else 'default'}"
        for name, m in net.named_modules()
        if isinstance(m, SparseConv2d)
    }


def _row(meta, size, kind, sp, variant, t_fwd, t_step, d_fwd, d_step) -> dict:
    return {
        **meta,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lipdeploy.bench.gpu_network", description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, help="write the JSON rows here")
    p.add_argument("--sizes", type=int, nargs="+", default=[256])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--masks", nargs="+", default=["imp", "random"], choices=["imp", "random"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--fit-steps", type=int, default=0, help="fit the dense network this many Adam steps before pruning")
    p.add_argument("--rep", type=int, default=200, help="do_bench time budget per measurement (ms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, help=argparse.SUPPRESS)  # narrower network, for smoke tests
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": smoke test of the harness only
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_network: needs a CUDA GPU (none found); nothing measured", file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("gpu_network: needs triton (pip install 'lipdeploy[triton]')", file=sys.stderr)
        return 2
    rows = run(args)
    if args.output:
        _save(args.output, rows, complete=True)
        print(f"wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
