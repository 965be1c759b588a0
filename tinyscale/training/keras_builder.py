"""Build the Keras model of a :class:`~tinyscale.network.arch.NetworkSpec`.

The layers follow :func:`tinyscale.network.arch.layers` one for one, so the Keras
parameter count equals :func:`tinyscale.network.arch.count_params` (with BN statistics).
TensorFlow is imported inside :func:`build_keras_model` only.

Every layer, and the model, gets an explicit name derived from its position in
the spec: Keras' global name counters ("conv2d_17") would otherwise leak into
the flatbuffer's tensor names, and the same spec would convert to different
bytes depending on how many models the process had built before.
"""

from __future__ import annotations

from typing import Any

from tinyscale.errors import UsageError
from tinyscale.network.arch import BlockSpec, NetworkSpec

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
MODEL_NAME = "tinyscale"


class _Builder:
    """Adds named layers to a functional graph; one seeded initializer per layer."""

    def __init__(self, keras: Any, activation: str, seed: int) -> None:
        self.keras = keras
        self.activation = activation
        self.seed = seed
        self.layer_count = 0

    def initializer(self, kind: str) -> Any:
        # A distinct, fixed seed per layer: the same spec and seed give the same
        # weights no matter what Keras' global random state is.
        self.layer_count += 1
        seed = self.seed * 100_003 + self.layer_count
        if kind == "dense":
            return self.keras.initializers.GlorotUniform(seed=seed)
        return self.keras.initializers.HeNormal(seed=seed)

    def conv(self, x: Any, filters: int, kernel: int, name: str, stride: int = 1, bias: bool = False) -> Any:
        layer = self.keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=bias,
            kernel_initializer=self.initializer("conv"),
            name=name,
        )
        return layer(x)

    def dwconv(self, x: Any, kernel: int, stride: int, name: str) -> Any:
        layer = self.keras.layers.DepthwiseConv2D(
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            depthwise_initializer=self.initializer("conv"),
            name=name,
        )
        return layer(x)

    def bn(self, x: Any, name: str) -> Any:
        return self.keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)

    def act(self, x: Any, name: str, activation: str | None = None) -> Any:
        return self.keras.layers.Activation(activation or self.activation, name=name)(x)

    def conv_bn_act(self, x: Any, filters: int, kernel: int, prefix: str, stride: int = 1) -> Any:
        x = self.conv(x, filters, kernel, f"{prefix}_conv", stride=stride)
        x = self.bn(x, f"{prefix}_bn")
        return self.act(x, f"{prefix}_act")

    def squeeze_excite(self, x: Any, block: BlockSpec, prefix: str) -> Any:
        layers = self.keras.layers
        s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_squeeze")(x)
        s = self.conv(s, block.se_filters, 1, f"{prefix}_se_reduce", bias=True)
        s = self.act(s, f"{prefix}_se_reduce_act")
        s = self.conv(s, block.expanded_filters, 1, f"{prefix}_se_expand", bias=True)
        s = self.act(s, f"{prefix}_se_gate", activation="sigmoid")
        return layers.Multiply(name=f"{prefix}_se_excite")([x, s])

    def mbconv(self, x: Any, block: BlockSpec, prefix: str) -> Any:
        shortcut = x
        if block.has_expand:
            x = self.conv_bn_act(x, block.expanded_filters, 1, f"{prefix}_expand")
        x = self.dwconv(x, block.kernel, block.stride, f"{prefix}_dwconv")
        x = self.bn(x, f"{prefix}_dw_bn")
        x = self.act(x, f"{prefix}_dw_act")
        if block.se_filters:
            x = self.squeeze_excite(x, block, prefix)
        x = self.conv(x, block.out_filters, 1, f"{prefix}_project_conv")
        x = self.bn(x, f"{prefix}_project_bn")
        if block.has_skip:
            x = self.keras.layers.Add(name=f"{prefix}_add")([shortcut, x])
        return x


def build_keras_model(spec: NetworkSpec, *, dropout: float = 0.2, seed: int = 0) -> Any:
    """The Keras model of `spec`: inputs in [0, 1], softmax over `spec.classes`."""
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {dropout!r}")
    from tinyscale.quiet import quiet_tensorflow

    with quiet_tensorflow():
        import keras  # noqa: PLC0415 - TensorFlow/Keras stay out of the core import path

    builder = _Builder(keras, spec.activation, seed)
    layers = keras.layers
    inputs = keras.Input(shape=spec.input_shape, name="input")
    x = builder.conv_bn_act(inputs, spec.stem_filters, 3, "stem", stride=2)
    for index, block in enumerate(spec.blocks):
        x = builder.mbconv(x, block, f"b{index}")
    x = builder.conv_bn_act(x, spec.head_filters, 1, "head")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    x = layers.Dense(
        spec.classes,
        kernel_initializer=builder.initializer("dense"),
        name="logits",
    )(x)
    outputs = layers.Activation("softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)
