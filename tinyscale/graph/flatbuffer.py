"""Read and write :class:`~tinyscale.graph.model.Model` as a TFLite flatbuffer.

Both directions go through the schema object API that ships in the
tflite-micro wheel (``schema_py_generated``): ``ModelT.InitFromPackedBuf`` to
read, ``ModelT.Pack`` with a ``flatbuffers.Builder`` to write. No TensorFlow.

What TFLM does not use is not kept: tensor min/max statistics, sparsity and
variant tensors, operator intermediates and debug metadata. Constant buffers
are written 16-byte aligned, as TFLM's own alignment tool does, so that
kernels with aligned loads can read weights in place.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from tinyscale.errors import ModelError
from tinyscale.graph.model import (
    Buffer,
    Graph,
    Metadata,
    Model,
    Operator,
    Options,
    Quantization,
    SignatureDef,
    Tensor,
)

FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16
_TENSOR_TYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string",
    6: "bool", 7: "int16", 9: "int8", 10: "float64", 15: "uint32", 16: "uint16", 17: "int4",
}
_TYPE_CODES = {name: code for code, name in _TENSOR_TYPES.items()}


@lru_cache(maxsize=1)
def schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


@lru_cache(maxsize=1)
def _builtin_names() -> dict[int, str]:
    return {value: name for name, value in vars(schema().BuiltinOperator).items() if not name.startswith("_")}


@lru_cache(maxsize=1)
def builtin_codes() -> dict[str, int]:
    return {name: code for code, name in _builtin_names().items()}


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _ints(values: Any) -> tuple[int, ...]:
    return () if values is None else tuple(int(v) for v in values)


# ---------------------------------------------------------------------------
# Reading


def _plain(value: Any) -> Any:
    """Schema-object field values as hashable Python values."""
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if isinstance(value, bytes):
        return value
    if hasattr(value, "__dict__"):  # a nested table: keep its fields
        return Options(type(value).__name__.removesuffix("T"), tuple((k, _plain(v)) for k, v in vars(value).items()))
    return value


def _options(obj: Any) -> Options | None:
    if obj is None:
        return None
    return Options(type(obj).__name__.removesuffix("T"), tuple((k, _plain(v)) for k, v in vars(obj).items()))


def _quantization(quant: Any) -> Quantization | None:
    if quant is None or quant.scale is None or len(quant.scale) == 0:
        return None
    return Quantization(tuple(float(s) for s in quant.scale), _ints(quant.zeroPoint), int(quant.quantizedDimension))


def _tensor(tensor: Any) -> Tensor:
    return Tensor(
        name=_text(tensor.name),
        shape=_ints(tensor.shape),
        dtype=_TENSOR_TYPES.get(tensor.type, f"type{tensor.type}"),
        buffer=int(tensor.buffer),
        quantization=_quantization(tensor.quantization),
        is_variable=bool(tensor.isVariable),
        shape_signature=None if tensor.shapeSignature is None else _ints(tensor.shapeSignature),
    )


def _opcode(code: Any) -> tuple[str, int, bool]:
    # Newer schemas moved builtin codes >127 to builtinCode; the deprecated byte saturates.
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    if builtin == schema().BuiltinOperator.CUSTOM:
        return _text(code.customCode) or "CUSTOM", int(code.version), True
    return _builtin_names().get(builtin, f"BUILTIN_{builtin}"), int(code.version), False


def _operator(op: Any, opcodes: list[tuple[str, int, bool]]) -> Operator:
    kind, version, custom = opcodes[op.opcodeIndex]
    custom_options = None if op.customOptions is None else bytes(bytearray(op.customOptions))
    return Operator(kind=kind, inputs=_ints(op.inputs), outputs=_ints(op.outputs), options=_options(op.builtinOptions),
                    version=version, custom=custom, custom_options=custom_options,
                    options2=_options(op.builtinOptions2))


def _graph(subgraph: Any, opcodes: list[tuple[str, int, bool]]) -> Graph:
    return Graph(
        tensors=tuple(_tensor(t) for t in subgraph.tensors or ()),
        operators=tuple(_operator(op, opcodes) for op in subgraph.operators or ()),
        inputs=_ints(subgraph.inputs),
        outputs=_ints(subgraph.outputs),
        name=_text(subgraph.name),
    )


def _buffer(buffer: Any) -> Buffer:
    if buffer.offset > 1:  # data stored after the flatbuffer (models over 2 GB)
        raise ModelError("the model keeps its weights outside the flatbuffer (>2 GB format); not supported")
    return Buffer(b"" if buffer.data is None else np.asarray(buffer.data, dtype=np.uint8).tobytes())


def _signature(signature: Any) -> SignatureDef:
    def pairs(items: Any) -> tuple[tuple[str, int], ...]:
        return tuple((_text(item.name), int(item.tensorIndex)) for item in items or ())

    return SignatureDef(_text(signature.signatureKey), int(signature.subgraphIndex),
                        pairs(signature.inputs), pairs(signature.outputs))


def read_flatbuffer(data: bytes) -> Model:
    """Parse a TFLite flatbuffer into a Model; ModelError if it is not one."""
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ModelError("not a TFLite flatbuffer (missing the TFL3 identifier)")
    try:
        tree = schema().ModelT.InitFromPackedBuf(bytearray(data), 0)
        opcodes = [_opcode(code) for code in tree.operatorCodes or ()]
        subgraphs = tuple(_graph(subgraph, opcodes) for subgraph in tree.subgraphs or ())
        buffers = tuple(_buffer(b) for b in tree.buffers or ())
        metadata = tuple(Metadata(_text(m.name), int(m.buffer)) for m in tree.metadata or ())
        signatures = tuple(_signature(s) for s in tree.signatureDefs or ())
    except ModelError:
        raise
    except Exception as exc:  # a truncated or corrupt buffer fails anywhere inside the bindings
        raise ModelError(f"corrupt or truncated TFLite flatbuffer ({type(exc).__name__})") from None
    if not subgraphs:
        raise ModelError("the TFLite model has no subgraph")
    return Model(subgraphs=subgraphs, buffers=buffers or (Buffer(),), description=_text(tree.description),
                 version=int(tree.version), metadata=metadata, signature_defs=signatures, source_bytes=len(data))


# ---------------------------------------------------------------------------
# Writing


def _schema_object(options: Options) -> Any:
    obj = getattr(schema(), options.type + "T")()
    for name, value in options.fields:
        setattr(obj, name, _schema_value(value))
    return obj


def _schema_value(value: Any) -> Any:
    if isinstance(value, Options):
        return _schema_object(value)
    if isinstance(value, tuple):
        return [_schema_value(v) for v in value]
    return value


def _union_type(enum: Any, options: Options | None) -> int:
    return 0 if options is None else int(getattr(enum, options.type))


def _opcode_key(op: Operator) -> tuple[str, int, bool]:
    return op.kind, op.version, op.custom


def _opcode_object(key: tuple[str, int, bool]) -> Any:
    kind, version, custom = key
    code = schema().OperatorCodeT()
    if custom:
        code.builtinCode = code.deprecatedBuiltinCode = schema().BuiltinOperator.CUSTOM
        code.customCode = kind
    else:
        if kind not in builtin_codes():
            raise ModelError(f"unknown builtin operator {kind}")
        code.builtinCode = builtin_codes()[kind]
        # The deprecated byte holds codes up to 127; above, PLACEHOLDER_FOR_GREATER_OP_CODES.
        code.deprecatedBuiltinCode = min(code.builtinCode, schema().BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.version = version
    return code


def _int32_array(values: tuple[int, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def _operator_object(op: Operator, opcode_index: int) -> Any:
    obj = schema().OperatorT()
    obj.opcodeIndex = opcode_index
    obj.inputs = _int32_array(op.inputs)
    obj.outputs = _int32_array(op.outputs)
    obj.builtinOptionsType = _union_type(schema().BuiltinOptions, op.options)
    obj.builtinOptions = None if op.options is None else _schema_object(op.options)
    obj.builtinOptions2Type = _union_type(schema().BuiltinOptions2, op.options2)
    obj.builtinOptions2 = None if op.options2 is None else _schema_object(op.options2)
    if op.custom_options is not None:
        obj.customOptions = np.frombuffer(op.custom_options, dtype=np.uint8)
    return obj


def _quantization_object(quant: Quantization | None) -> Any:
    obj = schema().QuantizationParametersT()
    if quant is not None:
        obj.scale = np.asarray(quant.scale, dtype=np.float32)
        obj.zeroPoint = np.asarray(quant.zero_point, dtype=np.int64)
        obj.quantizedDimension = quant.dimension
    return obj


def _tensor_object(tensor: Tensor) -> Any:
    obj = schema().TensorT()
    obj.shape = _int32_array(tensor.shape)
    obj.type = _TYPE_CODES[tensor.dtype]
    obj.buffer = tensor.buffer
    obj.name = tensor.name
    obj.quantization = _quantization_object(tensor.quantization)
    obj.isVariable = tensor.is_variable
    obj.hasRank = True
    if tensor.shape_signature is not None:
        obj.shapeSignature = _int32_array(tensor.shape_signature)
    return obj


def _subgraph_object(graph: Graph, opcode_index: dict[tuple[str, int, bool], int]) -> Any:
    obj = schema().SubGraphT()
    obj.tensors = [_tensor_object(t) for t in graph.tensors]
    obj.operators = [_operator_object(op, opcode_index[_opcode_key(op)]) for op in graph.operators]
    obj.inputs = _int32_array(graph.inputs)
    obj.outputs = _int32_array(graph.outputs)
    obj.name = graph.name
    return obj


class _Prepacked:
    """A table already in the builder; ModelT.Pack only asks for its offset."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the schema object API's name
        return self.offset


