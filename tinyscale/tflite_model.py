"""Read a .tflite flatbuffer without TensorFlow: operators, tensors, I/O quantization.

Uses the schema bindings that ship inside the tflite-micro wheel, so reading a
model costs no TensorFlow import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tinyscale.errors import ModelError

# TFLite TensorType enum values -> numpy dtype names.
_TENSOR_TYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string",
    6: "bool", 7: "int16", 9: "int8", 10: "float64", 15: "uint32", 16: "uint16", 17: "int4",
}
_TFLITE_IDENTIFIER = b"TFL3"


@lru_cache(maxsize=1)
def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


@lru_cache(maxsize=1)
def _builtin_names() -> dict[int, str]:
    ops = _schema().BuiltinOperator
    return {value: name for name, value in vars(ops).items() if not name.startswith("_")}


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


def _tensor_info(index: int, tensor, model) -> TensorInfo:
    quant = tensor.Quantization()
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    if quant is not None:
        scale = tuple(float(quant.Scale(i)) for i in range(quant.ScaleLength()))
        zero_point = tuple(int(quant.ZeroPoint(i)) for i in range(quant.ZeroPointLength()))
    buffer_index = tensor.Buffer()
    is_constant = False
    if 0 < buffer_index < model.BuffersLength():
        buffer = model.Buffers(buffer_index)
        is_constant = buffer.DataLength() > 0 or buffer.Size() > 0
    name = tensor.Name()
    return TensorInfo(
        index=index,
        name=name.decode("utf-8", "replace") if name else "",
        shape=tuple(int(tensor.Shape(i)) for i in range(tensor.ShapeLength())),
        dtype=_TENSOR_TYPES.get(tensor.Type(), f"type{tensor.Type()}"),
        buffer=buffer_index,
        scale=scale,
        zero_point=zero_point,
        is_constant=is_constant,
        is_variable=bool(tensor.IsVariable()),
    )


def _operator_name(model, opcode_index: int) -> tuple[str, bool]:
    opcode = model.OperatorCodes(opcode_index)
    # Newer schemas moved builtin codes >127 to BuiltinCode; the deprecated byte saturates.
    code = max(int(opcode.BuiltinCode()), int(opcode.DeprecatedBuiltinCode()))
    if code == _schema().BuiltinOperator.CUSTOM:
        custom = opcode.CustomCode()
        return (custom.decode("utf-8", "replace") if custom else "CUSTOM"), True
    return _builtin_names().get(code, f"BUILTIN_{code}"), False


def read_model(data: bytes) -> ModelInfo:
    """Parse the main subgraph of a TFLite flatbuffer; ModelError if it is not one."""
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise ModelError("not a TFLite flatbuffer (missing the TFL3 identifier)")
    try:
        model = _schema().Model.GetRootAsModel(bytearray(data), 0)
        if model.SubgraphsLength() < 1:
            raise ModelError("the TFLite model has no subgraph")
        graph = model.Subgraphs(0)
        tensors = tuple(_tensor_info(i, graph.Tensors(i), model) for i in range(graph.TensorsLength()))
        operators = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            name, custom = _operator_name(model, op.OpcodeIndex())
            operators.append(
                OperatorInfo(
                    index=i,
                    name=name,
                    inputs=tuple(int(op.Inputs(j)) for j in range(op.InputsLength())),
                    outputs=tuple(int(op.Outputs(j)) for j in range(op.OutputsLength())),
                    custom=custom,
                )
            )
        inputs = tuple(int(graph.Inputs(i)) for i in range(graph.InputsLength()))
        outputs = tuple(int(graph.Outputs(i)) for i in range(graph.OutputsLength()))
        subgraphs = model.SubgraphsLength()
    except ModelError:
        raise
    except Exception as exc:  # a truncated or corrupt buffer fails anywhere inside the bindings
        raise ModelError(f"corrupt or truncated TFLite flatbuffer ({type(exc).__name__})") from None
    info = ModelInfo(
        size_bytes=len(data),
        tensors=tensors,
        operators=tuple(operators),
        inputs=inputs,
        outputs=outputs,
        subgraphs=subgraphs,
    )
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
