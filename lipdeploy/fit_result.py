"""What a fit returns, and the pieces the eager loop (:mod:`lipdeploy.fit`) and the captured loop
(:mod:`lipdeploy.captured`) share: the result record, the progress bar, weight snapshots. Its own module so that both
loops import it and neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

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


def finish_result(
    *,
    task: Task,
    config: Any,  # FitConfig (lipdeploy.fit, which imports this module)
    observation: Observation,
    obs: Any,
    gt: torch.Tensor | None,
    ema_out: torch.Tensor,
    best_img: torch.Tensor | None,
    best_psnr: Any,
    curve: torch.Tensor | None,
    history: list[dict[str, float]],
    seconds: float,
    step_times: list[float],
    backtracks: int,
    model: nn.Module,
    snapshots: dict[int, dict[str, torch.Tensor]],
    input_noise_std: float,
    initial_output_weight: float,
) -> FitResult:
    """The :class:`FitResult` of a finished loop (eager or captured): final and best outputs on the CPU, their PSNR /
    SSIM to the ground truth (:func:`gt_psnr_t`, :func:`gt_ssim`), timings and the fitted weights."""
    output = ema_out.detach().cpu().clamp(0, 1)
    result_best = best_img.detach().cpu().clamp(0, 1) if best_img is not None else None
    psnr_best = psnr_final = ssim_best = ssim_final = None
    best_iter = None
    if gt is not None:
        gt_c = gt.cpu()
        psnr_final = float(gt_psnr_t(task, output, gt_c))
        ssim_final = gt_ssim(task, output, gt_c)
        if result_best is not None:
            psnr_best = float(best_psnr)
            best_iter = int(torch.argmax(curve).item()) + 1
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
        psnr_observation_final=float(obs.fidelity_psnr_t(ema_out)),
        input_psnr=observation.input_psnr(gt) if gt is not None else None,
        history=history,
        seconds=seconds,
        iterations=config.iters,
        step_ms=1000.0 * seconds / config.iters,
        step_ms_median=1000.0 * sorted_steps[len(sorted_steps) // 2],
        backtracks=int(backtracks),
        state_dict=state_copy(model, cpu=True),
        snapshots=snapshots,
        metric_label=task.metric_label,
        input_noise_std=input_noise_std,
        step_times=step_times,
        ema_mode=config.ema_mode,
        initial_output_weight=initial_output_weight,
    )
