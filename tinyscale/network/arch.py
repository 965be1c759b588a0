"""Base architectures as data, and their compound-scaled form.

A base network is a table of stage specs, written in the TPU builder's string
form (``r2_k3_s22_e6_i16_o24_se0.25``). Scaling a base at phi resolves every
stage into concrete blocks and yields a hashable :class:`NetworkSpec`, so that a
search can memoise: nearby phi values round to the same network.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from tinyscale.errors import UsageError
from tinyscale.network.scaling import (
    Coefficients,
    round_filters,
    round_repeats,
    round_resolution,
)

_STAGE_TOKEN = re.compile(r"^(r|k|s|e|i|o|se)(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks before scaling (first block strides, the rest repeat)."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int
    se_ratio: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "StageSpec":
        """Parse the TPU builder's form, e.g. ``r1_k3_s11_e1_i32_o16_se0.25``."""
        values: dict[str, str] = {}
        for token in text.split("_"):
            match = _STAGE_TOKEN.match(token)
            if not match:
                raise UsageError(f"bad token {token!r} in stage spec {text!r}")
            values[match.group(1)] = match.group(2)
        missing = {"r", "k", "s", "e", "i", "o"} - values.keys()
        if missing:
            raise UsageError(f"stage spec {text!r} lacks {', '.join(sorted(missing))}")
        stride = values["s"]
        # The TPU form writes the stride per axis ("s22"); only square strides occur.
        if len(stride) != 2 or stride[0] != stride[1]:
            raise UsageError(f"stage spec {text!r}: stride must be square, like s11 or s22")
        return cls(
            repeats=int(values["r"]),
            kernel=int(values["k"]),
            stride=int(stride[0]),
            expand_ratio=int(values["e"]),
            in_filters=int(values["i"]),
            out_filters=int(values["o"]),
            se_ratio=float(values.get("se", 0.0)),
        )

    def __str__(self) -> str:
        text = (
            f"r{self.repeats}_k{self.kernel}_s{self.stride}{self.stride}"
            f"_e{self.expand_ratio}_i{self.in_filters}_o{self.out_filters}"
        )
        if self.se_ratio:
            text += f"_se{self.se_ratio:g}"
        return text


@dataclass(frozen=True)
class BaseArch:
    """A base network: its stages plus the flags that make a variant."""

    name: str
    stages: tuple[StageSpec, ...]
    resolution: int = 224
    stem_filters: int = 32
    head_filters: int = 1280
    activation: str = "swish"  # "swish" or "relu6"
    # EfficientNet-lite keeps stem, head and the first/last stages' repeats fixed
    # when scaling *up* (its published rule). Scaling *down* we let them shrink:
    # a fixed 1280-channel head alone is ~410 KB of int8 weights, which would
    # dominate the flash of every small microcontroller network.
    fix_head_stem_when_scaling_up: bool = False
    # Same rule applied at every phi: the published lite variant as-is.
    fix_head_stem_always: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.activation not in ("swish", "relu6"):
            raise UsageError(f"unknown activation {self.activation!r}")


def _stages(*specs: str) -> tuple[StageSpec, ...]:
    return tuple(StageSpec.parse(spec) for spec in specs)


_B0_STAGES = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)
# Lite drops squeeze-excitation (poorly supported by MCU/accelerator kernels)
# and uses ReLU6 (quantization friendly: bounded range).
_LITE_STAGES = tuple(spec.rsplit("_se", 1)[0] for spec in _B0_STAGES)

BASES: dict[str, BaseArch] = {
    base.name: base
    for base in (
        BaseArch(
            name="efficientnet-b0",
            stages=_stages(*_B0_STAGES),
            activation="swish",
            description="the paper's B0: MBConv, SE 0.25, swish; stem and head scale with width",
        ),
        BaseArch(
            name="efficientnet-lite0",
            stages=_stages(*_LITE_STAGES),
            activation="relu6",
            fix_head_stem_when_scaling_up=True,
            description="lite0: ReLU6, no SE; stem/head fixed when scaling up, scaled when scaling down",
        ),
        BaseArch(
            name="efficientnet-lite0-fixed",
            stages=_stages(*_LITE_STAGES),
            activation="relu6",
            fix_head_stem_always=True,
            description="lite0 with stem 32 and head 1280 fixed at every phi (the published rule)",
        ),
        # Small enough to convert in about a second: keeps the test suite fast.
        BaseArch(
            name="tiny",
            stages=_stages("r1_k3_s11_e1_i8_o8", "r2_k3_s22_e4_i8_o16", "r1_k3_s22_e4_i16_o24"),
            resolution=32,
            stem_filters=8,
            head_filters=32,
            activation="relu6",
            description="three-stage toy network for tests",
        ),
        BaseArch(
            name="tiny-se",
            stages=_stages("r1_k3_s11_e1_i8_o8_se0.25", "r2_k3_s22_e4_i8_o16_se0.25"),
            resolution=32,
            stem_filters=8,
            head_filters=32,
            activation="swish",
            description="two-stage toy network with SE and swish, for tests",
        ),
    )
}


def get_base(name: str) -> BaseArch:
    try:
        return BASES[name]
    except KeyError:
        close = difflib.get_close_matches(name, BASES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(BASES)}"
        raise UsageError(f"unknown base {name!r}{hint}") from None


@dataclass(frozen=True)
class BlockSpec:
    """One concrete MBConv block of a scaled network."""

    kernel: int
    stride: int
    in_filters: int
    expanded_filters: int  # == in_filters when the block has no expansion conv
    out_filters: int
    se_filters: int  # 0: no squeeze-excitation

    @property
    def has_expand(self) -> bool:
        return self.expanded_filters != self.in_filters

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


