"""Host simulation: integer-model checks, the per-operator table, memory, parallel evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import IO_KINDS, make_target, quantized_model, repack_model
from typer.testing import CliRunner

from tinyscale.cli import app
from tinyscale.errors import DataError, ModelError
from tinyscale.graph import estimate
from tinyscale.graph.tflite_model import (
    input_quantization,
    output_quantization,
    read_model,
)
from tinyscale.network import arch
from tinyscale.simulation import simulate, tflm
from tinyscale.training.convert import spec_to_tflite
from tinyscale.training.data import Dataset

# A tflite-micro source checkout (github.com/tensorflow/tflite-micro) for its example models.
TFLM_SOURCE = os.environ.get("TFLM_SOURCE")
TFLM_MODELS = Path(TFLM_SOURCE or ".", "tensorflow/lite/micro")
TINY_MODEL = Path(__file__).parent / "golden" / "tiny.tflite"


@pytest.fixture(scope="module")
def tiny():
    """An int8 model of the `tiny` base (random weights, cached conversion) and its spec."""
    spec = arch.scale("tiny", 0, classes=4, channels=1).spec
    return spec, spec_to_tflite(spec)


def _float_tflite(optimize: bool) -> bytes:
    """A small Dense model as float (optimize=False) or dynamic-range quantized (True)."""
    import keras
    import tensorflow as tf

    from tinyscale.quiet import quiet_tensorflow

    inputs = keras.Input(shape=(64,))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(64, activation="relu")(inputs)))
    with quiet_tensorflow():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: hybrid
        return converter.convert()


def test_float_and_hybrid_models_are_refused_with_advice():
    with pytest.raises(ModelError, match="float model; convert it to full int8"):
        simulate.load_model_bytes(_float_tflite(optimize=False))
    with pytest.raises(ModelError, match="dynamic-range \\(hybrid\\)"):
        simulate.load_model_bytes(_float_tflite(optimize=True))


@pytest.mark.parametrize("mangle", [lambda b: b[: len(b) // 3], lambda b: bytes(len(b)),
                                    lambda b: np.random.default_rng(0).bytes(4096), lambda b: b""])
def test_corrupt_truncated_or_random_bytes_are_model_errors(tiny, mangle):
    with pytest.raises(ModelError):
        simulate.memory_report(mangle(tiny[1]))


def test_operator_macs_match_the_architecture_count(tiny):
    spec, model = tiny
    rows = simulate.operator_table(read_model(model))
    # BN folds into the convolutions, so TFLite's conv/FC MACs are the spec's exactly.
    assert sum(row.macs for row in rows) == arch.count_macs(spec)
    first = rows[0]
    assert first.name == "CONV_2D" and first.output_shape == (1, 16, 16, spec.stem_filters)
    # The stem runs with its int8 input and output live: 32*32*1 + 16*16*8 bytes.
    assert first.live_bytes == 32 * 32 + 16 * 16 * spec.stem_filters


def test_memory_report_uses_the_measured_minimal_arena_and_the_target(tiny):
    _, model = tiny
    report = simulate.memory_report(model)
    assert report.arena_bytes == tflm.measure_arena(model).arena_bytes
    # The analytic arena beside it, exact for tinyscale's own models.
    assert report.analytic_arena_bytes == report.arena_bytes
    assert report.to_dict()["analytic_arena_bytes"] == report.arena_bytes
    assert tflm.probe(model, report.arena_bytes) and not tflm.probe(model, report.arena_bytes - 1)
    assert report.flash_needed_bytes == report.model_bytes + simulate.runtime_flash_estimate(report.info.operator_names)
    assert report.peak.live_bytes <= report.arena_bytes
    # SRAM need is the device arena: on this Cortex-M4 with CMSIS-NN the 32-bit build's
    # modelled minimum (smaller structs than the host's). Flash need adds the firmware's
    # embedded self-test input and expected output.
    unbounded = simulate.memory_report(model, make_target(10**9, 10**9)).placement
    device, selftest = unbounded.device_arena_bytes, unbounded.selftest_flash_bytes
    runtime = estimate.device_runtime("cmsis-nn", "cortex-m4")
    assert unbounded.arena_rule == "32-bit model"
    assert device == -(-estimate.arena_plan(report.info.model, runtime).arena_bytes // 16) * 16 < report.arena_bytes
    assert selftest == sum(t.nbytes for t in (*report.info.input_tensors, *report.info.output_tensors))
    roomy = make_target(report.model_bytes + selftest + 1000, device + 10, flash_reserved=5000)
    data = simulate.memory_report(model, roomy).to_dict()
    assert data["fits"] is True
    assert data["flash_needed_bytes"] == report.model_bytes + selftest + 5000
    assert data["flash_headroom_bytes"] == 1000 and data["sram_headroom_bytes"] == 10
    tight = make_target(report.model_bytes + selftest + 1000, device - 1)
    assert simulate.memory_report(model, tight).to_dict()["fits"] is False


def _dataset(count: int, classes: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(count, 28, 28, 1), dtype=np.uint8)
    return Dataset(x, rng.integers(0, classes, size=count), tuple(f"c{i}" for i in range(classes)), "random")


def test_parallel_evaluation_matches_one_worker(tiny):
    _, model = tiny
    info = read_model(model)
    arena = tflm.measure_arena(model).arena_bytes
    dataset = _dataset(48, 4)
    one = simulate.evaluate(model, info, dataset, arena, workers=1)
    two = simulate.evaluate(model, info, dataset, arena, workers=2)
    assert np.array_equal(one.predictions, two.predictions)
    assert one.int8_accuracy == pytest.approx(np.mean(one.predictions == dataset.y))
    matrix = one.confusion()
    assert matrix.sum() == 48 and np.trace(matrix) == int(round(one.int8_accuracy * 48))
    assert one.images_per_second > 0


def test_class_count_mismatch_is_a_data_error(tiny):
    _, model = tiny
    with pytest.raises(DataError, match="has 3 classes but the model predicts 4"):
        simulate.evaluate(model, read_model(model), _dataset(8, 3), 100_000)


@pytest.mark.skipif(not TFLM_SOURCE or not (TFLM_MODELS / "models").is_dir(),
                    reason="set TFLM_SOURCE to a tflite-micro checkout (with tensorflow/lite/micro/models)")
def test_third_party_models_person_detection_and_lstm():
    person = simulate.memory_report((TFLM_MODELS / "models/person_detect.tflite").read_bytes())
    # Known minimal arena of TFLM's person_detect on x86-64 (shared notes: 85,264 B).
    assert person.arena_bytes == 85_264
    assert "DEPTHWISE_CONV_2D" in person.info.operator_names
    lstm = simulate.memory_report((TFLM_MODELS / "examples/mnist_lstm/trained_lstm_int8.tflite").read_bytes())
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in lstm.info.operator_names
    assert lstm.arena_bytes > 0 and sum(row.macs for row in lstm.rows) > 0
    with pytest.raises(ModelError, match="custom operators"):
        simulate.load_model_bytes((TFLM_MODELS / "models/person_detect_vela.tflite").read_bytes())


def _stem_filter(obj):
    """The stem CONV_2D's filter tensor (input 1 of operator 0) in a ModelT."""
    graph = obj.subgraphs[0]
    return graph.tensors[graph.operators[0].inputs[1]]


