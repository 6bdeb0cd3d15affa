"""The fitting engine: restore an image with a deep image prior (dense DIP, deep decoder or any ticket).

Deep image priors restore by fitting: the network's weights are optimised, from the ticket's initial weights and under
its fixed mask, until the degraded output matches the observation. The loop is the paper's (DOMAIN.md):

- Adam, lr 0.01, MSE through the task's forward operator;
- input = 32-channel uniform noise U(0, 0.1), perturbed every step by Gaussian noise (std 1/30 for denoising, 0.03 for
  inpainting and super-resolution);
- output smoothed by an exponential average (weight 0.99): that average is *the* output, measured and returned.
  ``ema_mode="paper"`` (the library default, the paper code's): the average starts at the first (untrained) output,
  which keeps weight ``0.99^(t-1)`` after t updates: 37% after 100, 5% after 300, so a short fit returns mostly the
  untrained network (measured below).
  ``ema_mode="debiased"`` (the CLI's default): the bias-corrected average Adam uses for its moments,
  ``z_t / (1 - 0.99^t)`` with ``z`` started at zero, i.e. the weighted mean of the outputs seen so far with weights
  proportional to ``0.99^(t-s)``: the first output's weight is ``0.01 / (1 - 0.99^t)`` (1.6% after 100 updates).
  Measured (coffee, 64x64 crop, sigma 25, 100 iterations, noisy input 20.6 dB): dense DIP paper 18.8 dB, debiased
  28.8 dB, no average 29.6 dB; deep decoder 17.4 / 25.6 / 26.0 dB. Both agree after a few thousand iterations (at
  the paper's 3000, 0.99^2999 ~ 1e-13), so the paper's numbers do not depend on the choice;
  ``FitResult.initial_output_weight`` says how much of the untrained output is left;
- backtracking: when the PSNR of the degraded output to the observation drops by more than 5 dB since the last check,
  the last good weights are restored and the step is skipped (the original code's guard against Adam blow-ups).
  The check and the snapshot run every ``check_every`` steps (default 1, as the original code does nearly every step);
  the snapshot is a ``_foreach_copy_`` into preallocated buffers, no allocation.
- DIP semantics: BatchNorm stays in training mode (per-image statistics) throughout.
- Pruned weights are exactly zero and stay so: their gradients are masked (``freeze_pruned``), so Adam's moments for
  them stay zero and its update is exactly 0.

With ground truth, PSNR is tracked every step on the device (a 0-d tensor, no host sync) and the best output is kept
with ``torch.where``: the result reports the best over iterations (the paper's oracle early-stop number) and the final
iteration's (what a user without ground truth gets), labelled as such.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .backends import AUTO, BACKENDS, sparsify
from .captured import fit_captured, resolve_capture
from .errors import InputError
from .fit_result import BEST_LABEL, FINAL_LABEL, FitResult, finish_result, gt_psnr_t, progress_bar, state_copy
from .masks import Mask, Masks, apply_masks_, freeze_pruned
from .networks import ArchSpec, make_input, prunable_names
from .tasks import Observation, Task, make_task
from .ticket import Ticket

FitBackend = str
"""How a fit runs the network: "auto", "dense", "sparse" or a name of ``lipdeploy.backends.BACKENDS`` (see
:attr:`FitConfig.backend` and :func:`fit_backends`)."""

SPARSE = "sparse"
"""Compacted network, per-layer dispatch over the registered backends (``sparsify(..., "auto")``) on any device."""

EMA_MODES = ("paper", "debiased")
"""How the output average starts: see the module docstring and :attr:`FitConfig.ema_mode`."""


@dataclass
class FitConfig:
    """Hyperparameters of one fit; the defaults are the paper's. ``input_noise_std=None`` takes the task's default."""

    iters: int = 3000
    lr: float = 0.01
    input_noise_std: float | None = None
    input_scale: float = 0.1
    ema: float = 0.99
    # "paper": the average starts at the first output (the paper code's); "debiased": bias-corrected as in Adam (module
    # docstring). The library default stays the paper's so that recorded benchmarks reproduce bit for bit.
    ema_mode: str = "paper"
    backtrack_db: float = 5.0
    check_every: int = 1
    seed: int = 0
    log_every: int = 50
    device: str = "cpu"
    # "auto": the sparse kernels on CUDA for a pruned network (per-layer dispatch: never slower than cuDNN), the masked
    # dense network on CPU; "sparse": compacted + per-layer dispatch on any device (dense convs on CPU); "dense": the
    # masked reference network; another name of lipdeploy.backends.BACKENDS ("triton-csr", "triton-kernel",
    # "reference"): compacted, every conv on that backend.
    backend: FitBackend = "auto"
    # "off": this module's eager step; "cuda-graph": the step captured once in a CUDA graph and replayed; "compile":
    # torch.compile of it; "auto": cuda-graph on CUDA, off elsewhere; "sync-free": the captured step run eagerly
    # (lipdeploy/captured.py; same result as the eager step within float tolerance)
    capture: str = "off"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prepare_model(
    model_or_ticket: nn.Module | Ticket, masks: Masks | None, arch: ArchSpec | None
) -> tuple[nn.Module, Masks | None, ArchSpec | None]:
    if isinstance(model_or_ticket, Ticket):
        ticket = model_or_ticket
        return ticket.build("init", bn="image"), (masks if masks is not None else ticket.masks), arch or ticket.arch
    model = model_or_ticket
    if masks is not None:
        params = dict(model.named_parameters())
        shapes = {n: params[n].shape for n in prunable_names(model)}
        masks = Mask.validated(masks, shapes)
    return model, masks, arch


def fit_backends() -> list[str]:
    """The values :attr:`FitConfig.backend` accepts: "auto", "sparse", and the registered backends' names."""
    return [AUTO, SPARSE, *sorted(BACKENDS)]


