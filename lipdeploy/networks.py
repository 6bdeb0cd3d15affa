"""Reference networks: the DIP ``skip`` encoder-decoder and the deep decoder (the progressive-GAN generator lives in
:mod:`lipdeploy.generator` and is registered in :data:`ARCHITECTURES` here).

Both are built as the reference implementations build them (nested ``nn.Sequential`` numbered from 1, ``Concat``
children numbered from 0, each convolution a ``Sequential(ReflectionPad2d, Conv2d)``), so that their ``state_dict``
keys are exactly the reference ones ('1.1.4.1.weight', '9.1.weight', ...) and checkpoints and masks made with the
original DIP code or the LIP paper's code load unchanged.

DIP semantics: the networks are never switched to eval mode; BatchNorm normalises with the statistics of the current
image (a batch of one). ``ArchSpec.build()`` returns a module in training mode for that reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .generator import PGANSpec
from .limits import MAX_CHANNELS, MAX_DD_DEPTH, MAX_FILTER_SIZE, MAX_LEVELS
from .spec_fields import bool_field, choice_field, int_field

UpsampleMode = Literal["nearest", "bilinear"]
PadMode = Literal["reflection", "zero"]
Activation = Literal["LeakyReLU", "ReLU", "none"]


class Concat(nn.Module):
    """Concatenate the outputs of the branches along ``dim``, centre-cropping them to a common size if they differ."""

    def __init__(self, dim: int, *branches: nn.Module) -> None:
        super().__init__()
        self.dim = dim
        for idx, branch in enumerate(branches):  # numbered from 0, as in the reference code
            self.add_module(str(idx), branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self._modules.values()]
        h = min(o.shape[2] for o in outs)
        w = min(o.shape[3] for o in outs)
        cropped = []
        for o in outs:
            dh, dw = (o.shape[2] - h) // 2, (o.shape[3] - w) // 2
            cropped.append(o[:, :, dh : dh + h, dw : dw + w])
        return torch.cat(cropped, dim=self.dim)


def _add(seq: nn.Sequential, module: nn.Module) -> None:
    """Append with the reference numbering: children of the network's Sequentials are numbered from 1."""
    seq.add_module(str(len(seq) + 1), module)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True, pad: str = "reflection"):
    to_pad = (kernel - 1) // 2
    layers: list[nn.Module] = []
    if pad == "reflection":
        layers.append(nn.ReflectionPad2d(to_pad))
        to_pad = 0
    layers.append(nn.Conv2d(in_ch, out_ch, kernel, stride, padding=to_pad, bias=bias))
    return nn.Sequential(*layers)


def _act(name: str) -> nn.Module:
    if name == "LeakyReLU":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "ReLU":
        return nn.ReLU()
    if name == "none":
        return nn.Sequential()
    raise ValueError(f"unknown activation {name!r} (LeakyReLU, ReLU or none)")


ACTIVATIONS = ("LeakyReLU", "ReLU", "none")
UPSAMPLE_MODES = ("nearest", "bilinear")
PAD_MODES = ("reflection", "zero")


