"""The gan benchmark's report (headline and target lines from synthetic rows), measurements and paper mode."""

from __future__ import annotations

from lipdeploy.bench.cpu.gan_report import headlines, targets, write_report
from lipdeploy.bench.harness.gan import GanTask
from lipdeploy.bench.harness.gan_measure import measure
from lipdeploy.faces import lfw_faces

FACE_OFFSETS = (-0.3, -0.1, 0.0, 0.1, 0.3)  # five faces: every row's per-face PSNR is its mean plus these


def _row(method, sparsity, task, psnr, spread=1.0):
    per_face = [psnr + spread * o for o in FACE_OFFSETS]
    return {"kind": "quality", "method": method, "sparsity": sparsity, "task": task, "psnr": psnr, "mse": 0.1,
            "ssim": 0.5, "psnr_per_image": per_face}  # fmt: skip


ROWS = [
    _row("dense", 0.0, "cs-200-ls", 22.0),
    _row("back-projection", None, "cs-200-ls", 10.0),
    _row("least-squares", None, "cs-200-ls", 15.0),
    _row("imp-1", 0.2, "cs-200-ls", 21.9),
    _row("imp-3", 0.488, "cs-200-ls", 21.7),  # paired with dense: -0.3 exactly on every face, clears -0.5
    _row("imp-4", 0.5904, "cs-200-ls", 21.6, spread=3.0),  # -0.4 on average, but the paired interval straddles -0.5
    _row("random-4", 0.5904, "cs-200-ls", 14.0),
    _row("dense", 0.0, "cs-200-ls-outliers", 7.0),
    _row("dense", 0.0, "cs-200-mom-outliers", 18.0),
]


def _quality(rows):
    quality = {}
    for r in rows:
        quality.setdefault(r["task"], {})[r["method"]] = r
    return quality


def test_headlines_and_targets_read_the_paired_intervals(tmp_path):
    quality = _quality(ROWS)
    lines = "\n".join(headlines(quality))
    # a ticket whose interval clears -0.5 dB (imp-3) wins over a sparser one whose interval straddles it (imp-4)
    assert "within 0.5 dB: imp-3 (48.8%, -0.30 [-0.30, -0.30] dB vs dense, holds, n=5)" in lines
    assert "59%: IMP - random +7.60 [" in lines and "MOM - LS +11.00 [+11.00, +11.00] dB (holds, n=5)" in lines
    verdicts = targets(quality)
    assert verdicts[0].endswith("+12.00 [+12.00, +12.00] dB (holds, n=5)")
    assert "holds: imp-3 (48.8%" in verdicts[1] and "(holds, n=5)" in verdicts[2]
    del quality["cs-200-ls"]["imp-3"]
    assert "within noise: imp-4 (59.0%, -0.40 [" in targets(quality)[1]
    quality["cs-200-ls"]["imp-4"] = _row("imp-4", 0.5904, "cs-200-ls", 21.0)
    assert "does not hold; closest: imp-4" in targets(quality)[1]
    write_report(tmp_path, ROWS)
    assert (tmp_path / "report.md").read_text().count("| imp-") == 3 and (tmp_path / "psnr_vs_sparsity.png").is_file()


def test_rows_without_per_face_values_give_no_interval():
    rows = [{**r, "psnr_per_image": None} for r in ROWS]
    verdicts = targets(_quality(rows))
    assert "(n too small, n=1)" in verdicts[0] and "does not hold" in verdicts[1]


def test_task_measurements_are_seeded_and_sized():
    faces = lfw_faces(16, "test")[:3]
    a, b = measure(GanTask("cs", 200, outliers=4), faces), measure(GanTask("cs", 200, outliers=4), faces)
    assert a.y.shape == (3, 200) and a.operator.m == 196 and bool((a.y == b.y).all())
    inpaint = measure(GanTask("inpaint", drop=0.5), faces)
    assert inpaint.operator.kind == "mask" and 0.3 < float(inpaint.operator.mask.mean()) < 0.7


def test_paper_mode_needs_the_checkpoint_and_folders(capsys):
    import pytest

    from lipdeploy.bench.cpu.gan import main

    with pytest.raises(SystemExit) as exc:
        main(["--paper", "-o", "unused"])
    assert exc.value.code == 2 and "--paper needs --generator" in capsys.readouterr().err
