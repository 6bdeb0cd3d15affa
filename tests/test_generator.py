"""The progressive-GAN generator against an independent functional implementation written here from the spec
(DOMAIN.md, "Generator priors"): explicit F.conv2d / F.linear with the equalized factor on the output, explicit pixel
norm, nearest upsampling by repeat_interleave, the explicit growth blend. Nothing here reuses the module code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx
import torch.nn.functional as F

from lipdeploy.generator import Generator, PGANSpec, make_latent
from lipdeploy.limits import activation_bytes
from lipdeploy.networks import ARCHITECTURES, arch_from_dict, prunable_names

SCHEDULES = [
    pytest.param(dict(depth_other_scales=()), id="4px-one-scale"),
    pytest.param(dict(depth_other_scales=(6,)), id="8px"),
    pytest.param(dict(depth_other_scales=(6,), alpha=0.4), id="8px-mid-growth"),
    pytest.param(dict(depth_other_scales=(8, 4)), id="16px"),
    pytest.param(dict(depth_other_scales=(8, 4), alpha=0.73), id="16px-mid-growth"),
    pytest.param(dict(depth_other_scales=(4, 6), alpha=1.0, leaky_relu_leak=0.1, dim_output=1), id="16px-alpha1-grey"),
    pytest.param(dict(depth_other_scales=(8, 4), normalization=False), id="16px-no-pixel-norm"),
    pytest.param(dict(depth_other_scales=(8, 4), equalized_lr=False), id="16px-plain-layers"),
]


def small_spec(**overrides) -> PGANSpec:
    args = dict(latent_dim=10, depth_scale0=8)
    args.update(overrides)
    return PGANSpec(**args)


def random_weights_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-zero biases, so that a reference which forgot to scale the bias would differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if name.endswith("bias") else 1.0))
    return model


# --------------------------------------------------------------------------------------------------- the reference


def reference_generator(sd: dict[str, torch.Tensor], spec: PGANSpec, z: torch.Tensor) -> torch.Tensor:
    """The zoo's GNet forward, written out with functional ops in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    leak = spec.leaky_relu_leak

    def he(weight):  # sqrt(2 / fan_in), fan_in = prod(shape[1:]); 1 without equalized learning rate
        return math.sqrt(2.0 / weight[0].numel()) if spec.equalized_lr else 1.0

    def pixel_norm(x):
        return x / torch.sqrt((x**2).mean(dim=1, keepdim=True) + 1e-8) if spec.normalization else x

    def lrelu(x):
        return torch.where(x >= 0, x, leak * x)

    def conv(name, x):
        w, b = sd[f"{name}.module.weight"], sd[f"{name}.module.bias"]
        return he(w) * F.conv2d(x, w, b, padding=(w.shape[-1] - 1) // 2)

    def up2(x):
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    x = pixel_norm(z.double())
    w, b = sd["formatLayer.module.weight"], sd["formatLayer.module.bias"]
    x = lrelu(he(w) * F.linear(x, w, b)).reshape(z.shape[0], spec.depth_scale0, 4, 4)
    x = pixel_norm(x)
    x = pixel_norm(lrelu(conv("groupScale0.0", x)))
    outputs = [x]  # each scale's output, for the blend
    for s in range(len(spec.depth_other_scales)):
        x = up2(x)
        x = pixel_norm(lrelu(conv(f"scaleLayers.{s}.0", x)))
        x = pixel_norm(lrelu(conv(f"scaleLayers.{s}.1", x)))
        outputs.append(x)
    n = len(spec.depth_other_scales)
    out = conv(f"toRGBLayers.{n}", x)
    if spec.alpha > 0:
        low = up2(conv(f"toRGBLayers.{n - 1}", outputs[-2]))
        out = spec.alpha * low + (1 - spec.alpha) * out
    return out


@pytest.mark.parametrize("overrides", SCHEDULES)
def test_generator_matches_the_functional_reference(overrides):
    spec = small_spec(**overrides)
    model = random_weights_(spec.build(), seed=3)
    z = make_latent(spec, batch=3, seed=5)
    ref = reference_generator(model.state_dict(), spec, z)
    out = model(z)
    assert out.shape == (3, spec.dim_output, spec.resolution, spec.resolution)
    assert out.dtype == torch.float32
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5 * scale)
    out64 = model.double()(z.double())  # in float64 the two agree to rounding
    torch.testing.assert_close(out64, ref, rtol=1e-10, atol=1e-10 * scale)


