"""Compaction beyond the DIP: progressive-GAN generators and CNNs from user code, through the same rules table.

The oracle is the masked network in float64. Masks are random with a sparsity drawn per layer from 0% to 100%, so
whole layers die; generator biases are randomised (the zoo initialises them to 0, which would hide folding errors).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lipdeploy.compaction import UnsupportedLayer, analyze_compaction, compact
from lipdeploy.generator import PGANSpec, make_latent
from lipdeploy.layers import EqualizedConv2d, PixelNorm
from lipdeploy.masks import prunable_shapes
from lipdeploy.networks import DeepDecoderSpec, SkipSpec, make_input
from lipdeploy.ticket import ticket_from_model

SPECS = {
    "16px": PGANSpec(latent_dim=12, depth_scale0=16, depth_other_scales=(8, 8)),
    "16px-alpha": PGANSpec(latent_dim=8, depth_scale0=8, depth_other_scales=(8, 4), alpha=0.35),
    "8px-alpha-plain": PGANSpec(latent_dim=8, depth_scale0=8, depth_other_scales=(6,), alpha=0.5, equalized_lr=False),
    "4px": PGANSpec(latent_dim=8, depth_scale0=8, depth_other_scales=()),
}
LAYER_SPARSITY = (0.0, 0.3, 0.7, 0.95, 1.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model


def _layer_masks(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Per layer a sparsity from LAYER_SPARSITY (seeded), each weight kept with 1 - sparsity."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, shape in shapes.items():
        sparsity = LAYER_SPARSITY[int(torch.randint(len(LAYER_SPARSITY), (1,), generator=gen))]
        masks[name] = (torch.rand(shape, generator=gen) >= sparsity).float()
    return masks


def _generator_ticket(spec: PGANSpec, seed: int, dead_features: str | None = None):
    torch.manual_seed(seed)
    model = _randomize(spec.build(), seed)
    if dead_features is not None:  # rows of the format layer pruned too: whole 4x4 channels, or some features
        with torch.no_grad():
            w = model.formatLayer.module.weight
            rows = torch.arange(w.shape[0]).view(spec.depth_scale0, 16)
            w[rows[0]] = 0  # channel 0: every feature constant, each its own bias (a fixed, non-uniform map)
            w[rows[1, :5]] = 0  # channel 1: five constant features, the others live
            if dead_features == "all":
                w.zero_()
    return ticket_from_model(model, spec, _layer_masks(prunable_shapes(model), seed + 1))


def _check_exact(reference: nn.Module, x: torch.Tensor, net64, net32=None) -> None:
    with torch.no_grad():
        want = reference.double()(x.double())
        got = net64(x.double())
        scale = max(1.0, want.abs().max().item())
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-9 * scale
        if net32 is not None:
            assert (net32(x).double() - want).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seed", range(3))
def test_generator_random_layer_masks_exact(name, seed):
    spec = SPECS[name]
    ticket = _generator_ticket(spec, seed, dead_features="some" if seed == 1 else ("all" if seed == 2 else None))
    z = make_latent(spec, 3, seed=seed)
    _check_exact(ticket.build(), z, compact(ticket.build().double()), compact(ticket))


def test_generator_dead_layers_fold_and_pixel_norm_keeps_the_reference_mean():
    """Half of a conv's outputs dead: they are constant (bias) before the pixel norm, which still averages over all
    channels; after the norm they are live again (factor varies per pixel) and stay in the next conv's input."""
    spec = SPECS["16px"]
    torch.manual_seed(0)
    model = _randomize(spec.build(), 0)
    masks = {k: torch.ones(s) for k, s in prunable_shapes(model).items()}
    masks["scaleLayers.0.0.module.weight"][:4] = 0
    masks["toRGBLayers.2.module.weight"][:, 6:] = 0  # the output conv reads 6 of 8 channels
    ticket = ticket_from_model(model, spec, masks)
    net = compact(ticket)
    _check_exact(ticket.build(), make_latent(spec, 2), compact(ticket.build().double()), net)
    by = {la.name: la for la in net.layers}
    assert by["scaleLayers.0.0.module"].dead_outputs == 4 and by["scaleLayers.0.0.module"].out_after == 4
    assert by["scaleLayers.0.1.module"].in_after == 8  # 4 live + 4 constants made live again by the pixel norm
    # the output conv ignores 2 channels, but the pixel norm before it reads them all (its mean): nothing unread
    assert by["scaleLayers.1.1.module"].unread_outputs == 0 and by["scaleLayers.1.1.module"].out_after == 8
    assert by["toRGBLayers.2.module"].in_after == 6
    report = analyze_compaction(ticket, 16, 16)
    assert {la.name: la.out_hw for la in report.layers}["scaleLayers.1.1.module"] == (16, 16)


