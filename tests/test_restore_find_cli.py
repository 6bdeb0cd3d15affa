"""`lipdeploy restore` and `lipdeploy find` end to end (click's CliRunner), including bad input -> exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lipdeploy.cli import cli
from lipdeploy.images import load_image, save_image, standard_image
from lipdeploy.testing import tiny_skip, write_ticket_files
from lipdeploy.ticket import load_ticket, ticket_from_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    clean = standard_image("coffee")[:, :, 100:132, 200:232].contiguous()
    save_image(clean, d / "clean.png")
    noisy = (clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255).clamp(0, 1)
    save_image(noisy, d / "noisy.png")
    spec = tiny_skip()
    torch.manual_seed(0)
    ticket_from_model(spec.build(), spec).save(d / "tiny.pt")
    (d / "paper_pair").mkdir()
    paper = write_ticket_files(d / "paper_pair")  # the paper code's mask + init pair, among other formats
    return {"dir": d, "clean": d / "clean.png", "noisy": d / "noisy.png", "ticket": d / "tiny.pt", "paper": paper}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_restore_writes_png_and_labelled_json(files, tmp_path):
    out = tmp_path / "den.png"
    r = run("restore", files["noisy"], "--task", "denoise", "--ticket", files["ticket"], "--gt", files["clean"],
            "-o", out, "--iters", 6, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "PSNR best over iterations (oracle)" in r.output and "PSNR at the final iteration" in r.output
    assert load_image(out).shape == (1, 3, 32, 32)
    rec = json.loads(out.with_suffix(".json").read_text())
    m = rec["metrics"]
    assert "oracle" in m["psnr_best_label"] and "final iteration" in m["psnr_final_label"]
    assert (
        isinstance(m["psnr_best"], float) and isinstance(m["psnr_final"], float) and m["psnr_best"] >= m["psnr_final"]
    )
    assert m["psnr_observation_input"] == pytest.approx(20.5, abs=1.5)
    assert rec["settings"]["iters"] == 6 and rec["settings"]["lr"] == 0.01 and rec["settings"]["ema"] == 0.99
    assert rec["settings"]["input_noise_std"] == pytest.approx(1 / 30)
    assert rec["timing"]["iterations"] == 6 and rec["timing"]["seconds"] > 0
    assert rec["prior"]["density"] == 1.0
    # existing output without --force: refused; with --force: fine
    r = run("restore", files["noisy"], "--task", "denoise", "--ticket", files["ticket"], "-o", out, "--iters", 1)
    assert r.exit_code == 2 and r.output.strip().startswith("error:") and "--force" in r.output
    r = run("restore", files["noisy"], "--task", "denoise", "--ticket", files["ticket"], "-o", out, "--iters", 1,
            "--force", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output


def test_restore_paper_pair_dd_inpaint_sr(files, tmp_path):
    paper = files["paper"]["paper-masks"]
    save_image(standard_image("coffee")[:, :, 100:136, 200:240], tmp_path / "odd.png")
    r = run("restore", tmp_path / "odd.png", "--simulate", "--task", "inpaint", "--ticket", paper["path"],
            "--weights", paper["weights"], "-o", tmp_path / "inp.png", "--iters", 2, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "cropped 40x36 to 40x32" in r.output
    rec = json.loads((tmp_path / "inp.json").read_text())
    assert rec["prior"]["density"] == pytest.approx(0.5, abs=0.01) and rec["task"]["drop"] == 0.5
    assert (tmp_path / "inp.observation.png").exists()
    r = run("restore", files["noisy"], "--task", "denoise", "--arch", "dd", "--k", 8, "--depth", 3,
            "-o", tmp_path / "dd.png", "--iters", 2, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "dd.json").read_text())["prior"]["arch"]["kind"] == "dd"
    lr = load_image(files["clean"])[:, :, :16, :16]
    save_image(lr, tmp_path / "lr.png")
    r = run("restore", tmp_path / "lr.png", "--task", "sr", "--factor", 4, "--ticket", files["ticket"],
            "-o", tmp_path / "sr.png", "--iters", 2, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert load_image(tmp_path / "sr.png").shape == (1, 3, 64, 64)
    mask = torch.ones(1, 3, 32, 32)
    mask[:, :, 8:16] = 0
    save_image(mask, tmp_path / "mask.png")
    r = run("restore", files["noisy"], "--task", "inpaint", "--mask", tmp_path / "mask.png",
            "--ticket", files["ticket"], "-o", tmp_path / "inp2.png", "--iters", 2, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "inp2.json").read_text())["task"]["known_fraction"] == 0.75


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png", "--task", "denoise", "--arch", "dip"], "no such file"),
        (["NOISY", "--task", "denoise", "--ticket", "nonexistent.pt"], "no such file"),
        (["NOISY", "--task", "denoise", "--arch", "dd", "--k", "0"], "--k"),
        (["NOISY", "--task", "denoise", "--arch", "dd", "--depth", "12"], "--depth"),
        (["SMALL", "--task", "denoise", "--arch", "dip"], "too small"),
        (["NOISY", "--task", "inpaint", "--ticket", "TICKET"], "--mask"),
        (["NOISY", "--task", "denoise", "--ticket", "TICKET", "--arch", "dip"], "not both"),
        (["NOISY", "--task", "denoise", "--ticket", "TICKET", "--iters", "0"], "--iters"),
    ],
)
def test_restore_bad_input_exit_2_one_line(files, tmp_path, args, message):
    small = tmp_path / "small.png"
    save_image(torch.rand(1, 3, 20, 20), small)
    subst = {"NOISY": files["noisy"], "SMALL": small, "TICKET": files["ticket"]}
    args = [str(subst.get(a, a)) for a in args]
    r = run("restore", *args, "-o", tmp_path / "x.png", "--quiet")
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], r.output


def test_find_cli_rounds_and_resume(files, tmp_path):
    out = tmp_path / "imp"
    args = ["find", files["clean"], "--task", "denoise", "--channels", "8,16,16", "--iters", 2, "-o", out, "--quiet"]
    r = run(*args, "--rounds", 1, "--granularity", "kernel")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["imp.json", "round_00.pt", "round_01.pt"]
    t = load_ticket(out / "round_01.pt")
    assert t.density == pytest.approx(0.8, abs=0.01) and t.provenance["granularity"] == "kernel"
    summary = json.loads((out / "imp.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [0, 1]
    r = run(*args, "--rounds", 2, "--granularity", "kernel")
    assert r.exit_code == 0, r.output
    assert "continuing from round 2" in r.output
    assert load_ticket(out / "round_02.pt").density == pytest.approx(0.64, abs=0.01)
    r = run(*args, "--rounds", 2, "--rate", "1.5")
    assert r.exit_code == 2 and "error:" in r.output
