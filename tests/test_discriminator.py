"""The progressive-GAN discriminator against an independent functional implementation of the zoo's DNet."""

import math

import pytest
import torch
import torch.nn.functional as F

from lipdeploy.discriminator import Discriminator, DiscriminatorSpec, discriminator_state, minibatch_stddev


def _stddev_reference(x: torch.Tensor) -> torch.Tensor:
    """The zoo's minibatch stddev, written as loops: group size min(N, 4) (N if 4 does not divide it), image i in group
    i mod G, unbiased variance, value of group g given to images g*size .. g*size+size-1."""
    n = x.shape[0]
    size = min(n, 4)
    if n % size:
        size = n
    groups = n // size
    out = torch.zeros(n, 1, *x.shape[2:], dtype=x.dtype)
    if size > 1:
        for g in range(groups):
            members = torch.stack([x[i] for i in range(n) if i % groups == g])
            mean = members.mean(dim=0)
            var = ((members - mean) ** 2).sum(dim=0) / (size - 1)
            value = torch.sqrt(var + 1e-8).mean()
            for j in range(g * size, (g + 1) * size):
                out[j] = value
    return torch.cat([x, out], dim=1)


def _reference(state: dict, spec: DiscriminatorSpec, x: torch.Tensor) -> torch.Tensor:
    """DNet's forward from the state dict alone (F.conv2d / F.linear with He's constant on the output)."""

    def c(w):
        return math.sqrt(2.0 / math.prod(w.shape[1:])) if spec.equalized_lr else 1.0

    def conv(name, h, pad):
        w, b = state[f"{name}.module.weight"], state[f"{name}.module.bias"]
        return F.leaky_relu(F.conv2d(h, w, b, padding=pad) * c(w), spec.leaky_relu_leak)

    def lin(name, h, act=True):
        w, b = state[f"{name}.module.weight"], state[f"{name}.module.bias"]
        out = F.linear(h, w, b) * c(w)
        return F.leaky_relu(out, spec.leaky_relu_leak) if act else out

    k = len(spec.depth_other_scales)
    blend = spec.alpha > 0 and k > 1
    if blend:
        y = conv(f"fromRGBLayers.{k - 1}", F.avg_pool2d(x, 2), 0)
    h = conv(f"fromRGBLayers.{k}", x, 0)
    for s in reversed(range(k)):
        h = conv(f"scaleLayers.{s}.1", conv(f"scaleLayers.{s}.0", h, 1), 1)
        h = F.avg_pool2d(h, 2)
        if blend and s == k - 1:
            h = spec.alpha * y + (1 - spec.alpha) * h
    if spec.minibatch_stddev:
        h = _stddev_reference(h)
    h = conv("groupScaleZero.0", h, 1)
    h = lin("groupScaleZero.1", h.reshape(h.shape[0], -1))
    return lin("decisionLayer", h, act=False)


def _random_state(model, seed):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=gen) * (0.5 if k.endswith("bias") else 1.0)
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize(
    "spec",
    [
        DiscriminatorSpec(depth_scale0=8, depth_other_scales=(), minibatch_stddev=True),
        DiscriminatorSpec(depth_scale0=8, depth_other_scales=(6,), alpha=0.3),  # one scale: alpha has no effect
        DiscriminatorSpec(depth_scale0=8, depth_other_scales=(6, 4), alpha=0.4, leaky_relu_leak=0.1),
        DiscriminatorSpec(depth_scale0=6, depth_other_scales=(8, 4), minibatch_stddev=False, dim_input=1),
        DiscriminatorSpec(depth_scale0=4, depth_other_scales=(4,), equalized_lr=False),
    ],
)
@pytest.mark.parametrize("batch", [1, 3, 4, 8])
def test_discriminator_matches_the_functional_reference(spec, batch):
    model = Discriminator(spec)
    state = _random_state(model, seed=batch)
    model.load_state_dict(state)
    x = torch.randn(batch, spec.dim_input, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(1))
    got = model(x)
    assert got.shape == (batch, 1)
    assert torch.allclose(got, _reference(state, spec, x), rtol=1e-4, atol=1e-5)


def test_minibatch_stddev_groups_as_the_zoo_does():
    x = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    out = minibatch_stddev(x)
    assert torch.allclose(out, _stddev_reference(x), atol=1e-6)
    assert not torch.allclose(out[0, 3], out[4, 3])  # two groups of four: different values
    assert torch.equal(minibatch_stddev(x[:1])[:, 3], torch.zeros(1, 2, 2))  # one image: a zero channel
    assert torch.allclose(minibatch_stddev(x[:6]), _stddev_reference(x[:6]), atol=1e-6)  # 6: one group of six


def test_zoo_netd_keys_load_and_stddev_is_read_from_the_state():
    spec = DiscriminatorSpec(depth_scale0=8, depth_other_scales=(4,), minibatch_stddev=True)
    model = Discriminator(spec)
    keys = set(model.state_dict())
    assert {"fromRGBLayers.1.module.weight", "scaleLayers.0.1.module.bias", "groupScaleZero.1.module.weight",
            "decisionLayer.module.weight"} <= keys  # fmt: skip
    state = _random_state(model, 0)
    old_style = {"module." + k.replace(".module.", "."): v for k, v in state.items()}  # DataParallel, no .module.
    assert discriminator_state(old_style).keys() == state.keys()
    config = {"depthScale0": 8, "depthOtherScales": [4], "miniBatchStdDev": False}
    assert DiscriminatorSpec.from_config(config, state) == spec  # the 9-channel conv says the stddev channel is on
    assert not DiscriminatorSpec.from_config(config).minibatch_stddev
