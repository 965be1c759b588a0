"""Read a .tflite flatbuffer without TensorFlow: operators, tensors, I/O quantization.

A summary view over :mod:`tinyscale.graph` (which reads the flatbuffer with the
schema bindings of the tflite-micro wheel, so no TensorFlow import).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyscale.errors import ModelError
from tinyscale.graph.flatbuffer import read_flatbuffer
from tinyscale.graph.model import Graph, Model, Tensor, tensor_bytes


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
    is_variable: bool = False  # state a stateful operator keeps between invocations

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.dtype)


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

    @property
    def selftest_bytes(self) -> int:
        """Flash a firmware self-test takes for one input and its expected output, in their own types."""
        return sum(t.nbytes for t in (*self.input_tensors, *self.output_tensors))


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
        is_variable=tensor.is_variable,
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
    info = model_info(read_flatbuffer(data), len(data))
    check_weights(info)
    return info


# Input positions that hold weights (filters, biases) in the builtins that have them
# (TFLite's kernel_util index constants): a custom operator's inputs (an Ethos-U
# scratch buffer) or an elementwise operand may legitimately be planned by TFLM.
WEIGHT_INPUTS = {
    "CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2), "CONV_3D": (1, 2),
    "TRANSPOSE_CONV": (1, 3), "SVDF": (1, 2, 3),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": (1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15),
}


def check_weights(info: ModelInfo) -> None:
    """ModelError naming the first weight tensor whose data is missing.

    A weight is a filter or bias input (WEIGHT_INPUTS) that nothing computes: no
    operator produces it, it is not a model input and not a variable (state)
    tensor. Without data (its buffer emptied, or its buffer index pointing at
    the empty buffer 0) TFLM would not fail: it plans the tensor as an
    activation, computes with garbage and needs a bigger arena, so such a model
    is refused here, where every command reads models.
    """
    computed = {index for op in info.operators for index in op.outputs} | set(info.inputs)
    for op in info.operators:
        for position in WEIGHT_INPUTS.get(op.name, ()) if not op.custom else ():
            index = op.inputs[position] if position < len(op.inputs) else -1
            if index < 0 or index in computed:  # -1: an optional input left out
                continue
            if index >= len(info.tensors):
                raise ModelError(f"operator {op.index} ({op.name}) reads tensor {index}, which does not exist")
            tensor = info.tensors[index]
            if tensor.is_constant or tensor.is_variable:
                continue
            raise ModelError(
                f"weight tensor {index} {tensor.name!r} (input {position} of operator {op.index}, {op.name}) "
                f"has no data (buffer {tensor.buffer} is empty); the model file is damaged, re-export it"
            )


# ---------------------------------------------------------------------------
# Which models tinyscale runs: the one rule `simulate` and `firmware` share

# Integer types a model's graph may compute in ("int8 or int16x8"), and what its
# inputs and outputs may be: those, or float32 converted by QUANTIZE/DEQUANTIZE.
COMPUTE_TYPES = ("int8", "int16")
IO_TYPES = (*COMPUTE_TYPES, "float32")
SUPPORTED_MODELS = ("int8 or int16x8 weights/activations, with int8, int16 or float32 input and output "
                    "(float32 through QUANTIZE/DEQUANTIZE)")


@dataclass(frozen=True)
class IoQuantization:
    """How a model input or output maps to the integers its graph computes with.

    For an integer tensor, its own type and parameters. For a float32 input,
    those of the QUANTIZE output that reads it; for a float32 output, those of
    the tensor DEQUANTIZE reads: a float value is (q - zero_point) * scale.
    """

    tensor: TensorInfo  # the model's own input or output tensor
    dtype: str  # int8 or int16: the integer side
    scale: float
    zero_point: int

    @property
    def is_float(self) -> bool:
        return self.tensor.dtype == "float32"


def _bridge(info: ModelInfo, tensor: TensorInfo, is_input: bool) -> TensorInfo:
    """The integer tensor a float32 model input is quantized to, or a float32 output dequantized from."""
    for op in info.operators:
        if is_input and op.name == "QUANTIZE" and op.inputs[:1] == (tensor.index,):
            return info.tensors[op.outputs[0]]
        if not is_input and op.name == "DEQUANTIZE" and op.outputs[:1] == (tensor.index,) and op.inputs[0] >= 0:
            return info.tensors[op.inputs[0]]
    kind, op_name = ("input", "read by a QUANTIZE") if is_input else ("output", "made by a DEQUANTIZE")
    raise ModelError(f"float32 {kind} {tensor.name!r} is not {op_name} operator; tinyscale runs {SUPPORTED_MODELS}")


def io_quantization(info: ModelInfo, index: int, is_input: bool) -> IoQuantization:
    """IoQuantization of model tensor `index`; ModelError outside SUPPORTED_MODELS."""
    tensor = info.tensors[index]
    kind = "input" if is_input else "output"
    if tensor.dtype not in IO_TYPES:
        raise ModelError(f"{kind} {tensor.name!r} is {tensor.dtype}; tinyscale runs {SUPPORTED_MODELS}")
    integer = _bridge(info, tensor, is_input) if tensor.dtype == "float32" else tensor
    if integer.dtype not in COMPUTE_TYPES:
        raise ModelError(f"{kind} {tensor.name!r} is converted to {integer.dtype}; tinyscale runs {SUPPORTED_MODELS}")
    if not integer.scale:
        raise ModelError(f"{kind} {tensor.name!r} has no quantization parameters")
    return IoQuantization(tensor, integer.dtype, integer.scale[0], integer.zero_point[0] if integer.zero_point else 0)


def input_quantization(info: ModelInfo, position: int = 0) -> IoQuantization:
    return io_quantization(info, info.inputs[position], is_input=True)


def output_quantization(info: ModelInfo, position: int = 0) -> IoQuantization:
    return io_quantization(info, info.outputs[position], is_input=False)


def check_full_integer(info: ModelInfo, source: str = "the model") -> None:
    """ModelError, saying what to do, unless TFLM runs the model as SUPPORTED_MODELS describes."""
    custom = sorted({op.name for op in info.operators if op.custom})
    if custom:
        raise ModelError(
            f"{source} uses custom operators ({', '.join(custom)}) that stock TFLM does not register; "
            "re-export it with builtin operators only"
        )
    weights = [t for t in info.tensors if t.is_constant]
    int8_weights = any(t.dtype in ("int8", "int4") for t in weights)
    float_activations = [t for t in info.tensors if not t.is_constant and t.dtype.startswith("float")]
    if float_activations and not int8_weights:
        raise ModelError(
            f"{source} is a float model; convert it to full int8 first (tinyscale convert MODEL.keras -o model.tflite)"
        )
    if float_activations and _has_float_compute(info):
        raise ModelError(
            f"{source} is dynamic-range (hybrid) quantized: int8 weights but float activations, which TFLM "
            "cannot run; convert with a representative dataset to full int8 (tinyscale convert)"
        )
    for position in range(len(info.inputs)):
        input_quantization(info, position)
    for position in range(len(info.outputs)):
        output_quantization(info, position)


def _has_float_compute(info: ModelInfo) -> bool:
    """Whether an operator other than QUANTIZE/DEQUANTIZE produces float activations."""
    tensors = info.tensors
    for op in info.operators:
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(index >= 0 and tensors[index].dtype.startswith("float") for index in op.outputs):
            return True
    return False
