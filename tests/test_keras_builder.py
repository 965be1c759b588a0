"""The Keras builder matches the analytic architecture exactly."""

from __future__ import annotations

import pytest

from tinyscale.network import arch
from tinyscale.training.keras_builder import build_keras_model

pytest.importorskip("keras")


@pytest.mark.parametrize(
    ("base", "phi", "classes", "channels"),
    [
        ("efficientnet-lite0", -6, 10, 1),
        ("tiny", 0, 10, 3),
        ("tiny-se", 1, 4, 1),
    ],
)
def test_parameter_count_matches_arch(base, phi, classes, channels):
    spec = arch.scale(base, phi, classes=classes, channels=channels).spec
    model = build_keras_model(spec)
    assert model.count_params() == arch.count_params(spec, include_bn_statistics=True)


def test_b0_has_the_published_parameter_count():
    spec = arch.scale("efficientnet-b0", 0, classes=1000).spec
    count = build_keras_model(spec).count_params()
    assert count == arch.count_params(spec, include_bn_statistics=True) == 5_330_564


def test_names_are_deterministic_and_independent_of_earlier_models():
    spec = arch.scale("tiny-se", 0).spec
    first = build_keras_model(spec)
    build_keras_model(arch.scale("tiny", 0).spec)
    second = build_keras_model(spec)
    assert first.name == second.name == "tinyscale"
    assert [layer.name for layer in first.layers] == [layer.name for layer in second.layers]
    assert "b0_se_reduce" in {layer.name for layer in first.layers}
    assert [w.name for w in first.weights] == [w.name for w in second.weights]


def test_same_seed_same_weights_other_seed_differs():
    spec = arch.scale("tiny", 0).spec
    a, b, c = (build_keras_model(spec, seed=s) for s in (0, 0, 1))
    assert all((x == y).all() for x, y in zip(a.get_weights(), b.get_weights()))
    assert not all((x == y).all() for x, y in zip(a.get_weights(), c.get_weights()))


def test_output_is_a_distribution_over_classes():
    import numpy as np

    spec = arch.scale("tiny", 0, classes=7).spec
    model = build_keras_model(spec)
    out = model(np.zeros((2, *spec.input_shape), np.float32), training=False).numpy()
    assert out.shape == (2, 7)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