def _network_backend(config: FitConfig, device: torch.device, masks: Masks | None) -> str | None:
    """What ``sparsify`` runs the compacted network on ("auto" or a registered backend), or None for the masked
    reference network (backend "dense", and "auto" on CPU or for an unpruned network)."""
    if config.backend == SPARSE:
        return AUTO
    if config.backend == "dense":
        return None
    if config.backend != AUTO:
        return config.backend
    if device.type != "cuda" or masks is None:
        return None
    return AUTO if any(not bool(m.all()) for m in masks.values()) else None  # "auto" on CUDA: only a pruned net gains


def _compacted_network(
    model_or_ticket: nn.Module | Ticket, backend: str, example_input: torch.Tensor
) -> tuple[nn.Module, list[torch.utils.hooks.RemovableHandle]]:
    """The network compacted and its convs on ``backend`` (``lipdeploy.sparsify``; "auto": per-layer dispatch on CUDA).

    Convs left dense (faster on cuDNN, or on CPU) keep their mask through gradient hooks, so pruned weights stay zero;
    sparse convs hold only their kept weights. The fitted state is then in the compacted layout, not the reference
    one (``FitResult.state_dict`` is that of the compacted network).
    """
    try:
        net = sparsify(model_or_ticket, backend, example_input=example_input).to(example_input.device)
    except (TypeError, ValueError, NotImplementedError, RuntimeError, ImportError) as exc:
        raise InputError(None, f"backend {backend!r} cannot run this network: {exc}") from None
    handles = []
    for key, layer in net.convs.items():
        conv = net.ops[key] if key in net.ops else None
        if isinstance(conv, nn.Conv2d) and not bool(layer.mask.all()):
            m = layer.mask.to(conv.weight.device, conv.weight.dtype)
            handles.append(conv.weight.register_hook(lambda grad, m=m: grad * m))
    return net.train(), handles