def _clear_filter_buffer(obj):
    obj.buffers[_stem_filter(obj).buffer].data = None  # its bytes zeroed out of the buffer table


def _filter_to_empty_buffer(obj):
    _stem_filter(obj).buffer = 0  # buffer 0 is the schema's always-empty sentinel


@pytest.mark.parametrize("edit", [_clear_filter_buffer, _filter_to_empty_buffer])
def test_weights_without_data_are_refused(edit, tmp_path):
    damaged = repack_model(TINY_MODEL.read_bytes(), edit)
    with pytest.raises(ModelError, match="weight tensor 28 .* \\(input 1 of operator 0, CONV_2D\\) has no data"):
        read_model(damaged)
    (tmp_path / "damaged.tflite").write_bytes(damaged)
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "damaged.tflite")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: weight tensor 28 "), result.output


def test_optional_inputs_and_state_tensors_need_no_data():
    info = read_model(TINY_MODEL.read_bytes())
    fully_connected = info.operators[16]
    assert fully_connected.name == "FULLY_CONNECTED" and fully_connected.inputs[2] == -1  # no bias

    def make_filter_variable(obj):
        _clear_filter_buffer(obj)
        _stem_filter(obj).isVariable = True

    assert read_model(repack_model(TINY_MODEL.read_bytes(), make_filter_variable)).tensors[28].is_variable


