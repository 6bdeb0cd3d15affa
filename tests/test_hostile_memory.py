"""Issue 26: one memory estimator that counts everything a command holds (weights, gradients, Adam's two moments, the
copies, the activations), checked before the first allocation; and the README's memory budget, measured.

The budget is measured in child processes under an address-space limit (``RLIMIT_AS``): a command that allocated
what it was asked to would die or print a traceback; one that refuses first exits 2 with one line, and its peak
resident memory (``ru_maxrss``) is read back. No sleeps, no timing.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from lipdeploy.errors import InputError
from lipdeploy.limits import (
    INFERENCE_COPIES,
    TRAINING_COPIES,
    activation_bytes,
    check_work,
    estimate_memory,
    parameter_count,
)
from lipdeploy.networks import SkipSpec

# README, "Memory": refusing a hostile input (a bomb, a 4096-channel network, a ConstantOfShape graph) peaks below
# this, interpreter and torch included (~0.3 GB of it).
REFUSAL_BUDGET_BYTES = 1 * 2**30
ADDRESS_LIMIT_BYTES = 6 * 2**30  # torch's CPU import maps ~2 GB of address space; anything big fails past this


def test_estimate_counts_weights_gradients_adam_copies_and_activations():
    arch = SkipSpec()
    w = 4 * parameter_count(arch)
    assert parameter_count(arch) > 2_217_831  # parameters plus BatchNorm buffers
    est = estimate_memory(arch, 128, 128, training=True)
    assert (est.weights, est.gradients, est.optimizer) == (w, w, 2 * w)
    assert est.copies == TRAINING_COPIES * w
    assert est.activations == activation_bytes(arch, 128, 128, training=True)
    assert est.total == 8 * w + est.activations
    inference = estimate_memory(arch, 128, 128, training=False)
    assert inference.gradients == inference.optimizer == 0 and inference.copies == INFERENCE_COPIES * w


def test_4096_channels_refused_without_allocating(monkeypatch):
    """The case that was killed by the kernel at 23.8 GB: refused from the architecture alone (meta device)."""
    monkeypatch.setattr("lipdeploy.limits.available_memory_bytes", lambda: 24 * 2**30)
    arch = SkipSpec(channels_down=(4096,) * 5, channels_up=(4096,) * 5, channels_skip=(4,) * 5)
    with pytest.raises(InputError, match=r"needs about \d+\.\d GiB \(weights"):
        check_work(arch, 0, 0, training=True, what="fitting")


def _child(argv: list[str], tmp: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``lipdeploy ARGV`` under :data:`ADDRESS_LIMIT_BYTES`; (result, the child's own peak RSS in bytes, which it
    writes at exit)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT_BYTES, ADDRESS_LIMIT_BYTES))

    peak_file = tmp / "peak.txt"
    code = (
        "import atexit, resource, sys\n"
        f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF)"
        ".ru_maxrss)))\n"
        f"sys.argv = ['lipdeploy', *{argv!r}]\n"
        "from lipdeploy.cli import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, preexec_fn=limit,
                       cwd=tmp)  # fmt: skip
    peak = 1024 * int(peak_file.read_text())  # KiB on Linux
    peak_file.unlink()
    return r, peak


def _one_line(r: subprocess.CompletedProcess, text: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and text in errors[0] and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_refusals_stay_within_the_memory_budget(tmp_path):
    """README budget: a 4096-channel restore, a deflated bomb ticket and a ConstantOfShape graph are each refused
    in one line under a 6 GB address-space limit, peaking below :data:`REFUSAL_BUDGET_BYTES`."""
    from test_hostile_files import deflated_bomb

    bomb = deflated_bomb(tmp_path / "bomb.pt", inflated_bytes=256 * 2**20)
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])
    shape = helper.make_tensor("s", TensorProto.INT64, [4], [1, 3, 10000, 10000])
    node = helper.make_node("ConstantOfShape", ["s"], ["image"], value=helper.make_tensor("v", 1, [1], [0.5]))
    graph = helper.make_graph([node], "g", [], [image], initializer=[shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c.onnx")
    channels = ",".join(["4096"] * 5)
    cases = [
        (["restore", "skimage:coffee", "--simulate", "--task", "denoise", "--iters", "2", "--channels", channels,
          "-o", "r.png"], "GiB"),
        (["inspect", str(bomb)], "decompression bomb"),
        (["run", str(tmp_path / "c.onnx"), "-o", "o.png"], "too large"),
    ]  # fmt: skip
    for argv, text in cases:
        r, peak = _child(argv, tmp_path)
        _one_line(r, text)
        assert peak < REFUSAL_BUDGET_BYTES, (argv[0], peak / 2**30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.pt", "c.onnx"]


@pytest.mark.parametrize(
    "extra",
    [["--task", "sr", "--factor", "8"], ["--task", "denoise", "--resize", "4"], ["--task", "denoise", "--simulate",
     "--resize", "3000x4000"]],
)  # fmt: skip
def test_resize_and_factor_8_counted_before_fitting(tmp_path, monkeypatch, extra):
    """The runs that reached 5.8-9.7 GB: the estimate at the output size (8x the observation for --factor 8, the
    resized size for --resize) is refused in one line on a 24 GB machine, before anything is fitted."""
    from click.testing import CliRunner

    from lipdeploy.cli import cli

    monkeypatch.setattr("lipdeploy.limits.available_memory_bytes", lambda: 24 * 2**30)
    r = CliRunner().invoke(cli, ["restore", "skimage:coffee", *extra, "--iters", "1", "-o", str(tmp_path / "r.png")])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "this fit needs about" in errors[0] and "activations" in errors[0], r.output
    assert list(tmp_path.iterdir()) == []
