"""The int8 graph type: flatbuffer read/write round trips that TFLM runs identically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinyscale.errors import ModelError
from tinyscale.graph.flatbuffer import (
    BUFFER_ALIGNMENT,
    read_flatbuffer,
    write_flatbuffer,
)
from tinyscale.graph.tflite_model import read_model

pytest.importorskip("tflite_micro")

GOLDEN = Path(__file__).parent / "golden" / "tiny.tflite"


def _assert_same_in_tflm(original: bytes, written: bytes) -> None:
    from tiny_networks import random_inputs

    from tinyscale.simulation.tflm import run_model

    inputs = random_inputs(original, 4)
    assert np.array_equal(run_model(original, inputs), run_model(written, inputs))


def test_golden_round_trip_runs_identically_in_tflm():
    original = GOLDEN.read_bytes()
    model = read_flatbuffer(original)
    written = write_flatbuffer(model)
    assert read_flatbuffer(written) == model
    # The writer aligns each weight buffer to 16 bytes: a little padding, no more.
    buffers = sum(1 for b in model.buffers if b.data)
    assert len(original) - 64 <= len(written) <= len(original) + BUFFER_ALIGNMENT * buffers
    _assert_same_in_tflm(original, written)


@pytest.mark.parametrize("name", ["mbconv", "valid_and_pools"])
def test_converted_network_round_trip_runs_identically_in_tflm(name):
    pytest.importorskip("tensorflow")
    from tiny_networks import int8_network

    original = int8_network(name)
    written = write_flatbuffer(read_flatbuffer(original))
    assert read_flatbuffer(written) == read_flatbuffer(original)
    _assert_same_in_tflm(original, written)


def test_weight_buffers_are_written_16_byte_aligned():
    model = read_flatbuffer(GOLDEN.read_bytes())
    written = write_flatbuffer(model)
    from tinyscale.graph.flatbuffer import schema

    file = np.frombuffer(written, np.uint8)
    tree = schema().Model.GetRootAsModel(file, 0)
    offsets = [tree.Buffers(i).DataAsNumpy().ctypes.data - file.ctypes.data
               for i in range(tree.BuffersLength()) if tree.Buffers(i).DataLength()]
    assert offsets and all(offset % BUFFER_ALIGNMENT == 0 for offset in offsets)


def test_summary_reader_sits_on_the_graph():
    data = GOLDEN.read_bytes()
    info, model = read_model(data), read_flatbuffer(data)
    assert info.size_bytes == len(data)
    assert [op.name for op in info.operators] == [op.kind for op in model.graph.operators]
    assert [t.shape for t in info.tensors] == [t.shape for t in model.graph.tensors]
    assert sum(t.is_constant for t in info.tensors) == sum(model.is_constant(t) for t in model.graph.tensors)


def test_garbage_is_a_model_error():
    with pytest.raises(ModelError):
        read_flatbuffer(b"nope")
    with pytest.raises(ModelError):
        read_flatbuffer(b"\x10\x00\x00\x00TFL3" + b"\xff" * 40)
