"""Fuzzing the loaders and the numeric options (issue 17): any input gives a result or one ``InputError`` line
(exit 2 from the CLI), never a traceback, never a leftover file. Bounded: few examples, tiny inputs, a deadline."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lipdeploy.cli import cli
from lipdeploy.cli.options import parse_size
from lipdeploy.errors import InputError
from lipdeploy.export import export_onnx
from lipdeploy.fileio import atomic_output
from lipdeploy.images import load_image
from lipdeploy.limits import MAX_SEED, check_lr, check_size, check_threads, check_work, estimate_memory
from lipdeploy.networks import SkipSpec
from lipdeploy.testing import random_mask_ticket, tiny_skip
from lipdeploy.ticket import Ticket, load_ticket, read_tensor_file

FUZZ = settings(
    max_examples=25,
    deadline=2000,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    ticket = random_mask_ticket(tiny_skip(), 0.5, seed=0)
    ticket.save(folder / "t.pt")
    ticket.save(folder / "t.safetensors")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="PNG")
    export_onnx(ticket, folder / "m.onnx", test_size=(16, 16))
    return {
        "pt": (folder / "t.pt").read_bytes(),
        "safetensors": (folder / "t.safetensors").read_bytes(),
        "png": buf.getvalue(),
        "onnx": (folder / "m.onnx").read_bytes(),
    }


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, val in edits:
        out[pos % len(out)] = val
    if cut is not None:
        out = out[: cut % (len(out) + 1)]
    return bytes(out)


MUTATIONS = st.tuples(
    st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=8),
    st.none() | st.integers(0, 2**31),
)


@FUZZ
@given(kind=st.sampled_from(["pt", "safetensors"]), mutation=MUTATIONS)
def test_ticket_loader_fuzz(seeds, kind, mutation):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.{kind}"
        path.write_bytes(_mutate(seeds[kind], *mutation))
        try:
            assert isinstance(load_ticket(path), Ticket)
        except InputError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
        assert [p.name for p in Path(tmp).iterdir()] == [path.name]


@FUZZ
@given(data=st.binary(max_size=256))
def test_ticket_loader_random_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.pt"
        path.write_bytes(data)
        with pytest.raises(InputError):
            load_ticket(path)


@FUZZ
@given(mutation=MUTATIONS)
def test_image_loader_fuzz(seeds, mutation):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.png"
        path.write_bytes(_mutate(seeds["png"], *mutation))
        try:
            img = load_image(path)
            assert img.dim() == 4 and img.shape[1] == 3 and bool(torch.isfinite(img).all())
        except InputError as exc:
            assert "\n" not in str(exc)


@settings(FUZZ, max_examples=10, deadline=None)  # each run starts ONNX Runtime in a child process (~1.5 s)
@given(mutation=MUTATIONS)
def test_onnx_run_fuzz(seeds, mutation):
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m.onnx"
        model.write_bytes(_mutate(seeds["onnx"], *mutation))
        out = Path(tmp) / "o.png"
        r = CliRunner().invoke(cli, ["run", str(model), "--size", "16x16", "-o", str(out), "--repeat", "1"])
        assert r.exit_code in (0, 2), (r.output, r.exception)
        if r.exit_code == 2:
            errors = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
            assert len(errors) == 1 and "Traceback" not in r.output, r.output
            assert sorted(p.name for p in Path(tmp).iterdir()) == ["m.onnx"]
        else:
            assert out.is_file()


@FUZZ
@given(text=st.text(alphabet="0123456789x*-+ .e", max_size=24))
def test_size_option_fuzz(text):
    try:
        h, w = check_size(*parse_size(text), "--size")
        assert 0 < h and 0 < w and h * w <= 4096 * 4096
    except InputError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(lr=st.floats(allow_nan=True, allow_infinity=True))
def test_lr_fuzz(lr):
    try:
        assert check_lr(lr) == lr and math.isfinite(lr) and 0 < lr <= 1
    except InputError as exc:
        assert "learning rate" in str(exc)


@FUZZ
@given(threads=st.integers(-(2**40), 2**40))
def test_threads_fuzz(threads):
    try:
        assert check_threads(threads) == threads
    except InputError as exc:
        assert "threads" in str(exc)


# ------------------------------------------------------------------------------------------ issue 26: one per class


@FUZZ
@given(
    sizes=st.lists(st.integers(0, 3 * 2**20), min_size=1, max_size=4),
    deflate=st.booleans(),
)
def test_archive_bomb_fuzz(sizes, deflate, monkeypatch_module):
    """Bombs: any zip archive whose members declare more than the file is refused before torch.load runs."""
    loads = []
    monkeypatch_module.setattr(torch, "load", lambda *a, **k: loads.append(1) or {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.pt"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
            for i, n in enumerate(sizes):
                zf.writestr(f"a/data/{i}", bytes(n))
        declared = sum(sizes)
        try:
            read_tensor_file(path)
            assert declared <= path.stat().st_size + 64 and loads
        except InputError as exc:
            assert "decompression bomb" in str(exc) and not loads and declared > path.stat().st_size


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@FUZZ
@given(
    levels=st.integers(1, 8),
    width=st.integers(1, 4096),
    side=st.sampled_from([0, 16, 256, 1024, 4096]),
    training=st.booleans(),
)
def test_memory_estimator_fuzz(levels, width, side, training):
    """Memory: the estimate is made on the meta device (nothing allocated), grows with the width, and check_work
    either passes or refuses in one line."""
    arch = SkipSpec(channels_down=(width,) * levels, channels_up=(width,) * levels, channels_skip=(4,) * levels)
    est = estimate_memory(arch, side, side, training)
    wider = SkipSpec(
        channels_down=(width + 1,) * levels, channels_up=(width + 1,) * levels, channels_skip=(4,) * levels
    )
    assert estimate_memory(wider, side, side, training).total > est.total
    try:
        check_work(arch, side, side, training, "fuzz")
    except InputError as exc:
        assert "\n" not in str(exc) and "GiB" in str(exc)


_OPS = ["Relu", "Sigmoid", "Identity", "Add", "Mul", "Tile", "Expand", "ConstantOfShape", "Loop", "Resize", "Pad"]


@settings(FUZZ, max_examples=15)
@given(ops=st.lists(st.sampled_from(_OPS), min_size=1, max_size=4), h=st.sampled_from([1, 16, 64, 5000]))
def test_untrusted_graph_static_checks_fuzz(ops, h):
    """Untrusted ONNX: a random chain of operators passes run's static checks or is refused with InputError; nothing
    else escapes, and ONNX Runtime is never started by the checks."""
    import onnx
    from onnx import TensorProto, helper

    from lipdeploy.cli.run import check_graph, check_io, check_ops, input_shape, model_contract, read_model

    nodes, prev = [], "code"
    for i, op in enumerate(ops):
        out = "image" if i == len(ops) - 1 else f"t{i}"
        inputs = [prev, prev] if op in ("Add", "Mul", "Tile", "Expand") else [prev]
        nodes.append(helper.make_node(op, inputs, [out]))
        prev = out
    x = helper.make_tensor_value_info("code", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save(model, path)
        try:
            proto = read_model(path)
            check_ops(path, proto)
            check_io(path, proto)
            shape, _ = input_shape(proto, model_contract(proto), (h, h))
            check_graph(path, proto, shape, repeat=1)
            assert set(ops) <= {"Relu", "Sigmoid", "Identity", "Add", "Mul", "Pad", "Resize"}
        except InputError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(kind=st.sampled_from(["fifo", "dir", "socket", "missing", "dangling", "device"]),
       reader=st.sampled_from(["tensor", "image", "json", "onnx"]))  # fmt: skip
def test_special_files_fuzz(kind, reader):
    """Special files: every reader refuses every non-regular kind before opening it (a FIFO would block here)."""
    import socket

    from lipdeploy.cli.run import read_model
    from lipdeploy.fileio import read_json_file

    readers = {"tensor": read_tensor_file, "image": load_image, "json": read_json_file, "onnx": read_model}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x"
        sock = None
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
        elif kind == "dangling":
            path.symlink_to(Path(tmp) / "nowhere")
        elif kind == "device":
            path = Path("/dev/null")
        try:
            with pytest.raises(InputError):
                readers[reader](path)
        finally:
            if sock is not None:
                sock.close()


@FUZZ
@given(code=st.sampled_from([errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EACCES]),
       at=st.sampled_from(["write", "rename"]))  # fmt: skip
def test_disk_full_fuzz(code, at):
    """Environment failures: a full disk (ENOSPC, EDQUOT, EFBIG) is one InputError naming the output; another OSError
    stays itself; either way no temporary is left."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        target = Path(tmp) / "out.bin"

        def fail(*args, **kwargs):
            raise OSError(code, os.strerror(code))

        if at == "rename":
            mp.setattr(os, "replace", fail)
        try:
            with atomic_output(target) as t:
                t.write_bytes(b"x")
                if at == "write":
                    fail()
        except InputError as exc:
            assert code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and "out.bin: no space left" in str(exc)
        except OSError as exc:
            assert exc.errno == code and code in (errno.EIO, errno.EACCES)
        assert list(Path(tmp).iterdir()) == []


