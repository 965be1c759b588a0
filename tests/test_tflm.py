"""TFLM measurement and execution: minimal arenas, determinism, crash isolation."""

from __future__ import annotations

import numpy as np
import pytest

from tinyscale import arch
from tinyscale.errors import MeasurementError, ModelError
from tinyscale.tflm import check_loads, measure_arena, probe, run_model

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module", params=["tiny", "tiny-se"])
def model(request, tmp_path_factory):
    pytest.importorskip("tensorflow")
    from tinyscale.convert import spec_to_tflite

    import os

    os.environ.setdefault("TINYSCALE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return spec_to_tflite(arch.scale(request.param, 0).spec)


def test_measured_arena_is_minimal(model):
    measurement = measure_arena(model)
    assert measurement.arena_bytes > 0
    assert "Arena allocation total" in measurement.allocations
    assert abs(measurement.arena_bytes - measurement.reported_bytes) < 16 * 1024
    assert probe(model, measurement.arena_bytes)
    assert not probe(model, measurement.arena_bytes - 1)


def test_run_model_is_deterministic(model):
    rng = np.random.default_rng(0)
    spec_shape = _input_shape(model)
    inputs = rng.integers(-128, 128, size=(3, *spec_shape), dtype=np.int8)
    first = run_model(model, inputs)
    second = run_model(model, inputs, arena_bytes=measure_arena(model).arena_bytes + 1000)
    assert first.dtype == np.int8 and first.shape[0] == 3
    assert np.array_equal(first, second)


def test_too_small_arena_is_a_measurement_error_not_a_crash(model):
    inputs = np.zeros((1, *_input_shape(model)), np.int8)
    with pytest.raises(MeasurementError):
        run_model(model, inputs, arena_bytes=256)


def test_garbage_bytes_are_a_model_error():
    with pytest.raises(ModelError):
        check_loads(b"TFL3" + bytes(range(256)) * 4)
    with pytest.raises(ModelError):
        measure_arena(b"\x00" * 100)


def test_check_loads_accepts_a_converted_model(model):
    check_loads(model)


def _input_shape(model: bytes) -> tuple[int, ...]:
    from tinyscale.tflite_model import read_model

    return read_model(model).input_tensors[0].shape[1:]
