"""A launch-free fitting step: the engine's whole step captured once (CUDA graph or torch.compile) and replayed.

Why: a DIP fitting step at 256x256 is ~350 kernel launches (conv, BatchNorm, LeakyReLU, pad, upsample, concat, Adam)
and 2-3 ms of launch overhead in eager mode (DOMAIN.md), so faster convolutions alone cannot make it much faster. A
CUDA graph replays all of the step's kernels (forward, backward, Adam, output average, PSNR tracking, backtracking) with
one launch; BatchNorm's statistics and the activations are captured with the rest, so the non-conv work costs its
memory traffic only, not launches.

A graph cannot branch on the host, so :class:`SyncFreeStep` restates :func:`lipdeploy.fit.fit`'s step with every
decision taken on the device:

- backtracking: the PSNR to the observation is compared with the last good one on the device (in float64, as the eager
  step compares Python floats); the snapshot of the last good weights is a masked copy (``torch.where``), and a step
  that must be skipped runs anyway and is undone: weights back to the snapshot, Adam's moments and step counts back to
  their values before the step (what the eager step gets by not stepping). The weights and Adam's state live in one
  flat buffer each (the parameters become views into it), so the snapshot, the undo and the backups are a few kernels
  whatever the number of layers;
- the output average, its update count (``initial_output_weight`` follows from it), the PSNR curve and the best
  output are updated under the same device mask (a skipped step changes none of them, as in the eager step);
- the input perturbation is drawn inside the step from the fit's device generator; under a CUDA graph the generator is
  registered with the graph, so each replay draws the next numbers of the same Philox stream the eager step draws.

The host reads the device only at log steps and at the end. Run without capture (``FitConfig.capture="sync-free"``),
the same step is what the graph captures, so tests on CPU check it against the eager fit. Pruned weights keep zero
gradients through :class:`lipdeploy.fit_result.PrunedGradients`, one fused multiply after backward, captured with the
rest.

:class:`CapturedStep` warms the step up on a side stream (cuDNN / Triton autotuning, lazy allocations), puts every
state tensor and the generator back as they were, captures, and replays; a fit with capture on therefore produces the
eager fit's result within float tolerance (cuDNN may pick other algorithms; the debiased average's weight is computed
on the device). It is the :class:`lipdeploy.fit_result.Step` that :func:`lipdeploy.fit.fit`'s loop drives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from .errors import InputError
from .fit_config import CAPTURE_MODES
from .fit_result import PrunedGradients, new_adam
from .tasks import Observation, Task

CaptureMode = Literal["off", "cuda-graph", "compile", "auto", "sync-free"]
"""How :func:`lipdeploy.fit.fit` runs its step (:attr:`lipdeploy.fit.FitConfig.capture`):

- ``"off"``: the eager step of ``fit.py`` (the default; unchanged behaviour);
- ``"cuda-graph"``: :class:`SyncFreeStep` captured in a CUDA graph and replayed (CUDA only);
- ``"compile"``: :class:`SyncFreeStep` through ``torch.compile`` (mode ``"reduce-overhead"`` on CUDA, which uses CUDA
  graphs; the default mode elsewhere);
- ``"auto"``: ``"cuda-graph"`` on CUDA, ``"off"`` elsewhere;
- ``"sync-free"``: :class:`SyncFreeStep` run eagerly, no capture: the captured code path, for tests and debugging.