def fit(
    model_or_ticket: nn.Module | Ticket,
    observation: Observation,
    config: FitConfig | None = None,
    *,
    gt: torch.Tensor | None = None,
    task: Task | None = None,
    masks: Masks | None = None,
    arch: ArchSpec | None = None,
    net_input: torch.Tensor | None = None,
    progress: bool = False,
    description: str = "fitting",
    snapshot_at: Iterable[int] = (),
) -> FitResult:
    """Fit a deep image prior to ``observation`` and return the restored image with its metrics.

    ``model_or_ticket``: a :class:`Ticket` (built from its initial weights, under its masks) or a reference-layout
    module (fitted in place; give ``arch`` or ``net_input`` so the noise code can be made, and ``masks`` to keep
    weights pruned). ``gt``: the clean image, for PSNR/SSIM. ``snapshot_at``: iterations k at which to record the
    weights (after k steps; 0 = the initial weights), for rewinding.

    Several images (the paper's multi-image fit): ``observation`` a :class:`lipdeploy.multi_image.MultiObservation`
    (loss: the sum over images of the per-image MSEs) and ``gt`` ``[n, 3, H, W]``; the PSNR tracked, the best output
    chosen and the PSNR/SSIM reported are then the mean over images (:func:`gt_psnr_t`), with the eager step only.
    """
    config = config or FitConfig()
    task = task or make_task(observation.task, **observation.params)
    if config.iters < 1:
        raise InputError(None, f"iterations must be >= 1, got {config.iters}")
    if config.ema_mode not in EMA_MODES:
        raise InputError(None, f"ema_mode must be one of {', '.join(EMA_MODES)}; got {config.ema_mode!r}")
    if config.backend not in fit_backends():
        raise InputError(None, f"backend must be one of {', '.join(fit_backends())}; got {config.backend!r}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "device cuda: no CUDA device is available")
    capture = resolve_capture(config.capture, device)
    if gt is not None and gt.shape[0] > 1 and capture != "off":  # the captured step tracks one ground truth
        raise InputError(None, f"several ground-truth images need the eager step (capture off), not {capture!r}")
    model, masks, arch = _prepare_model(model_or_ticket, masks, arch)
    height, width = observation.out_size
    if net_input is None:
        if arch is None:
            raise ValueError("fit needs arch= (or net_input=) to make the input noise for a bare module")
        if height % arch.stride or width % arch.stride:
            raise InputError(
                None, f"output size {width}x{height} is not a multiple of the network stride {arch.stride}"
            )
        net_input = make_input(arch, height, width, seed=config.seed, scale=config.input_scale)
    std = task.input_noise_std if config.input_noise_std is None else config.input_noise_std

    model.to(device).train()  # DIP: BatchNorm always uses the current image's statistics
    handles = []
    if masks is not None:
        masks = {n: m.to(device) for n, m in masks.items()}
        apply_masks_(model, masks)
        sparse_only = {n: m for n, m in masks.items() if not bool(m.all())}  # dense layers need no hook
        handles = freeze_pruned(model, sparse_only)
    backend = _network_backend(config, device, masks)
    if backend is not None:
        source = model_or_ticket if isinstance(model_or_ticket, Ticket) else model
        model, sparse_handles = _compacted_network(source, backend, net_input.to(device))
        handles += sparse_handles
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if capture != "off":  # the same loop with the step captured and replayed (lipdeploy/captured.py)
        return fit_captured(
            model, observation, task, config, mode=capture, net_input=net_input.to(device), input_noise_std=std,
            gt=gt, handles=handles, snapshot_at=snapshot_at, progress=progress, description=description,
        )  # fmt: skip

    obs = observation.to(device)
    gt_d = gt.to(device) if gt is not None else None
    x0 = net_input.to(device)
    noise = torch.empty_like(x0)
    gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _adam(params, config.lr, device)
    snap = [p.detach().clone() for p in params]
    snapshot_at = set(int(k) for k in snapshot_at)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    ema = config.ema
    debiased = config.ema_mode == "debiased"
    ema_out: torch.Tensor | None = None
    ema_updates = 0  # outputs averaged so far
    init_weight = 1.0  # weight of the first output in ema_out
    best_img: torch.Tensor | None = None
    best_psnr = torch.tensor(-math.inf, device=device)
    curve = torch.full((config.iters,), -math.inf, device=device) if gt_d is not None else None
    last_fid: float | None = None
    backtracks = 0
    history: list[dict[str, float]] = []
    step_times: list[float] = []
    bar = progress_bar(progress, description, config.iters)
    bar_task = bar.add_task(description, total=config.iters, stats="") if bar else None
    t_start = time.perf_counter()
    try:
        if bar:
            bar.start()
        for i in range(config.iters):
            t0 = time.perf_counter()
            if i in snapshot_at:
                snapshots[i] = state_copy(model)
            x = torch.add(x0, noise.normal_(generator=gen), alpha=std) if std > 0 else x0
            out = model(x)
            loss = obs.loss(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            restored = False
            with torch.no_grad():
                od = out.detach()
                fid_t = None
                if config.backtrack_db > 0 and i % config.check_every == 0:
                    fid_t = obs.fidelity_psnr_t(od)
                    fid = float(fid_t)  # the one per-step host sync (free on CPU)
                    if last_fid is not None and (fid - last_fid < -config.backtrack_db or not math.isfinite(fid)):
                        torch._foreach_copy_(params, snap)
                        backtracks += 1
                        restored = True
                    else:
                        torch._foreach_copy_(snap, [p.detach() for p in params])
                        last_fid = fid
                if not restored:
                    ema_updates += 1
                    if ema_out is None or ema <= 0:
                        ema_out = od.clone()
                        init_weight = 1.0 if ema_updates == 1 else 0.0
                    elif debiased:  # m_t = m_{t-1} + w_t (o_t - m_{t-1}), w_t = (1 - b) / (1 - b^t): z_t / (1 - b^t)
                        w = (1.0 - ema) / (1.0 - ema**ema_updates)
                        ema_out.add_(od - ema_out, alpha=w)
                        init_weight *= 1.0 - w
                    else:
                        ema_out.mul_(ema).add_(od, alpha=1.0 - ema)
                        init_weight *= ema
                    if gt_d is not None:
                        p = gt_psnr_t(task, ema_out, gt_d)
                        curve[i] = p
                        better = p > best_psnr
                        best_psnr = torch.maximum(best_psnr, p)
                        best_img = ema_out.clone() if best_img is None else torch.where(better, ema_out, best_img)
            if not restored:
                opt.step()
            step_times.append(time.perf_counter() - t0)
            last = i == config.iters - 1
            if (i + 1) % config.log_every == 0 or last:
                entry = {"iter": i + 1, "seconds": time.perf_counter() - t_start, "loss": float(loss.detach())}
                entry["psnr_obs"] = float(fid_t if fid_t is not None else obs.fidelity_psnr_t(od))
                if curve is not None:
                    entry["psnr"] = float(curve[: i + 1].max())  # best so far; cheap at log steps only
                    entry["psnr_now"] = float(curve[i]) if math.isfinite(float(curve[i])) else None
                history.append(entry)
                if bar:
                    stats = f"loss {entry['loss']:.5f}  PSNR(obs) {entry['psnr_obs']:.2f}"
                    if curve is not None and entry["psnr_now"] is not None:
                        stats += f"  PSNR {entry['psnr_now']:.2f} (best {entry['psnr']:.2f})"
                    bar.update(bar_task, completed=i + 1, stats=stats)
            elif bar:
                bar.update(bar_task, completed=i + 1)
        if config.iters in snapshot_at:
            snapshots[config.iters] = state_copy(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        if bar:
            bar.stop()
        for h in handles:
            h.remove()
    seconds = time.perf_counter() - t_start

    return finish_result(
        task=task,
        config=config,
        observation=observation,
        obs=obs,
        gt=gt,
        ema_out=ema_out,
        best_img=best_img,
        best_psnr=best_psnr,
        curve=curve,
        history=history,
        seconds=seconds,
        step_times=step_times,
        backtracks=backtracks,
        model=model,
        snapshots=snapshots,
        input_noise_std=std,
        initial_output_weight=init_weight,
    )


def _adam(params: list[torch.nn.Parameter], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam with the fused kernel where PyTorch has one (CPU since 2.4, CUDA): same update, one pass over the weights.

    A zero gradient still gives an exactly zero update, so pruned weights stay zero (tested). Whole-step effect
    (``python -m lipdeploy.bench.cpu.fit_step``, 2-core AMD EPYC, 1 thread, paper net): the engine's whole step (with
    backtracking, averaging and PSNR tracking) costs 0.99x the plain loop's at 64x64 and 1.005x at 128x128, the same.
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def simulate(task: Task, clean: torch.Tensor, seed: int = 0) -> Observation:
    """The seeded synthetic observation of ``clean`` for ``task`` (same seed, same observation)."""
    return task.degrade(clean, torch.Generator().manual_seed(seed))


__all__ = ["BEST_LABEL", "EMA_MODES", "FINAL_LABEL", "FitConfig", "FitResult", "fit", "fit_backends", "simulate"]
