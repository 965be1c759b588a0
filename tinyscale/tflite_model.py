"""Read a .tflite flatbuffer without TensorFlow: operators, tensors, I/O quantization.

A summary view over :mod:`tinyscale.graph` (which reads the flatbuffer with the
schema bindings of the tflite-micro wheel, so no TensorFlow import).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyscale.graph.flatbuffer import read_flatbuffer
from tinyscale.graph.model import Graph, Model, Tensor


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    is_constant: bool

    @property
    def nbytes(self) -> int:
        itemsize = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "uint32": 4,
                    "float16": 2, "int16": 2, "uint16": 2}.get(self.dtype, 1)
        count = 1
        for dim in self.shape:
            count *= max(dim, 1)
        return count * itemsize


@dataclass(frozen=True)
class OperatorInfo:
    index: int
    name: str  # builtin name, e.g. CONV_2D, or the custom code
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    custom: bool = False


@dataclass(frozen=True)
class ModelInfo:
    size_bytes: int
    tensors: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int
    model: Model | None = field(default=None, compare=False, repr=False)  # the graph-level model it summarises

    @property
    def graph(self) -> Graph:
        """The main subgraph (the one shape and memory analyses read)."""
        return self.model.graph

    @property
    def operator_names(self) -> tuple[str, ...]:
        """Distinct operator names in first-use order (what an op resolver needs)."""
        return tuple(dict.fromkeys(op.name for op in self.operators))

    @property
    def input_tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self.tensors[i] for i in self.inputs)

    @property
    def output_tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self.tensors[i] for i in self.outputs)


def _tensor_info(index: int, tensor: Tensor, model: Model) -> TensorInfo:
    quant = tensor.quantization
    return TensorInfo(
        index=index,
        name=tensor.name,
        shape=tensor.shape,
        dtype=tensor.dtype,
        buffer=tensor.buffer,
        scale=quant.scale if quant else (),
        zero_point=quant.zero_point if quant else (),
        is_constant=model.is_constant(tensor),
    )


def model_info(model: Model, size_bytes: int) -> ModelInfo:
    """The summary view of the main subgraph of a graph-level Model."""
    graph = model.graph
    return ModelInfo(
        size_bytes=size_bytes,
        tensors=tuple(_tensor_info(i, t, model) for i, t in enumerate(graph.tensors)),
        operators=tuple(
            OperatorInfo(index=i, name=op.kind, inputs=op.inputs, outputs=op.outputs, custom=op.custom)
            for i, op in enumerate(graph.operators)
        ),
        inputs=graph.inputs,
        outputs=graph.outputs,
        subgraphs=len(model.subgraphs),
        model=model,
    )


def read_model(data: bytes) -> ModelInfo:
    """Parse the main subgraph of a TFLite flatbuffer; ModelError if it is not one."""
    return model_info(read_flatbuffer(data), len(data))
