"""Issue 26: hostile files. Decompression bombs refused before anything is inflated, special files (FIFOs, devices,
sockets) refused before anything opens them, an invalid block size in a ticket's provenance refused at load.

Every CLI case must answer with one ``error:`` line and exit 2; a FIFO that slipped through would block the reader,
so each FIFO test arms a watchdog that feeds the FIFO after a while: the test then fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error, run

from lipdeploy.errors import InputError
from lipdeploy.export import export_onnx
from lipdeploy.fileio import check_regular_file
from lipdeploy.images import load_image
from lipdeploy.testing import random_mask_ticket, tiny_skip
from lipdeploy.ticket import load_ticket, read_tensor_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_files")
    ticket = random_mask_ticket(tiny_skip(), 0.5, seed=0)
    ticket.save(folder / "t.pt")
    export_onnx(ticket, folder / "m.onnx", test_size=(16, 16))
    return {"ticket": ticket, "path": folder / "t.pt", "model": folder / "m.onnx", "folder": folder}


@contextlib.contextmanager
def fifo(path: Path, after_s: float = 30.0):
    """A FIFO at ``path``; if a reader blocks on it, a watchdog writes junk after ``after_s`` so the reader returns."""
    os.mkfifo(path)
    done = threading.Event()

    def unblock() -> None:
        if done.wait(after_s):
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only when a reader is blocked in open()
        except OSError:
            return
        os.write(fd, b"junk")
        os.close(fd)

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    try:
        yield path
    finally:
        done.set()
        watchdog.join()


# ----------------------------------------------------------------------------------------------- bombs


def deflated_bomb(path: Path, inflated_bytes: int = 64 * 2**20) -> Path:
    """A .pt whose zip archive is torch.save's, except that the storage record is a deflated run of zeros of
    ``inflated_bytes`` (a few hundred kB on disk): what torch.load would inflate in full before any check."""
    small = path.with_suffix(".small.pt")
    torch.save({"w": torch.zeros(4)}, small)
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                with dst.open(info.filename, "w", force_zip64=True) as out:
                    chunk = bytes(2**20)
                    for _ in range(inflated_bytes // len(chunk)):
                        out.write(chunk)
            else:
                dst.writestr(info.filename, src.read(info.filename))
    small.unlink()
    return path


def test_deflated_bomb_refused_before_torch_load_inflates_it(tmp_path, monkeypatch):
    bomb = deflated_bomb(tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 2**20  # 64 MB of zeros in < 1 MB

    def never(*args, **kwargs):
        raise AssertionError("torch.load was called on a decompression bomb")

    monkeypatch.setattr(torch, "load", never)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="decompression bomb"):
            read_tensor_file(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak  # the central directory only: nothing inflated


def test_deflated_bomb_one_line_in_every_command(tmp_path, tiny):
    bomb = deflated_bomb(tmp_path / "bomb.pt")
    one_line_error(run("inspect", bomb), "decompression bomb")
    one_line_error(run("export", bomb, "-o", tmp_path / "m.onnx"), "decompression bomb")
    args = ["restore", "skimage:coffee", "--simulate", "--task", "denoise", "--crop", "64x64", "--iters", "1"]
    one_line_error(run(*args, "--ticket", bomb, "-o", tmp_path / "r.png"), "decompression bomb")
    one_line_error(run("inspect", tiny["path"], "--weights", bomb), "decompression bomb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.pt"]


def test_torch_save_files_pass_the_archive_check(tiny):
    """The rule is exact for torch.save's own files (stored, never compressed): they always load."""
    assert load_ticket(tiny["path"]).kept_count == tiny["ticket"].kept_count


# ----------------------------------------------------------------------------------------------- special files


