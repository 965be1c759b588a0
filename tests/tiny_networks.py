"""Tiny Keras networks converted to full int8, for the graph and patch tests.

Each is a few layers on a small image so that conversion takes about a second;
together they hold every operator kind the patch pass handles.
"""

from __future__ import annotations

import functools

import numpy as np


def _convert(build, input_shape: tuple[int, ...], seed: int = 0) -> bytes:
    import tensorflow as tf

    from tinyscale.training.convert import convert_keras_model

    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input(input_shape)
    model = tf.keras.Model(inputs, build(tf.keras.layers, inputs))
    representative = np.random.default_rng(seed).uniform(-1, 1, (16, *input_shape)).astype(np.float32)
    return convert_keras_model(model, representative)


def _mbconv(layers, x):
    """Conv s2 k3 SAME, residual depthwise block, depthwise k5 s2: odd input."""
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(x)
    y = layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    y = layers.Conv2D(8, 1)(y)
    x = layers.Add()([x, y])
    x = layers.DepthwiseConv2D(5, strides=2, padding="same")(x)
    x = layers.Conv2D(12, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(4)(x)


def _valid_and_pools(layers, x):
    """VALID k5 and k3 s2 convolutions, max and average pooling, MUL of two maps."""
    x = layers.Conv2D(8, 5, padding="valid", activation="relu")(x)
    x = layers.MaxPooling2D(3, strides=1, padding="same")(x)
    x = layers.AveragePooling2D(2, strides=2, padding="valid")(x)
    a = layers.Conv2D(8, 3, strides=2, padding="valid")(x)
    b = layers.DepthwiseConv2D(3, strides=2, padding="valid", activation="sigmoid")(x)
    x = layers.Multiply()([a, b])
    x = layers.MaxPooling2D(2, strides=2, padding="same")(x)
    return layers.Dense(3)(layers.Flatten()(x))


def _activations(layers, x):
    """Standalone element-wise ops: RELU, HARD_SWISH, LOGISTIC, TANH, LEAKY_RELU, RELU6."""
    import tensorflow as tf

    x = layers.Conv2D(6, 3, padding="same")(layers.ReLU()(x))
    x = layers.ReLU()(layers.Add()([x, x]))
    x = layers.Conv2D(6, 3, strides=2, padding="same")(x)
    x = layers.Activation(tf.nn.relu6)(layers.Activation("hard_swish")(x))
    x = layers.Activation("sigmoid")(layers.Conv2D(6, 3, padding="same")(x))
    x = layers.LeakyReLU(0.2)(layers.Activation("tanh")(layers.Conv2D(6, 1)(x)))
    x = layers.ReLU(6.0)(x)
    return layers.Dense(3)(layers.GlobalAveragePooling2D()(x))


def _dense_only(layers, x):
    """Nothing spatial to patch: flatten first."""
    return layers.Dense(3)(layers.Flatten()(x))


NETWORKS = {
    "mbconv": (_mbconv, (17, 17, 3)),
    "valid_and_pools": (_valid_and_pools, (20, 20, 2)),
    "activations": (_activations, (12, 10, 3)),
    "dense_only": (_dense_only, (6, 6, 2)),
}


@functools.lru_cache(maxsize=None)
def int8_network(name: str) -> bytes:
    build, shape = NETWORKS[name]
    return _convert(build, shape)


@functools.lru_cache(maxsize=None)
def float_network() -> bytes:
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 1))
    hidden = tf.keras.layers.Conv2D(2, 3, padding="same")(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(2, 3)(hidden))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def random_inputs(model: bytes, count: int, seed: int = 0) -> np.ndarray:
    from tinyscale.graph.flatbuffer import read_flatbuffer

    graph = read_flatbuffer(model).graph
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    return np.random.default_rng(seed).integers(-128, 128, (count, *shape), dtype=np.int8)