def test_the_blend_uses_the_previous_scale():
    """alpha = 1 at 16 px is the previous scale's toRGB output, upsampled: the last scale's convs do not matter."""
    spec = small_spec(depth_other_scales=(6, 4), alpha=1.0)
    model = random_weights_(spec.build(), seed=1)
    z = make_latent(spec, 2, seed=2)
    before = model(z)
    with torch.no_grad():
        model.toRGBLayers[2].module.weight.mul_(3.0)
        model.scaleLayers[1][1].module.bias.add_(1.0)
    torch.testing.assert_close(model(z), before)
    with torch.no_grad():
        model.toRGBLayers[1].module.bias.add_(1.0)
    assert not torch.allclose(model(z), before)


def test_equalized_factor_scales_the_bias_too():
    """A zero weight leaves c * b: the equalized factor multiplies the layer output, bias included."""
    spec = small_spec(depth_other_scales=())
    model = spec.build()
    layer = model.toRGBLayers[0]
    with torch.no_grad():
        layer.module.weight.zero_()
        layer.module.bias.fill_(1.0)
    out = layer(torch.randn(1, 8, 4, 4))
    torch.testing.assert_close(out, torch.full_like(out, math.sqrt(2.0 / 8)))


# --------------------------------------------------------------------------------------------------- structure


def expected_keys(spec: PGANSpec) -> list[str]:
    layers = ["formatLayer", "groupScale0.0"]
    layers += [f"scaleLayers.{s}.{i}" for s in range(len(spec.depth_other_scales)) for i in (0, 1)]
    layers += [f"toRGBLayers.{i}" for i in range(len(spec.depth_other_scales) + 1)]
    return [f"{layer}.module.{p}" for layer in layers for p in ("weight", "bias")]


@pytest.mark.parametrize("overrides", SCHEDULES[:5])
def test_module_paths_and_prunable_names_are_the_zoos(overrides):
    spec = small_spec(**overrides)
    model = spec.build()
    assert sorted(model.state_dict()) == sorted(expected_keys(spec))
    convs = [k for k in expected_keys(spec) if k.endswith(".weight") and not k.startswith("formatLayer")]
    assert sorted(prunable_names(model)) == sorted(convs)
    assert prunable_names(model)[-1] == f"toRGBLayers.{len(spec.depth_other_scales)}.module.weight"  # the output
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["formatLayer.module.weight"] == (16 * spec.depth_scale0, spec.latent_dim)
    for s, depth in enumerate(spec.depth_other_scales):
        assert shapes[f"scaleLayers.{s}.1.module.weight"] == (depth, depth, 3, 3)


def test_paper_generator_size():
    """The celebAHQ-256 generator: 23,051,989 parameters, 18,844,992 of them conv weights (DOMAIN.md)."""
    spec = PGANSpec()
    assert spec.resolution == 256 and spec.input_shape() == (1, 512) and spec.input_channels == 512
    with torch.device("meta"):
        model = spec.build()
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 23_051_989
    assert sum(params[n].numel() for n in prunable_names(model)) == 18_844_992


def test_memory_estimate_knows_the_generator():
    """The activation estimate (limits.activation_bytes) covers the generator: the 512-channel 4x4 to 64-channel
    256x256 maps of the paper's generator, about 6 x 64 floats per output pixel at the last scale."""
    low, high = activation_bytes(PGANSpec(), 256, 256, training=False), activation_bytes(PGANSpec(), 256, 256, True)
    last_scale = 6 * 64 * 256 * 256 * 4
    assert last_scale < low < 2 * last_scale and high == 4 * low


def test_initialisation_is_the_zoos():
    model = small_spec(depth_other_scales=(6,)).build()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0
    w = torch.cat([p.reshape(-1) for n, p in model.named_parameters() if n.endswith("weight")])
    assert abs(w.std().item() - 1.0) < 0.1  # N(0, 1): the factor lives in the forward, not in the weights


@pytest.mark.parametrize("overrides", [SCHEDULES[0], SCHEDULES[3], SCHEDULES[4], SCHEDULES[6]])
def test_fx_traces_with_default_leaves(overrides):
    spec = small_spec(**overrides)
    model = random_weights_(spec.build(), seed=0)
    traced = torch.fx.symbolic_trace(model)
    z = make_latent(spec, 2, seed=1)
    assert torch.equal(traced(z), model(z))
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert "formatLayer.module" in targets and f"toRGBLayers.{len(spec.depth_other_scales)}.module" in targets
    unused = f"toRGBLayers.{len(spec.depth_other_scales) - 1}.module"
    assert (unused in targets) == (spec.alpha > 0)  # the blend's branch is traced only mid-growth