@FUZZ
@given(seed=st.integers(-(2**70), 2**70), value=st.floats(allow_nan=True, allow_infinity=True))
def test_seed_and_float_options_fuzz(seed, value):
    """Options: the shared seed and finite-float types accept exactly [0, 2**63 - 1] and finite floats."""
    from lipdeploy.cli.options import FINITE_FLOAT, SEED

    try:
        assert SEED.convert(str(seed), None, None) == seed and 0 <= seed <= MAX_SEED
    except InputError as exc:
        assert not 0 <= seed <= MAX_SEED and "\n" not in str(exc)
    try:
        assert FINITE_FLOAT.convert(repr(value), None, None) == value and math.isfinite(value)
    except InputError:
        assert not math.isfinite(value)


_RECORD = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["row", "job", "other"]), "job": st.one_of(st.text(max_size=4),
                           st.integers())}, optional={"finished_at": st.one_of(st.text(max_size=4), st.integers()),
                           "metric": st.text(max_size=3), "value": st.one_of(st.floats(), st.text(), st.none())}),
    st.lists(st.integers(), max_size=2),
    st.integers(),
)  # fmt: skip


@FUZZ
@given(lines=st.lists(st.one_of(_RECORD.map(json.dumps).map(str.encode), st.binary(max_size=8)), max_size=5))
def test_result_folder_fuzz(lines):
    """Result folders: any rows file reads or is refused in one line naming the file and the line number."""
    from lipdeploy.bench.rows import RowStore

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rows-0-1.jsonl").write_bytes(b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines))
        try:
            RowStore.read_all(Path(tmp))
        except InputError as exc:
            assert "rows-0-1.jsonl: line " in str(exc) and "\n" not in str(exc)


@FUZZ
@given(head=st.binary(max_size=60), exclusive_taken=st.lists(st.booleans(), min_size=2, max_size=2))
def test_outputs_and_git_fuzz(head, exclusive_taken):
    """Outputs and privacy: any HEAD file gives a commit or None (never an exception, never a git status), and an
    exclusive output set either creates all its files or leaves none of its own."""
    from lipdeploy.environment import git_commit
    from lipdeploy.fileio import atomic_output_set

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / ".git" / "refs" / "heads").mkdir(parents=True)
        (root / ".git" / "HEAD").write_bytes(head)
        commit, _ = git_commit(root)
        assert commit is None or len(commit) in (40, 64)
        a, b = root / "a.onnx", root / "a.manifest.json"
        try:
            with atomic_output_set(a, b, exclusive=True) as (ta, tb):
                ta.write_text("mine")
                tb.write_text("mine")
                for target, taken in zip((a, b), exclusive_taken, strict=True):
                    if taken:
                        target.write_text("theirs")
            assert not any(exclusive_taken) and a.read_text() == b.read_text() == "mine"
        except InputError:
            assert any(exclusive_taken)
            assert all(p.read_text() == "theirs" for p in (a, b) if p.exists())
        assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