def _pack_buffer(builder: Any, buffer: Buffer) -> _Prepacked:
    """A Buffer table whose data starts 16-byte aligned (the generated Pack aligns to 1)."""
    s = schema()
    data = None
    size = buffer.nbytes
    if size:
        builder.StartVector(1, size, BUFFER_ALIGNMENT)
        builder.head = builder.head - size
        # A buffer known only by its size (built from a spec) is written as zeros.
        content = buffer.data if buffer.data is not None else bytes(size)
        builder.Bytes[builder.head:builder.head + size] = content
        data = builder.EndVector()
    s.BufferStart(builder)
    if data is not None:
        s.BufferAddData(builder, data)
    return _Prepacked(s.BufferEnd(builder))


def _signature_object(signature: SignatureDef) -> Any:
    def tensor_maps(pairs: tuple[tuple[str, int], ...]) -> list[Any]:
        maps = []
        for name, index in pairs:
            item = schema().TensorMapT()
            item.name, item.tensorIndex = name, index
            maps.append(item)
        return maps

    obj = schema().SignatureDefT()
    obj.signatureKey = signature.key
    obj.subgraphIndex = signature.subgraph
    obj.inputs = tensor_maps(signature.inputs)
    obj.outputs = tensor_maps(signature.outputs)
    return obj


def write_flatbuffer(model: Model) -> bytes:
    """Serialise `model` as a TFLite flatbuffer with the TFL3 identifier."""
    import flatbuffers

    operators = [op for graph in model.subgraphs for op in graph.operators]
    keys = list(dict.fromkeys(_opcode_key(op) for op in operators))
    opcode_index = {key: position for position, key in enumerate(keys)}
    tree = schema().ModelT()
    tree.version = model.version
    tree.operatorCodes = [_opcode_object(key) for key in keys]
    tree.subgraphs = [_subgraph_object(graph, opcode_index) for graph in model.subgraphs]
    tree.description = model.description
    tree.metadata = []
    for entry in model.metadata:
        item = schema().MetadataT()
        item.name, item.buffer = entry.name, entry.buffer
        tree.metadata.append(item)
    tree.signatureDefs = [_signature_object(s) for s in model.signature_defs]
    builder = flatbuffers.Builder(1024 + sum(b.nbytes for b in model.buffers))
    # Buffers first: they are the bulk, and ModelT.Pack accepts finished tables.
    tree.buffers = [_pack_buffer(builder, buffer) for buffer in model.buffers]
    builder.Finish(tree.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