@pytest.mark.parametrize("kind", IO_KINDS)
def test_int16x8_and_float_io_models_are_simulated_on_their_own_input_type(kind):
    model = quantized_model(kind)
    report = simulate.memory_report(model)
    info = report.info
    dataset = _dataset(12, 3)
    inputs = simulate.model_inputs(info, dataset)
    io = input_quantization(info)
    assert inputs.dtype == np.dtype(info.input_tensors[0].dtype) and io.dtype == kind.split("-")[0]
    (described,) = report.to_dict()["inputs"]
    assert (described["dtype"], described["integer_dtype"], described["scale"]) == (
        info.input_tensors[0].dtype, io.dtype, io.scale)
    if io.is_float:  # the float images the model was trained on; its QUANTIZE does the rest
        assert 0.0 <= inputs.min() and inputs.max() <= 1.0 and output_quantization(info).dtype == io.dtype
    evaluation = simulate.evaluate(model, info, dataset, report.arena_bytes)
    outputs = tflm.run_model(model, inputs, arena_bytes=report.arena_bytes)
    assert outputs.dtype == np.dtype(info.output_tensors[0].dtype)
    assert np.array_equal(evaluation.predictions, np.argmax(outputs, axis=1))
    with pytest.raises(DataError, match=f"TFLM inputs must be {inputs.dtype}, got int32"):
        tflm.run_model(model, inputs.astype(np.int32))


def test_io_types_outside_the_supported_set_are_refused():
    def output_to_uint8(obj):
        obj.subgraphs[0].tensors[obj.subgraphs[0].outputs[0]].type = 3  # UINT8

    with pytest.raises(ModelError, match="output 'Identity' is uint8; tinyscale runs int8 or int16x8 weights"):
        simulate.load_model_bytes(repack_model(TINY_MODEL.read_bytes(), output_to_uint8))


def test_simulate_cli_evaluates_a_float_io_model_on_image_data(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8), y=np.arange(10) % 3)
    (tmp_path / "m.tflite").write_bytes(quantized_model("int8-float"))
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "m.tflite"), "--data", str(tmp_path / "data.npz"),
                                      "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == 10 and report["inputs"][0]["dtype"] == "float32"


@pytest.mark.skipif(not TFLM_SOURCE or not (TFLM_MODELS / "models").is_dir(),
                    reason="set TFLM_SOURCE to a tflite-micro checkout (with tensorflow/lite/micro/models)")
def test_analytic_arena_of_third_party_models_or_why_not():
    person = simulate.memory_report((TFLM_MODELS / "models/person_detect.tflite").read_bytes())
    assert person.analytic_arena_bytes == person.arena_bytes == 85_264
    keyword = read_model((TFLM_MODELS / "models/keyword_scrambled_8bit.tflite").read_bytes())
    analytic, reason = simulate.analytic_arena(keyword)  # SVDF, int16 activations
    assert analytic is None and "not modelled" in reason
