"""Issue 18, "UX and ecosystem": one test group per numbered part (fast: tiny networks, few iterations, <= 64x64)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest
import torch
from click.testing import CliRunner

from lipdeploy.cli import COMMANDS, cli
from lipdeploy.cli.options import parse_resize, shrink_image
from lipdeploy.fit import FitConfig, fit, simulate
from lipdeploy.images import centre_crop, resize_image, save_image, standard_image
from lipdeploy.networks import DeepDecoderSpec
from lipdeploy.tasks import make_task
from lipdeploy.testing import tiny_skip
from lipdeploy.ticket import ticket_from_model

TINY_DD = ["--arch", "dd", "--k", "8", "--depth", "2"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ux")
    clean = standard_image("coffee")[:, :, 100:164, 200:264].contiguous()  # 64x64
    save_image(clean, d / "clean.png")
    spec = tiny_skip()
    torch.manual_seed(0)
    ticket_from_model(spec.build(), spec).save(d / "tiny.pt")
    return {"dir": d, "clean": d / "clean.png", "ticket": d / "tiny.pt"}


# ------------------------------------------------------------------------------ 1. --crop / --resize, expected time


def test_crop_and_resize_helpers():
    img = torch.rand(1, 3, 40, 60)
    crop, (top, left) = centre_crop(img, 20, 30)
    assert crop.shape == (1, 3, 20, 30) and (top, left) == (10, 15)
    assert torch.equal(crop, img[:, :, 10:30, 15:45])
    assert resize_image(img, 20, 30).shape == (1, 3, 20, 30)
    assert parse_resize("0.5", 40, 60) == (20, 30) and parse_resize("16x32", 40, 60) == (16, 32)
    out, box, msg = shrink_image("x.png", img, "32x48", "0.5")
    assert out.shape == (1, 3, 16, 24) and box == (4, 6) and "cropped" in msg and "resized" in msg


def test_crop_larger_than_image_is_a_one_line_error(files, tmp_path):
    r = run("restore", files["clean"], "--simulate", "--task", "denoise", *TINY_DD, "--crop", "128x128",
            "-o", tmp_path / "o.png", "--iters", 1)  # fmt: skip
    assert r.exit_code == 2 and r.output.strip().startswith("error:") and "--crop" in r.output


def test_restore_crop_prints_expected_time_and_records_it(files, tmp_path):
    out = tmp_path / "crop.png"
    r = run("restore", files["clean"], "--simulate", "--task", "denoise", *TINY_DD, "--crop", "32x32",
            "-o", out, "--iters", 50)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "expected" in r.output and "ms/step measured" in r.output
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["output_size"] == [32, 32] and rec["image_size"]["original"] == [64, 64]
    assert "cropped the centre 32x32" in rec["shrink"]
    assert out.with_suffix(".observation.png").is_file()  # documented in --help
    assert "OUT.observation.png" in run("restore", "--help").output


def test_only_commands_that_use_a_fit_backend_offer_one():
    """IMP always fits the masked network (pruning ranks weights in the reference layout): find has no --backend."""
    assert "--backend" in run("restore", "--help").output
    assert "--backend" not in run("find", "--help").output and "--device" in run("find", "--help").output


def test_find_resize(files, tmp_path):
    r = run("find", files["clean"], "--task", "denoise", *TINY_DD, "--resize", "0.5", "--rounds", 1, "--iters", 2,
            "-o", tmp_path / "t", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "t" / "imp.json").read_text())
    assert summary  # rounds written


# ------------------------------------------------------------------------------ 2. output averaging


def _tiny_fit(mode: str, ema: float, iters: int = 100):
    clean = standard_image("coffee")[:, :, 100:132, 200:232].contiguous()
    task = make_task("denoise")
    obs = simulate(task, clean, seed=0)
    torch.manual_seed(0)
    spec = DeepDecoderSpec(k=16, depth=2)
    ticket = ticket_from_model(spec.build(), spec)
    cfg = FitConfig(iters=iters, ema=ema, ema_mode=mode, backtrack_db=0, log_every=1000)
    return fit(ticket, obs, cfg, gt=clean, task=task)


def test_debiased_average_is_not_the_untrained_network():
    """Asserted on a 100-iteration fit of a tiny deep decoder to a 32x32 crop (sigma 25):

    - the first (untrained) output's weight in the result is the closed form: paper 0.99^99 (37%), debiased
      0.99^99 * 0.01 / (1 - 0.99^100) (0.6%);
    - the debiased average is within 1 dB of the raw (unaveraged) output, and at least 3 dB above the paper's average;
    - the debiased output is not worse than the noisy observation it was fitted to.
    """
    paper, debiased, raw = _tiny_fit("paper", 0.99), _tiny_fit("debiased", 0.99), _tiny_fit("paper", 0.0)
    assert paper.initial_output_weight == pytest.approx(0.99**99, rel=1e-6)
    assert debiased.initial_output_weight == pytest.approx(0.99**99 * 0.01 / (1 - 0.99**100), rel=1e-6)
    assert debiased.psnr_final >= raw.psnr_final - 1.0
    assert debiased.psnr_final >= paper.psnr_final + 3.0
    assert debiased.psnr_final >= debiased.input_psnr
    assert debiased.metrics_record()["ema_mode"] == "debiased" and paper.ema_mode == "paper"


def test_paper_average_unchanged_and_default():
    assert FitConfig().ema_mode == "paper"  # the library (and so the bench presets) keep the paper's average
    a, b = _tiny_fit("paper", 0.99, iters=5), _tiny_fit("paper", 0.99, iters=5)
    assert torch.equal(a.output, b.output)


def test_restore_records_ema_mode_and_warns_for_paper(files, tmp_path):
    out = tmp_path / "p.png"
    r = run("restore", files["clean"], "--simulate", "--task", "denoise", *TINY_DD, "-o", out, "--iters", 5,
            "--ema-mode", "paper")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "untrained network" in r.output  # 0.99^4 of the output is the untrained one: said, not silent
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["settings"]["ema_mode"] == "paper" and rec["metrics"]["ema_mode"] == "paper"
    r = run("restore", files["clean"], "--simulate", "--task", "denoise", *TINY_DD, "-o", tmp_path / "d.png",
            "--iters", 5, "--json")  # fmt: skip
    rec = json.loads(r.stdout)
    assert rec["settings"]["ema_mode"] == "debiased"  # the CLI's default


# ------------------------------------------------------------------------------ 3. bench output


def test_bench_job_lines_have_an_eta():
    from lipdeploy.bench.harness.bench import job_line

    line = job_line(2, 10, "quality/dense/coffee", [30.0, 60.0])
    assert line.startswith("[2/10] done quality/dense/coffee (60.0 s)") and "ETA 6 min" in line
    assert "ETA" not in job_line(3, 3, "k", [1.0])


def test_a_process_first_latency_timing_is_made_twice_and_the_first_thrown_away(monkeypatch):
    """The first model timed in a process timed ~20% slow (benchmark rows of 2026-11-27): latency_rows measures a
    process's first model twice and records the second timing; later models are measured once."""
    from pathlib import Path
    from types import SimpleNamespace

    from lipdeploy.bench.harness import measure as M

    timings = iter([97.0, 75.0, 76.0])
    calls = []

    def fake_measure(t, runner, *args):
        calls.append(runner)
        return {"forward_ms": next(timings)}

    arch = SimpleNamespace(stride=32)
    preset = SimpleNamespace(images=("a",), latency_warmup=1, latency_repeats=1)
    ticket = SimpleNamespace(arch=arch)
    ws = SimpleNamespace(preset=preset, out=Path("."), size=lambda: (128, 128), method_ticket=lambda m, img: ticket)
    job = SimpleNamespace(method=SimpleNamespace(name="dense"), runner="torch-cpu")
    monkeypatch.setattr(M, "measure", fake_measure)
    monkeypatch.setattr(M, "method_fields", lambda m, t: {})
    monkeypatch.setattr(M, "row", lambda ws, m, image, metric, value, unit, **kw: {"metric": metric, "value": value})
    monkeypatch.setattr(M, "_burned_in", False)
    assert [r["value"] for r in M.latency_rows(ws, job)] == [75.0] and len(calls) == 2
    assert [r["value"] for r in M.latency_rows(ws, job)] == [76.0] and len(calls) == 3


