"""The ``gan`` benchmark's presets with the settings ``lipdeploy bench --preset gan`` does not expose: a quick smoke
run and the paper's protocol on a checkpoint and image folders of one's own.

    lipdeploy bench --preset gan -o bench/results/gan            # the committed run (resumable, --shard, --executor)
    python -m lipdeploy.bench.cpu.gan --quick -o /tmp/gan_quick   # 2 rounds, 2 epochs, 30 iterations
    python -m lipdeploy.bench.cpu.gan --paper --generator celebaHQ_s6_i80000-6196db68.pth --train-data TRAIN/ \
        --eval-data TEST/ -o gan_paper

Both run the same jobs through the same harness (:mod:`lipdeploy.bench.harness.gan`), so a folder resumes with
either command as long as the settings stay.

``--paper`` (the ``gan-paper`` preset): the public celebA-HQ-256 generator, CelebA-HQ (the paper retrains on the first
40% of its images): 30 WGAN-GP epochs per round (batch 64), latent fits of 1500 steps at lr 0.01 with one restart,
1000 Gaussian rows of which 20 are outliers (the paper's robust CS) with median of means and least squares, the same
without outliers, and inpainting; every method on every task, on CUDA. Its cost is dominated by GAN IMP: 15 rounds
(IMP 0-7, random 1-7) of 30 epochs, i.e. 15 x 30 x N / 64 WGAN-GP steps of the 23M-parameter generator and its
discriminator at 256 px for N training images (N = 12,000 for 40% of CelebA-HQ: 84,000 steps); it was not run here
(no GPU in this session), so time a round on the target GPU first: each round's seconds are printed and recorded in
its ticket's provenance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lipdeploy.bench.harness.gan import GAN_PRESETS, GanBench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lipdeploy.bench.cpu.gan", description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True, help="results folder")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 2 epochs, 30 iterations: a smoke test")
    ap.add_argument("--paper", action="store_true", help="the paper's protocol (module docstring)")
    ap.add_argument("--generator", default=None, help="zoo checkpoint (default: the demo generator)")
    ap.add_argument("--train-data", default=None, help="GAN IMP's training images (a folder)")
    ap.add_argument("--eval-data", default=None, help="held-out images to restore (a folder)")
    ap.add_argument("--device", default=None, help="where GAN IMP and the latent fits run (cpu or cuda)")
    args = ap.parse_args(argv)
    if args.paper:
        if not (args.generator and args.train_data and args.eval_data):
            ap.error("--paper needs --generator, --train-data and --eval-data (the checkpoint and image folders)")
        preset = GAN_PRESETS["gan-paper"].replace(generator=args.generator, train_data=args.train_data,
                                                  eval_data=args.eval_data, device=args.device or "cuda")  # fmt: skip
    else:
        torch.set_num_threads(1)  # the demo's tiny networks: threads only add contention
        preset = GAN_PRESETS["gan"]
        if args.quick:
            preset = preset.replace(name="gan-quick", rounds=2, epochs=2, iters=30, repeats=5)
    stats = GanBench(preset, args.output, log=print).run(progress=True)
    print(f"ran {stats.ran}, skipped {stats.skipped} (already done), {len(stats.failed)} failed; {stats.seconds:.1f} s")
    for f in stats.failed:
        print(f"  failed: {f}")
    return 1 if stats.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