The values: :data:`lipdeploy.fit_config.CAPTURE_MODES`.
"""


def resolve_capture(mode: str, device: torch.device) -> str:
    """The step runner ``mode`` means on ``device``: "auto" becomes "cuda-graph" on CUDA and "off" elsewhere."""
    if mode not in CAPTURE_MODES:
        raise InputError(None, f"capture must be one of {', '.join(CAPTURE_MODES)}; got {mode!r}")
    if mode == "auto":
        return "cuda-graph" if device.type == "cuda" else "off"
    if mode == "cuda-graph" and device.type != "cuda":
        raise InputError(None, f"capture cuda-graph needs a CUDA device; the fit runs on {device.type}")
    return mode


def flatten_parameters(params: list[nn.Parameter]) -> torch.Tensor:
    """Move ``params`` into one contiguous buffer (each parameter becomes a view of it) and return the buffer.

    Values, hooks and parameter identities are kept; only the storage changes, so that whole-model masked copies are
    one kernel each.
    """
    if not params:
        raise InputError(None, "the network has no trainable parameters: there is nothing to fit")
    dtypes = {p.dtype for p in params}
    devices = {p.device for p in params}
    if len(dtypes) != 1 or len(devices) != 1:
        raise InputError(None, f"a captured fit needs one dtype and device for all weights; got {dtypes}, {devices}")
    flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    offset = 0
    for p in params:
        n = p.numel()
        view = flat[offset : offset + n].view(p.shape)
        view.copy_(p.detach())
        p.data = view
        offset += n
    return flat


def _views(flat: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()
    return out


def make_adam(params: list[nn.Parameter], lr: float, capturable: bool) -> tuple[torch.optim.Adam, list[torch.Tensor]]:
    """Adam (fused where PyTorch has it, as the eager fit uses) with its state in flat buffers.

    Returns the optimizer and ``[exp_avg, exp_avg_sq, step]`` as flat tensors: the state tensors Adam updates in place
    are views of them, so a step can be undone with three masked copies. ``capturable=True`` is what CUDA graph
    capture requires (the step count stays on the device).
    """
    opt, fused = new_adam(params, lr, **({"capturable": True} if capturable else {}))
    device, dtype = params[0].device, params[0].dtype
    n = sum(p.numel() for p in params)
    exp_avg = torch.zeros(n, dtype=dtype, device=device)
    exp_avg_sq = torch.zeros(n, dtype=dtype, device=device)
    # Adam's own choice (optimizer._get_scalar_dtype): float32 for fused, the default dtype otherwise
    step_dtype = torch.float32 if fused or torch.get_default_dtype() != torch.float64 else torch.float64
    steps = torch.zeros(len(params), dtype=step_dtype, device=device)
    for k, (p, m, v) in enumerate(zip(params, _views(exp_avg, params), _views(exp_avg_sq, params), strict=True)):
        opt.state[p] = {"step": steps[k], "exp_avg": m, "exp_avg_sq": v}
    return opt, [exp_avg, exp_avg_sq, steps]


class SyncFreeStep:
    """One fitting step of :func:`lipdeploy.fit.fit` as device work only: no host synchronisation, no data-dependent
    Python branch, no allocation that changes between calls (module docstring). Call it to run one step.

    The state the host reads at log steps: ``loss``, ``fidelity`` (PSNR of the degraded output to the observation),
    ``backtracks``, ``ema_out``, ``ema_updates``, and with ground truth ``curve`` (PSNR per iteration, -inf where a
    step was skipped), ``best_psnr``, ``best_img``. ``pruned``: the gradients to mask after backward.
    """

    def __init__(
        self,
        model: nn.Module,
        observation: Observation,
        task: Task,
        net_input: torch.Tensor,
        *,
        iters: int,
        lr: float,
        input_noise_std: float,
        ema: float,
        ema_mode: str,
        backtrack_db: float,
        check_every: int,
        generator: torch.Generator,
        gt: torch.Tensor | None = None,
        capturable: bool = False,
        pruned: PrunedGradients | None = None,
    ) -> None:
        self.model, self.obs, self.task, self.x0 = model, observation, task, net_input
        self.pruned = pruned or PrunedGradients()
        self.std, self.ema, self.debiased = float(input_noise_std), float(ema), ema_mode == "debiased"
        self.backtrack_db, self.check_every, self.gen, self.gt = float(backtrack_db), int(check_every), generator, gt
        dev = net_input.device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.flat = flatten_parameters(self.params)
        self.opt, self.adam_state = make_adam(self.params, lr, capturable)
        self.noise = torch.empty_like(net_input)
        self.i = torch.zeros((), dtype=torch.int64, device=dev)
        self.loss = torch.zeros((), device=dev)
        self.fidelity = torch.zeros((), device=dev)
        self.restored = torch.zeros((), dtype=torch.bool, device=dev)
        self.backtracks = torch.zeros((), dtype=torch.int64, device=dev)
        self.backtracking = self.backtrack_db > 0
        if self.backtracking:
            self.snap = self.flat.clone()
            self.adam_backup = [t.clone() for t in self.adam_state]
            self.last_fid = torch.zeros((), device=dev)  # float32, as fid; compared in float64 like the eager step
            self.has_last = torch.zeros((), dtype=torch.bool, device=dev)
        out_shape = (1, 3, *observation.out_size)
        self.ema_out = torch.zeros(out_shape, device=dev)
        self.ema_updates = torch.zeros((), dtype=torch.int64, device=dev)
        self.curve = self.best_psnr = self.best_img = None
        if gt is not None:
            self.curve = torch.full((iters,), -math.inf, device=dev)
            self.best_psnr = torch.tensor(-math.inf, device=dev)
            self.best_img = torch.zeros(out_shape, device=dev)

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step changes (weights, buffers such as BatchNorm's running statistics, Adam's state, the
        bookkeeping): what warm-up runs must put back."""
        tensors = [self.flat, *self.adam_state, *self.model.buffers()]
        tensors += [self.i, self.loss, self.fidelity, self.restored, self.backtracks]
        tensors += [self.ema_out, self.ema_updates]
        if self.backtracking:
            tensors += [self.snap, *self.adam_backup, self.last_fid, self.has_last]
        if self.curve is not None:
            tensors += [self.curve, self.best_psnr, self.best_img]
        return tensors

    def __call__(self) -> None:
        x = torch.add(self.x0, self.noise.normal_(generator=self.gen), alpha=self.std) if self.std > 0 else self.x0
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        loss = self.obs.loss(out)
        loss.backward()
        self.pruned()
        with torch.no_grad():
            od = out.detach()
            self.loss.copy_(loss.detach())
            fid = self.obs.fidelity_psnr_t(od)
            self.fidelity.copy_(fid)
            restored = self._check(fid) if self.backtracking else self.restored
            keep = ~restored
            self._average(od, keep)
            if self.curve is not None:
                self._track(keep)
        self.opt.step()
        with torch.no_grad():
            if self.backtracking:
                self.flat.copy_(torch.where(restored, self.snap, self.flat))
                for state, backup in zip(self.adam_state, self.adam_backup, strict=True):
                    state.copy_(torch.where(restored, backup, state))
            self.i.add_(1)

    def _check(self, fid: torch.Tensor) -> torch.Tensor:
        """The eager step's backtracking check on the device: restore when the PSNR to the observation fell by more
        than ``backtrack_db`` since the last good check, or is not finite; else snapshot the weights."""
        fid64 = fid.double()
        bad = (fid64 - self.last_fid.double() < -self.backtrack_db) | ~torch.isfinite(fid64)
        if self.check_every == 1:
            restored = self.has_last & bad
            good = ~restored
        else:
            due = torch.remainder(self.i, self.check_every) == 0
            restored = due & self.has_last & bad
            good = due & ~restored
        self.restored.copy_(restored)
        self.backtracks.add_(restored.long())
        self.snap.copy_(torch.where(good, self.flat, self.snap))
        self.last_fid.copy_(torch.where(good, fid, self.last_fid))
        self.has_last.logical_or_(good)
        for state, backup in zip(self.adam_state, self.adam_backup, strict=True):
            backup.copy_(state)  # Adam's state before this step, for the undo
        return restored

    def _average(self, od: torch.Tensor, keep: torch.Tensor) -> None:
        """The output average (paper or debiased), updated where ``keep``. (No float64 state: torch.compile's CPU
        backend was seen to drop masked in-place updates of 0-d float64 tensors.)"""
        n = self.ema_updates + keep.long()
        first = n == 1
        ema = self.ema
        if ema <= 0:
            new = od
        elif self.debiased:  # m_t = m_{t-1} + w_t (o_t - m_{t-1}), w_t = (1 - b) / (1 - b^t)
            w = (1.0 - ema) / (1.0 - torch.pow(ema, n.float()))
            new = torch.where(first, od, self.ema_out + (od - self.ema_out) * w)
        else:
            new = torch.where(first, od, torch.add(self.ema_out * ema, od, alpha=1.0 - ema))
        self.ema_out.copy_(torch.where(keep, new, self.ema_out))
        self.ema_updates.copy_(n)

    def initial_output_weight(self) -> float:
        """Weight of the first (untrained) output in the average after the updates so far (a host read).

        Closed forms of the eager step's running products: paper ``b^(n-1)``; debiased ``prod_{t=2..n} (1 - w_t)``
        with ``1 - w_t = b (1 - b^(t-1)) / (1 - b^t)``, which telescopes to ``b^(n-1) (1 - b) / (1 - b^n)``.
        """
        n, b = int(self.ema_updates), self.ema
        if n <= 1:
            return 1.0
        if b <= 0:
            return 0.0
        return b ** (n - 1) * ((1.0 - b) / (1.0 - b**n) if self.debiased else 1.0)

    def _track(self, keep: torch.Tensor) -> None:
        """PSNR of the average to the ground truth into the curve, and the best output so far (kept with where)."""
        p = self.task.psnr_t(self.ema_out, self.gt)
        # Clamped: CapturedStep's warm-up runs more steps than a short fit has iterations (3 warm-up steps of a
        # 2-iteration fit wrote curve[2]: a device-side assert on an H100, 2026-11-27); the warm-up's writes are put
        # back afterwards, and a real step's index is always < iters.
        at = self.i.clamp(max=self.curve.numel() - 1).view(1)
        self.curve.index_copy_(0, at, torch.where(keep, p, -math.inf).view(1).to(self.curve.dtype))
        better = keep & ((p > self.best_psnr) | (self.ema_updates == 1))  # the first average is taken as it is
        self.best_psnr.copy_(torch.where(keep, torch.maximum(self.best_psnr, p), self.best_psnr))
        self.best_img.copy_(torch.where(better, self.ema_out, self.best_img))


