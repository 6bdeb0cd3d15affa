"""What a fit returns, and what its steps share: the result record, the :class:`Step` interface the loop of
:func:`lipdeploy.fit.fit` drives (the eager step there, the captured one in :mod:`lipdeploy.captured`), gradient masking
of pruned weights, Adam, the progress bar, weight snapshots. Its own module so that both steps import it and neither
imports the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .tasks import Observation, Task

BEST_LABEL = "best over iterations (oracle early stop: needs the ground truth; the paper's number)"
FINAL_LABEL = "at the final iteration (what a user without ground truth gets)"


@dataclass
class FitResult:
    """Outcome of :func:`fit`. Images are ``[1, 3, H, W]`` CPU tensors in [0, 1]; PSNR in dB.

    ``output`` is the (exponentially averaged) output at the final iteration; ``best_output`` the one with the best
    PSNR to the ground truth (None without it). ``ssim_best`` is the SSIM of ``best_output``: the oracle stopping point
    is chosen by PSNR, and both numbers describe that one output.
    """

    output: torch.Tensor
    best_output: torch.Tensor | None
    psnr_best: float | None
    psnr_final: float | None
    ssim_best: float | None
    ssim_final: float | None
    best_iter: int | None
    psnr_observation_final: float
    input_psnr: float | None
    history: list[dict[str, float]]
    seconds: float
    iterations: int
    step_ms: float
    step_ms_median: float
    backtracks: int
    state_dict: dict[str, torch.Tensor]
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    metric_label: str = ""
    input_noise_std: float = 0.0
    step_times: list[float] = field(default_factory=list, repr=False)
    ema_mode: str = "paper"
    initial_output_weight: float = 0.0
    """Weight of the first (untrained) network output in ``output``: large (say > 0.1) means a short fit under the
    paper's average, whose output is then mostly the untrained network."""

    def metrics_record(self) -> dict[str, Any]:
        """PSNR/SSIM with their labels, for JSON records."""
        return {
            "measured_on": self.metric_label,
            "psnr_best": _r(self.psnr_best),
            "psnr_best_label": BEST_LABEL,
            "best_iteration": self.best_iter,
            "ssim_best": _r(self.ssim_best),
            "psnr_final": _r(self.psnr_final),
            "psnr_final_label": FINAL_LABEL,
            "ssim_final": _r(self.ssim_final),
            "psnr_observation_input": _r(self.input_psnr),
            "psnr_to_observation_final": _r(self.psnr_observation_final),
            "backtracks": self.backtracks,
            "ema_mode": self.ema_mode,
            "initial_output_weight": _r(self.initial_output_weight),
        }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def progress_bar(enabled: bool, description: str, total: int):
    """A rich progress bar with loss and PSNR, or None when disabled or not on a terminal."""
    if not enabled:
        return None
    # rich takes about 0.1 s to import (measured, 2-core EPYC): only when a bar is shown
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def state_copy(model: nn.Module, cpu: bool = False) -> dict[str, torch.Tensor]:
    return {k: (v.detach().cpu().clone() if cpu else v.detach().clone()) for k, v in model.state_dict().items()}


def gt_psnr_t(task: Task, output: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The task's PSNR of ``output`` to the ground truth; for several images (``gt`` ``[n, 3, H, W]``, one output: a
    multi-image fit, lipdeploy/multi_image.py) the mean over images of each one's PSNR, not that of their mean MSE."""
    if gt.shape[0] == 1:
        return task.psnr_t(output, gt)
    return torch.stack([task.psnr_t(output, gt[i : i + 1]) for i in range(gt.shape[0])]).mean()


def gt_ssim(task: Task, output: torch.Tensor, gt: torch.Tensor) -> float:
    """The task's SSIM of ``output`` to the ground truth; for several images the mean over images (see gt_psnr_t)."""
    if gt.shape[0] == 1:
        return task.ssim(output, gt)
    return sum(task.ssim(output, gt[i : i + 1]) for i in range(gt.shape[0])) / gt.shape[0]


class Step(Protocol):
    """One fitting iteration, as the loop of :func:`lipdeploy.fit.fit` drives it, and the state the loop reads.

    Two implementations: :class:`lipdeploy.fit.EagerStep` (decisions on the host, the library's default) and
    :class:`lipdeploy.captured.CapturedStep` (every decision on the device, so that the step can be captured in a CUDA
    graph or compiled). Each owns its arithmetic (input perturbation, loss, backtracking, output average, PSNR
    tracking); the loop owns everything around it (iterations, snapshots, history, timing, progress, the result).

    ``synchronous``: the host has waited for the step when :meth:`run` returns, so each step is timed alone; else the
    loop spreads the time between two log steps (where it reads the device) over their steps. The tensors: ``ema_out``
    the averaged output ``[1, 3, H, W]``; with ground truth ``curve`` (PSNR of the average per iteration, -inf where a
    step was skipped), ``best_psnr`` and ``best_img``, else None.
    """

    synchronous: bool
    ema_out: torch.Tensor
    curve: torch.Tensor | None
    best_psnr: torch.Tensor | None
    best_img: torch.Tensor | None

    def prepare(self) -> None:
        """Once before the first step (warm-up and capture for a CUDA graph)."""

    def run(self) -> None:
        """One step."""

    def loss_value(self) -> float:
        """The last step's loss (a host read)."""

    def fidelity_value(self) -> float:
        """The last step's PSNR of the degraded raw output to the observation (a host read)."""

    def backtrack_count(self) -> int:
        """Steps undone by backtracking so far."""

    def initial_output_weight(self) -> float:
        """Weight of the first (untrained) output in ``ema_out``."""


