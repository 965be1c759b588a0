"""The analytic memory model against the converter and the TFLM interpreter.

Fast tests check the pieces (planner, graph shape, monotonicity, no
TensorFlow import); the slow ones convert a few small networks and compare
with the real flatbuffer and the measured minimal arena.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tinyscale.graph.estimate import (
    MemoryEstimate,
    _Buffer,
    arena_plan,
    estimate_memory,
    fits_in_arena,
    flatbuffer_bytes,
    greedy_plan,
    plan_bytes,
    tflite_graph,
)
from tinyscale.network import arch

TOLERANCE = 0.01  # the required accuracy; in practice the model is exact


def spec(base: str, phi: float = 0.0, channels: int = 3) -> arch.NetworkSpec:
    return arch.scale(base, phi, channels=channels).spec


# ---------------------------------------------------------------------------
# fast


def test_importing_the_estimator_loads_no_tensorflow():
    code = (
        "import sys, tinyscale.graph.estimate as e, tinyscale.network.arch as a\n"
        "e.estimate_memory(a.scale('tiny', 0).spec)\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tflite_micro')]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_greedy_planner_reuses_memory_of_dead_buffers():
    # a(0-1) and c(2-3) never live together; b(1-2) overlaps both.
    buffers = [_Buffer(64, 0, 1), _Buffer(32, 1, 2), _Buffer(64, 2, 3)]
    offsets = greedy_plan(buffers)
    # Largest first, the later-added of equal sizes first: c at 0, a shares 0, b above.
    assert offsets == [0, 64, 0]
    assert plan_bytes(buffers, offsets) == 96


def test_greedy_planner_fills_gaps_between_placed_buffers():
    buffers = [_Buffer(100, 0, 4), _Buffer(50, 0, 0), _Buffer(40, 2, 2), _Buffer(100, 1, 4)]
    offsets = greedy_plan(buffers)
    assert offsets[3] == 0 and offsets[0] == 100  # the two big ones stack
    assert offsets[1] == 0  # lives with buffer 0 only: the gap below it is free at t=0
    assert offsets[2] == 200  # lives with both big ones: first gap is above them


@pytest.mark.parametrize("base, phi", [("tiny", 0.0), ("tiny-se", 0.0), ("efficientnet-b0", -9.0)])
def test_arena_solved_per_residue_is_the_smallest_that_replays(base, phi):
    model = tflite_graph(spec(base, phi))
    minimal = arena_plan(model).arena_bytes
    assert fits_in_arena(model, minimal)
    assert not any(fits_in_arena(model, minimal - shortfall) for shortfall in range(1, 17))


def test_graph_has_one_operator_per_fused_layer():
    graph = tflite_graph(spec("tiny")).graph
    kinds = [op.kind for op in graph.operators]
    assert kinds[-3:] == ["MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    convs = [layer for layer in arch.layers(spec("tiny")) if layer.kind == "conv"]
    assert kinds.count("CONV_2D") == len(convs)
    # Swish and squeeze-excitation add LOGISTIC/MUL and MEAN operators.
    se_kinds = [op.kind for op in tflite_graph(spec("tiny-se")).graph.operators]
    se_blocks = sum(1 for block in spec("tiny-se").blocks if block.se_filters)
    assert {"LOGISTIC", "MUL"} <= set(se_kinds) and se_kinds.count("MEAN") == se_blocks + 1


def test_flatbuffer_is_weights_plus_per_channel_quantization_plus_little_else():
    network = spec("efficientnet-lite0", -6)
    estimate = estimate_memory(network)
    params = arch.count_params(network)
    # int8 weights (BN folded away) plus int32 biases: between 1x and 2x params.
    assert params < estimate.weights_bytes < 2 * params
    # Each quantized channel stores a float32 scale and an int64 zero point.
    channels = sum(len(t.quantization.scale) for t in tflite_graph(network).graph.tensors if t.quantization)
    rest = estimate.model_bytes - estimate.weights_bytes - 12 * channels
    assert 0 < rest < 0.05 * estimate.model_bytes


def test_spec_built_graph_writes_and_reads_back_with_its_layout():
    from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer

    built = tflite_graph(spec("tiny-se"))
    back = read_flatbuffer(write_flatbuffer(built))  # size-only buffers are written as zeros
    assert back.graph == built.graph
    assert [b.nbytes for b in back.buffers] == [b.nbytes for b in built.buffers]
    assert arena_plan(back) == arena_plan(built)


@pytest.mark.parametrize("base", ["efficientnet-lite0", "efficientnet-b0"])
def test_memory_grows_monotonically_with_phi(base):
    previous = None
    for step in range(0, 41):
        phi = -12 + 0.3 * step
        estimate = estimate_memory(spec(base, phi))
        if previous is not None:
            assert estimate.model_bytes >= previous.model_bytes, phi
            assert estimate.arena_bytes >= previous.arena_bytes, phi
        previous = estimate


def test_estimate_is_memoised_and_fast():
    small = spec("efficientnet-lite0", -7.3)
    estimate_memory.cache_clear()
    started = time.perf_counter()
    first = estimate_memory(small)
    elapsed = time.perf_counter() - started
    assert estimate_memory(small) is first
    assert isinstance(first, MemoryEstimate)
    assert elapsed < 0.05  # uncached; the benchmark reports the typical figure


# ---------------------------------------------------------------------------
# slow: real conversions and TFLM measurements

MEASURED_SPECS = [
    ("tiny", 0.0, 3),
    ("tiny-se", 0.0, 1),
    ("efficientnet-lite0", -10.0, 1),
    ("efficientnet-b0", -10.0, 3),
]


@pytest.fixture(scope="module")
def measured():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tflite_micro")
    from tinyscale.simulation.tflm import measure_arena
    from tinyscale.training.convert import spec_to_tflite

    results = {}
    for base, phi, channels in MEASURED_SPECS:
        network = spec(base, phi, channels)
        flatbuffer = spec_to_tflite(network)
        results[(base, phi, channels)] = (network, flatbuffer, measure_arena(flatbuffer).arena_bytes)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("key", MEASURED_SPECS)
def test_estimate_matches_measurement(measured, key):
    network, flatbuffer, arena = measured[key]
    estimate = estimate_memory(network)
    assert estimate.model_bytes == len(flatbuffer)
    assert estimate.arena_bytes == arena


@pytest.mark.slow
@pytest.mark.parametrize("key", MEASURED_SPECS)
def test_graph_reproduces_the_converters_tensors_and_operators(measured, key):
    from tinyscale.graph.flatbuffer import read_flatbuffer

    network, flatbuffer, _ = measured[key]
    built, real = tflite_graph(network), read_flatbuffer(flatbuffer)
    graph, read = built.graph, real.graph
    # The spec-built graph is the converter's, field for field, except the
    # quantization values (a spec has no calibration) and the weight bytes.
    assert graph.operators == read.operators
    assert (graph.inputs, graph.outputs, graph.name) == (read.inputs, read.outputs, read.name)

    def layout(tensor):
        quant = tensor.quantization
        return (tensor.name, tensor.shape, tensor.dtype, tensor.buffer,
                quant and (len(quant.scale), len(quant.zero_point), quant.dimension))

    assert [layout(t) for t in graph.tensors] == [layout(t) for t in read.tensors]
    assert [b.nbytes for b in built.buffers] == [b.nbytes for b in real.buffers]
    assert (built.metadata, built.description, built.version) == (real.metadata, real.description, real.version)
    assert flatbuffer_bytes(built) == len(flatbuffer)
    # Read back, the converter's own model gets the same arena as the spec-built one.
    assert arena_plan(real) == arena_plan(built)
