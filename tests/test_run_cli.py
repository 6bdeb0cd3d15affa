"""``lipdeploy export`` and ``lipdeploy run`` from the command line: the happy path and bad input (exit 2, one line)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lipdeploy.bundled import bundled_ticket_path
from lipdeploy.cli import cli
from lipdeploy.testing import write_ticket_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_ticket_files(tmp_path_factory.mktemp("cli"), amount=0.5)


def _one_line_error(result, text):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.output


def test_export_then_run(files, tmp_path):
    runner = CliRunner()
    model = tmp_path / "m.onnx"
    res = runner.invoke(cli, ["export", str(files["own-pt"]["path"]), "-o", str(model)])
    assert res.exit_code == 0, res.output
    assert model.is_file() and (tmp_path / "m.manifest.json").is_file() and "parity" in res.output
    png = tmp_path / "img.png"
    res = runner.invoke(cli, ["run", str(model), "--size", "32x64", "--seed", "1", "-o", str(png), "--repeat", "2"])
    assert res.exit_code == 0, res.output
    assert "median" in res.output and "ms" in res.output
    img = np.asarray(Image.open(png))
    assert img.shape == (32, 64, 3)


def test_embedded_model_runs_without_size(files, tmp_path):
    runner = CliRunner()
    model = tmp_path / "e.onnx"
    args = ["export", str(files["paper-masks"]["path"]), "--weights", str(files["paper-masks"]["weights"])]
    res = runner.invoke(cli, [*args, "-o", str(model), "--embed-input", "16x24", "--weights-format", "dense"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["run", str(model), "-o", str(tmp_path / "e.png")])
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "e.png")).shape == (16, 24, 3)
    _one_line_error(runner.invoke(cli, ["run", str(model), "--size", "32x32", "-o", str(tmp_path / "f.png")]), "fixed")


def test_bad_input(files, tmp_path):
    runner = CliRunner()
    ticket = str(files["own-pt"]["path"])
    model = tmp_path / "m.onnx"
    assert runner.invoke(cli, ["export", ticket, "-o", str(model)]).exit_code == 0
    _one_line_error(runner.invoke(cli, ["export", ticket, "-o", str(model)]), "already exists")
    _one_line_error(runner.invoke(cli, ["export", ticket, "-o", str(tmp_path / "nope" / "m.onnx")]), "does not exist")
    _one_line_error(
        runner.invoke(cli, ["export", ticket, "-o", str(tmp_path / "b.onnx"), "--embed-input", "50x64"]), "multiples"
    )
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a ticket")
    _one_line_error(runner.invoke(cli, ["export", str(garbage), "-o", str(tmp_path / "g.onnx")]), "garbage.pt")
    _one_line_error(
        runner.invoke(cli, ["export", str(files["paper-masks"]["path"]), "-o", str(tmp_path / "p.onnx")]), "--weights"
    )
    png = tmp_path / "x.png"
    _one_line_error(runner.invoke(cli, ["run", str(model), "--size", "50x64", "-o", str(png)]), "multiples")
    _one_line_error(runner.invoke(cli, ["run", str(tmp_path / "missing.onnx"), "-o", str(png)]), "no such file")
    _one_line_error(runner.invoke(cli, ["run", str(garbage), "-o", str(png)]), "cannot load")
    png.write_bytes(b"")
    _one_line_error(runner.invoke(cli, ["run", str(model), "-o", str(png)]), "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pt", "m.manifest.json", "m.onnx", "x.png"]


def test_example_ticket(tmp_path):
    runner = CliRunner()
    if not bundled_ticket_path().is_file():
        _one_line_error(runner.invoke(cli, ["export", "--example", "-o", str(tmp_path / "m.onnx")]), "bundled")
        pytest.skip("no bundled ticket in this checkout")
    res = runner.invoke(cli, ["export", "--example", "-o", str(tmp_path / "m.onnx"), "--test-size", "64x64"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["export", "-o", str(tmp_path / "n.onnx"), "--weights-format", "dense"])
    assert res.exit_code == 0, res.output


def test_generator_model_runs_a_batch_as_a_grid(tmp_path):
    """A generator export: latents from --seed, images mapped from [-1, 1], a batch of 3 as one 2 x 2 grid."""
    import torch

    from lipdeploy.export.onnx_export import export_onnx
    from lipdeploy.generator import PGANSpec, make_latent
    from lipdeploy.ticket import ticket_from_model

    spec = PGANSpec(latent_dim=6, depth_scale0=8, depth_other_scales=(4,))
    torch.manual_seed(0)
    model = spec.build()
    ticket = ticket_from_model(model, spec)
    model_path = tmp_path / "g.onnx"
    export_onnx(ticket, model_path, weights_format="dense")
    out = tmp_path / "grid.png"
    args = ["run", str(model_path), "--seed", "4", "--batch", "3", "-o", str(out), "--repeat", "1"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "grid of 3 images of 8x8" in r.output
    grid = np.asarray(Image.open(out)).astype(np.float64) / 255
    assert grid.shape == (18, 18, 3)  # 2 x 2 tiles of 8 px, 2 px apart; the 4th tile stays black
    with torch.no_grad():
        want = ((ticket.build()(make_latent(spec, 3, seed=4)) + 1) / 2).clamp(0, 1).numpy()
    assert np.abs(grid[:8, 10:18].transpose(2, 0, 1) - want[1]).max() <= 1 / 255 + 1e-6
    assert grid[10:, 10:].max() == 0
    r = CliRunner().invoke(cli, ["run", str(model_path), "--size", "32x32", "-o", str(tmp_path / "x.png")])
    _one_line_error(r, "8x8")
