"""The patch pass: region arithmetic, split candidates, and bit-equal outputs in TFLM."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tinyscale.errors import ModelError, UsageError
from tinyscale.graph.analysis import model_macs
from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
from tinyscale.graph.model import Operator, Quantization
from tinyscale.graph.patch import (
    Span,
    Window,
    find_candidate,
    input_span,
    patch_model,
    same_padding,
    split_candidates,
    split_spans,
)

pytest.importorskip("tflite_micro")


# ---------------------------------------------------------------------------
# Region arithmetic (pure)


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (17, 3, 2, (1, 1)), (16, 3, 2, (0, 1)), (16, 5, 1, (2, 2)), (9, 5, 2, (2, 2)), (8, 2, 2, (0, 0)),
    (10, 4, 1, (1, 2)),
])
def test_same_padding_is_tensorflows_split(size, kernel, stride, expected):
    out = -(-size // stride)
    assert same_padding(size, out, kernel, stride) == expected


def test_input_span_clips_to_the_map_and_reports_the_padding_it_cut():
    window = Window(kernel=3, stride=2, pad_before=1)  # 17 -> 9 rows, SAME
    assert input_span(window, Span(0, 5), 17) == (Span(0, 10), 1, 0)
    assert input_span(window, Span(5, 9), 17) == (Span(9, 17), 0, 1)
    interior = input_span(Window(5, 1, 2), Span(3, 6), 12)
    assert interior == (Span(1, 8), 0, 0)


def test_split_spans_cover_the_axis_in_near_equal_parts():
    assert split_spans(9, 2) == [Span(0, 4), Span(4, 9)] or split_spans(9, 2) == [Span(0, 5), Span(5, 9)]
    spans = split_spans(10, 3)
    assert spans[0].lo == 0 and spans[-1].hi == 10
    assert all(a.hi == b.lo for a, b in zip(spans, spans[1:]))
    assert max(s.size for s in spans) - min(s.size for s in spans) <= 1


# ---------------------------------------------------------------------------
# Converted networks


def _network(name: str):
    pytest.importorskip("tensorflow")
    from tiny_networks import int8_network

    data = int8_network(name)
    return data, read_flatbuffer(data)


def test_candidates_are_cuts_and_stop_before_the_global_pool():
    _, model = _network("mbconv")
    graph = model.graph
    candidates = split_candidates(model)
    kinds = [graph.operators[c.operators[-1]].kind for c in candidates]
    # Inside the residual block the block input is still read by the ADD: no cut.
    assert kinds == ["CONV_2D", "ADD", "DEPTHWISE_CONV_2D", "CONV_2D"]
    assert all(len(c.shape) == 4 for c in candidates)
    assert "MEAN" not in {graph.operators[p].kind for c in candidates for p in c.operators}


def _reference_and_inputs(data: bytes, count: int = 6):
    from tiny_networks import random_inputs

    from tinyscale.simulation.tflm import run_model

    inputs = random_inputs(data, count, seed=3)
    inputs[0] = -128  # the extremes too
    inputs[1] = 127
    return run_model(data, inputs), inputs


def _assert_bit_equal(data: bytes, model, candidate, grid, reference, inputs) -> bytes:
    from tinyscale.simulation.tflm import run_model

    patched = write_flatbuffer(patch_model(model, candidate, grid))
    outputs = run_model(patched, inputs)
    assert np.array_equal(outputs, reference), f"{candidate.name} {grid}"
    return patched


# mbconv: CONV k3 s2 SAME, residual DEPTHWISE k3 s1 SAME + ADD, DEPTHWISE k5 s2 SAME; 17x17 input.
# valid_and_pools: CONV k5 VALID, MAX_POOL k3 s1 SAME, AVERAGE_POOL k2 s2 VALID, CONV and DEPTHWISE
#   k3 s2 VALID, LOGISTIC, MUL of two maps, MAX_POOL k2 s2 SAME over 3x3; 20x20 input.
# activations: RELU, ADD (fused ReLU), ADD/MUL with constants (hard swish), LOGISTIC, TANH,
#   LEAKY_RELU, RELU6, CONV k3 s1/s2 SAME; 12x10 input.
@pytest.mark.parametrize("name", ["mbconv", "valid_and_pools", "activations"])
def test_patched_outputs_equal_the_unpatched_bit_for_bit(name):
    data, model = _network(name)
    reference, inputs = _reference_and_inputs(data)
    candidates = split_candidates(model)
    # The first cut and the deepest one (whose prefix holds every patchable op).
    for candidate in (candidates[0], candidates[-1]):
        for grid in ((1, 2), (2, 2), (3, 3), (2, 1)):
            if grid[0] <= candidate.shape[1] and grid[1] <= candidate.shape[2]:
                _assert_bit_equal(data, model, candidate, grid, reference, inputs)


def test_patched_graph_shares_weights_and_keeps_the_split_quantization():
    data, model = _network("mbconv")
    candidate = split_candidates(model)[-1]
    patched = patch_model(model, candidate, (2, 2))
    weights = {model.constant_data(t) for t in model.graph.tensors if t.dtype == "int8" and model.is_constant(t)}
    patched_weights = [patched.constant_data(t) for t in patched.graph.tensors
                       if t.dtype == "int8" and patched.is_constant(t)]
    assert set(patched_weights) == weights and len(patched_weights) == len(weights)  # shared, not copied
    kinds = [op.kind for op in patched.graph.operators]
    assert kinds.count("CONCATENATION") == 3  # two rows, then the rows
    concat = [op for op in patched.graph.operators if op.kind == "CONCATENATION"][-1]
    split = patched.graph.tensors[concat.outputs[0]]
    assert split.quantization == model.graph.tensors[candidate.tensor].quantization
    # Interior patches run VALID; a border patch keeps SAME where the kernel's own
    # padding is exactly the border's, and gets a PAD in front where it is not.
    paddings = {op.option("padding") for op in patched.graph.operators if op.kind.endswith("CONV_2D")}
    assert paddings == {0, 1} and "PAD" in kinds
    # Halos cost MACs; the part after the split is untouched.
    assert model_macs(patched) > model_macs(model)
    assert kinds[-2:] == ["MEAN", "FULLY_CONNECTED"]


def _with_unary_after_first_op(model, kind: str, scale_factor: float):
    """`model` with a `kind` op inserted after operator 0, its output requantized by `scale_factor`."""
    graph = model.graph
    first = graph.operators[0]
    source = graph.tensors[first.outputs[0]]
    quant = source.quantization
    new = replace(source, name=f"inserted_{kind.lower()}", buffer=0,
                  quantization=Quantization(tuple(s * scale_factor for s in quant.scale), quant.zero_point))
    index = len(graph.tensors)
    rewired = [replace(op, inputs=tuple(index if t == first.outputs[0] else t for t in op.inputs))
               for op in graph.operators[1:]]
    inserted = Operator(kind, (first.outputs[0],), (index,), version=2)
    graph = replace(graph, tensors=(*graph.tensors, new), operators=(first, inserted, *rewired))
    return model.with_graph(graph)


@pytest.mark.parametrize("kind, scale_factor", [("QUANTIZE", 1.7), ("HARD_SWISH", 1.0)])
def test_graph_built_element_wise_ops_patch_bit_for_bit(kind, scale_factor):
    from tinyscale.simulation.tflm import run_model

    data, model = _network("mbconv")
    edited = write_flatbuffer(_with_unary_after_first_op(model, kind, scale_factor))
    model = read_flatbuffer(edited)
    reference, inputs = _reference_and_inputs(edited, 4)
    candidate = split_candidates(model)[-1]
    assert kind in {model.graph.operators[p].kind for p in candidate.operators}
    for grid in ((1, 2), (3, 3)):
        patched = write_flatbuffer(patch_model(model, candidate, grid))
        assert np.array_equal(run_model(patched, inputs), reference)


def test_a_model_with_nothing_spatial_has_no_candidates():
    _, model = _network("dense_only")
    assert split_candidates(model) == []


def test_unknown_split_tensor_and_oversized_grid_are_usage_errors():
    _, model = _network("mbconv")
    with pytest.raises(UsageError, match="not a tensor"):
        find_candidate(model, "no-such-tensor")
    candidate = split_candidates(model)[-1]  # 5x5
    with pytest.raises(UsageError, match="does not fit"):
        patch_model(model, candidate, (6, 1))
    assert patch_model(model, candidate, (1, 1)) is model


def test_float_model_is_refused_in_one_line():
    pytest.importorskip("tensorflow")
    from tiny_networks import float_network

    model = read_flatbuffer(float_network())
    with pytest.raises(ModelError, match="not int8") as error:
        patch_model(model, split_candidates(model)[0], (1, 2))
    assert "\n" not in str(error.value)


def test_reading_patching_and_writing_import_no_tensorflow():
    import subprocess
    import sys
    from pathlib import Path

    golden = Path(__file__).parent / "golden" / "tiny.tflite"
    code = (
        "import sys\n"
        "from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer\n"
        "from tinyscale.graph.patch import patch_model, split_candidates\n"
        "import tinyscale.search.patching\n"
        f"model = read_flatbuffer(open({str(golden)!r}, 'rb').read())\n"
        "write_flatbuffer(patch_model(model, split_candidates(model)[-1], (2, 2)))\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_golden_tiny_network_patches_bit_for_bit_without_tensorflow():
    from pathlib import Path

    from tinyscale.simulation.tflm import run_model

    data = (Path(__file__).parent / "golden" / "tiny.tflite").read_bytes()
    model = read_flatbuffer(data)
    reference, inputs = _reference_and_inputs(data, 4)
    for candidate, grid in ((split_candidates(model)[-1], (2, 2)), (split_candidates(model)[0], (1, 3))):
        patched = write_flatbuffer(patch_model(model, candidate, grid))
        assert np.array_equal(run_model(patched, inputs), reference)


def test_compaction_drops_replaced_tensors_and_keeps_signatures_pointing_at_the_io():
    from pathlib import Path

    from tinyscale.graph.model import SignatureDef

    model = read_flatbuffer((Path(__file__).parent / "golden" / "tiny.tflite").read_bytes())
    graph = model.graph
    signature = SignatureDef("serving_default", 0, (("images", graph.inputs[0]),), (("out", graph.outputs[0]),))
    model = replace(model, signature_defs=(signature,))
    candidate = split_candidates(model)[-1]
    patched = patch_model(model, candidate, (2, 2))
    names = {t.name for t in patched.graph.tensors}
    replaced = {graph.tensors[graph.operators[p].outputs[0]].name for p in candidate.operators} - {candidate.name}
    assert not names & replaced  # the unpatched prefix activations are gone
    used = {t for op in patched.graph.operators for t in (*op.inputs, *op.outputs) if t >= 0}
    assert used | set(patched.graph.inputs) | set(patched.graph.outputs) == set(range(len(patched.graph.tensors)))
    (kept,) = patched.signature_defs
    assert patched.graph.tensors[kept.inputs[0][1]].name == graph.tensors[graph.inputs[0]].name
    assert patched.graph.tensors[kept.outputs[0][1]].name == graph.tensors[graph.outputs[0]].name
    assert all(0 <= t.buffer < len(patched.buffers) for t in patched.graph.tensors)
