"""The ``gan`` benchmark: the demo generator, its GAN IMP tickets and random tickets as compressive-sensing and
inpainting priors on faces held out from its training, plus the generator's forward latency.

    python -m lipdeploy.bench.cpu.gan [-o bench/results/gan] [--quick] [--epochs 20] [--iters 200]
    python -m lipdeploy.bench.cpu.gan --paper --generator celebaHQ_s6_i80000-6196db68.pth --train-data TRAIN/ \
        --eval-data TEST/ --device cuda -o gan_paper

Resumable: the ticket chains are ``lipdeploy find --generator`` folders (they continue after the last complete round)
and every measured row is appended to ``rows.jsonl`` under its job key, so a rerun measures only what is missing.
Then ``report.md`` (tables, headline lines, the issue's targets) and ``psnr_vs_sparsity.png`` are rebuilt from the rows.

Settings (every one recorded in the rows): the demo generator (``lipdeploy/data/example_generator.pth``) and its
``netD``; GAN IMP and the random baseline on its 80 training faces, 7 rounds (sparsity 20 / 36 / 49 / 59 / 67 / 74 /
79%), ``--epochs`` of WGAN-GP per round (the paper's optimiser and losses); evaluation on the 20 held-out faces, all
fitted in one batch (each with its own measurements and restarts), Adam on the latent (lr 0.05, ``--iters`` steps,
2 restarts; the paper's CS runs lr 0.01 for 1500 steps on 256 px; the objective comparisons on
:data:`OBJECTIVE_METHODS` only), Gaussian operators (seed 0), noise 0.01 (seed 1):
CS at 200 and 100 of the 768 values (26% and 13%), least squares and median of means (blocks of 20), each without and
with 2% outlier rows (4 of 200), and inpainting with half of the pixels dropped (one seeded mask). The reference is
the dense pre-trained generator (``dense``); ``imp-0`` is the dense generator after one round of retraining;
``imp-init-R`` is round R's mask on the pre-trained weights without retraining.

``--paper`` runs the paper's protocol on a checkpoint and image folders of one's own (the public celebA-HQ-256
generator, CelebA-HQ: the paper retrains on the first 40% of its images): 30 WGAN-GP epochs per round (batch 64),
latent fits of 1500 steps at lr 0.01 with one restart, 1000 Gaussian rows of which 20 are outliers (the paper's
robust CS) with median of means and least squares, the same without outliers, and inpainting; every method on every
task. Its cost is dominated by GAN IMP: 15 rounds (IMP 0-7, random 1-7) of 30 epochs, i.e. 15 x 30 x N / 64 WGAN-GP
steps of the 23M-parameter generator and its discriminator at 256 px for N training images (N = 12,000 for 40% of
CelebA-HQ: 84,000 steps); it was not run here (no GPU in this session), so time a round on the target GPU first:
each round's seconds are printed and recorded in its ticket's provenance.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lipdeploy.cli.find_generator import checkpoint_discriminator
from lipdeploy.cli.generator_options import bundled_generator
from lipdeploy.environment import environment
from lipdeploy.faces import training_images
from lipdeploy.fileio import atomic_write_text
from lipdeploy.gan_imp import find_gan_ticket
from lipdeploy.gan_train import GanTrainConfig
from lipdeploy.generator_prior import load_generator
from lipdeploy.latent_fit import LatentFitConfig, fit_latent, per_image_metrics
from lipdeploy.sensing import GaussianOperator, MaskOperator, back_projection, least_squares, simulate_measurements
from lipdeploy.ticket import Ticket, load_ticket

ROUNDS = 7
SPARSITY_TOLERANCE_DB = 0.5  # the "within 0.5 dB of the dense generator"


@dataclass(frozen=True)
class Task:
    """One restoration setting: CS (``measurements`` rows, ``outliers`` of them corrupted, ``objective``) or
    inpainting (``drop`` of the pixels missing)."""

    name: str
    measurements: int = 0
    outliers: int = 0
    objective: str = "ls"
    drop: float = 0.0


TASKS = (
    Task("cs-200-ls", 200),
    Task("cs-100-ls", 100),
    Task("inpaint-50", drop=0.5),
    Task("cs-200-mom", 200, objective="mom"),
    Task("cs-200-ls-outliers", 200, outliers=4),
    Task("cs-200-mom-outliers", 200, outliers=4, objective="mom"),
)
# The objective comparisons (the last three tasks) run on these methods only: median of means costs two latents per
# image, and the shared 2-core machine measured ~0.1 s per step of a 20-face batch (2026-12-01).
PAPER_TASKS = (
    Task("cs-1000-mom-outliers", 1000, outliers=20, objective="mom"),
    Task("cs-1000-ls-outliers", 1000, outliers=20),
    Task("cs-1000-ls", 1000),
    Task("inpaint-50", drop=0.5),
)
OBJECTIVE_METHODS = ("dense", "imp-1", "imp-3", "imp-5", "imp-7", "random-3", "random-7")
# IMP's masks on the pre-trained weights, not retrained (``imp-init-R``): whether a loss comes from pruning or from the
# WGAN-GP retraining of a generator that was not trained adversarially; measured on these tasks.
INIT_TASKS = ("cs-200-ls", "cs-100-ls", "inpaint-50")


def measure(task: Task, faces: torch.Tensor):
    """The seeded measurements of the held-out faces for ``task``."""
    n = faces[0].numel()
    if task.drop:
        res = faces.shape[-1]
        mask = (torch.rand(1, 1, res, res, generator=torch.Generator().manual_seed(0)) >= task.drop).float()
        return simulate_measurements(faces, MaskOperator(mask.expand(1, 3, res, res)))
    operator = GaussianOperator(n, task.measurements - task.outliers, seed=0)
    return simulate_measurements(faces, operator, 0.01, task.outliers, seed=1)


def quality_row(name: str, sparsity: float, model: torch.nn.Module, task: Task, faces, args) -> dict[str, Any]:
    meas = measure(task, faces)
    config = LatentFitConfig(
        objective=task.objective, iters=args.iters, lr=args.lr, restarts=args.restarts, seed=0, mom_batch=20,
        device=args.device,
    )  # fmt: skip
    res = fit_latent(model, meas, config, gt=faces)
    return {
        "kind": "quality", "method": name, "sparsity": round(sparsity, 4), "task": task.name, "mse": res.mse,
        "psnr": res.psnr, "ssim": res.ssim, "psnr_per_image": [round(r["psnr"], 3) for r in res.per_image],
        "seconds": round(res.seconds, 2), "settings": config.to_dict(), "images": int(faces.shape[0]),
    }  # fmt: skip


def baseline_rows(task: Task, faces) -> list[dict[str, Any]]:
    """Back-projection and least squares of a CS task (on the uncorrupted rows)."""
    meas = measure(task, faces)
    rows = []
    for name, image in (("back-projection", back_projection(meas)), ("least-squares", least_squares(meas))):
        per_image = per_image_metrics(image.view(faces.shape), faces)
        m = {k: sum(r[k] for r in per_image) / len(per_image) for k in ("mse", "psnr", "ssim")}
        rows.append({"kind": "quality", "method": name, "sparsity": None, "task": task.name, **m,
                     "psnr_per_image": [round(r["psnr"], 3) for r in per_image]})  # fmt: skip
    return rows


def latency_row(name: str, ticket: Ticket, args) -> dict[str, Any]:
    """Forward latency at batch 1 of the compacted PyTorch module and of its ONNX export in ONNX Runtime (CPU)."""
    from lipdeploy.bench.timing import median_ms
    from lipdeploy.export import export_onnx, ort_session
    from lipdeploy.export.onnx_export import export_module

    weights = "fitted" if ticket.fitted is not None else "init"
    module, _ = export_module(ticket, weights, "image")
    z = torch.randn(1, ticket.arch.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch_ms = median_ms(lambda: module(z), warmup=5, repeats=args.repeats)
    params = sum(p.numel() for p in module.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.onnx"
        export_onnx(ticket, path, weights=weights, weights_format="dense")
        size = path.stat().st_size
        session = ort_session(path, threads=1)
        feed = {session.get_inputs()[0].name: z.numpy()}
        ort_ms = median_ms(lambda: session.run(None, feed), warmup=5, repeats=args.repeats)
    return {
        "kind": "latency", "method": name, "sparsity": round(ticket.sparsity, 4), "torch_cpu_ms": round(torch_ms, 4),
        "ort_cpu_ms": round(ort_ms, 4), "compacted_parameters": params, "parameter_bytes": 4 * params,
        "onnx_bytes": size, "threads": 1,
    }  # fmt: skip


class Rows:
    """``rows.jsonl``: one JSON row per line, keyed by job (``key``); a key already there is not measured again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self.done = {r["key"] for r in self.rows}

    def run(self, key: str, make: Callable[[], list[dict[str, Any]] | dict[str, Any]]) -> None:
        if key in self.done:
            return
        t0 = time.perf_counter()
        made = make()
        for row in made if isinstance(made, list) else [made]:
            row = {"key": key, **row, "job_seconds": round(time.perf_counter() - t0, 2)}
            self.rows.append(row)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        self.done.add(key)
        print(f"{key}: done in {time.perf_counter() - t0:.1f} s", flush=True)


