"""Tickets: every format load_ticket reads, architecture inference, and every bad input's one-line error."""

import os

import pytest
import torch

from lipdeploy import DeepDecoderSpec, InputError, SkipSpec, load_ticket, make_input, ticket_from_model
from lipdeploy.testing import masked_reference_output, pruned_model, tiny_skip, write_ticket_files
from lipdeploy.ticket import infer_arch


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_ticket_files(tmp_path_factory.mktemp("tickets"), amount=0.6)


FORMATS = ["own-pt", "own-safetensors", "paper-masks", "torch-prune", "state-dict-zeros"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_builds_the_masked_reference(files, fmt):
    spec = tiny_skip()
    model, _ = pruned_model(spec, 0.6)  # the same pruned network the files were written from
    x = make_input(spec, 32, 32, seed=3)
    with torch.no_grad():
        expected = model(x)
    ticket = load_ticket(files[fmt]["path"], weights=files[fmt]["weights"])
    assert ticket.arch == spec
    assert ticket.density == pytest.approx(0.4, abs=1e-3)
    assert set(ticket.masks) == {k for k in model.state_dict() if k.endswith("weight_orig")} or set(ticket.masks) == {
        k[: -len("_orig")] for k in model.state_dict() if k.endswith("weight_orig")
    }
    assert torch.equal(masked_reference_output(ticket, x), expected)


def test_masks_are_zero_one_and_exact(files):
    ticket = load_ticket(files["paper-masks"]["path"], weights=files["paper-masks"]["weights"])
    model = ticket.build()
    for name, mask in ticket.masks.items():
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert bool((dict(model.named_parameters())[name][mask == 0] == 0).all())


def test_own_format_roundtrip_keeps_fitted_and_provenance(tmp_path):
    spec = tiny_skip(channels_down=(32, 32, 32), channels_up=(32, 32, 32))
    model, init = pruned_model(spec, 0.8)
    ticket = load_ticket_from(model, init, tmp_path)
    ticket.save(tmp_path / "plain.pt")
    fitted = {k: v + 0.01 for k, v in ticket.init.items()}
    t = ticket.replace(fitted=fitted, provenance={"task": "denoise", "round": 3, "rate": 0.2})
    for name in ("t.pt", "t.safetensors"):
        t.save(tmp_path / name)
        back = load_ticket(tmp_path / name)
        assert back.provenance["task"] == "denoise" and back.provenance["round"] == 3
        assert back.fitted is not None
        for k in ticket.masks:
            assert torch.equal(back.masks[k], t.masks[k])
            assert torch.equal(back.state_dict("fitted")[k], t.state_dict("fitted")[k])
    # weights are stored only at kept positions: a 80%-sparse ticket is much smaller than its dense state dict
    torch.save(init, tmp_path / "dense.pt")
    assert os.path.getsize(tmp_path / "plain.pt") < 0.5 * os.path.getsize(tmp_path / "dense.pt")


def load_ticket_from(model, init, folder):
    torch.save({k: v for k, v in model.state_dict().items() if k.endswith("_mask")}, folder / "m.pt")
    torch.save(init, folder / "i.pt")
    return load_ticket(folder / "m.pt", weights=folder / "i.pt")


def test_prune_state_dict_with_weights_gives_init_and_fitted(files, tmp_path):
    ticket = load_ticket(files["torch-prune"]["path"], weights=files["paper-masks"]["weights"])
    assert ticket.fitted is not None and ticket.provenance["source_format"] == "torch-prune"


def test_infers_architectures():
    for spec in (
        SkipSpec(),
        SkipSpec(channels_down=(16, 32, 64), channels_up=(16, 32, 64), channels_skip=(4, 0, 4), pad="zero"),
        SkipSpec(need1x1_up=False, bias=False, filter_size_down=5),
        DeepDecoderSpec(64, 5),
        DeepDecoderSpec(32, 3),
    ):
        shapes = {k: v.shape for k, v in spec.build().state_dict().items()}
        assert infer_arch(shapes) == spec
    # what shapes cannot tell comes from overrides
    shapes = {k: v.shape for k, v in SkipSpec().build().state_dict().items()}
    assert infer_arch(shapes, upsample_mode="nearest", act="ReLU").upsample_mode == "nearest"


def test_ticket_from_model_uses_exact_zeros():
    spec = tiny_skip()
    model, _ = pruned_model(spec, 0.5)
    ticket = ticket_from_model(model, spec, task="test")
    assert ticket.density == pytest.approx(0.5, abs=1e-3)


# ----------------------------------------------------------------------------------------------- bad input


def _expect(path, match, named=None, **kwargs):
    with pytest.raises(InputError, match=match) as info:
        load_ticket(path, **kwargs)
    assert str(named or path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_truncated_files(files, tmp_path):
    _expect(tmp_path / "nope.pt", "no such file")
    data = files["own-pt"]["path"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "cut.pt", "truncated")
    data = files["own-safetensors"]["path"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "cut.safetensors", "truncated")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    _expect(tmp_path / "junk.pt", "unreadable")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lipdeploy_pwned",))


def test_refuses_code_carrying_pickle(tmp_path):
    torch.save({"1.0.1.1.weight": torch.zeros(1), "payload": Evil()}, tmp_path / "evil.pt")
    if os.path.exists("/tmp/lipdeploy_pwned"):
        os.remove("/tmp/lipdeploy_pwned")
    _expect(tmp_path / "evil.pt", "refused")
    assert not os.path.exists("/tmp/lipdeploy_pwned")


def test_mask_problems(files, tmp_path):
    masks = torch.load(files["paper-masks"]["path"], weights_only=True)
    weights = files["paper-masks"]["weights"]
    key = next(iter(masks))

    bad = dict(masks)
    bad[key] = bad[key][:, :1]
    torch.save(bad, tmp_path / "shape.pt")
    _expect(tmp_path / "shape.pt", "has shape", weights=weights)

    bad = dict(masks)
    bad[key] = bad[key] * 0.5
    torch.save(bad, tmp_path / "values.pt")
    _expect(tmp_path / "values.pt", "values other than 0 and 1", weights=weights)

    bad = dict(masks)
    bad["42.1.weight_mask"] = torch.ones(3, 3, 1, 1)
    torch.save(bad, tmp_path / "unknown.pt")
    _expect(tmp_path / "unknown.pt", "unknown layer", weights=weights)

    _expect(files["paper-masks"]["path"], "--weights")


def test_nonfinite_and_mismatched_weights(files, tmp_path):
    init = torch.load(files["paper-masks"]["weights"], weights_only=True)
    bad = dict(init)
    bad["9.1.bias"] = torch.tensor([float("nan"), 0.0, 0.0])
    torch.save(bad, tmp_path / "nan.pt")
    _expect(tmp_path / "nan.pt", "NaN or Inf")
    _expect(files["paper-masks"]["path"], "NaN or Inf", named=tmp_path / "nan.pt", weights=tmp_path / "nan.pt")

    bad = dict(init)
    bad["9.1.bias"] = torch.zeros(5)
    torch.save(bad, tmp_path / "wrong.pt")
    _expect(tmp_path / "wrong.pt", "cannot infer|shape")

    big = SkipSpec().build().state_dict()
    torch.save(big, tmp_path / "big.pt")
    _expect(files["paper-masks"]["path"], "has shape|unknown layer", weights=tmp_path / "big.pt")  # masks vs weights

    torch.save({"a": torch.zeros(2), "b": 3}, tmp_path / "notsd.pt")
    _expect(tmp_path / "notsd.pt", "not a tensor")
    torch.save({"a": torch.zeros(2)}, tmp_path / "foreign.pt")
    _expect(tmp_path / "foreign.pt", "cannot infer")