class PrunedGradients:
    """Zeroes the gradients of pruned weights after backward, in one fused pass: ``torch._foreach_mul_`` of the
    weights' gradients by their 0/1 masks. Called between ``backward`` and the optimizer step.

    A pruned weight then gets exactly zero gradient, Adam's moments for it stay zero and its update is exactly 0, so
    it stays zero. One pass over the masked layers instead of a gradient hook per layer (an extra autograd node and
    a new gradient tensor each). Measured (``python -m lipdeploy.bench.cpu.masked_step``: paper network, ticket at
    density 0.107, one thread, 30 interleaved rounds, CPU time, loaded 2-core EPYC), masked over dense step: 0.98x
    at 64 px and 128 px with this pass (ratio of fastest steps 1.01x / 0.995x), 1.03x / 0.99x with the hooks
    (fastest 1.015x / 1.03x): a masked step costs what a dense one does. Layers whose mask keeps everything are left
    out (nothing to zero).
    """

    def __init__(self, weights: Mapping[nn.Parameter, torch.Tensor] | None = None) -> None:
        self.weights: list[nn.Parameter] = []
        self.masks: list[torch.Tensor] = []
        for weight, mask in (weights or {}).items():
            self.add(weight, mask)

    @classmethod
    def of(cls, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> PrunedGradients:
        """The pass over ``model``'s weights named in ``masks`` (parameter name -> 0/1 mask shaped like it)."""
        params = dict(model.named_parameters())
        return cls({params[name]: mask for name, mask in masks.items()})

    def add(self, weight: nn.Parameter, mask: torch.Tensor) -> None:
        """Mask ``weight``'s gradient with ``mask`` (shaped like it); a mask with no zero is skipped."""
        if bool(mask.all()):
            return
        self.weights.append(weight)
        self.masks.append(mask.to(weight.device, weight.dtype))

    def __len__(self) -> int:
        return len(self.weights)

    def __call__(self) -> None:
        pairs = [(w.grad, m) for w, m in zip(self.weights, self.masks, strict=True) if w.grad is not None]
        if pairs:
            grads, masks = zip(*pairs, strict=True)
            torch._foreach_mul_(list(grads), list(masks))


def new_adam(params: list[nn.Parameter], lr: float, **options: Any) -> tuple[torch.optim.Adam, bool]:
    """Adam with the fused kernel where PyTorch has one (CPU since 2.4, CUDA): same update, one pass over the weights;
    and whether it is the fused one. ``options``: further Adam arguments (``capturable=True`` for a CUDA graph).

    A zero gradient still gives an exactly zero update, so pruned weights stay zero (tested). Whole-step effect
    (``python -m lipdeploy.bench.cpu.fit_step``, 2-core AMD EPYC, 1 thread, paper net): the engine's whole step (with
    backtracking, averaging and PSNR tracking) costs 0.99x the plain loop's at 64x64 and 1.005x at 128x128, the same.
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, **options), True
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, **options), False


def finish_result(
    step: Step,
    *,
    task: Task,
    config: Any,  # FitConfig (lipdeploy.fit_config)
    observation: Observation,
    obs: Any,
    gt: torch.Tensor | None,
    history: list[dict[str, float]],
    seconds: float,
    step_times: list[float],
    model: nn.Module,
    snapshots: dict[int, dict[str, torch.Tensor]],
    input_noise_std: float,
) -> FitResult:
    """The :class:`FitResult` of a finished loop: final and best outputs of ``step`` on the CPU, their PSNR / SSIM to
    the ground truth (:func:`gt_psnr_t`, :func:`gt_ssim`), timings and the fitted weights."""
    output = step.ema_out.detach().cpu().clamp(0, 1)
    result_best = step.best_img.detach().cpu().clamp(0, 1) if step.best_img is not None else None
    psnr_best = psnr_final = ssim_best = ssim_final = None
    best_iter = None
    if gt is not None:
        gt_c = gt.cpu()
        psnr_final = float(gt_psnr_t(task, output, gt_c))
        ssim_final = gt_ssim(task, output, gt_c)
        if result_best is not None:
            psnr_best = float(step.best_psnr)
            best_iter = int(torch.argmax(step.curve).item()) + 1
            ssim_best = gt_ssim(task, result_best, gt_c)
    sorted_steps = sorted(step_times[1:] or step_times)
    return FitResult(
        output=output,
        best_output=result_best,
        psnr_best=psnr_best,
        psnr_final=psnr_final,
        ssim_best=ssim_best,
        ssim_final=ssim_final,
        best_iter=best_iter,
        psnr_observation_final=float(obs.fidelity_psnr_t(step.ema_out)),
        input_psnr=observation.input_psnr(gt) if gt is not None else None,
        history=history,
        seconds=seconds,
        iterations=config.iters,
        step_ms=1000.0 * seconds / config.iters,
        step_ms_median=1000.0 * sorted_steps[len(sorted_steps) // 2],
        backtracks=step.backtrack_count(),
        state_dict=state_copy(model, cpu=True),
        snapshots=snapshots,
        metric_label=task.metric_label,
        input_noise_std=input_noise_std,
        step_times=step_times,
        ema_mode=config.ema_mode,
        initial_output_weight=step.initial_output_weight(),
    )