class CapturedStep:
    """Runs a :class:`SyncFreeStep`: eagerly (``"sync-free"``), replayed from a CUDA graph (``"cuda-graph"``), or
    through ``torch.compile`` (``"compile"``). Call :meth:`prepare` once, then :meth:`run` once per step: the
    :class:`lipdeploy.fit_result.Step` of :func:`lipdeploy.fit.fit`'s loop.

    Warm-up runs (``warmup`` steps on a side stream for the graph; the compiled function's first calls) do change the
    state, so every state tensor and the generator are saved before and put back after: the first real step starts
    from exactly the state the eager fit starts from.
    """

    def __init__(self, step: SyncFreeStep, mode: str, warmup: int = 3) -> None:
        if mode not in ("sync-free", "cuda-graph", "compile"):
            raise ValueError(f"CapturedStep mode must be sync-free, cuda-graph or compile; got {mode!r}")
        self.step, self.mode, self.warmup = step, mode, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self._fn: Callable[[], None] = step
        # on CUDA the host does not wait for a step: the loop times the steps between two log steps together
        self.synchronous = step.x0.device.type != "cuda"

    @property
    def ema_out(self) -> torch.Tensor:
        return self.step.ema_out

    @property
    def curve(self) -> torch.Tensor | None:
        return self.step.curve

    @property
    def best_psnr(self) -> torch.Tensor | None:
        return self.step.best_psnr

    @property
    def best_img(self) -> torch.Tensor | None:
        return self.step.best_img

    def loss_value(self) -> float:
        return float(self.step.loss)  # the host waits for the device here (log steps), and only here

    def fidelity_value(self) -> float:
        return float(self.step.fidelity)

    def backtrack_count(self) -> int:
        return int(self.step.backtracks)

    def initial_output_weight(self) -> float:
        return self.step.initial_output_weight()

    def prepare(self) -> None:
        """Warm up and capture (or compile); a no-op for ``"sync-free"``."""
        if self.mode == "sync-free":
            return
        device = self.step.x0.device
        saved = [t.clone() for t in self.step.state_tensors()]
        gen_state = self.step.gen.get_state()
        if self.mode == "compile":
            compile_mode = "reduce-overhead" if device.type == "cuda" else "default"
            self._fn = torch.compile(self.step.__call__, mode=compile_mode)
            for _ in range(self.warmup):
                self._fn()
        else:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.step()
            torch.cuda.current_stream(device).wait_stream(side)
            self._restore(saved, gen_state)
            self.graph = torch.cuda.CUDAGraph()
            self.graph.register_generator_state(self.step.gen)
            self.step.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.step()
            self._fn = self.graph.replay
        self._restore(saved, gen_state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _restore(self, saved: list[torch.Tensor], gen_state: torch.Tensor) -> None:
        with torch.no_grad():
            for t, s in zip(self.step.state_tensors(), saved, strict=True):
                t.copy_(s)
        self.step.gen.set_state(gen_state)

    def run(self) -> None:
        """One fitting step."""
        self._fn()


def captured_step(
    model: nn.Module,
    observation: Observation,
    task: Task,
    config: Any,  # lipdeploy.fit_config.FitConfig
    *,
    mode: str,
    net_input: torch.Tensor,
    input_noise_std: float,
    generator: torch.Generator,
    gt: torch.Tensor | None,
    pruned: PrunedGradients,
) -> CapturedStep:
    """The :class:`CapturedStep` of :func:`lipdeploy.fit.fit` for ``config`` (``mode``: a resolved capture mode, not
    "off" or "auto"); ``fit`` has prepared the model (masks, backend) and the device tensors."""
    step = SyncFreeStep(
        model, observation, task, net_input,
        iters=config.iters, lr=config.lr, input_noise_std=input_noise_std, ema=config.ema,
        ema_mode=config.ema_mode, backtrack_db=config.backtrack_db, check_every=config.check_every,
        generator=generator, gt=gt, capturable=mode in ("cuda-graph", "compile") and net_input.is_cuda, pruned=pruned,
    )  # fmt: skip
    return CapturedStep(step, mode)
