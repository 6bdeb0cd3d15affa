"""`lipdeploy restore --generator`: compressive sensing and inpainting through a tiny generator, and hostile inputs."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lipdeploy.cli import cli
from lipdeploy.generator import PGANSpec
from lipdeploy.images import save_image
from lipdeploy.ticket import ticket_from_model

SPEC = PGANSpec(latent_dim=8, depth_scale0=8, depth_other_scales=(8, 4))  # 16 x 16 images, n = 768


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny fits: torch's thread pool only adds contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    ticket_from_model(SPEC.build(), SPEC).save(d / "g.pt")
    torch.manual_seed(1)
    ticket_from_model(SPEC.build(), SPEC).save(d / "other_weights.pt")  # same architecture, other weights
    other = PGANSpec(latent_dim=8, depth_scale0=8, depth_other_scales=(4,))
    ticket_from_model(other.build(), other).save(d / "other_arch.pt")
    face = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    save_image(face, d / "face.png")
    return d


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def cs(files, out, *extra):
    return run("restore", files / "face.png", "--task", "cs", "--generator", files / "g.pt", "-o", out,
               "--iters", 5, "--quiet", *extra)  # fmt: skip


def test_cs_simulate_writes_image_record_and_measurements_that_read_back(files, tmp_path):
    out = tmp_path / "cs.png"
    r = cs(files, out, "--simulate", "--measurements", 100, "--outliers", 2, "--objective", "mom", "--mom-batch", 5)
    assert r.exit_code == 0, r.output
    assert "24x20" in r.output and "16x16" in r.output  # the image was fitted to the generator's resolution, said so
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["measurements"]["measurements"] == 100 and rec["measurements"]["outliers"] == 2
    assert rec["measurements"]["operator"]["m"] == 98
    assert rec["settings"]["objective"] == "mom" and rec["settings"]["iters"] == 5
    m = rec["metrics"]
    assert m["mse"] > 0 and isinstance(m["psnr"], float) and "[-1, 1]" in m["measured_on"]
    assert set(rec["baselines"]) == {"back_projection", "least_squares"}
    y_file = out.with_suffix(".measurements.pt")
    assert y_file.is_file()
    again = tmp_path / "again.png"
    r = cs(files, again, "--measurements-file", y_file, "--objective", "mom", "--mom-batch", 5)
    assert r.exit_code == 0, r.output
    rec2 = json.loads(again.with_suffix(".json").read_text())
    assert rec2["metrics"]["mse"] == pytest.approx(m["mse"], rel=1e-4)  # same measurements, same seed: same fit
    r = run("restore", "-", "--task", "cs", "--generator", files / "g.pt", "--measurements-file", y_file,
            "-o", tmp_path / "nogt.png", "--iters", 2, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "nogt.json").read_text())["metrics"] is None


def test_orthogonal_operator_and_inpainting(files, tmp_path):
    r = cs(files, tmp_path / "orth.png", "--simulate", "--operator", "orthogonal", "--restarts", 2)
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "orth.json").read_text())
    assert rec["measurements"]["operator"]["kind"] == "orthogonal" and rec["measurements"]["measurements"] == 192
    assert len(rec["restarts"]["losses"]) == 2
    out = tmp_path / "inp.png"
    r = run("restore", files / "face.png", "--task", "inpaint", "--generator", files / "g.pt", "--simulate",
            "--drop", 0.3, "-o", out, "--iters", 5, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["measurements"]["operator"]["kind"] == "mask"
    assert 0.5 < rec["measurements"]["operator"]["known_fraction"] < 0.9
    assert out.with_suffix(".observation.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--simulate", "--measurements", 769), "must not exceed the image's 768 values"),
        (("--simulate", "--measurements", 0), "must be positive"),
        (("--simulate", "--measurements", -5), "must be positive"),
        (("--simulate", "--measurements", 10, "--outliers", 10), "--outliers must be in"),
        (("--simulate", "--objective", "mom", "--measurements", 10), "need at least 20 measurements, got 10"),
        ((), "--simulate (measure IMAGE) or --measurements-file"),
        (("--simulate", "--arch", "dd"), "a generator prior takes none of"),
        (("--simulate", "--backend", "dense"), "--backend"),
    ],
)
def test_hostile_sensing_options_give_one_error_line(files, tmp_path, extra, message):
    r = cs(files, tmp_path / "x.png", *extra)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1 and message in r.output
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.json").exists()


def test_hostile_files_give_one_error_line(files, tmp_path):
    y_file = tmp_path / "y.pt"
    r = cs(files, tmp_path / "sim.png", "--simulate", "--measurements", 50)
    assert r.exit_code == 0, r.output
    y_file = tmp_path / "sim.measurements.pt"
    record = torch.load(y_file, weights_only=True)
    bad = dict(record, y=torch.full_like(record["y"], float("nan")))
    torch.save(bad, tmp_path / "nan.pt")
    torch.save(dict(record, n=3 * 32 * 32), tmp_path / "n.pt")  # measurements of a 32 x 32 image
    cases = [
        (("--measurements-file", tmp_path / "nan.pt"), "NaN"),
        (("--measurements-file", tmp_path / "n.pt"), "this generator makes 768"),
        (("--simulate", "--ticket", files / "other_weights.pt"), "another generator"),
        (("--simulate", "--ticket", files / "other_arch.pt"), "it is a ticket for progressive GAN 8x8"),
    ]
    for extra, message in cases:
        r = cs(files, tmp_path / "x.png", *extra)
        assert r.exit_code == 2, r.output
        assert r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1 and message in r.output
    r = run("restore", files / "face.png", "--task", "inpaint", "--generator", files / "g.pt", "-o",
            tmp_path / "y.png", "--quiet")  # fmt: skip
    assert r.exit_code == 2 and "needs --mask" in r.output
    r = run("restore", files / "face.png", "--task", "cs", "--simulate", "-o", tmp_path / "z.png")
    assert r.exit_code == 2 and "no generator given" in r.output