def test_latency_spread_and_ci_has_no_verdict():
    from lipdeploy.bench.harness.latency import timed_ms
    from lipdeploy.bench.tables import resource_table
    from lipdeploy.bench.verdicts import claims

    stats = timed_ms(lambda: sum(range(1000)), warmup=1, repeats=5)
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
    rows = [
        {"method": "dense", "runner": "torch-cpu", "metric": "forward_ms", "value": 10.0, "image": "-",
         "loaded": True},
    ]  # fmt: skip
    table = "\n".join(resource_table(rows))
    assert "10.0*" in table and "load average exceeded" in table
    lines = claims([], {"name": "ci"})
    assert len(lines) == 1 and "no verdicts" in lines[0] and "holds" not in lines[0]


def test_results_lock_uses_filelock(tmp_path):
    from lipdeploy.bench.harness.bench import _exclusive

    with _exclusive(tmp_path / "f"):
        assert (tmp_path / "f" / ".lock").exists()


# ------------------------------------------------------------------------------ 4. consistency


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_the_shared_flags_help_and_examples(name):
    cmd = cli.get_command(None, name)
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    assert {"-q", "--quiet", "--json", "-o", "--output"} <= opts, name
    for p in cmd.params:
        if p.param_type_name == "option" and not p.hidden:
            assert p.help, f"{name} {p.opts} has no help"
    out = run(name, "--help").output
    assert "Examples:" in out and out.strip().splitlines()[-1].strip().startswith("lipdeploy ")