def test_check_regular_file_refuses_every_special_kind(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "dir").mkdir()
    try:
        for name, text in [
            ("fifo", "FIFO"),
            ("sock", "socket"),
            ("dangling", "dangling"),
            ("dir", "directory"),
            ("missing", "no such file"),
        ]:
            with pytest.raises(InputError, match=text):
                check_regular_file(tmp_path / name)
        with pytest.raises(InputError, match="character device"):
            check_regular_file("/dev/zero")
    finally:
        sock.close()


@pytest.mark.parametrize("where", ["ticket", "image", "weights", "mask", "gt", "model", "bench-ticket"])
def test_fifo_refused_before_opening(tmp_path, tiny, where):
    with fifo(tmp_path / "f.pt"):
        f = tmp_path / "f.pt"
        restore = ["restore", "skimage:coffee", "--simulate", "--task", "denoise", "--crop", "64x64", "--iters", "1"]
        cases = {
            "ticket": ["inspect", f],
            "image": ["restore", f, "--task", "denoise", "--iters", "1", "-o", tmp_path / "o.png"],
            "weights": ["export", tiny["path"], "--weights", f, "-o", tmp_path / "o.onnx"],
            "mask": [
                "restore",
                "skimage:coffee",
                "--task",
                "inpaint",
                "--mask",
                f,
                "--iters",
                "1",
                "-o",
                tmp_path / "o.png",
            ],
            "gt": [*restore[:2], "--task", "denoise", "--iters", "1", "--gt", f, "-o", tmp_path / "o.png"],
            "model": ["run", f, "--size", "16x16", "-o", tmp_path / "o.png"],
            "bench-ticket": ["bench", "--preset", "ci", "--ticket", f, "--list-jobs", "-o", tmp_path / "b"],
        }
        one_line_error(run(*cases[where]), "FIFO")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.onnx").exists()


def test_device_refused_as_ticket_and_image(tmp_path):
    one_line_error(run("inspect", "/dev/zero"), "character device")
    r = run("restore", "/dev/zero", "--task", "denoise", "--iters", "1", "-o", tmp_path / "o.png")
    one_line_error(r, "character device")


def test_find_round_file_fifo_refused(tmp_path):
    out = tmp_path / "tickets"
    out.mkdir()
    with fifo(out / "round_00.pt"):
        r = run(
            "find", "skimage:astronaut", "--task", "denoise", "--crop", "64x64", "--iters", "1", "--rounds", "1",
            "--channels", "8,8", "-o", out,
        )  # fmt: skip
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert "FIFO" in r.output or "round_00" in r.output, r.output


def test_image_loader_and_tensor_reader_refuse_fifo(tmp_path):
    with fifo(tmp_path / "x.png"):
        with pytest.raises(InputError, match="FIFO"):
            load_image(tmp_path / "x.png")
        with pytest.raises(InputError, match="FIFO"):
            read_tensor_file(tmp_path / "x.png")


# ----------------------------------------------------------------------------------------------- provenance


@pytest.mark.parametrize("block", [[0, 16], [16, 0], [7, 16], [16.0, 16], "16x16", [16], [True, 16], [2**70, 16]])
def test_invalid_block_size_in_provenance_refused_at_load(tmp_path, tiny, block):
    path = tmp_path / "b.pt"
    tiny["ticket"].replace(provenance={"granularity": "unstructured", "block": block}).save(path)
    with pytest.raises(InputError, match="invalid block size"):
        load_ticket(path)
    one_line_error(run("inspect", path), "invalid block size")
    one_line_error(run("export", path, "-o", tmp_path / "m.onnx"), "invalid block size")
    assert not (tmp_path / "m.onnx").exists()


def test_mask_file_bomb_and_fifo_refused(tmp_path):
    from lipdeploy.masks import Mask

    with pytest.raises(InputError, match="decompression bomb"):
        Mask.load(deflated_bomb(tmp_path / "bomb.pt"))
    with fifo(tmp_path / "m.pt"), pytest.raises(InputError, match="FIFO"):
        Mask.load(tmp_path / "m.pt")
