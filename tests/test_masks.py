"""Mask: only 0/1 tensors of known layers and the right shapes get in; dense masks, density, safe save/load."""

from __future__ import annotations

import pytest
import torch

from lipdeploy.errors import InputError
from lipdeploy.masks import Mask, density, prunable_shapes
from lipdeploy.testing import tiny_skip

SHAPES = {"a.weight": torch.Size([4, 2, 3, 3]), "b.weight": torch.Size([3, 4, 1, 1])}


def test_mask_holds_float32_zero_one_tensors_only():
    m = Mask({"a.weight": torch.ones(2, 2, dtype=torch.bool)})
    assert m["a.weight"].dtype == torch.float32 and m["a.weight"].is_contiguous()
    with pytest.raises(InputError, match="values other than 0 and 1"):
        Mask({"a.weight": torch.full((2,), 0.5)})
    with pytest.raises(InputError, match="values other than 0 and 1"):
        m["b.weight"] = torch.tensor([2.0])
    with pytest.raises(InputError, match="not a tensor"):
        m.update({"c.weight": [0, 1]})
    with pytest.raises(InputError, match="not a parameter name"):
        Mask({3: torch.ones(1)})
    assert type(m.copy()) is Mask and list(m.copy()) == ["a.weight"]


def test_validated_checks_layers_and_shapes_and_fills_dense_layers():
    ones = torch.ones(SHAPES["a.weight"])
    with pytest.raises(InputError, match=r"t\.pt: mask for unknown layer 'z.weight'"):
        Mask.validated({"z.weight": ones}, SHAPES, "t.pt")
    with pytest.raises(InputError, match=r"has shape \[4, 2, 3\] but the weight has shape \[4, 2, 3, 3\]"):
        Mask.validated({"a.weight": torch.ones(4, 2, 3)}, SHAPES)
    with pytest.raises(InputError, match="values other than 0 and 1"):
        Mask.validated({"a.weight": ones * 3}, SHAPES)
    half = torch.zeros(SHAPES["b.weight"])
    half[:1] = 1
    m = Mask.validated({"b.weight": half}, SHAPES)
    assert isinstance(m, Mask) and list(m) == list(SHAPES)  # reference order, missing layers dense
    assert torch.equal(m["a.weight"], ones) and torch.equal(m["b.weight"], half)


def test_ones_like_model_and_shapes_and_density():
    model = tiny_skip().build()
    m = Mask.ones_like(model)
    convs = {n: p.shape for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 4}
    assert list(m) == list(convs) == list(prunable_shapes(model))
    assert all(m[n].shape == s and bool((m[n] == 1).all()) for n, s in convs.items())
    assert m.density() == 1.0
    m2 = Mask.ones_like(SHAPES)
    m2["a.weight"][:2] = 0  # 36 of 72 + 12 kept
    assert m2.density() == pytest.approx((36 + 12) / 84) == density(m2)
    assert Mask().density() == 1.0


def test_save_load_round_trip(tmp_path):
    m = Mask.ones_like(SHAPES)
    m["b.weight"][0] = 0
    path = tmp_path / "masks.pt"
    m.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["masks.pt"]  # atomic: no temporary left behind
    raw = torch.load(path, weights_only=True)
    assert type(raw) is dict  # a plain dict, readable without lipdeploy
    back = Mask.load(path)
    assert isinstance(back, Mask) and list(back) == list(m)
    assert all(torch.equal(back[n], m[n]) for n in m)


def test_load_refuses_bad_files(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(InputError, match="corrupt.pt: not a readable mask file"):
        Mask.load(bad)
    with pytest.raises(InputError, match="no such file"):
        Mask.load(tmp_path / "missing.pt")
    listy = tmp_path / "list.pt"
    torch.save([torch.ones(2)], listy)
    with pytest.raises(InputError, match="list.pt: not a mask file"):
        Mask.load(listy)
    halves = tmp_path / "halves.pt"
    torch.save({"a.weight": torch.full((2,), 0.5)}, halves)
    with pytest.raises(InputError, match="halves.pt: mask 'a.weight' has values other than 0 and 1"):
        Mask.load(halves)
