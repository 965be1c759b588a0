"""The int8 model as plain, immutable data.

A :class:`Model` is what a ``.tflite`` flatbuffer holds: subgraphs of tensors
and operators, the constant buffers they point into, and the metadata that is
carried through unchanged. Operators name their kind (``CONV_2D``) instead of
an index into an operator-code table: the writer derives that table, so a pass
can add operators without bookkeeping. Tensors point into ``Model.buffers`` by
index, so two tensors can share one weight buffer (passes duplicate operators,
never weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tinyscale.errors import ModelError

# Bytes per element of the dtypes an int8 model uses (others count 1).
_ITEM_BYTES = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "uint32": 4,
               "float16": 2, "int16": 2, "uint16": 2}

NO_TENSOR = -1  # an omitted optional operator input


def element_count(shape: tuple[int, ...]) -> int:
    """Elements of a tensor of this shape (a 0 or -1 dimension counts as 1)."""
    count = 1
    for dim in shape:
        count *= max(dim, 1)
    return count


def tensor_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of a tensor of this shape and dtype."""
    return element_count(shape) * _ITEM_BYTES.get(dtype, 1)


@dataclass(frozen=True)
class Quantization:
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    dimension: int = 0  # the channel axis of per-channel parameters


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy name: "int8", "int32", "float32", ...
    buffer: int = 0  # index into Model.buffers; buffer 0 is the empty sentinel
    quantization: Quantization | None = None
    is_variable: bool = False
    shape_signature: tuple[int, ...] | None = None

    @property
    def elements(self) -> int:
        return element_count(self.shape)

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.dtype)

    @property
    def zero_point(self) -> int:
        """The (per-tensor) zero point; 0 for unquantized tensors."""
        if self.quantization is None or not self.quantization.zero_point:
            return 0
        return self.quantization.zero_point[0]


@dataclass(frozen=True)
class Options:
    """A builtin options table: its schema type name and its fields (schema attribute names)."""

    type: str  # e.g. "Conv2DOptions"
    fields: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.fields).get(name, default)

    def with_fields(self, **changes: Any) -> "Options":
        merged = dict(self.fields)
        merged.update(changes)
        return Options(self.type, tuple(merged.items()))


@dataclass(frozen=True)
class Operator:
    kind: str  # builtin name (CONV_2D) or, for custom operators, the custom code
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Options | None = None
    version: int = 1  # the operator-code version the kernel registration checks
    custom: bool = False
    custom_options: bytes | None = None
    options2: Options | None = None  # the schema's second options union (newer ops)

    def option(self, name: str, default: Any = None) -> Any:
        return default if self.options is None else self.options.get(name, default)


@dataclass(frozen=True)
class Graph:
    """One subgraph: operators in execution order over a tensor table."""

    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    name: str = ""


@dataclass(frozen=True)
class Buffer:
    """Constant bytes; or, for a graph built from a spec (no trained weights), only their size.

    `data` None means the content is not known, `size` says how many bytes it
    has: the planner and the size models need only that, and the writer
    zero-fills it, so the written flatbuffer has the real model's layout.
    """

    data: bytes | None = b""
    size: int = 0  # bytes of a buffer whose data is None

    @property
    def nbytes(self) -> int:
        return self.size if self.data is None else len(self.data)

    @property
    def known(self) -> bool:
        return self.data is not None


@dataclass(frozen=True)
class SignatureDef:
    key: str
    subgraph: int
    inputs: tuple[tuple[str, int], ...]  # (signature name, tensor index)
    outputs: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Metadata:
    name: str
    buffer: int


@dataclass(frozen=True)
class Model:
    subgraphs: tuple[Graph, ...]
    buffers: tuple[Buffer, ...] = (Buffer(),)
    description: str = ""
    version: int = 3
    metadata: tuple[Metadata, ...] = ()
    signature_defs: tuple[SignatureDef, ...] = ()
    # Filled in by the reader: the size of the flatbuffer it came from.
    source_bytes: int | None = field(default=None, compare=False)

    @property
    def graph(self) -> Graph:
        """The main subgraph (the one TFLM invokes)."""
        return self.subgraphs[0]

    def with_graph(self, graph: Graph, buffers: tuple[Buffer, ...] | None = None) -> "Model":
        return replace(self, subgraphs=(graph, *self.subgraphs[1:]),
                       buffers=self.buffers if buffers is None else buffers, source_bytes=None)

    def is_constant(self, tensor: Tensor) -> bool:
        return 0 < tensor.buffer < len(self.buffers) and self.buffers[tensor.buffer].nbytes > 0

    def constant_data(self, tensor: Tensor) -> bytes:
        """The tensor's constant bytes; ModelError for a buffer known only by its size."""
        if not 0 < tensor.buffer < len(self.buffers):
            return b""
        buffer = self.buffers[tensor.buffer]
        if buffer.data is None:
            raise ModelError(f"the content of {tensor.name!r} is not known (a graph built from a spec)")
        return buffer.data