@pytest.mark.parametrize("name", ["inspect", "export", "restore", "find", "bench"])
def test_example_wherever_a_ticket_is_taken(name):
    cmd = cli.get_command(None, name)
    assert "--example" in {o for p in cmd.params for o in getattr(p, "opts", [])}


def test_top_level_help_is_whole_and_light():
    out = run("--help").output
    for name, entry in COMMANDS.items():
        assert f"{name}  " in out and entry.summary in out  # not cut off
    code = (
        "import sys; from lipdeploy.cli import main; sys.argv = ['lipdeploy', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "lipdeploy", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "Commands:" in res.stdout


# ------------------------------------------------------------------------------ 5. export


def test_export_names_dims_and_reports_int8_error(tmp_path, files):
    out = tmp_path / "q.onnx"
    r = run("export", files["ticket"], "-o", out, "--quantize", "int8", "--test-size", "32x32")
    assert r.exit_code == 0, r.output
    manifest = json.loads(out.with_name("q.manifest.json").read_text())
    psnr = manifest["parity"]["precision_psnr_db"]
    assert psnr is not None and f"PSNR {psnr:.2f} dB" in r.output and "max abs" in r.output
    if psnr < 35:
        assert "warning:" in r.output
    dims = [d.dim_param or d.dim_value for d in onnx.load(out).graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    assert "within 1e-4" in run("export", "--help").output  # the fp32 claim, beside what fp16 / int8 reach


# ------------------------------------------------------------------------------ 6. inspect


def test_inspect_readable_names_and_short_provenance(tmp_path):
    r = run("inspect", "--example", "--size", "64x64", "--json", "-o", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    labels = [row["label"] for row in report["layers"]]
    assert labels[0] == "level 1, skip branch, conv" and labels[-1] == "output, 1x1 conv"
    assert "level 3, deeper branch, conv 2" in labels and len(set(labels)) == len(labels)
    assert json.loads((tmp_path / "r.json").read_text())["layers"][0]["label"] == labels[0]
    table = run("inspect", "--example", "--size", "64x64").output
    assert "level 5, after concat, 1x1 conv" in table and "provenance" in table and "see --json" in table
    assert run("inspect").exit_code == 2  # neither TICKET nor --example


# ------------------------------------------------------------------------------ 7. plots


def test_series_styles_are_distinct_and_every_image_is_plotted(tmp_path):
    from lipdeploy.bench.plots import plots, series_styles

    names = [f"method-{i}" for i in range(15)]
    styles = series_styles(names)
    assert len({(str(s["color"]), s["marker"]) for s in styles.values()}) == 15
    assert len({str(s["color"]) for s in styles.values()}) == 15  # 15 series, 15 colours (tab20)
    (tmp_path / "curves").mkdir()
    for image in ("astronaut", "coffee", "chelsea"):
        for m in ("dense", "lip-89"):
            curve = {"image": image, "method": m, "curve": [[i, float(i), 20.0 + i] for i in range(5)]}
            (tmp_path / "curves" / f"{m}-{image}.json").write_text(json.dumps(curve))
    made = plots(tmp_path, [])
    assert "psnr_over_time.png" in made and (tmp_path / "psnr_over_time.png").stat().st_size > 0


# ------------------------------------------------------------------------------ 8. small


def test_finished_chain_says_complete(files, tmp_path):
    args = ["find", files["clean"], "--task", "denoise", *TINY_DD, "--crop", "32x32", "--rounds", 1, "--iters", 2,
            "-o", tmp_path / "chain"]  # fmt: skip
    assert run(*args, "--quiet").exit_code == 0
    r = run(*args)
    assert r.exit_code == 0 and "nothing to do" in r.output and "continuing from round" not in r.output


def test_python_api_helper_finds_the_bundled_ticket():
    import lipdeploy
    from lipdeploy.bundled import bundled_ticket_path

    assert lipdeploy.load_ticket(bundled_ticket_path()).density < 0.2


@pytest.mark.skipif(os.environ.get("LIPDEPLOY_SLOW") != "1", reason="runs the README's Python example (~1 min)")
def test_readme_python_example_runs(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = text.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
