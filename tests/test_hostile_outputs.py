"""Issue 26: outputs and privacy. A full disk (ENOSPC / EDQUOT on a write or a rename) is one line naming the output
with nothing left behind; an existing OUT.manifest.json is refused without --force; two writers of one new output:
the second is refused; ONNX Runtime writes no telemetry; environment capture never runs ``git status``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error, run

import lipdeploy.environment as environment
from lipdeploy.errors import InputError
from lipdeploy.export import export_onnx
from lipdeploy.fileio import atomic_output, atomic_output_set, atomic_write_text
from lipdeploy.testing import random_mask_ticket, tiny_skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_outputs")
    ticket = random_mask_ticket(tiny_skip(), 0.5, seed=0)
    ticket.save(folder / "t.pt")
    export_onnx(ticket, folder / "m.onnx", test_size=(16, 16))
    return {"ticket": ticket, "path": folder / "t.pt", "model": folder / "m.onnx"}


def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ----------------------------------------------------------------------------------------------- disk full


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_on_write_or_rename_is_one_input_error(tmp_path, monkeypatch, code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    with pytest.raises(InputError, match="no space left"):
        with atomic_output(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
            fail()
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(InputError, match="b.txt: no space left"):
        atomic_write_text(tmp_path / "b.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_restore_disk_full_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("lipdeploy.cli.restore.write_png", full)
    args = ["restore", "skimage:coffee", "--simulate", "--task", "denoise", "--crop", "64x64", "--iters", "2"]
    one_line_error(run(*args, "--channels", "8,8", "-o", tmp_path / "r.png"), "r.png: no space left")
    assert list(tmp_path.iterdir()) == []


def test_run_disk_full_leaves_nothing(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr("lipdeploy.images.write_png", full)
    one_line_error(run("run", tiny["model"], "--size", "16x16", "--repeat", "1", "-o", tmp_path / "o.png"), "o.png")
    assert list(tmp_path.iterdir()) == []


def test_export_disk_full_leaves_nothing(tmp_path, tiny, monkeypatch):
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".m.onnx."):  # the model's temporary file fills the disk
            full()
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    one_line_error(run("export", tiny["path"], "--test-size", "16x16", "-o", tmp_path / "m.onnx"), "no space left")
    assert list(tmp_path.iterdir()) == []


def test_find_disk_full_leaves_no_ticket(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "tickets"
    args = ["find", "skimage:coffee", "--task", "denoise", "--crop", "64x64", "--iters", "2", "--rounds", "1"]
    one_line_error(run(*args, "--channels", "8,8", "-o", out), "no space left")
    left = [p.name for p in out.rglob("*")] if out.exists() else []
    assert not [n for n in left if n.endswith((".pt", ".tmp"))], left


# ----------------------------------------------------------------------------------------------- output sets


def test_existing_manifest_refused_without_force_even_for_a_new_model(tmp_path, tiny):
    manifest = tmp_path / "m.manifest.json"
    manifest.write_text('{"mine": true}')
    one_line_error(run("export", tiny["path"], "--test-size", "16x16", "-o", tmp_path / "m.onnx"), "m.manifest.json")
    assert manifest.read_text() == '{"mine": true}' and not (tmp_path / "m.onnx").exists()
    assert run("export", tiny["path"], "--test-size", "16x16", "-o", tmp_path / "m.onnx", "--force").exit_code == 0


def test_second_writer_of_a_new_output_is_refused(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(InputError, match="created by another process"):
        with atomic_output(target, exclusive=True) as tmp:
            tmp.write_text("second")
            target.write_text("first")  # the other process finished first
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_exclusive_set_undoes_its_first_file_when_the_second_exists(tmp_path):
    model, manifest = tmp_path / "m.onnx", tmp_path / "m.manifest.json"
    with pytest.raises(InputError, match="m.manifest.json: was created by another process"):
        with atomic_output_set(model, manifest, exclusive=True) as (a, b):
            a.write_text("model")
            b.write_text("manifest")
            manifest.write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.manifest.json"]
    assert manifest.read_text() == "theirs"


def test_run_second_writer_refused(tmp_path, tiny, monkeypatch):
    out = tmp_path / "o.png"
    from lipdeploy.images import write_png as real

    def racing(img, path):
        real(img, path)
        out.write_bytes(b"the other run's image")

    monkeypatch.setattr("lipdeploy.images.write_png", racing)
    one_line_error(run("run", tiny["model"], "--size", "16x16", "--repeat", "1", "-o", out), "another process")
    assert out.read_bytes() == b"the other run's image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


# ----------------------------------------------------------------------------------------------- privacy


def test_onnxruntime_writes_no_telemetry(tmp_path, tiny):
    """Export and run in fresh processes with an empty HOME: nothing appears under ~/.cache/Microsoft."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | {"HOME": str(home)}
    cmd = [sys.executable, "-m", "lipdeploy"]
    model = str(tmp_path / "e.onnx")
    for args in (
        ["export", str(tiny["path"]), "--test-size", "16x16", "-q", "-o", model],
        ["run", model, "--size", "16x16", "--repeat", "1", "-q", "-o", str(tmp_path / "e.png")],
    ):
        r = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    assert not (home / ".cache" / "Microsoft").exists(), list(home.rglob("*"))


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True).stdout


def test_environment_capture_never_runs_git_status(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("a")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD").strip()
    calls = []
    real = subprocess.run

    def spy(argv, *args, **kwargs):
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return real(argv, *args, **kwargs)

    def capture(where: Path):
        monkeypatch.setattr(subprocess, "run", spy)
        try:
            return environment.git_commit(where)
        finally:
            monkeypatch.setattr(subprocess, "run", real)

    index = repo / ".git" / "index"
    before = index.stat().st_mtime_ns
    assert capture(repo) == (head, False)
    (repo / "a.txt").write_text("changed")
    assert capture(repo) == (head, True)
    _git(repo, "pack-refs", "--all")  # the branch now lives only in packed-refs
    assert capture(repo)[0] == head
    assert index.stat().st_mtime_ns == before  # nothing rewrote the index (git status refreshes it)
    assert calls and all("status" not in argv for argv, _ in calls)
    assert all(env.get("GIT_OPTIONAL_LOCKS") == "0" for _, env in calls)
    (tmp_path / "plain").mkdir()
    assert environment.git_commit(tmp_path / "plain") == (None, None)
