"""The rows of the ``gan`` preset's jobs (:mod:`.gan`): chains, latent fits, baselines, latency.

Every fit is seeded (operators 0, noise 1, latents ``preset.seed``, training ``preset.seed``), so a job rerun on
another shard or a Ray worker measures the same numbers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from lipdeploy.bundled import require_bundled_generator
from lipdeploy.faces import training_images
from lipdeploy.gan_imp import checkpoint_discriminator, find_gan_ticket
from lipdeploy.gan_train import GanTrainConfig
from lipdeploy.generator_prior import load_generator
from lipdeploy.latent_fit import LatentFitConfig, fit_latent, per_image_metrics
from lipdeploy.sensing import GaussianOperator, MaskOperator, back_projection, least_squares, simulate_measurements
from lipdeploy.ticket import Ticket, load_ticket

from ..timing import median_ms
from .gan import GanTask, chain_of


def generator_path(bench: Any) -> Path:
    return Path(bench.preset.generator) if bench.preset.generator else require_bundled_generator()


def dense_generator(bench: Any) -> Ticket:
    if "generator" not in bench.cache:
        bench.cache["generator"] = load_generator(generator_path(bench))
    return bench.cache["generator"]


def eval_faces(bench: Any) -> torch.Tensor:
    """The held-out faces every fit restores (the first ``eval_images`` of ``eval_data``)."""
    if "faces" not in bench.cache:
        res = dense_generator(bench).arch.resolution
        bench.cache["faces"] = training_images(bench.preset.eval_data, res)[: bench.preset.eval_images]
    return bench.cache["faces"]


def find_chain(bench: Any, kind: str, folder: Path) -> list[Path]:
    """GAN IMP (``imp``) or its random baseline (``random``) to ``preset.rounds`` rounds in ``folder`` (resumable:
    it continues after the last complete round file)."""
    p = bench.preset
    generator = dense_generator(bench)
    disc = checkpoint_discriminator(generator_path(bench), generator.arch, fresh=False, seed=p.seed)
    train = training_images(p.train_data, generator.arch.resolution)
    if p.train_images is not None:
        train = train[: p.train_images]
    config = GanTrainConfig(epochs=p.epochs, batch=64, seed=p.seed, device=p.device)
    return find_gan_ticket(generator, disc, train, folder, p.rounds, config, random=kind == "random",
                           data_name=p.train_data, log=bench.log)  # fmt: skip


def method_ticket(bench: Any, method: str) -> tuple[Ticket, str]:
    """(ticket, which weights to build) of ``method``: dense, ``imp-R`` / ``random-R`` fitted, ``imp-init-R`` init."""
    kind = chain_of(method)
    if kind is None:
        return dense_generator(bench), "init"
    paths = bench.run_chain(kind)  # recorded already: only reads the round files
    ticket = load_ticket(paths[int(method.rsplit("-", 1)[1])])
    return ticket, "init" if method.startswith("imp-init-") else "fitted"


def measure(task: GanTask, faces: torch.Tensor):
    """The seeded measurements of the held-out faces for ``task``."""
    if task.drop:
        res = faces.shape[-1]
        mask = (torch.rand(1, 1, res, res, generator=torch.Generator().manual_seed(0)) >= task.drop).float()
        return simulate_measurements(faces, MaskOperator(mask.expand(1, 3, res, res)))
    operator = GaussianOperator(faces[0].numel(), task.measurements - task.outliers, seed=0)
    return simulate_measurements(faces, operator, 0.01, task.outliers, seed=1)


def quality_row(bench: Any, method: str, task: GanTask) -> dict[str, Any]:
    """One generator's latent fits of every held-out face (one batch), with the per-face PSNRs."""
    p = bench.preset
    ticket, weights = method_ticket(bench, method)
    model = ticket.build(weights).eval()
    faces = eval_faces(bench)
    config = LatentFitConfig(objective=task.objective, iters=p.iters, lr=p.lr, restarts=p.restarts, seed=p.seed,
                             mom_batch=20, device=p.device)  # fmt: skip
    res = fit_latent(model, measure(task, faces), config, gt=faces)
    return {
        "metric": "psnr", "kind": "quality", "method": method, "sparsity": round(ticket.sparsity, 4),
        "task": task.name, "mse": res.mse, "psnr": res.psnr, "ssim": res.ssim,
        "psnr_per_image": [round(r["psnr"], 3) for r in res.per_image], "seconds": round(res.seconds, 2),
        "settings": config.to_dict(), "images": int(faces.shape[0]),
    }  # fmt: skip


def baseline_rows(bench: Any, task: GanTask) -> list[dict[str, Any]]:
    """Back-projection and least squares of a CS task (on the uncorrupted rows), per face."""
    faces = eval_faces(bench)
    meas = measure(task, faces)
    rows = []
    for name, image in (("back-projection", back_projection(meas)), ("least-squares", least_squares(meas))):
        per_image = per_image_metrics(image.view(faces.shape), faces)
        mean = {k: sum(r[k] for r in per_image) / len(per_image) for k in ("mse", "psnr", "ssim")}
        rows.append({"metric": "psnr", "kind": "quality", "method": name, "sparsity": None, "task": task.name,
                     **mean, "psnr_per_image": [round(r["psnr"], 3) for r in per_image]})  # fmt: skip
    return rows


def latency_row(bench: Any, method: str, runner: str) -> dict[str, Any]:
    """Forward latency at batch 1 of the compacted PyTorch module (``torch-cpu``) or of its ONNX export in ONNX
    Runtime (``ort-cpu``), one thread, with the compacted size."""
    # onnx and ONNX Runtime: only the latency jobs pay for their import
    from lipdeploy.export import export_onnx, ort_session
    from lipdeploy.export.onnx_export import export_module

    ticket, weights = method_ticket(bench, method)
    module, _ = export_module(ticket, weights, "image")
    z = torch.randn(1, ticket.arch.latent_dim, generator=torch.Generator().manual_seed(0))
    params = sum(x.numel() for x in module.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.onnx"
        export_onnx(ticket, path, weights=weights, weights_format="dense")
        size = path.stat().st_size
        if runner == "torch-cpu":
            with torch.no_grad():
                ms = median_ms(lambda: module(z), warmup=5, repeats=bench.preset.repeats)
        else:
            session = ort_session(path, threads=1)
            feed = {session.get_inputs()[0].name: z.numpy()}
            ms = median_ms(lambda: session.run(None, feed), warmup=5, repeats=bench.preset.repeats)
    return {
        "metric": "latency_ms", "kind": "latency", "method": method, "runner": runner, "ms": round(ms, 4),
        "sparsity": round(ticket.sparsity, 4), "compacted_parameters": params, "parameter_bytes": 4 * params,
        "onnx_bytes": size, "threads": 1,
    }  # fmt: skip
