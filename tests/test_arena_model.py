"""The analytic TFLM arena of any int8 model, against the interpreter's measured minimum.

Every figure here is compared for equality with `tflm.measure_arena` (a
bisection in the TFLM Python interpreter): the converter's tiny networks of
each operator kind, their patched versions, the golden model, tinyscale's
fitted networks patched as `tinyscale patch` does, and TFLM's person_detect.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from tinyscale.errors import NotModelledError
from tinyscale.graph.estimate import arena_plan, fits_in_arena
from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
from tinyscale.graph.model import Buffer, Operator, Options, Quantization
from tinyscale.graph.patch import patch_model, split_candidates

GOLDEN = Path(__file__).parent / "golden" / "tiny.tflite"
TFLM_SOURCE = os.environ.get("TFLM_SOURCE")
PERSON_DETECT = Path(TFLM_SOURCE or ".", "tensorflow/lite/micro/models/person_detect.tflite")
GRIDS = ((1, 2), (2, 2), (3, 3))


def _measured(data: bytes) -> int:
    from tinyscale.simulation.tflm import measure_arena

    return measure_arena(data, verify_invoke=False).arena_bytes


def _assert_exact(model, data: bytes | None = None) -> int:
    data = write_flatbuffer(model) if data is None else data
    analytic = arena_plan(model).arena_bytes
    assert analytic == _measured(data)
    # The residue solver agrees with the direct replay: the smallest arena that fits.
    assert fits_in_arena(model, analytic) and not fits_in_arena(model, analytic - 1)
    return analytic


def _network(name: str):
    pytest.importorskip("tensorflow")
    from tiny_networks import int8_network

    data = int8_network(name)
    return data, read_flatbuffer(data)


def test_golden_tiny_model_arena_is_exact():
    data = GOLDEN.read_bytes()
    _assert_exact(read_flatbuffer(data), data)


# mbconv: CONV, DEPTHWISE, ADD, MEAN, FULLY_CONNECTED (no bias); valid_and_pools: MAX_POOL,
# AVERAGE_POOL, LOGISTIC, MUL, RESHAPE; activations: RELU, RELU6, TANH, LEAKY_RELU, ADD/MUL with
# constants; dense_only: RESHAPE + FULLY_CONNECTED. Patched: STRIDED_SLICE, PAD, PADV2, CONCATENATION.
@pytest.mark.parametrize("name", ["mbconv", "valid_and_pools", "activations", "dense_only"])
def test_tiny_networks_and_their_patched_versions_are_exact(name):
    data, model = _network(name)
    _assert_exact(model, data)
    candidates = split_candidates(model)
    kinds = set()
    for candidate in candidates[:1] + candidates[-1:]:
        for grid in GRIDS:
            if grid[0] <= candidate.shape[1] and grid[1] <= candidate.shape[2]:
                patched = patch_model(model, candidate, grid)
                kinds |= {op.kind for op in patched.graph.operators}
                _assert_exact(patched)
    if candidates:
        assert {"STRIDED_SLICE", "CONCATENATION"} <= kinds


def test_padv2_of_a_patched_max_pool_is_exact():
    _, model = _network("valid_and_pools")
    candidate = next(c for c in split_candidates(model) if c.shape[1] == 16 and "max_pool" in c.name)
    patched = patch_model(model, candidate, (2, 2))
    assert "PADV2" in {op.kind for op in patched.graph.operators}
    _assert_exact(patched)


@pytest.mark.parametrize("kind, scale_factor", [("QUANTIZE", 1.7), ("HARD_SWISH", 1.0)])
def test_inserted_element_wise_ops_are_exact(kind, scale_factor):
    from test_patch import _with_unary_after_first_op

    _, model = _network("mbconv")
    model = read_flatbuffer(write_flatbuffer(_with_unary_after_first_op(model, kind, scale_factor)))
    _assert_exact(model)
    _assert_exact(patch_model(model, split_candidates(model)[-1], (2, 2)))


def _inserted_after_first_op(model, kind: str, binary: bool, options=None, version: int = 1):
    """`model` with a `kind` op reading operator 0's output (twice if `binary`), same quantization."""
    graph = model.graph
    first = graph.operators[0]
    out = first.outputs[0]
    index = len(graph.tensors)
    tensor = replace(graph.tensors[out], name=f"inserted_{kind.lower()}", buffer=0)
    rewired = [replace(op, inputs=tuple(index if t == out else t for t in op.inputs)) for op in graph.operators[1:]]
    inserted = Operator(kind, (out, out) if binary else (out,), (index,), options, version=version)
    return model.with_graph(replace(graph, tensors=(*graph.tensors, tensor), operators=(first, inserted, *rewired)))


_SUB_OPTIONS = Options("SubOptions", (("fusedActivationFunction", 0), ("potScaleInt16", True)))


@pytest.mark.parametrize("kind, binary, options, version", [
    ("SUB", True, _SUB_OPTIONS, 2), ("MAXIMUM", True, None, 2), ("MINIMUM", True, None, 2),
    ("ABS", False, None, 3), ("RSQRT", False, None, 2), ("ELU", False, None, 1),
])
def test_other_element_wise_ops_the_pass_patches_are_exact(kind, binary, options, version):
    _, model = _network("mbconv")
    model = read_flatbuffer(write_flatbuffer(_inserted_after_first_op(model, kind, binary, options, version)))
    _assert_exact(model)
    candidate = split_candidates(model)[-1]
    assert kind in {model.graph.operators[p].kind for p in candidate.operators}
    _assert_exact(patch_model(model, candidate, (2, 2)))


