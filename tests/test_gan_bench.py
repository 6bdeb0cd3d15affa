"""The gan benchmark's bookkeeping: resumable rows and the report's headline and target lines (synthetic rows)."""

from __future__ import annotations

from lipdeploy.bench.cpu.gan import Rows, Task, measure
from lipdeploy.bench.cpu.gan_report import headlines, targets, write_report
from lipdeploy.faces import lfw_faces


def _row(method, sparsity, task, psnr):
    return {"kind": "quality", "method": method, "sparsity": sparsity, "task": task, "psnr": psnr, "mse": 0.1,
            "ssim": 0.5}  # fmt: skip


ROWS = [
    _row("dense", 0.0, "cs-200-ls", 22.0),
    _row("back-projection", None, "cs-200-ls", 10.0),
    _row("least-squares", None, "cs-200-ls", 15.0),
    _row("imp-1", 0.2, "cs-200-ls", 21.9),
    _row("imp-3", 0.488, "cs-200-ls", 21.6),
    _row("imp-4", 0.5904, "cs-200-ls", 20.0),
    _row("random-4", 0.5904, "cs-200-ls", 14.0),
    _row("dense", 0.0, "cs-200-ls-outliers", 7.0),
    _row("dense", 0.0, "cs-200-mom-outliers", 18.0),
]


def test_headlines_and_targets_say_what_the_rows_say(tmp_path):
    quality = {}
    for r in ROWS:
        quality.setdefault(r["task"], {})[r["method"]] = r
    lines = "\n".join(headlines(quality))
    assert "sparsest IMP ticket (retrained) within 0.5 dB: imp-3 (48.8%" in lines
    assert "59%: IMP 20.00 vs random 14.00 dB" in lines and "MOM 18.00 dB vs LS 7.00 dB (+11.00 dB)" in lines
    verdicts = targets(quality)
    assert verdicts[0].endswith("met (+12.00 dB)") and "met (imp-3, 48.8%)" in verdicts[1] and "met" in verdicts[2]
    quality["cs-200-ls"]["imp-3"] = _row("imp-3", 0.488, "cs-200-ls", 21.0)
    assert "not met" in targets(quality)[1]
    write_report(tmp_path, ROWS)
    assert (tmp_path / "report.md").read_text().count("| imp-") == 3 and (tmp_path / "psnr_vs_sparsity.png").is_file()


def test_rows_resume_by_key(tmp_path):
    calls = []
    rows = Rows(tmp_path / "rows.jsonl")
    rows.run("a", lambda: calls.append(1) or {"kind": "x"})
    again = Rows(tmp_path / "rows.jsonl")
    again.run("a", lambda: calls.append(2) or {"kind": "x"})
    again.run("b", lambda: calls.append(3) or [{"kind": "y"}, {"kind": "z"}])
    assert calls == [1, 3] and [r["key"] for r in Rows(tmp_path / "rows.jsonl").rows] == ["a", "b", "b"]


def test_task_measurements_are_seeded_and_sized():
    faces = lfw_faces(16, "test")[:3]
    a, b = measure(Task("cs", 200, outliers=4), faces), measure(Task("cs", 200, outliers=4), faces)
    assert a.y.shape == (3, 200) and a.operator.m == 196 and bool((a.y == b.y).all())
    inpaint = measure(Task("inpaint", drop=0.5), faces)
    assert inpaint.operator.kind == "mask" and 0.3 < float(inpaint.operator.mask.mean()) < 0.7


def test_paper_mode_needs_the_checkpoint_and_folders(capsys):
    import pytest

    from lipdeploy.bench.cpu.gan import main

    with pytest.raises(SystemExit) as exc:
        main(["--paper", "-o", "unused"])
    assert exc.value.code == 2 and "--paper needs --generator" in capsys.readouterr().err