def chains(out: Path, args) -> dict[str, tuple[float, Ticket, torch.nn.Module]]:
    """The compared generators by method name: dense, imp-R and random-R (R = 0..7 / 1..7), found if missing."""
    path = args.generator or bundled_generator()
    generator = load_generator(path)
    disc = checkpoint_discriminator(path, generator.arch, fresh=False, seed=0)
    train_faces = training_images(args.train_data, generator.arch.resolution)
    train = GanTrainConfig(epochs=args.epochs, batch=64, seed=0, device=args.device)
    methods = {"dense": (0.0, generator, generator.build("init").eval())}
    for kind, random in (("imp", False), ("random", True)):
        paths = find_gan_ticket(generator, disc, train_faces, out / "tickets" / kind, args.rounds, train,
                                random=random, data_name=str(args.train_data), log=print)  # fmt: skip
        for r, p in enumerate(paths):
            if random and r == 0:
                continue  # round 0 is the same dense retraining in both chains
            t = load_ticket(p)
            methods[f"{kind}-{r}"] = (t.sparsity, t, t.build("fitted").eval())
            if kind == "imp" and r > 0:
                methods[f"imp-init-{r}"] = (t.sparsity, t, t.build("init").eval())
    return methods


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lipdeploy.bench.cpu.gan", description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=Path("bench/results/gan"), help="results folder")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 2 epochs, 30 iterations: a smoke test")
    ap.add_argument("--epochs", type=int, default=20, help="WGAN-GP epochs per GAN IMP round")
    ap.add_argument("--iters", type=int, default=200, help="Adam steps of each latent fit")
    ap.add_argument("--repeats", type=int, default=50, help="timed forward passes per latency")
    ap.add_argument(
        "--paper", action="store_true", help="the paper's protocol (module docstring); needs the three below"
    )
    ap.add_argument("--generator", type=Path, default=None, help="zoo checkpoint (default: the demo generator)")
    ap.add_argument("--train-data", default="skimage:lfw_faces:train", help="GAN IMP's training images")
    ap.add_argument("--eval-data", default="skimage:lfw_faces:test", help="held-out images to restore")
    ap.add_argument("--eval-images", type=int, default=20, help="how many of --eval-data (fitted in one batch)")
    ap.add_argument("--device", default="cpu", help="where GAN IMP and the latent fits run (cpu or cuda)")
    args = ap.parse_args(argv)
    args.rounds, args.lr, args.restarts = ROUNDS, 0.05, 2
    if args.quick:
        args.rounds, args.epochs, args.iters, args.repeats = 2, 2, 30, 5
    if args.paper:
        if args.generator is None or args.train_data.startswith("skimage:") or args.eval_data.startswith("skimage:"):
            ap.error("--paper needs --generator, --train-data and --eval-data (the checkpoint and image folders)")
        args.epochs, args.iters, args.lr, args.restarts, args.repeats = 30, 1500, 0.01, 1, 5
    else:
        torch.set_num_threads(1)  # the demo's tiny networks: threads only add contention
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "environment.json", json.dumps({**environment(), **vars(args), "output": str(out)},
                                                           indent=2, default=str) + "\n")  # fmt: skip
    rows = Rows(out / "rows.jsonl")
    methods = chains(out, args)
    res = next(iter(methods.values()))[1].arch.resolution
    faces = training_images(args.eval_data, res)[: args.eval_images]
    for task in PAPER_TASKS if args.paper else TASKS:
        if task.measurements:
            rows.run(f"baseline/{task.name}", lambda task=task: baseline_rows(task, faces))
        for name, (sparsity, _, model) in methods.items():
            if not args.paper and (task.objective == "mom" or task.outliers) and name not in OBJECTIVE_METHODS:
                continue
            if not args.paper and name.startswith("imp-init-") and task.name not in INIT_TASKS:
                continue
            rows.run(f"quality/{name}/{task.name}",
                     lambda n=name, s=sparsity, m=model, t=task: quality_row(n, s, m, t, faces, args))  # fmt: skip
    for name in ("dense", "imp-3", "imp-7", "random-7"):
        if name in methods:
            rows.run(f"latency/{name}", lambda n=name: latency_row(n, methods[n][1], args))
    from .gan_report import write_report

    write_report(out, rows.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
