"""Issue 26: options that passed validation and then crashed. Each is refused at parse time (or before any work) in
one ``error:`` line, exit 2, with nothing written: one shared seed type, one finite-float type, run's thread bound for
bench, --size limits for inspect, --backend checked against --device."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import one_line_error, run

from lipdeploy.limits import MAX_SEED, max_threads

RESTORE = ["restore", "skimage:coffee", "--simulate", "--task", "denoise", "--crop", "64x64", "--iters", "1"]
FIND = ["find", "skimage:coffee", "--task", "denoise", "--crop", "64x64", "--iters", "1", "--rounds", "1"]


@pytest.mark.parametrize("seed", [2**64, 2**63, -1, 10**30])
def test_seeds_beyond_63_bits_refused_in_every_command(tmp_path, seed):
    for args in (
        [*RESTORE, "-o", tmp_path / "r.png"],
        [*FIND, "-o", tmp_path / "f"],
        ["export", "--example", "-o", tmp_path / "m.onnx"],
        ["run", tmp_path / "m.onnx", "-o", tmp_path / "o.png"],
    ):
        one_line_error(run(*args, "--seed", seed), "--seed must be an integer between 0 and 2**63 - 1")
    assert list(tmp_path.iterdir()) == []


def test_largest_seed_accepted():
    from lipdeploy.cli.options import SEED

    assert SEED.convert(str(MAX_SEED), None, None) == MAX_SEED


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize(
    ("command", "flag"),
    [("restore", "--input-noise"), ("restore", "--lr"), ("restore", "--ema"), ("restore", "--sigma"),
     ("find", "--rate"), ("find", "--lr"), ("find", "--drop")],
)  # fmt: skip
def test_non_finite_float_options_refused(tmp_path, command, flag, value):
    base = RESTORE if command == "restore" else FIND
    out = tmp_path / ("r.png" if command == "restore" else "f")
    one_line_error(run(*base, flag, value, "-o", out), f"{flag} must be a finite number")
    assert list(tmp_path.iterdir()) == []


def test_negative_input_noise_refused(tmp_path):
    one_line_error(run(*RESTORE, "--input-noise", "-0.5", "-o", tmp_path / "r.png"), "--input-noise must be >= 0")


@pytest.mark.parametrize("threads", [1_000_000, max_threads() + 1, -1])
def test_bench_threads_bounded_like_run(tmp_path, threads):
    one_line_error(run("bench", "--preset", "ci", "--threads", threads, "-o", tmp_path / "b"), "--threads must be")
    one_line_error(run("run", tmp_path / "m.onnx", "--threads", threads, "-o", tmp_path / "o.png"), "--threads")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("size", "text"), [("32x32", "at least 64 pixels"), ("100000x100000", "too large"),
                                            ("16384x16384", "too large")])  # fmt: skip
def test_inspect_size_bounded(size, text):
    one_line_error(run("inspect", "--example", "--size", size), text)


def test_triton_backend_on_cpu_without_interpreter_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for backend in ("triton-csr", "triton-kernel", "triton-bsr"):
        r = run(*RESTORE, "--backend", backend, "--device", "cpu", "-o", tmp_path / "r.png")
        one_line_error(r, f"--backend {backend} cannot run on --device cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_device_without_cuda_refused(tmp_path):
    one_line_error(run(*RESTORE, "--device", "cuda", "-o", tmp_path / "r.png"), "no CUDA device")


def test_resize_target_within_image_limits(tmp_path):
    one_line_error(run(*RESTORE[:-4], "--resize", "16", "-o", tmp_path / "r.png"), "--resize")
    one_line_error(run(*RESTORE, "--resize", "20000x20000", "-o", tmp_path / "r.png"), "too large")
    assert list(tmp_path.iterdir()) == []