@dataclass(frozen=True)
class NetworkSpec:
    """A fully resolved network. Hashable; equal specs build identical models."""

    base: str
    resolution: int
    channels: int
    classes: int
    activation: str
    stem_filters: int
    head_filters: int
    blocks: tuple[BlockSpec, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.resolution, self.resolution, self.channels)


@dataclass(frozen=True)
class ScaledNetwork:
    """A spec together with how it was obtained (phi and the raw multipliers)."""

    spec: NetworkSpec
    phi: float
    coefficients: Coefficients = field(default_factory=Coefficients)

    @property
    def depth_multiplier(self) -> float:
        return self.coefficients.alpha**self.phi

    @property
    def width_multiplier(self) -> float:
        return self.coefficients.beta**self.phi

    @property
    def resolution_multiplier(self) -> float:
        return self.coefficients.gamma**self.phi


def check_classes_channels(classes: int, channels: int) -> None:
    if not isinstance(classes, int) or classes < 2:
        raise UsageError(f"classes must be an integer >= 2, got {classes!r}")
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels!r}")


def scale(
    base: BaseArch | str,
    phi: float,
    coefficients: Coefficients | None = None,
    classes: int = 10,
    channels: int = 3,
) -> ScaledNetwork:
    """Resolve `base` at compound coefficient `phi` into a concrete network."""
    if isinstance(base, str):
        base = get_base(base)
    coefficients = coefficients or Coefficients()
    check_classes_channels(classes, channels)
    depth, width, res = coefficients.multipliers(phi)
    fixed = base.fix_head_stem_always or (base.fix_head_stem_when_scaling_up and phi >= 0)

    def filters(n: int) -> int:
        return round_filters(n, width)

    blocks: list[BlockSpec] = []
    last = len(base.stages) - 1
    for index, stage in enumerate(base.stages):
        keep_depth = fixed and index in (0, last)
        repeats = stage.repeats if keep_depth else round_repeats(stage.repeats, depth)
        in_filters = filters(stage.in_filters)
        if fixed and index == 0:
            in_filters = base.stem_filters  # the stem feeds stage 0 directly
        out_filters = filters(stage.out_filters)
        for repeat in range(repeats):
            block_in = in_filters if repeat == 0 else out_filters
            se = max(1, int(block_in * stage.se_ratio)) if stage.se_ratio else 0
            blocks.append(
                BlockSpec(
                    kernel=stage.kernel,
                    stride=stage.stride if repeat == 0 else 1,
                    in_filters=block_in,
                    expanded_filters=block_in * stage.expand_ratio,
                    out_filters=out_filters,
                    se_filters=se,
                )
            )
    spec = NetworkSpec(
        base=base.name,
        resolution=round_resolution(base.resolution, res),
        channels=channels,
        classes=classes,
        activation=base.activation,
        stem_filters=base.stem_filters if fixed else filters(base.stem_filters),
        head_filters=base.head_filters if fixed else filters(base.head_filters),
        blocks=tuple(blocks),
    )
    return ScaledNetwork(spec=spec, phi=float(phi), coefficients=coefficients)


# ---------------------------------------------------------------------------
# Layer walk: the one description of the network's computation that the
# parameter count, the MAC count and the memory estimator all share.


@dataclass(frozen=True)
class Layer:
    """One computational layer as Keras sees it (before BN folding)."""

    kind: str  # conv, dwconv, se_reduce, se_expand, fc
    kernel: int
    in_channels: int
    out_channels: int
    out_size: int  # spatial side of the output
    bias: bool
    batchnorm: bool


def _same_out(size: int, stride: int) -> int:
    return -(-size // stride)


def layers(spec: NetworkSpec) -> list[Layer]:
    out: list[Layer] = []
    size = _same_out(spec.resolution, 2)
    out.append(Layer("conv", 3, spec.channels, spec.stem_filters, size, False, True))
    for block in spec.blocks:
        if block.has_expand:
            out.append(Layer("conv", 1, block.in_filters, block.expanded_filters, size, False, True))
        size = _same_out(size, block.stride)
        out.append(Layer("dwconv", block.kernel, block.expanded_filters, block.expanded_filters, size, False, True))
        if block.se_filters:
            out.append(Layer("se_reduce", 1, block.expanded_filters, block.se_filters, 1, True, False))
            out.append(Layer("se_expand", 1, block.se_filters, block.expanded_filters, 1, True, False))
        out.append(Layer("conv", 1, block.expanded_filters, block.out_filters, size, False, True))
    last = spec.blocks[-1].out_filters if spec.blocks else spec.stem_filters
    out.append(Layer("conv", 1, last, spec.head_filters, size, False, True))
    out.append(Layer("fc", 1, spec.head_filters, spec.classes, 1, True, False))
    return out


def _weights(layer: Layer) -> int:
    if layer.kind == "dwconv":
        return layer.kernel * layer.kernel * layer.out_channels
    return layer.kernel * layer.kernel * layer.in_channels * layer.out_channels


def count_params(spec: NetworkSpec, include_bn_statistics: bool = False) -> int:
    """Trainable parameters (the paper's count); optionally BN's moving mean/var too."""
    total = 0
    for layer in layers(spec):
        total += _weights(layer)
        if layer.bias:
            total += layer.out_channels
        if layer.batchnorm:
            total += layer.out_channels * (4 if include_bn_statistics else 2)
    return total


def count_macs(spec: NetworkSpec) -> int:
    """Multiply-accumulates of the convolutions and the classifier."""
    return sum(_weights(layer) * layer.out_size * layer.out_size for layer in layers(spec))
