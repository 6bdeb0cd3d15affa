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
- Pruned weights are exactly zero and stay so: their gradients are masked after backward, in one fused pass
  (:class:`lipdeploy.fit_result.PrunedGradients`), so Adam's moments for them stay zero and its update is exactly 0.

With ground truth, PSNR is tracked every step on the device (a 0-d tensor, no host sync) and the best output is kept
with ``torch.where``: the result reports the best over iterations (the paper's oracle early-stop number) and the final
iteration's (what a user without ground truth gets), labelled as such.

One loop, two steps (:class:`lipdeploy.fit_result.Step`): :class:`EagerStep` takes the decisions above on the host
(this module); :class:`lipdeploy.captured.CapturedStep` takes them on the device, so that the step can be captured in a
CUDA graph (``FitConfig.capture``). The loop around either is :func:`fit`'s: iterations, weight snapshots, history at
log steps, per-step times, the progress bar and the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from torch import nn

from .backends import AUTO, BACKENDS, sparsify
from .captured import captured_step, resolve_capture
from .errors import InputError
from .fit_config import EMA_MODES, FitConfig, check_settings
from .fit_result import (
    BEST_LABEL,
    FINAL_LABEL,
    FitResult,
    PrunedGradients,
    Step,
    finish_result,
    gt_psnr_t,
    new_adam,
    progress_bar,
    state_copy,
)
from .masks import Mask, Masks, apply_masks_
from .networks import ArchSpec, make_input, prunable_names
from .tasks import Observation, Task, make_task
from .ticket import Ticket

FitBackend = str
"""How a fit runs the network: "auto", "masked", "sparse" or a name of ``lipdeploy.backends.BACKENDS`` (see
:attr:`FitConfig.backend` and :func:`fit_backends`)."""

MASKED = "masked"
"""The uncompacted network under its masks, on any device: the reference (its fitted weights keep the reference
layout, which pruning ranks), pruned weights held at zero by masking their gradients."""

SPARSE = "sparse"
"""Compacted network, per-layer dispatch over the registered backends (``sparsify(..., "auto")``) on any device."""


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
    """The values :attr:`FitConfig.backend` accepts: "auto", "masked", "sparse", and the registered backends' names
    ("dense" among them: the compacted network, every conv PyTorch's)."""
    return [AUTO, MASKED, SPARSE, *sorted(BACKENDS)]


def _network_backend(config: FitConfig, device: torch.device, masks: Masks | None) -> str | None:
    """What ``sparsify`` runs the compacted network on ("auto" or a registered backend), or None for the masked
    reference network (backend "masked", and "auto" on CPU or for an unpruned network)."""
    if config.backend == SPARSE:
        return AUTO
    if config.backend == MASKED:
        return None
    if config.backend != AUTO:
        return config.backend
    if device.type != "cuda" or masks is None:
        return None
    return AUTO if any(not bool(m.all()) for m in masks.values()) else None  # "auto" on CUDA: only a pruned net gains


def _compacted_network(
    model_or_ticket: nn.Module | Ticket, backend: str, example_input: torch.Tensor, pruned: PrunedGradients
) -> nn.Module:
    """The network compacted and its convs on ``backend`` (``lipdeploy.sparsify``; "auto": per-layer dispatch on CUDA).

    Convs left dense (faster on cuDNN, or on CPU) keep their mask through ``pruned`` (their gradients masked after
    backward), so pruned weights stay zero; sparse convs hold only their kept weights. The fitted state is then in
    the compacted layout, not the reference one (``FitResult.state_dict`` is that of the compacted network).
    """
    try:
        net = sparsify(model_or_ticket, backend, example_input=example_input).to(example_input.device)
    except (TypeError, ValueError, NotImplementedError, RuntimeError, ImportError) as exc:
        raise InputError(None, f"backend {backend!r} cannot run this network: {exc}") from None
    for key, layer in net.convs.items():
        conv = net.ops[key] if key in net.ops else None
        if isinstance(conv, nn.Conv2d):
            pruned.add(conv.weight, layer.mask)
    return net.train()


def _network(
    model_or_ticket: nn.Module | Ticket,
    model: nn.Module,
    masks: Masks | None,
    config: FitConfig,
    device: torch.device,
    net_input: torch.Tensor,
) -> tuple[nn.Module, PrunedGradients]:
    """The network the fit trains (the masked one, or compacted on a backend), on ``device``, its pruned weights zero,
    and the gradients to mask after each backward pass."""
    model.to(device).train()  # DIP: BatchNorm always uses the current image's statistics
    pruned = PrunedGradients()
    if masks is not None:
        masks = {n: m.to(device) for n, m in masks.items()}
        apply_masks_(model, masks)
        pruned = PrunedGradients.of(model, masks)
    backend = _network_backend(config, device, masks)
    if backend is not None:
        source = model_or_ticket if isinstance(model_or_ticket, Ticket) else model
        pruned = PrunedGradients()  # the compacted network's own weights
        model = _compacted_network(source, backend, net_input.to(device), pruned)
    return model, pruned


def _check(config: FitConfig, gt: torch.Tensor | None) -> tuple[torch.device, str]:
    """``config`` checked (again: a dataclass can be changed after it was made) with what it needs of this machine;
    the device and the resolved capture mode."""
    check_settings(config)
    if config.backend not in fit_backends():
        raise InputError(None, f"backend must be one of {', '.join(fit_backends())}; got {config.backend!r}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "device cuda: no CUDA device is available")
    capture = resolve_capture(config.capture, device)
    if gt is not None and gt.shape[0] > 1 and capture != "off":  # the captured step tracks one ground truth
        raise InputError(None, f"several ground-truth images need the eager step (capture off), not {capture!r}")
    return device, capture


def _make_input(
    net_input: torch.Tensor | None, arch: ArchSpec | None, observation: Observation, config: FitConfig
) -> torch.Tensor:
    if net_input is not None:
        return net_input
    height, width = observation.out_size
    if arch is None:
        raise ValueError("fit needs arch= (or net_input=) to make the input noise for a bare module")
    if height % arch.stride or width % arch.stride:
        raise InputError(None, f"output size {width}x{height} is not a multiple of the network stride {arch.stride}")
    return make_input(arch, height, width, seed=config.seed, scale=config.input_scale)


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
    device, capture = _check(config, gt)
    model, masks, arch = _prepare_model(model_or_ticket, masks, arch)
    net_input = _make_input(net_input, arch, observation, config)
    std = task.input_noise_std if config.input_noise_std is None else config.input_noise_std
    model, pruned = _network(model_or_ticket, model, masks, config, device, net_input)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    obs = observation.to(device)
    gt_d = gt.to(device) if gt is not None else None
    x0 = net_input.to(device)
    gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    step: Step
    if capture == "off":
        step = EagerStep(model, obs, task, x0, config, input_noise_std=std, generator=gen, gt=gt_d, pruned=pruned)
    else:  # the same step with its decisions on the device, captured and replayed (lipdeploy/captured.py)
        step = captured_step(
            model, obs, task, config, mode=capture, net_input=x0, input_noise_std=std, generator=gen, gt=gt_d,
            pruned=pruned,
        )  # fmt: skip
    history, step_times, snapshots, seconds = _loop(
        step, model, config, device, snapshot_at=snapshot_at, progress=progress, description=description
    )
    return finish_result(
        step, task=task, config=config, observation=observation, obs=obs, gt=gt, history=history, seconds=seconds,
        step_times=step_times, model=model, snapshots=snapshots, input_noise_std=std,
    )  # fmt: skip


def _loop(
    step: Step,
    model: nn.Module,
    config: FitConfig,
    device: torch.device,
    *,
    snapshot_at: Iterable[int],
    progress: bool,
    description: str,
) -> tuple[list[dict[str, float]], list[float], dict[int, dict[str, torch.Tensor]], float]:
    """The fitting loop around ``step``: ``config.iters`` steps, the weights at ``snapshot_at``, a history entry every
    ``config.log_every`` steps and at the last, the progress bar. Returns the history, the per-step seconds, the
    snapshots and the seconds of the whole loop.

    Per-step times: a synchronous step is timed alone; otherwise (a CUDA graph: the host does not wait for each step)
    the time between two log steps, where the host reads the device, is spread evenly over their steps.
    """
    snapshot_at = set(int(k) for k in snapshot_at)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    history: list[dict[str, float]] = []
    step_times: list[float] = []
    bar = progress_bar(progress, description, config.iters)
    bar_task = bar.add_task(description, total=config.iters, stats="") if bar else None
    try:
        step.prepare()
        if bar:
            bar.start()
        t_start = t_sync = time.perf_counter()
        pending = 0
        for i in range(config.iters):
            t0 = time.perf_counter()
            if i in snapshot_at:
                snapshots[i] = state_copy(model)
            step.run()
            if step.synchronous:
                step_times.append(time.perf_counter() - t0)
            else:
                pending += 1
            if (i + 1) % config.log_every == 0 or i == config.iters - 1:
                entry = _log_entry(step, i, t_start)
                if pending:
                    step_times += [(t_start + entry["seconds"] - t_sync) / pending] * pending
                    t_sync, pending = t_start + entry["seconds"], 0
                history.append(entry)
                if bar:
                    bar.update(bar_task, completed=i + 1, stats=_bar_stats(entry))
            elif bar:
                bar.update(bar_task, completed=i + 1)
        if config.iters in snapshot_at:
            snapshots[config.iters] = state_copy(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        if bar:
            bar.stop()
    return history, step_times, snapshots, time.perf_counter() - t_start


def _log_entry(step: Step, i: int, t_start: float) -> dict[str, float]:
    """The history entry after step ``i``: loss, PSNR to the observation, and with ground truth the best PSNR so far
    and this step's (None where backtracking skipped it). Reading the loss is where the host waits for the device."""
    loss = step.loss_value()
    entry = {"iter": i + 1, "seconds": time.perf_counter() - t_start, "loss": loss}
    entry["psnr_obs"] = step.fidelity_value()
    if step.curve is not None:
        entry["psnr"] = float(step.curve[: i + 1].max())  # best so far; cheap at log steps only
        now = float(step.curve[i])
        entry["psnr_now"] = now if math.isfinite(now) else None
    return entry


def _bar_stats(entry: dict[str, float]) -> str:
    stats = f"loss {entry['loss']:.5f}  PSNR(obs) {entry['psnr_obs']:.2f}"
    if entry.get("psnr_now") is not None:
        stats += f"  PSNR {entry['psnr_now']:.2f} (best {entry['psnr']:.2f})"
    return stats


class EagerStep:
    """The paper's step with its decisions on the host (module docstring): perturb the input, forward, loss,
    backward, mask the pruned gradients; then either restore the last good weights and skip the update
    (backtracking) or average the output, track its PSNR and step Adam. A :class:`lipdeploy.fit_result.Step`.

    The backtracking check reads the PSNR to the observation on the host (the one per-step synchronisation; free on
    CPU); several ground-truth images (a multi-image fit) are tracked by their mean PSNR (:func:`gt_psnr_t`).
    """

    synchronous = True

    def __init__(
        self,
        model: nn.Module,
        observation: Observation,
        task: Task,
        net_input: torch.Tensor,
        config: FitConfig,
        *,
        input_noise_std: float,
        generator: torch.Generator,
        gt: torch.Tensor | None,
        pruned: PrunedGradients,
    ) -> None:
        self.model, self.obs, self.task, self.x0, self.gt = model, observation, task, net_input, gt
        self.std, self.gen, self.pruned, self.config = input_noise_std, generator, pruned, config
        self.ema, self.debiased = config.ema, config.ema_mode == "debiased"
        device = net_input.device
        self.noise = torch.empty_like(net_input)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt, _ = new_adam(self.params, config.lr)
        self.snap = [p.detach().clone() for p in self.params]
        self.i = 0
        self.loss: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.fid_t: torch.Tensor | None = None  # the PSNR to the observation, where this step checked it
        self.last_fid: float | None = None
        self.backtracks = 0
        self.ema_out: torch.Tensor | None = None
        self.ema_updates = 0  # outputs averaged so far
        self.init_weight = 1.0  # weight of the first output in ema_out
        self.best_img: torch.Tensor | None = None
        self.best_psnr = torch.tensor(-math.inf, device=device)
        self.curve = torch.full((config.iters,), -math.inf, device=device) if gt is not None else None

    def prepare(self) -> None:
        """Nothing to prepare."""

    def run(self) -> None:
        std = self.std
        x = torch.add(self.x0, self.noise.normal_(generator=self.gen), alpha=std) if std > 0 else self.x0
        out = self.model(x)
        self.loss = self.obs.loss(out)
        self.opt.zero_grad(set_to_none=True)
        self.loss.backward()
        self.pruned()
        with torch.no_grad():
            self.out = out.detach()
            restored = self._backtrack()
            if not restored:
                self._average()
                if self.curve is not None:
                    self._track()
        if not restored:
            self.opt.step()
        self.i += 1

    def _backtrack(self) -> bool:
        """On check steps: restore the last good weights when the PSNR to the observation fell by more than
        ``backtrack_db`` since the last good check, or is not finite (True: the step is skipped); else snapshot."""
        self.fid_t = None
        config = self.config
        if not (config.backtrack_db > 0 and self.i % config.check_every == 0):
            return False
        self.fid_t = self.obs.fidelity_psnr_t(self.out)
        fid = float(self.fid_t)  # the one per-step host sync (free on CPU)
        if self.last_fid is not None and (fid - self.last_fid < -config.backtrack_db or not math.isfinite(fid)):
            torch._foreach_copy_(self.params, self.snap)
            self.backtracks += 1
            return True
        torch._foreach_copy_(self.snap, [p.detach() for p in self.params])
        self.last_fid = fid
        return False

    def _average(self) -> None:
        """The output average: paper (starts at the first output) or debiased (module docstring)."""
        od, ema = self.out, self.ema
        self.ema_updates += 1
        if self.ema_out is None or ema <= 0:
            self.ema_out = od.clone()
            self.init_weight = 1.0 if self.ema_updates == 1 else 0.0
        elif self.debiased:  # m_t = m_{t-1} + w_t (o_t - m_{t-1}), w_t = (1 - b) / (1 - b^t): z_t / (1 - b^t)
            w = (1.0 - ema) / (1.0 - ema**self.ema_updates)
            self.ema_out.add_(od - self.ema_out, alpha=w)
            self.init_weight *= 1.0 - w
        else:
            self.ema_out.mul_(ema).add_(od, alpha=1.0 - ema)
            self.init_weight *= ema

    def _track(self) -> None:
        """PSNR of the average to the ground truth into the curve, and the best output so far (kept with where)."""
        p = gt_psnr_t(self.task, self.ema_out, self.gt)
        self.curve[self.i] = p
        better = p > self.best_psnr
        self.best_psnr = torch.maximum(self.best_psnr, p)
        old = self.best_img
        self.best_img = self.ema_out.clone() if old is None else torch.where(better, self.ema_out, old)

    def loss_value(self) -> float:
        return float(self.loss.detach())

    def fidelity_value(self) -> float:
        return float(self.fid_t if self.fid_t is not None else self.obs.fidelity_psnr_t(self.out))

    def backtrack_count(self) -> int:
        return self.backtracks

    def initial_output_weight(self) -> float:
        return self.init_weight


def simulate(task: Task, clean: torch.Tensor, seed: int = 0) -> Observation:
    """The seeded synthetic observation of ``clean`` for ``task`` (same seed, same observation)."""
    return task.degrade(clean, torch.Generator().manual_seed(seed))


__all__ = [
    "BEST_LABEL",
    "EMA_MODES",
    "FINAL_LABEL",
    "MASKED",
    "SPARSE",
    "EagerStep",
    "FitConfig",
    "FitResult",
    "fit",
    "fit_backends",
    "simulate",
]