def test_generator_batch_and_gradients():
    spec = SPECS["16px-alpha"]
    torch.manual_seed(0)
    model = _randomize(spec.build(), 0)
    gen = torch.Generator().manual_seed(1)
    masks = {k: (torch.rand(s, generator=gen) > 0.6).float() for k, s in prunable_shapes(model).items()}
    ticket = ticket_from_model(model, spec, masks)
    net = compact(ticket)
    z = make_latent(spec, 5, seed=1)
    with torch.no_grad():
        assert (net(z) - ticket.build()(z)).abs().max() <= 1e-4
    net(z).square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


class Block(nn.Module):
    """User code: a residual block with a constant scale and a functional concatenation."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(c)
        self.side = EqualizedConv2d(c, 2, 1)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x))) * 0.5 + x
        return torch.cat([y, self.side(x)], dim=1)


class SmallCNN(nn.Module):
    """A CNN as a user writes it: fx traces the forward; no DIP containers."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 6, 4, stride=2, padding=1)  # even kernel, zero padding, stride 2
        self.norm = PixelNorm()
        self.block = Block(6)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.head = nn.Sequential(nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 3, 1))
        self.skip = nn.Conv2d(8, 3, 1)
        self.out = nn.Tanh()

    def forward(self, x):
        h = self.up(self.block(self.norm(self.down(x))))
        return self.out(self.head(h)) - self.skip(h)  # two producers: their dead channels differ


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bn", ["image", "running"])
def test_custom_cnn_random_layer_masks_exact(seed, bn):
    torch.manual_seed(seed)
    model = _randomize(SmallCNN(), seed)
    masks = _layer_masks(prunable_shapes(model), seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if f"{name}.weight" in masks:
                m.weight.mul_(masks[f"{name}.weight"])
    model.train(bn == "image")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    _check_exact(model, x, compact(copy.deepcopy(model).double(), bn=bn))


class WithGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.inner = nn.Sequential(nn.GroupNorm(2, 4))

    def forward(self, x):
        return self.inner(self.conv(x))


class WithFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


class WithControlFlow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


@pytest.mark.parametrize(
    "model, words",
    [
        (WithGroupNorm(), ["'inner.0'", "GroupNorm"]),
        (WithFunction(), ["'<root>'", "WithFunction", "tanh"]),
        (WithControlFlow(), ["WithControlFlow", "torch.fx cannot trace"]),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.1)), ["'1'", "Dropout"]),
    ],
)
def test_unknown_layer_is_refused_in_one_line(model, words):
    with pytest.raises(UnsupportedLayer) as info:
        compact(model)
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize(
    "spec",
    [
        SkipSpec(in_channels=4, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 4)),
        SkipSpec(in_channels=4, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 0), pad="zero"),
        DeepDecoderSpec(k=8, depth=2),
    ],
    ids=["skip", "skip-zero", "dd"],
)
@pytest.mark.parametrize("seed", range(3))
def test_dip_and_deep_decoder_random_layer_masks_exact(spec, seed):
    """The DIP and the deep decoder through the same table, with a sparsity per layer (whole layers die)."""
    torch.manual_seed(seed)
    model = _randomize(spec.build(), seed)
    ticket = ticket_from_model(model, spec, _layer_masks(prunable_shapes(model), seed + 7))
    x = make_input(spec, 16, 16, seed=seed)
    for bn in ("image", "running"):
        reference = ticket.build(bn=bn).double()
        if bn == "image":  # exact constants before each per-image BatchNorm (see test_compact._snap_constants)
            for m in reference.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.register_forward_pre_hook(_snap_constants)
        _check_exact(reference, x, compact(ticket.build(bn=bn).double(), bn=bn))


def _snap_constants(module, args):
    (x,) = args
    mean = x.mean(dim=(2, 3), keepdim=True)
    flat = (x - mean).abs().amax(dim=(2, 3), keepdim=True) <= 1e-9 * mean.abs().clamp(min=1.0)
    return (torch.where(flat, mean.expand_as(x), x),)


@pytest.mark.parametrize("dead", ["some", "all"])
def test_every_compacted_generator_op_exports_to_onnx(tmp_path, dead):
    """Constant maps, aligned sums, gathered views, the compacted pixel norm and the scale in ONNX Runtime, at two
    batch sizes (the batch is dynamic)."""
    ort = pytest.importorskip("onnxruntime")
    spec = SPECS["16px-alpha"]
    ticket = _generator_ticket(spec, 1, dead_features=dead)
    net = compact(ticket).eval()
    kinds = {type(m).__name__ for m in net.ops.values()}
    assert {"AlignedSum", "Scale"} <= kinds and ({"ViewMap", "CompactPixelNorm"} <= kinds or dead == "all")
    path = tmp_path / "g.onnx"
    z = make_latent(spec, 2)
    torch.onnx.export(net, (z,), str(path), dynamo=False, opset_version=17, input_names=["z"],
                      dynamic_axes={"z": {0: "n"}})  # fmt: skip
    sess = ort.InferenceSession(str(path))
    for batch in (1, 4):
        z = make_latent(spec, batch, seed=batch)
        with torch.no_grad():
            want = ticket.build().double()(z.double()).numpy()
        got = sess.run(None, {"z": z.numpy()})[0]
        assert got.shape == want.shape and abs(got - want).max() <= 1e-4