def test_per_tensor_quantized_weights_are_exact():
    """Conv and depthwise size their multiplier arrays by the filter's channels; FC only when per-channel."""
    _, model = _network("mbconv")
    graph = model.graph
    weights = {t for op in graph.operators if op.kind.endswith("CONV_2D") or op.kind == "FULLY_CONNECTED"
               for t in op.inputs[1:] if t >= 0}

    def per_tensor(tensor):
        return replace(tensor, quantization=Quantization((max(tensor.quantization.scale),), (0,), 0))

    tensors = tuple(per_tensor(t) if i in weights else t for i, t in enumerate(graph.tensors))
    _assert_exact(model.with_graph(replace(graph, tensors=tensors)))


# The fitted networks of two SRAM-bound boards (README: esp32 phi -7.604, nucleo-l476rg -9.43),
# patched by the schedule search of `tinyscale patch`.
@pytest.mark.slow
@pytest.mark.parametrize("phi", [-7.604, -9.43])
def test_fitted_networks_patched_by_the_search_are_exact(phi):
    pytest.importorskip("tensorflow")
    from tinyscale.network.arch import scale
    from tinyscale.search.patching import patch_flatbuffer
    from tinyscale.training.convert import spec_to_tflite

    data = spec_to_tflite(scale("efficientnet-lite0", phi).spec)
    model = read_flatbuffer(data)
    _assert_exact(model, data)
    result = patch_flatbuffer(data)
    assert result.patched
    assert arena_plan(read_flatbuffer(result.data)).arena_bytes == result.after.arena_bytes
    candidate = next(c for c in split_candidates(model) if c.name == result.split_tensor)
    for grid in GRIDS:
        _assert_exact(patch_model(model, candidate, grid))


@pytest.mark.skipif(not PERSON_DETECT.is_file(), reason="set TFLM_SOURCE to a tflite-micro checkout (its models)")
def test_person_detect_and_its_patched_versions_are_exact():
    data = PERSON_DETECT.read_bytes()
    model = read_flatbuffer(data)
    _assert_exact(model, data)  # per-tensor weights, depth multiplier 8, AVERAGE_POOL, RESHAPE, SOFTMAX
    candidate = split_candidates(model)[2]
    for grid in GRIDS:
        _assert_exact(patch_model(model, candidate, grid))


def test_unmodelled_operators_and_types_are_refused_not_guessed():
    model = read_flatbuffer(GOLDEN.read_bytes())
    graph = model.graph
    unknown = replace(graph, operators=(Operator("SVDF", graph.operators[0].inputs, graph.operators[0].outputs),
                                        *graph.operators[1:]))
    with pytest.raises(NotModelledError, match="SVDF"):
        arena_plan(model.with_graph(unknown))
    custom = replace(graph.operators[0], kind="MyOp", custom=True)
    with pytest.raises(NotModelledError):
        fits_in_arena(model.with_graph(replace(graph, operators=(custom, *graph.operators[1:]))), 1 << 20)
    softmax = graph.operators[-1]
    int16 = tuple(replace(t, dtype="int16") if i in softmax.inputs else t for i, t in enumerate(graph.tensors))
    with pytest.raises(NotModelledError, match="int8 only"):
        arena_plan(model.with_graph(replace(graph, tensors=int16)))


def test_written_size_needs_no_weight_bytes():
    """The writer's layout does not depend on buffer contents: size-only buffers give the same length."""
    model = read_flatbuffer(GOLDEN.read_bytes())
    patched = patch_model(model, split_candidates(model)[-1], (2, 2))
    sizes_only = replace(patched, buffers=tuple(Buffer(None, b.nbytes) if b.nbytes else b for b in patched.buffers))
    assert len(write_flatbuffer(sizes_only)) == len(write_flatbuffer(patched))
    assert arena_plan(sizes_only) == arena_plan(patched)


@pytest.mark.slow
@pytest.mark.parametrize("base, phi", [("tiny", 0.0), ("tiny-se", 0.0), ("efficientnet-lite0", -9.43)])
def test_patched_spec_graph_predicts_the_patched_converted_model(base, phi):
    """A spec-built graph (no weights) patched like the converter's model: same flatbuffer size, same arena."""
    pytest.importorskip("tensorflow")
    from tinyscale.graph.estimate import tflite_graph
    from tinyscale.network.arch import scale
    from tinyscale.training.convert import spec_to_tflite

    spec = scale(base, phi).spec
    built, real = tflite_graph(spec), read_flatbuffer(spec_to_tflite(spec))
    built_candidates, real_candidates = split_candidates(built), split_candidates(real)
    assert [c.name for c in built_candidates] == [c.name for c in real_candidates]
    for candidate in (built_candidates[0], built_candidates[len(built_candidates) // 2]):
        real_candidate = next(c for c in real_candidates if c.name == candidate.name)
        for grid in ((2, 2), (3, 2)):
            patched_built, patched_real = patch_model(built, candidate, grid), patch_model(real, real_candidate, grid)
            written = write_flatbuffer(patched_real)
            assert len(write_flatbuffer(patched_built)) == len(written)
            assert arena_plan(patched_built).arena_bytes == _measured(written)