def test_generator_runs_on_a_batch_and_on_the_meta_device():
    spec = small_spec(depth_other_scales=(4,))
    with torch.device("meta"):
        model = Generator(spec)
    assert model(torch.empty(5, 10, device="meta")).shape == (5, 3, 8, 8)


# --------------------------------------------------------------------------------------------------- the spec


def zoo_config(**overrides):
    config = dict(
        latentVectorDim=10,
        depthScale0=8,
        depthOtherScales=[8, 4],
        alpha=0.25,
        leakyReluLeak=0.2,
        dimOutput=3,
        equalizedlR=True,
        perChannelNormalization=True,
        initBiasToZero=True,
        miniBatchStdDev=True,
        lossCriterion="WGANGP",
        lambdaGP=10.0,
        learningRate=0.001,
    )
    config.update(overrides)
    return config


def test_spec_from_zoo_config():
    spec = PGANSpec.from_config(zoo_config())
    assert spec == PGANSpec(latent_dim=10, depth_scale0=8, depth_other_scales=(8, 4), alpha=0.25)
    assert spec.resolution == 16 and spec.kind == "pgan"
    assert PGANSpec.from_config(zoo_config(depthOtherScales=[], alpha=0.5)).alpha == 0.0  # ignored, as in the zoo
    minimal = PGANSpec.from_config({"latentVectorDim": 4, "depthScale0": 4, "depthOtherScales": (2,)})
    assert minimal == PGANSpec(latent_dim=4, depth_scale0=4, depth_other_scales=(2,))


def test_spec_round_trips_through_arch_from_dict():
    spec = small_spec(depth_other_scales=(8, 4), alpha=0.5, normalization=False)
    d = spec.to_dict()
    assert d["kind"] == "pgan" and d["depth_other_scales"] == [8, 4]
    assert arch_from_dict(d) == spec
    assert ARCHITECTURES["pgan"] is PGANSpec
    assert "16x16" in spec.describe() and "alpha 0.5" in spec.describe()


@pytest.mark.parametrize(
    "config, needle",
    [
        (zoo_config(depthOtherScales=[8] * 100), "depth_other_scales has 100 entries"),
        (zoo_config(depthScale0=10**9), "depth_scale0 must be between"),
        (zoo_config(depthOtherScales=[8, -1]), "depth_other_scales[1]"),
        (zoo_config(depthOtherScales="88"), "depth_other_scales must be a list"),
        (zoo_config(latentVectorDim=True), "latent_dim must be an integer"),
        (zoo_config(alpha=float("nan")), "alpha must be a finite number"),
        (zoo_config(alpha=2.0), "alpha must be a finite number"),
        (zoo_config(equalizedlR="yes"), "equalized_lr must be true or false"),
        (zoo_config(lossCriterion="MSE"), "generation_activation 'tanh' is not supported"),
        (zoo_config(lossCriterion="Hinge"), "lossCriterion must be one of"),
        ({k: v for k, v in zoo_config().items() if k != "depthScale0"}, "config has no 'depthScale0'"),
        ([1, 2], "config must be a mapping"),
    ],
)
def test_bad_configs_are_refused_in_one_line(config, needle):
    with pytest.raises(ValueError) as info:
        PGANSpec.from_config(config)
    assert needle in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 200


def test_spec_refuses_a_blend_without_a_second_scale_and_a_wrong_size():
    with pytest.raises(ValueError, match="alpha > 0"):
        PGANSpec(depth_other_scales=(), alpha=0.5)
    with pytest.raises(ValueError, match="256x256"):
        PGANSpec().input_shape(128, 128)


def test_make_latent_is_seeded_standard_normal():
    spec = PGANSpec(latent_dim=64)
    a, b, c = make_latent(spec, 200, seed=1), make_latent(spec, 200, seed=1), make_latent(spec, 200, seed=2)
    assert a.shape == (200, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean().item()) < 0.05 and abs(a.std().item() - 1.0) < 0.05
    with pytest.raises(ValueError, match="batch"):
        make_latent(spec, 0)
