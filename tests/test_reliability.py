"""Issue 17: every bad input refused in one line, nothing half-written, nothing unbounded.

Each case of the issue is kept here as a regression test; networks are tiny so the file runs in seconds on CPU.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import one_line_error, run
from onnx import TensorProto, helper
from PIL import Image

from lipdeploy.errors import InputError
from lipdeploy.export import export_onnx, manifest_path_for
from lipdeploy.fileio import atomic_output, atomic_write_text, check_output_path, clean_stale_temporaries
from lipdeploy.images import load_image, save_image
from lipdeploy.limits import MAX_IMAGE_PIXELS, max_threads
from lipdeploy.networks import DeepDecoderSpec, SkipSpec, arch_from_dict
from lipdeploy.testing import random_mask_ticket, tiny_skip
from lipdeploy.ticket import Ticket, load_ticket


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    ticket = random_mask_ticket(tiny_skip(), 0.5, seed=0)
    path = folder / "t.pt"
    ticket.save(path)
    model = folder / "m.onnx"
    export_onnx(ticket, model, test_size=(16, 16))
    return {"ticket": ticket, "path": path, "model": model, "folder": folder}


# ----------------------------------------------------------------------------------------------- 1. --force


def test_force_refuses_fifo_and_link_to_device(tmp_path, tiny):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        check_output_path(fifo, force=True)
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    with pytest.raises(InputError, match="character device"):
        check_output_path(link, force=True)
    r = run("run", tiny["model"], "--size", "16x16", "-o", fifo, "--force")
    one_line_error(r, "FIFO")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    r = run("run", tiny["model"], "--size", "16x16", "-o", link, "--force")
    one_line_error(r, "device")
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_force_keeps_mode(tmp_path):
    out = tmp_path / "secret.txt"
    out.write_text("old")
    os.chmod(out, 0o600)
    check_output_path(out, force=True)
    atomic_write_text(out, "new")
    assert out.read_text() == "new" and stat.S_IMODE(os.stat(out).st_mode) == 0o600


# ----------------------------------------------------------------------------------------------- 2. NaN


def test_overflowing_weights_refused_at_export(tmp_path, tiny):
    t = tiny["ticket"]
    big = t.replace(
        init={k: (v * 1e37 if v.is_floating_point() and "running" not in k else v) for k, v in t.init.items()}
    )
    with pytest.raises(InputError, match="not finite"):
        export_onnx(big, tmp_path / "m.onnx", test_size=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_negative_running_var_refused_with_bn_running(tmp_path, tiny):
    t = tiny["ticket"]
    init = dict(t.init)
    key = next(k for k in init if k.endswith("running_var"))
    init[key] = -init[key].abs() - 1
    with pytest.raises(InputError, match="not finite"):
        export_onnx(t.replace(init=init), tmp_path / "m.onnx", bn="running", test_size=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_complex_and_integer_weights_refused(tmp_path, tiny):
    sd = tiny["ticket"].state_dict()
    key = next(k for k in sd if k.endswith(".weight"))
    for name, value in (
        ("complex", sd[key].to(torch.complex64) * complex(float("nan"), 1)),
        ("int", sd[key].to(torch.int32)),
    ):
        bad = dict(sd)
        bad[key] = value
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(InputError, match="complex|floating point"):
            load_ticket(tmp_path / f"{name}.pt")


def test_manifest_is_strict_json_and_names_model_hash(tiny):
    import hashlib

    manifest = _strict_json(manifest_path_for(tiny["model"]).read_text())
    assert manifest["model_sha256"] == hashlib.sha256(tiny["model"].read_bytes()).hexdigest()


def test_run_refuses_non_finite_output(tmp_path):
    x = helper.make_tensor_value_info("code", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    neg = helper.make_node("Sub", ["zero", "code"], ["neg"])  # -code < 0: its square root is NaN
    root = helper.make_node("Sqrt", ["neg"], ["image"])
    graph = helper.make_graph([neg, root], "g", [x], [y], initializer=[zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "nan.onnx")
    r = run("run", tmp_path / "nan.onnx", "--size", "16x16", "-o", tmp_path / "o.png")
    one_line_error(r, "not finite")
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------------------------------------- 3. unbounded


def test_expanded_tensor_refused_before_allocation(tmp_path):
    torch.save({"1.0.1.1.weight": torch.zeros(1).expand(10**6, 10**6)}, tmp_path / "x.pt")
    with pytest.raises(InputError, match="stride-0|more than the file"):
        load_ticket(tmp_path / "x.pt")


def test_own_format_expanded_mask_bits_refused(tmp_path, tiny):
    obj = torch.load(tiny["path"], weights_only=True)
    name = next(k for k in obj["tensors"] if k.startswith("mask/"))
    obj["tensors"][name] = torch.zeros(1, dtype=torch.uint8).expand(10**10)
    torch.save(obj, tmp_path / "t.pt")
    with pytest.raises(InputError, match="stride-0|more than the file"):
        load_ticket(tmp_path / "t.pt")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda o: o.update(arch={"kind": "dd", "k": 8, "depth": 1000000}), "depth"),
        (lambda o: o.update(provenance=[1, 2]), "provenance"),
        (lambda o: o.update(shapes=[[1, 2]]), "shapes"),
        (lambda o: o["shapes"].update({next(iter(o["shapes"])): [-1, 3, 3, 3]}), "non-negative"),
        (lambda o: o["arch"].update(act="Evil"), "act"),
        (lambda o: o["arch"].update(upsample_mode="bogus"), "upsample_mode"),
        (lambda o: o["arch"].update(in_channels=-4), "in_channels"),
        (
            lambda o: o["arch"].update(channels_down=[8] * 3000, channels_up=[8] * 3000, channels_skip=[4] * 3000),
            "levels",
        ),
        (lambda o: o.update(tensors={"mask/x": [1, 2]}), "tensor"),
    ],
)
def test_bad_header_fields_one_line(tmp_path, tiny, edit, message):
    obj = torch.load(tiny["path"], weights_only=True)
    edit(obj)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=message):
        load_ticket(tmp_path / "bad.pt")
    r = run("inspect", tmp_path / "bad.pt")
    one_line_error(r, "bad.pt")


def _bomb(path: Path, side: int = 5000) -> Path:
    Image.new("1", (side, side)).save(path)
    return path


def test_decompression_bomb_refused_from_header(tmp_path, tiny):
    bomb = _bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000 and side_pixels(5000) > MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match="too large"):
        load_image(bomb)
    r = run("restore", bomb, "--task", "denoise", "--arch", "dd", "--k", "8", "--depth", "2", "-o", tmp_path / "o.png")
    one_line_error(r, "too large")
    r = run("find", bomb, "--task", "denoise", "--channels", "8,8", "-o", tmp_path / "imp", "--iters", "1")
    one_line_error(r, "too large")
    assert not (tmp_path / "imp").exists()
    r = run("export", tiny["path"], "-o", tmp_path / "e.onnx", "--target", bomb)
    one_line_error(r, "too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]


def side_pixels(side: int) -> int:
    return side * side


def test_threads_and_sizes_bounded(tmp_path, tiny):
    one_line_error(run("run", tiny["model"], "--threads", 100000, "-o", tmp_path / "o.png"), "threads")
    assert max_threads() >= 4
    one_line_error(run("run", tiny["model"], "--size", "100000x100000", "-o", tmp_path / "o.png"), "too large")
    one_line_error(run("export", tiny["path"], "-o", tmp_path / "e.onnx", "--embed-input", "65536x65536"), "too large")
    one_line_error(run("export", tiny["path"], "-o", tmp_path / "e.onnx", "--test-size", "65536x64"), "too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- 4. find lock/resume


def _find(image, out, *extra):
    return run(
        "find", image, "--task", "denoise", "--channels", "8,8", "--iters", 2, "--rounds", 0, "-o", out, "--quiet",
        *extra,
    )  # fmt: skip


def test_find_folder_locked(tmp_path):
    from filelock import FileLock

    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32), img)
    out = tmp_path / "imp"
    out.mkdir()
    with FileLock(str(out / ".lipdeploy.lock")):
        one_line_error(_find(img, out), "locked")
    r = _find(img, out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["imp.json", "round_00.pt"]


def test_find_resume_keyed_on_image_content(tmp_path):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)), img)
    out = tmp_path / "imp"
    assert _find(img, out).exit_code == 0
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)), img)  # same name, new content
    one_line_error(_find(img, out, "--rounds", 1), "image_sha256")


def test_find_read_only_folder_checked_before_fit(tmp_path, monkeypatch):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32), img)
    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == out else real(p, m, *a, **k))
    one_line_error(_find(img, out), "not writable")
    assert list(out.iterdir()) == []


def test_rejected_find_leaves_no_folder(tmp_path):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32), img)
    one_line_error(_find(img, tmp_path / "imp", "--rewind-iter", 99), "rewind")
    assert not (tmp_path / "imp").exists()


def test_corrupt_rewind_file(tmp_path):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32), img)
    out = tmp_path / "imp"
    assert _find(img, out, "--rewind-iter", 1).exit_code == 0
    (out / "rewind_iter_1.pt").write_bytes(b"garbage")
    one_line_error(_find(img, out, "--rewind-iter", 1, "--rounds", 1), "rewind_iter_1.pt")


# ----------------------------------------------------------------------------------------------- 5. output sets


def test_export_set_written_model_first(tmp_path, tiny):
    out = tmp_path / "m.onnx"

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        export_onnx(tiny["ticket"], out, test_size=(16, 16), _before_write=boom)
    assert list(tmp_path.iterdir()) == []
    # a manifest without its model is someone's file (an output set never leaves one): refused without force
    manifest_path_for(out).write_text("{}")
    with pytest.raises(InputError, match="manifest.json: already exists"):
        export_onnx(tiny["ticket"], out, test_size=(16, 16))
    assert manifest_path_for(out).read_text() == "{}" and not out.exists()
    export_onnx(tiny["ticket"], out, test_size=(16, 16), force=True)
    assert _strict_json(manifest_path_for(out).read_text())["options"]["dtype"] == "fp32"
    export_onnx(tiny["ticket"], out, test_size=(16, 16), dtype="fp16", force=True)
    manifest = _strict_json(manifest_path_for(out).read_text())
    import hashlib

    assert manifest["options"]["dtype"] == "fp16"
    assert manifest["model_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_stale_temporaries_cleaned(tmp_path):
    stale = tmp_path / ".x.txt.999999999.abcd.tmp"
    stale.write_text("left by a killed run")
    live = tmp_path / f".x.txt.{os.getpid()}.efgh.tmp"
    live.write_text("ours, in flight")
    other = tmp_path / ".notes.tmp"
    other.write_text("not ours")
    with atomic_output(tmp_path / "x.txt") as tmp:
        tmp.write_text("new")
    assert not stale.exists() and live.exists() and other.exists()
    assert clean_stale_temporaries(tmp_path) == []


# ----------------------------------------------------------------------------------------------- 6-8


def test_restore_output_names_collide(tmp_path):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32), img)
    r = run("restore", img, "--task", "denoise", "--arch", "dd", "--k", 8, "--depth", 2, "-o", tmp_path / "out.json")
    one_line_error(r, "collide")


def test_restore_writes_png_and_strict_json(tmp_path):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32), img)
    out = tmp_path / "o.png"
    r = run("restore", img, "--task", "denoise", "--arch", "dd", "--k", 8, "--depth", 2, "--iters", 2, "-o", out)
    assert r.exit_code == 0, r.output
    record = _strict_json(out.with_suffix(".json").read_text())
    import hashlib

    assert record["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize("content", [b"hello, not a tensor file\n", "mutate"])
def test_corrupt_pt_one_line(tmp_path, tiny, content):
    bad = tmp_path / "bad.pt"
    if content == "mutate":
        data = bytearray(tiny["path"].read_bytes())
        with zipfile.ZipFile(tiny["path"]) as z:
            info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        for i in range(start + 5, start + info.compress_size - 5, 7):
            data[i] = (data[i] * 31 + 7) % 256
        bad.write_bytes(bytes(data))
    else:
        bad.write_bytes(content)
    r = run("inspect", bad)
    one_line_error(r, "bad.pt")
    assert "Weights only load failed" not in r.output and "PyTorch 2.6" not in r.output


def test_image_side_minimum_is_the_networks(tmp_path):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 48, 48), img)
    r = run("restore", img, "--task", "denoise", "--channels", "8,8,8,8,8", "--iters", 1, "-o", tmp_path / "o.png")
    one_line_error(r, "at least 64 pixels")
    assert SkipSpec().min_side == 64 and DeepDecoderSpec().min_side == 32


@pytest.mark.parametrize("lr", ["nan", "-1", "1e30", "inf"])
def test_lr_refused(tmp_path, lr):
    img = tmp_path / "a.png"
    save_image(torch.rand(1, 3, 32, 32), img)
    one_line_error(_find(img, tmp_path / "imp", "--lr", lr), "--lr")
    assert not (tmp_path / "imp").exists()
    r = run(
        "restore",
        img,
        "--task",
        "denoise",
        "--arch",
        "dd",
        "--k",
        8,
        "--depth",
        2,
        "--lr",
        lr,
        "-o",
        tmp_path / "o.png",
    )
    one_line_error(r, "--lr")


def _onnx_model(path, inputs, outputs, nodes):
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("int64-input", "not a float32"),
        ("two-inputs", "2 inputs"),
        ("rank-1", "rank 1"),
        ("32-channels", "32 channels"),
    ],
)
def test_run_refuses_other_networks(tmp_path, kind, message):
    f = TensorProto.FLOAT
    if kind == "int64-input":
        x = helper.make_tensor_value_info("code", TensorProto.INT64, [1, 3, "h", "w"])
        y = helper.make_tensor_value_info("image", TensorProto.INT64, [1, 3, "h", "w"])
        model = _onnx_model(tmp_path / "m.onnx", [x], [y], [helper.make_node("Identity", ["code"], ["image"])])
    elif kind == "two-inputs":
        a = helper.make_tensor_value_info("a", f, [1, 3, "h", "w"])
        b = helper.make_tensor_value_info("b", f, [1, 3, "h", "w"])
        y = helper.make_tensor_value_info("image", f, [1, 3, "h", "w"])
        model = _onnx_model(tmp_path / "m.onnx", [a, b], [y], [helper.make_node("Add", ["a", "b"], ["image"])])
    elif kind == "rank-1":
        x = helper.make_tensor_value_info("code", f, [1, 3, "h", "w"])
        y = helper.make_tensor_value_info("image", f, ["n"])
        shape = helper.make_tensor("s", TensorProto.INT64, [1], [-1])
        node = helper.make_node("Reshape", ["code", "s"], ["image"])
        graph = helper.make_graph([node], "g", [x], [y], initializer=[shape])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
        model = tmp_path / "m.onnx"
    else:
        x = helper.make_tensor_value_info("code", f, [1, 32, "h", "w"])
        y = helper.make_tensor_value_info("image", f, [1, 32, "h", "w"])
        model = _onnx_model(tmp_path / "m.onnx", [x], [y], [helper.make_node("Identity", ["code"], ["image"])])
    r = run("run", model, "--size", "16x16", "-o", tmp_path / "o.png")
    one_line_error(r, message)
    assert not (tmp_path / "o.png").exists()


def test_non_finite_ticket_never_written(tmp_path, tiny):
    t = tiny["ticket"]
    fitted = {k: v.clone() for k, v in t.init.items()}
    key = next(k for k, v in fitted.items() if v.is_floating_point())
    fitted[key].fill_(float("nan"))
    with pytest.raises(InputError, match="NaN or Inf"):
        t.replace(fitted=fitted).save(tmp_path / "t.pt")
    assert list(tmp_path.iterdir()) == []


def test_unreadable_ticket_our_message(tmp_path, tiny, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == tiny["path"] else real(p, m, *a, **k))
    one_line_error(run("inspect", tiny["path"]), "permission denied")


def test_float_tiff_clipping_warns(tmp_path):
    arr = np.full((16, 16), 2.0, dtype=np.float32)
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tiff")
    with pytest.warns(UserWarning, match="clipped"):
        img = load_image(tmp_path / "f.tiff")
    assert float(img.max()) == 1.0


def test_arch_from_dict_refuses_non_mapping():
    with pytest.raises(ValueError):
        arch_from_dict([1, 2])  # type: ignore[arg-type]
    assert isinstance(arch_from_dict(tiny_skip().to_dict()), SkipSpec)
    assert Ticket  # the public type stays importable here


# ----------------------------------------------------------------------------------------------- bench leftovers


def test_bench_refuses_zero_iters_and_read_only_folder(tmp_path, monkeypatch):
    one_line_error(run("bench", "--preset", "ci", "--iters", 0, "-o", tmp_path / "b0"), "--iters must be >= 1")
    one_line_error(run("bench", "--preset", "ci", "--imp-iters", 0, "-o", tmp_path / "b1"), "--imp-iters must be >= 1")
    assert not (tmp_path / "b0").exists() and not (tmp_path / "b1").exists()
    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == out else real(p, m, *a, **k))
    one_line_error(run("bench", "--preset", "ci", "-o", out), "not writable")
    assert list(out.iterdir()) == []


def test_rejected_bench_run_leaves_no_folder(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a ticket")
    out = tmp_path / "bench"
    result = run("bench", "--preset", "ci", "--ticket", broken, "--jobs", "quality/ticket-broken/*", "-o", out, "-q")
    one_line_error(result, "broken.pt")
    assert not out.exists()