@dataclass(frozen=True)
class SkipSpec:
    """The DIP ``skip`` network. Defaults are the LIP paper's configuration (2,217,831 parameters)."""

    in_channels: int = 32
    out_channels: int = 3
    channels_down: tuple[int, ...] = (128,) * 5
    channels_up: tuple[int, ...] = (128,) * 5
    channels_skip: tuple[int, ...] = (4,) * 5
    filter_size_down: int = 3
    filter_size_up: int = 3
    filter_skip_size: int = 1
    upsample_mode: UpsampleMode = "bilinear"
    pad: PadMode = "reflection"
    act: Activation = "LeakyReLU"
    bias: bool = True
    sigmoid: bool = True
    need1x1_up: bool = True

    kind = "dip"

    def __post_init__(self) -> None:
        for name in ("channels_down", "channels_up", "channels_skip"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"{name} must be a list of channel counts, got {value!r}")
            if len(value) > MAX_LEVELS:
                raise ValueError(f"{name} has {len(value)} levels; at most {MAX_LEVELS} are supported")
            low = 0 if name == "channels_skip" else 1
            object.__setattr__(
                self, name, tuple(int_field(f"{name}[{i}]", c, low, MAX_CHANNELS) for i, c in enumerate(value))
            )
        if not (len(self.channels_down) == len(self.channels_up) == len(self.channels_skip) >= 1):
            raise ValueError("channels_down, channels_up and channels_skip need the same length (>= 1)")
        int_field("in_channels", self.in_channels, 1, MAX_CHANNELS)
        int_field("out_channels", self.out_channels, 1, MAX_CHANNELS)
        for name in ("filter_size_down", "filter_size_up", "filter_skip_size"):
            int_field(name, getattr(self, name), 1, MAX_FILTER_SIZE)
        choice_field("upsample_mode", self.upsample_mode, UPSAMPLE_MODES)
        choice_field("pad", self.pad, PAD_MODES)
        choice_field("act", self.act, ACTIVATIONS)
        for name in ("bias", "sigmoid", "need1x1_up"):
            bool_field(name, getattr(self, name))

    @property
    def min_side(self) -> int:
        """The smallest image side the network runs on: the deepest level must be at least 2 x 2 pixels (training-
        mode BatchNorm needs more than one value per channel, reflection padding needs more pixels than it pads),
        so twice the total stride."""
        return 2 * self.stride

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def input_channels(self) -> int:
        return self.in_channels

    @property
    def stride(self) -> int:
        """Total stride: input height and width must be multiples of it."""
        return 2**self.depth

    def input_shape(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Shape of the noise code for an output image of ``height`` x ``width``."""
        return (1, self.in_channels, height, width)

    def build(self) -> nn.Sequential:
        model = nn.Sequential()
        current = model
        depth_in = self.in_channels
        last = self.depth - 1
        for i in range(self.depth):
            deeper = nn.Sequential()
            skip = nn.Sequential()
            n_skip, n_down, n_up = self.channels_skip[i], self.channels_down[i], self.channels_up[i]
            _add(current, Concat(1, skip, deeper) if n_skip else deeper)
            k = self.channels_up[i + 1] if i < last else n_down
            _add(current, nn.BatchNorm2d(n_skip + k))
            if n_skip:
                _add(skip, _conv(depth_in, n_skip, self.filter_skip_size, bias=self.bias, pad=self.pad))
                _add(skip, nn.BatchNorm2d(n_skip))
                _add(skip, _act(self.act))
            _add(deeper, _conv(depth_in, n_down, self.filter_size_down, 2, bias=self.bias, pad=self.pad))
            _add(deeper, nn.BatchNorm2d(n_down))
            _add(deeper, _act(self.act))
            _add(deeper, _conv(n_down, n_down, self.filter_size_down, bias=self.bias, pad=self.pad))
            _add(deeper, nn.BatchNorm2d(n_down))
            _add(deeper, _act(self.act))
            deeper_main = nn.Sequential()
            if i < last:
                _add(deeper, deeper_main)
            _add(deeper, nn.Upsample(scale_factor=2, mode=self.upsample_mode))
            _add(current, _conv(n_skip + k, n_up, self.filter_size_up, bias=self.bias, pad=self.pad))
            _add(current, nn.BatchNorm2d(n_up))
            _add(current, _act(self.act))
            if self.need1x1_up:
                _add(current, _conv(n_up, n_up, 1, bias=self.bias, pad=self.pad))
                _add(current, nn.BatchNorm2d(n_up))
                _add(current, _act(self.act))
            depth_in = n_down
            current = deeper_main
        _add(model, _conv(self.channels_up[0], self.out_channels, 1, bias=self.bias, pad=self.pad))
        if self.sigmoid:
            _add(model, nn.Sigmoid())
        return model

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        for name in ("channels_down", "channels_up", "channels_skip"):
            d[name] = list(d[name])
        return d

    def describe(self) -> str:
        return (
            f"DIP skip {self.in_channels}->{self.out_channels}, down {list(self.channels_down)}, "
            f"up {list(self.channels_up)}, skip {list(self.channels_skip)}, "
            f"{self.upsample_mode}, {self.pad}, {self.act}"
        )


@dataclass(frozen=True)
class DeepDecoderSpec:
    """The deep decoder (Heckel & Hand 2019): ``depth + 1`` blocks of 1x1 conv, upsample, ReLU, BatchNorm."""

    k: int = 128
    depth: int = 5
    out_channels: int = 3
    upsample_mode: UpsampleMode = "bilinear"
    sigmoid: bool = True

    kind = "dd"

    def __post_init__(self) -> None:
        int_field("k", self.k, 1, MAX_CHANNELS)
        int_field("depth", self.depth, 0, MAX_DD_DEPTH)
        int_field("out_channels", self.out_channels, 1, MAX_CHANNELS)
        choice_field("upsample_mode", self.upsample_mode, UPSAMPLE_MODES)
        bool_field("sigmoid", self.sigmoid)

    @property
    def min_side(self) -> int:
        """The smallest image side the network runs on: its code is the image divided by the stride, at least 1
        pixel."""
        return self.stride

    @property
    def input_channels(self) -> int:
        return self.k

    @property
    def stride(self) -> int:
        return 2**self.depth

    def input_shape(self, height: int, width: int) -> tuple[int, int, int, int]:
        return (1, self.k, height // 2**self.depth, width // 2**self.depth)

    def build(self) -> nn.Sequential:
        model = nn.Sequential()
        for i in range(self.depth + 1):
            _add(model, _conv(self.k, self.k, 1, bias=False, pad="reflection"))
            if i < self.depth:
                _add(model, nn.Upsample(scale_factor=2, mode=self.upsample_mode))
            _add(model, nn.ReLU())
            _add(model, nn.BatchNorm2d(self.k))
        _add(model, _conv(self.k, self.out_channels, 1, bias=False, pad="reflection"))
        if self.sigmoid:
            _add(model, nn.Sigmoid())
        return model

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def describe(self) -> str:
        return f"deep decoder k={self.k}, d={self.depth}, {self.upsample_mode}"


ArchSpec = SkipSpec | DeepDecoderSpec | PGANSpec

# ``spec.kind`` -> spec class: what a ticket header's ``arch["kind"]`` may name.
ARCHITECTURES: dict[str, type[ArchSpec]] = {"dip": SkipSpec, "dd": DeepDecoderSpec, "pgan": PGANSpec}


def arch_from_dict(d: dict[str, Any]) -> ArchSpec:
    """Inverse of ``spec.to_dict()``."""
    if not isinstance(d, dict):
        raise ValueError(f"architecture must be a mapping, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("kind", "dip")
    cls = ARCHITECTURES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown architecture kind {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown architecture fields {sorted(unknown)}")
    return cls(**d)


def paper_skip() -> SkipSpec:
    """The LIP paper's DIP configuration."""
    return SkipSpec()


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Conv2d modules by reference-layout module path ('1.1.4.1'), in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prunable_names(model: nn.Module) -> list[str]:
    """Reference-layout names of the prunable parameters: every Conv2d weight (biases and BatchNorm never)."""
    return [f"{name}.weight" for name in conv_layers(model)]


def make_input(spec: ArchSpec, height: int, width: int, seed: int = 0, scale: float = 0.1) -> torch.Tensor:
    """The DIP noise code: uniform noise U(0, scale) of the network's input shape, from a fixed seed."""
    if height % spec.stride or width % spec.stride:
        raise ValueError(f"height and width must be multiples of {spec.stride}, got {height}x{width}")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(spec.input_shape(height, width), generator=gen) * scale
