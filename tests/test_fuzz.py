"""Fuzzing the loaders and the numeric options (issue 17): any input gives a result or one ``InputError`` line
(exit 2 from the CLI), never a traceback, never a leftover file. Bounded: few examples, tiny inputs, a deadline."""

from __future__ import annotations

import io
import math
import tempfile
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
from lipdeploy.images import load_image
from lipdeploy.limits import check_lr, check_size, check_threads
from lipdeploy.testing import random_mask_ticket, tiny_skip
from lipdeploy.ticket import Ticket, load_ticket

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
