"""Reference networks: exact parameter counts and the reference state_dict layout."""

import pytest
import torch

from lipdeploy.networks import DeepDecoderSpec, SkipSpec, arch_from_dict, conv_layers, make_input, prunable_names


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_skip_counts():
    model = SkipSpec().build()
    convs = conv_layers(model)
    assert n_params(model) == 2_217_831
    assert len(convs) == 26
    assert sum(c.weight.numel() for c in convs.values()) == 2_208_768
    assert len(prunable_names(model)) == 26


def test_dip_default_channels_about_1_04m():
    spec = SkipSpec(channels_down=(16, 32, 64, 128, 128), channels_up=(16, 32, 64, 128, 128))
    assert n_params(spec.build()) == pytest.approx(1.04e6, rel=0.01)


def test_reference_key_layout():
    keys = set(SkipSpec().build().state_dict())
    # level 1: Concat at '1' (children from 0: skip, deeper), deeper's 4th module is the second 3x3 conv
    for key in ("1.0.1.1.weight", "1.1.1.1.weight", "1.1.4.1.weight", "1.1.7.1.1.1.1.weight", "9.1.weight", "9.1.bias"):
        assert key in keys
    assert "2.running_mean" in keys  # BatchNorm(4 + 128) over the concat
    assert SkipSpec().build().state_dict()["2.weight"].shape == (132,)
    zero = SkipSpec(pad="zero").build().state_dict()
    assert "9.0.weight" in zero and "1.1.4.0.weight" in zero  # no ReflectionPad2d: the conv is child 0


@pytest.mark.parametrize("k,depth,expected", [(64, 5, 25_536), (128, 5, 100_224)])
def test_deep_decoder_counts(k, depth, expected):
    assert n_params(DeepDecoderSpec(k=k, depth=depth).build()) == expected


def test_shapes_and_dip_batchnorm():
    spec = SkipSpec(channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 4), in_channels=4)
    model = spec.build()
    assert model.training, "DIP networks stay in training mode: BatchNorm uses the current image's statistics"
    x = make_input(spec, 32, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 32, 64)
    assert 0 <= float(y.min()) and float(y.max()) <= 1  # sigmoid output
    dd = DeepDecoderSpec(k=16, depth=3)
    z = make_input(dd, 64, 64)
    assert z.shape == (1, 16, 8, 8)
    assert dd.build()(z).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError):
        make_input(spec, 30, 32)


@pytest.mark.parametrize("spec", [SkipSpec(), SkipSpec(upsample_mode="nearest", act="ReLU"), DeepDecoderSpec(64, 4)])
def test_spec_roundtrip(spec):
    assert arch_from_dict(spec.to_dict()) == spec
