"""TFLM measurement and execution: minimal arenas, determinism, crash isolation."""

from __future__ import annotations

import numpy as np
import pytest

from tinyscale.errors import DataError, MeasurementError, ModelError
from tinyscale.network import arch
from tinyscale.simulation.tflm import (
    ModelRunner,
    _Worker,
    check_loads,
    measure_arena,
    probe,
    run_model,
)

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module", params=["tiny", "tiny-se"])
def model(request):
    pytest.importorskip("tensorflow")
    from tinyscale.training.convert import convert_spec

    return convert_spec(arch.scale(request.param, 0).spec)


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


def test_one_runner_serves_many_batches_and_survives_a_bad_one(model):
    rng = np.random.default_rng(1)
    inputs = rng.integers(-128, 128, size=(5, *_input_shape(model)), dtype=np.int8)
    with ModelRunner(model) as runner:
        pid = runner._worker.process.pid
        parts = [runner.run(inputs[:2]), runner.run(inputs[2:])]
        with pytest.raises(DataError):
            runner.run(inputs[:, :1])  # wrong shape: refused, the worker lives on
        again = runner.run(inputs[:1])
        assert runner._worker.process.pid == pid  # one worker for every batch
    assert np.array_equal(np.concatenate(parts), run_model(model, inputs))
    assert np.array_equal(again, parts[0][:1])


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


def test_missing_operator_is_reported_with_tflm_reason(model):
    flatbuffers = pytest.importorskip("flatbuffers")
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    code = tree.operatorCodes[0]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.LSH_PROJECTION
    builder = flatbuffers.Builder(0)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(ModelError, match="LSH_PROJECTION") as caught:
        check_loads(bytes(builder.Output()))
    assert "\n" not in str(caught.value)


def test_a_crashing_probe_does_not_kill_the_caller(model):
    with _Worker(model, timeout=60) as worker:
        crashed = worker.run(64, capture=True)  # far too small: TFLM segfaults or aborts
        assert not crashed.ok
        assert crashed.status != "exit 0"
        assert worker.allocates(measure_arena(model).arena_bytes, invoke=True)  # same worker lives on
    assert not probe(model, 64)


def test_timeout_is_a_measurement_error(model):
    with pytest.raises(MeasurementError, match="time limit"):
        measure_arena(model, timeout=0.001)


def _input_shape(model: bytes) -> tuple[int, ...]:
    from tinyscale.graph.tflite_model import read_model

    return read_model(model).input_tensors[0].shape[1:]


def test_inputs_of_the_wrong_shape_or_type_are_data_errors(model):
    shape = _input_shape(model)
    with pytest.raises(DataError, match="shape"):
        run_model(model, np.zeros(shape, np.int8))  # missing batch axis
    with pytest.raises(DataError, match="int8"):
        run_model(model, np.zeros((1, *shape), np.float32))


def test_first_arena_too_small_is_grown_not_reported_as_a_model_error(model, monkeypatch):
    expected = measure_arena(model).arena_bytes
    monkeypatch.setattr("tinyscale.simulation.tflm.FIRST_ARENA_BYTES", 512)  # forces the fallback to a large arena
    assert measure_arena(model).arena_bytes == expected
