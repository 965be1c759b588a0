"""Analytic memory model: flatbuffer size and minimal TFLM arena of a spec.

Pure Python, no TensorFlow and no tflite_micro. It reproduces, step by step,
what the two real tools do with the network that tinyscale's converter emits:

1. :func:`tflite_graph` rebuilds the TFLite graph that TFLiteConverter
   (TF 2.21, full int8) writes for a :class:`NetworkSpec` built by
   ``keras_builder``, as the one int8 graph type (:class:`tinyscale.graph.model.Model`,
   weights known by size only): the same operators in the same order, the
   same tensors in the same order, with the same names, shapes, options,
   quantization layout and buffer sharing.
2. :func:`flatbuffer_bytes` sizes the converter's serialised flatbuffer of that graph.
3. :func:`arena_plan` replays TFLM's ``MicroAllocator`` on any such Model
   (built from a spec or read from a flatbuffer): persistent
   tail allocations (interpreter structs, per-op data), the temporary
   allocations of each kernel's Prepare, the memory plan of the greedy
   planner (a reimplementation of ``GreedyMemoryPlanner``) and the planner's
   own scratch, then finds the smallest arena for which every phase fits.

The replay is parametrised by the TFLM build (:class:`Runtime`): the sizes of
TFLM's C structs (tinyscale.graph.tflm_abi) and the kernel library. The x86-64
host build of the TFLM Python interpreter (the measurement reference, reference
kernels) is checked against its measured minimal arena
(tests/test_arena_model.py: the converter's networks, patched ones, TFLM's
person_detect); the 32-bit Cortex-M firmware build, with CMSIS-NN's op data
and scratch requests or the reference kernels', against the `arena_used_bytes()`
the firmware prints under QEMU on the M4, M7, M33 and M55
(tests/test_device_arena.py). Operators the kernel table does not cover raise
:class:`~tinyscale.errors.NotModelledError`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from tinyscale.boards.kernels import (
    CMSIS_NN_KERNELS,
    align_up,
    cmsis_nn_scratch_requests,
)
from tinyscale.errors import NotModelledError
from tinyscale.graph.model import (
    Buffer,
    Graph,
    Metadata,
    Model,
    Operator,
    Options,
    Quantization,
    Tensor,
    tensor_bytes,
)
from tinyscale.graph.tflm_abi import (
    ARM32_EABI,
    HOST_X86_64,
    MAX_SCRATCH_BUFFERS_PER_OP,
    PLANNER_BYTES_PER_BUFFER,
    TflmAbi,
)
from tinyscale.network.arch import BlockSpec, NetworkSpec

# ---------------------------------------------------------------------------
# 1. The TFLite graph the converter emits
#
# Tensor names come from the Keras layer names of keras_builder (each layer
# scope gets Keras' "_1" call suffix under the "tinyscale_1" model scope), fused
# by the converter into ";"-joined lists when it folds BN and activations into
# a convolution. Names repeat for a producer's bias and output, so the
# converter's name mapper makes them unique by appending a counter.

_SCOPE = "tinyscale_1"
# convert.py traces `lambda images: model(images)`: the argument names the input,
# the traced function's return value the output.
INPUT_NAME = "images"
OUTPUT_NAME = "Identity"
# The MEAN axis constant (1, 2) is named after its op when only one MEAN uses it,
# otherwise it is a shared (CSE'd) constant and gets an "arith.constant" name.
_AXIS_NAME = f"{_SCOPE}/avg_pool_1/Mean/reduction_indices"
_ZERO_CONSTANT = "arith.constant"


# Schema enum values the converter's options use.
_SAME = 0  # Padding.SAME
_RELU6 = 3  # ActivationFunctionType.RELU6
# Operator versions the converter records for these int8 kernels.
_OPCODE_VERSIONS = {"ADD": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4,
                    "LOGISTIC": 2, "MUL": 2, "SOFTMAX": 2, "MEAN": 2}
# Placeholder quantization values: a spec has no calibration, only the number
# of (scale, zero point) pairs and their axis matter to the size and arena models.
_SCALE, _ZERO_POINT = 1.0, 0


@functools.lru_cache(maxsize=None)
def _quantization(channels: int, dimension: int) -> Quantization | None:
    if not channels:
        return None
    return Quantization((_SCALE,) * channels, (_ZERO_POINT,) * channels, dimension)


@functools.lru_cache(maxsize=None)
def _conv_options(kind: str, stride: int, relu6: bool) -> Options:
    """The options the reader gives for the converter's CONV_2D / DEPTHWISE_CONV_2D (SAME padding)."""
    activation = _RELU6 if relu6 else 0
    if kind == "CONV_2D":
        return Options("Conv2DOptions", (("padding", _SAME), ("strideW", stride), ("strideH", stride),
                                         ("fusedActivationFunction", activation), ("dilationWFactor", 1),
                                         ("dilationHFactor", 1), ("quantizedBiasType", 0)))
    return Options("DepthwiseConv2DOptions", (("padding", _SAME), ("strideW", stride), ("strideH", stride),
                                              ("depthMultiplier", 1), ("fusedActivationFunction", activation),
                                              ("dilationWFactor", 1), ("dilationHFactor", 1)))


_ADD_OPTIONS = Options("AddOptions", (("fusedActivationFunction", 0), ("potScaleInt16", True)))
_MUL_OPTIONS = Options("MulOptions", (("fusedActivationFunction", 0),))
_FC_OPTIONS = Options("FullyConnectedOptions", (("fusedActivationFunction", 0), ("weightsFormat", 0),
                                                ("keepNumDims", False), ("asymmetricQuantizeInputs", False),
                                                ("quantizedBiasType", 0), ("quantSpec", None)))
_SOFTMAX_OPTIONS = Options("SoftmaxOptions", (("beta", 1.0),))


def _mean_options(keep_dims: bool) -> Options:
    return Options("ReducerOptions", (("keepDims", keep_dims),))


class _NameMapper:
    """TFLite's OpOrArgNameMapper: a taken name gets the next free counter suffix."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.counters: dict[str, int] = {}

    def unique(self, name: str) -> str:
        if name not in self.used:
            self.used.add(name)
            return name
        count = self.counters.get(name, 0)
        while True:
            count += 1
            candidate = f"{name}{count}"
            if candidate not in self.used:
                break
        self.counters[name] = count
        self.used.add(candidate)
        return candidate


class _Node:
    """A tensor before indices are assigned (identity is the object)."""

    __slots__ = ("name", "shape", "dtype", "channels", "constant", "content", "group")

    def __init__(self, name, shape, dtype="int8", channels=1, constant=False, content=None, group=None):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = dtype
        self.channels = channels
        self.constant = constant
        self.content = content
        self.group = group  # SE zero bias: the converter CSEs those of equal length


class _PendingOp(NamedTuple):
    """An operator whose tensors are still _Nodes."""

    kind: str
    inputs: tuple
    outputs: tuple
    options: Options | None = None


class _GraphBuilder:
    """Mirrors keras_builder layer by layer, emitting the converter's fused ops."""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.swish = spec.activation == "swish"
        self.ops: list[_PendingOp] = []
        self.unique_counter = 0
        self.uses_se = any(block.se_filters for block in spec.blocks)
        self.axis = _Node(_ZERO_CONSTANT if self.uses_se else _AXIS_NAME, (2,), "int32", 0, True, "axis")
        # Zero constants of the SE convolutions, CSE'd per length by the converter.
        self.zero_groups: dict[int, list[_Node]] = {}
        self.zero_group_order: list[int] = []

    def _unique(self) -> object:
        self.unique_counter += 1
        return ("unique", self.unique_counter)

    def _bias(self, name: str, channels: int, zero: bool) -> _Node:
        content = ("zeros", channels) if zero else self._unique()
        return _Node(name, (channels,), "int32", channels, True, content)

    def _activation(self, x: _Node, scope: str) -> _Node:
        """Swish as LOGISTIC + MUL (ReLU6 is fused into the producer instead)."""
        sigmoid = _Node(f"{_SCOPE}/{scope}_1/Sigmoid", x.shape)
        self.ops.append(_PendingOp("LOGISTIC", (x,), (sigmoid,)))
        product = _Node(f"{_SCOPE}/{scope}_1/mul_1", x.shape)
        self.ops.append(_PendingOp("MUL", (x, sigmoid), (product,), _MUL_OPTIONS))
        return product

    def conv_bn(self, x: _Node, filters: int, kernel: int, size: int, prefix: str,
                activated: bool, zero_bias: bool, stride: int = 1) -> _Node:
        """Conv2D + BN (+ activation): one CONV_2D with folded int32 bias."""
        conv, bn = f"{_SCOPE}/{prefix}_conv_1", f"{_SCOPE}/{prefix}_bn_1"
        fused = f"{bn}/batchnorm/add_1;{conv}/convolution;{bn}/batchnorm/sub"
        if activated and not self.swish:
            fused = f"{_SCOPE}/{prefix}_act_1/Relu6;{fused}"
        weights = _Node(f"{conv}/convolution", (filters, kernel, kernel, x.shape[-1]), channels=filters,
                        constant=True, content=self._unique())
        bias = self._bias(fused, filters, zero_bias)
        out = _Node(fused, (1, size, size, filters))
        options = _conv_options("CONV_2D", stride, activated and not self.swish)
        self.ops.append(_PendingOp("CONV_2D", (x, weights, bias), (out,), options))
        if activated and self.swish:
            out = self._activation(out, f"{prefix}_act")
        return out

    def dwconv_bn(self, x: _Node, block: BlockSpec, size: int, prefix: str) -> _Node:
        dw, bn = f"{_SCOPE}/{prefix}_dwconv_1", f"{_SCOPE}/{prefix}_dw_bn_1"
        core = f"{bn}/batchnorm/mul_1;{dw}/depthwise;{bn}/batchnorm/Rsqrt"
        fused = f"{bn}/batchnorm/add_1;{core};{bn}/batchnorm/sub"
        if not self.swish:
            fused = f"{_SCOPE}/{prefix}_dw_act_1/Relu6;{fused}"
        channels = block.expanded_filters
        weights = _Node(core, (1, block.kernel, block.kernel, channels), channels=channels,
                        constant=True, content=self._unique())
        bias = self._bias(fused, channels, zero=False)  # its input is activated: nonzero mean
        out = _Node(fused, (1, size, size, channels))
        options = _conv_options("DEPTHWISE_CONV_2D", block.stride, not self.swish)
        self.ops.append(_PendingOp("DEPTHWISE_CONV_2D", (x, weights, bias), (out,), options))
        if self.swish:
            out = self._activation(out, f"{prefix}_dw_act")
        return out

    def _zero_constant(self, channels: int) -> _Node:
        node = _Node(_ZERO_CONSTANT, (channels,), "int32", channels, True, ("zeros", channels), group=channels)
        if channels not in self.zero_groups:
            self.zero_groups[channels] = []
        self.zero_groups[channels].append(node)
        return node

    def se_conv(self, x: _Node, filters: int, name: str, bias: _Node) -> _Node:
        conv = f"{_SCOPE}/{name}_1/convolution"
        weights = _Node(conv, (filters, 1, 1, x.shape[-1]), channels=filters, constant=True,
                        content=self._unique())
        out = _Node(conv, (1, 1, 1, filters))
        self.ops.append(_PendingOp("CONV_2D", (x, weights, bias), (out,), _conv_options("CONV_2D", 1, False)))
        return out

    def squeeze_excite(self, x: _Node, block: BlockSpec, prefix: str) -> _Node:
        # The converter numbers the SE zero constants block by block, the
        # expand bias before the reduce bias (observed order; names only).
        for channels in (block.expanded_filters, block.se_filters):
            if channels not in self.zero_group_order:
                self.zero_group_order.append(channels)
        squeezed = _Node(f"{_SCOPE}/{prefix}_se_squeeze_1/Mean", (1, 1, 1, x.shape[-1]))
        self.ops.append(_PendingOp("MEAN", (x, self.axis), (squeezed,), _mean_options(True)))
        s = self.se_conv(squeezed, block.se_filters, f"{prefix}_se_reduce", self._zero_constant(block.se_filters))
        s = self._activation(s, f"{prefix}_se_reduce_act")
        s = self.se_conv(s, block.expanded_filters, f"{prefix}_se_expand",
                         self._zero_constant(block.expanded_filters))
        gate = _Node(f"{_SCOPE}/{prefix}_se_gate_1/Sigmoid", s.shape)
        self.ops.append(_PendingOp("LOGISTIC", (s,), (gate,)))
        excited = _Node(f"{_SCOPE}/{prefix}_se_excite_1/Mul", x.shape)
        self.ops.append(_PendingOp("MUL", (x, gate), (excited,), _MUL_OPTIONS))
        return excited

    def build(self) -> None:
        spec = self.spec
        size = -(-spec.resolution // 2)
        x = _Node(INPUT_NAME, (1, *spec.input_shape))
        self.input = x
        x = self.conv_bn(x, spec.stem_filters, 3, size, "stem", activated=True, zero_bias=False, stride=2)
        # A BN output that is not activated has zero mean over the calibration
        # batch (convert.calibrate_batchnorm sets BN statistics to batch
        # statistics), so a 1x1 convolution reading it gets a folded bias that
        # quantizes to all zeros: such biases share one buffer per length.
        zero_mean = False
        for index, block in enumerate(spec.blocks):
            prefix = f"b{index}"
            shortcut, block_input_zero_mean = x, zero_mean
            if block.has_expand:
                x = self.conv_bn(x, block.expanded_filters, 1, size, f"{prefix}_expand",
                                 activated=True, zero_bias=block_input_zero_mean)
            size = -(-size // block.stride)
            x = self.dwconv_bn(x, block, size, prefix)
            if block.se_filters:
                x = self.squeeze_excite(x, block, prefix)
            x = self.conv_bn(x, block.out_filters, 1, size, f"{prefix}_project", activated=False, zero_bias=False)
            if block.has_skip:
                added = _Node(f"{_SCOPE}/{prefix}_add_1/Add", x.shape)
                self.ops.append(_PendingOp("ADD", (shortcut, x), (added,), _ADD_OPTIONS))
                x = added
                zero_mean = block_input_zero_mean
            else:
                zero_mean = True
        x = self.conv_bn(x, spec.head_filters, 1, size, "head", activated=True, zero_bias=zero_mean)
        self.output = self.classifier(x)

    def classifier(self, x: _Node) -> _Node:
        """Global average pool, Dense, softmax."""
        spec = self.spec
        pooled = _Node(f"{_SCOPE}/avg_pool_1/Mean", (1, spec.head_filters))
        self.ops.append(_PendingOp("MEAN", (x, self.axis), (pooled,), _mean_options(False)))
        # convert.spread_logits gives the Dense layer a nonzero bias, so the
        # converter keeps it (a zero bias would be dropped).
        dense = f"{_SCOPE}/logits_1"
        weights = _Node(f"{dense}/MatMul", (spec.classes, spec.head_filters), channels=spec.classes,
                        constant=True, content=self._unique())
        bias = self._bias(f"{dense}/BiasAdd", spec.classes, zero=False)
        logits = _Node(f"{dense}/MatMul;{dense}/BiasAdd", (1, spec.classes))
        self.ops.append(_PendingOp("FULLY_CONNECTED", (pooled, weights, bias), (logits,), _FC_OPTIONS))
        probabilities = _Node(OUTPUT_NAME, (1, spec.classes))
        self.ops.append(_PendingOp("SOFTMAX", (logits,), (probabilities,), _SOFTMAX_OPTIONS))
        return probabilities

    def constant_order(self) -> list[_Node]:
        """Constants as the converter lays them out.

        The axis first; then operators in reverse, each contributing its bias
        then its weights; a CSE'd zero constant appears with all its per-use
        copies at the place of its first (forward) use.
        """
        order: list[_Node] = [self.axis]
        first_use: dict[int, int] = {}
        for position, op in enumerate(self.ops):
            for node in op.inputs:
                if node is not None and node.group is not None and node.group not in first_use:
                    first_use[node.group] = position
        for position in range(len(self.ops) - 1, -1, -1):
            for node in reversed(self.ops[position].inputs[1:]):
                if node is None or not node.constant or node is self.axis:
                    continue
                if node.group is None:
                    order.append(node)
                elif first_use[node.group] == position:
                    order.extend(self.zero_groups[node.group])
        return order

    def zero_constant_base(self, group: object) -> str:
        """"arith.constant<k>": k numbers the CSE'd constants (observed order).

        The shared MEAN axis first, then the SE zero biases block by block.
        """
        number = ["axis", *self.zero_group_order].index(group)
        return f"{_ZERO_CONSTANT}{number or ''}"


@functools.lru_cache(maxsize=256)  # the fitter and the patch search ask for the same specs repeatedly
def tflite_graph(spec: NetworkSpec) -> Model:
    """The converter's int8 flatbuffer for `spec`, as a graph Model without weight bytes.

    Operators, tensors (names, shapes, dtypes, options, operator versions,
    quantization channel counts and axes), buffers and metadata are laid out
    as the converter writes them; constant buffers carry only their size
    (`Buffer.data` None) and quantization values are placeholders. The
    converter gives every tensor its own buffer (after the empty sentinel);
    a constant equal to an earlier one points at that one's buffer and
    leaves its own empty.
    """
    builder = _GraphBuilder(spec)
    builder.build()
    nodes = [builder.input, *builder.constant_order()]
    nodes += [out for op in builder.ops for out in op.outputs]
    index = {id(node): position for position, node in enumerate(nodes)}
    depthwise_weights = {id(op.inputs[1]) for op in builder.ops if op.kind == "DEPTHWISE_CONV_2D"}
    names = _NameMapper()
    tensors, buffers = [], [Buffer()]
    stored: dict[object, int] = {}  # constant content -> its buffer
    for node in nodes:
        base = node.name
        if node.group is not None:
            base = builder.zero_constant_base(node.group)
        elif node is builder.axis and builder.uses_se:
            base = builder.zero_constant_base("axis")
        own = len(buffers)
        buffer = own
        if node.constant and node.content in stored:
            buffer = stored[node.content]
            buffers.append(Buffer())
        elif node.constant:
            stored[node.content] = own
            buffers.append(Buffer(None, tensor_bytes(node.shape, node.dtype)))
        else:
            buffers.append(Buffer())
        quantization = _quantization(node.channels, 3 if id(node) in depthwise_weights else 0)
        tensors.append(Tensor(names.unique(base), node.shape, node.dtype, buffer, quantization))
    operators = tuple(
        Operator(op.kind, tuple(-1 if node is None else index[id(node)] for node in op.inputs),
                 tuple(index[id(node)] for node in op.outputs), op.options, _OPCODE_VERSIONS[op.kind])
        for op in builder.ops
    )
    metadata = []
    for name, nbytes in _METADATA:
        metadata.append(Metadata(name, len(buffers)))
        buffers.append(Buffer(None, nbytes))
    graph = Graph(tuple(tensors), operators, (0,), (len(nodes) - 1,), _SUBGRAPH_NAME)
    return Model((graph,), tuple(buffers), _DESCRIPTION, 3, tuple(metadata))


# ---------------------------------------------------------------------------
# 2. The flatbuffer
#
# TFLite's exporter writes the model with the C++ FlatBufferBuilder, which
# builds back to front: every scalar is aligned to its size, every vector to
# 4 bytes (weights too: no 16-byte alignment in this export path), each table
# gets a vtable unless an identical one was written before, and fields equal
# to their schema default are left out. _SizeBuilder follows these rules but
# only counts bytes; flatbuffer_bytes() replays the exporter's creation order
# (read off converted files): operator codes, tensors, subgraph, buffers,
# metadata, model. Table fields are added in schema declaration order.

_BUILTIN_CODES = {"ADD": 0, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "FULLY_CONNECTED": 9,
                  "LOGISTIC": 14, "MUL": 18, "SOFTMAX": 25, "MEAN": 40}
_DESCRIPTION = "MLIR Converted."
_SUBGRAPH_NAME = "main"
# Metadata: (name, buffer bytes). The runtime version string is padded to 16;
# CONVERSION_METADATA is a small flatbuffer of the converter options.
_METADATA = (("min_runtime_version", 16), ("CONVERSION_METADATA", 96))
_FILE_HEADER_BYTES = 8  # root offset + "TFL3"
_OFFSET = "offset"  # a field holding a uoffset to a child object
# Tensor: shape, type, buffer, name, quantization, has_rank (declaration order).
_TENSOR_FIELDS = ((0, _OFFSET), (1, 1), (2, 4), (3, _OFFSET), (4, _OFFSET), (8, 1))
# QuantizationParameters: scale, zero_point, and quantized_dimension = 3 for
# depthwise weights (0, the default, everywhere else).
_QUANTIZATION_FIELDS = {False: ((2, _OFFSET), (3, _OFFSET)), True: ((2, _OFFSET), (3, _OFFSET), (6, 4))}


@functools.lru_cache(maxsize=None)
def _table_layout(fields: tuple[tuple[int, object], ...], start_mod4: int) -> tuple[int, tuple[int, ...]]:
    """Bytes a table adds (without its vtable) and its vtable, for a start offset mod 4.

    Table fields are at most 4-byte aligned, so the layout only depends on
    the builder's size modulo 4.
    """
    size = start = start_mod4
    ends: dict[int, int] = {}
    for field_id, kind in fields:
        width = 4 if kind == _OFFSET else kind
        size += -size % width + width
        ends[field_id] = size
    size += -size % 4 + 4  # soffset to the vtable
    slots = max(ends, default=-1) + 1
    vtable = (4 + 2 * slots, size - start, *(size - ends[i] if i in ends else 0 for i in range(slots)))
    return size - start, vtable


class _SizeBuilder:
    """The byte accounting of flatbuffers::FlatBufferBuilder (no bytes kept)."""

    def __init__(self) -> None:
        self.size = 0
        self.min_align = 1
        self.vtables: set[tuple[int, ...]] = set()

    def _pre_align(self, length: int, alignment: int) -> None:
        """Pad so that `length` more bytes end aligned (PreAlign)."""
        self.min_align = max(self.min_align, alignment)
        self.size += -(self.size + length) % alignment

    def vector(self, count: int, element_bytes: int) -> None:
        """StartVector aligns the payload to 4 and to the element size; then the count."""
        payload = count * element_bytes
        alignment = max(4, element_bytes)
        if alignment > self.min_align:
            self.min_align = alignment
        self.size += -(self.size + payload) % alignment + payload + 4

    def string(self, length: int) -> None:
        """Bytes, a terminating zero and the length, 4-aligned."""
        self.size += -(self.size + length + 1) % 4 + length + 1 + 4

    def tensor(self, rank: int, name_length: int, channels: int, depthwise_weights: bool) -> None:
        """A Tensor table and its children, in the exporter's order (inlined for speed).

        Shape (int32 vector), name (ASCII string), then for quantized tensors
        scale (float32 vector) and zero point (int64 vector, 8-aligned), the
        QuantizationParameters table, and the Tensor table.
        """
        size = self.size
        size += -(size + 4 * rank) % 4 + 4 * rank + 4
        size += -(size + name_length + 1) % 4 + name_length + 1 + 4
        if channels:
            size += 4 * channels + 4  # scale: size is 4-aligned here
            size += -(size + 8 * channels) % 8 + 8 * channels + 4
            self.min_align = max(self.min_align, 8)
        self.size = size
        self.table(_QUANTIZATION_FIELDS[depthwise_weights] if channels else ())
        self.table(_TENSOR_FIELDS)

    def table(self, fields: tuple[tuple[int, object], ...]) -> None:
        """`fields`: (field id, byte size or _OFFSET) in the order they are added."""
        bytes_written, vtable = _table_layout(fields, self.size % 4)
        self.min_align = max(self.min_align, 4)
        self.size += bytes_written
        if vtable not in self.vtables:  # dedup_vtables_: an identical vtable is reused
            self.vtables.add(vtable)
            self.size += vtable[0]

    def finish(self) -> int:
        self._pre_align(_FILE_HEADER_BYTES, self.min_align)
        return self.size + _FILE_HEADER_BYTES


# The options tables of the converter's operators: per field (schema attribute,
# field id, byte width, schema default), in declaration order. The exporter
# leaves out fields equal to their default.
_OPTIONS_SCHEMA = {
    "Conv2DOptions": (("padding", 0, 1, 0), ("strideW", 1, 4, 0), ("strideH", 2, 4, 0),
                      ("fusedActivationFunction", 3, 1, 0), ("dilationWFactor", 4, 4, 1),
                      ("dilationHFactor", 5, 4, 1), ("quantizedBiasType", 6, 1, 0)),
    "DepthwiseConv2DOptions": (("padding", 0, 1, 0), ("strideW", 1, 4, 0), ("strideH", 2, 4, 0),
                               ("depthMultiplier", 3, 4, 0), ("fusedActivationFunction", 4, 1, 0),
                               ("dilationWFactor", 5, 4, 1), ("dilationHFactor", 6, 4, 1)),
    "AddOptions": (("fusedActivationFunction", 0, 1, 0), ("potScaleInt16", 1, 1, True)),
    "MulOptions": (("fusedActivationFunction", 0, 1, 0),),
    "ReducerOptions": (("keepDims", 0, 1, False),),
    "SoftmaxOptions": (("beta", 0, 4, 0.0),),
    "FullyConnectedOptions": (("fusedActivationFunction", 0, 1, 0), ("weightsFormat", 1, 1, 0),
                              ("keepNumDims", 2, 1, False), ("asymmetricQuantizeInputs", 3, 1, False),
                              ("quantizedBiasType", 4, 1, 0)),
}


@functools.lru_cache(maxsize=None)
def _options_fields(options: Options | None) -> tuple[tuple[int, object], ...] | None:
    """The builtin options table the exporter writes (None: the op has none)."""
    if options is None:
        return None
    if options.type not in _OPTIONS_SCHEMA:
        raise NotModelledError(f"the converter's layout of {options.type} is not modelled")
    return tuple((field_id, width) for name, field_id, width, default in _OPTIONS_SCHEMA[options.type]
                 if options.get(name, default) != default)


@functools.lru_cache(maxsize=None)
def _operator_fields(has_opcode_index: bool, has_options: bool) -> tuple[tuple[int, object], ...]:
    """Operator: opcode_index (0 is the default), inputs, outputs, options type and table."""
    fields = [(0, 4)] if has_opcode_index else []
    fields += [(1, _OFFSET), (2, _OFFSET)]
    if has_options:
        fields += [(3, 1), (4, _OFFSET)]
    return tuple(fields)


def _opcode_fields(kind: str, version: int) -> tuple[tuple[int, object], ...]:
    if kind not in _BUILTIN_CODES:
        raise NotModelledError(f"the converter's layout of {kind} operator codes is not modelled")
    code, fields = _BUILTIN_CODES[kind], []
    if code:
        fields.append((0, 1))  # deprecated_builtin_code
    if version != 1:
        fields.append((2, 4))
    if code:
        fields.append((3, 4))
    return tuple(fields)


def flatbuffer_bytes(model: Model) -> int:
    """Size of the flatbuffer TFLiteConverter writes for `model` (a graph from :func:`tflite_graph`).

    This is the converter's C++ layout (4-aligned weights, deduplicated
    vtables); tinyscale's own writer lays out differently (16-aligned
    buffers): size that by writing it (:func:`tinyscale.graph.flatbuffer.write_flatbuffer`).
    """
    graph = model.graph
    fb = _SizeBuilder()
    opcodes = list(dict.fromkeys((op.kind, op.version) for op in graph.operators))
    for kind, version in opcodes:
        fb.table(_opcode_fields(kind, version))
    fb.vector(len(opcodes), 4)
    opcode_index = {key: position for position, key in enumerate(opcodes)}
    for tensor in graph.tensors:
        quant = tensor.quantization
        fb.tensor(len(tensor.shape), len(tensor.name.encode()), len(quant.scale) if quant else 0,
                  bool(quant and quant.dimension))
    fb.vector(len(graph.tensors), 4)
    fb.vector(len(graph.inputs), 4)
    fb.vector(len(graph.outputs), 4)
    for op in graph.operators:
        fb.vector(len(op.inputs), 4)
        fb.vector(len(op.outputs), 4)
        options = _options_fields(op.options)
        if options is not None:
            fb.table(options)
        fb.table(_operator_fields(opcode_index[op.kind, op.version] > 0, options is not None))
    fb.vector(len(graph.operators), 4)
    fb.string(len(graph.name.encode()))
    fb.table(((0, _OFFSET), (1, _OFFSET), (2, _OFFSET), (3, _OFFSET), (4, _OFFSET)))
    fb.vector(len(model.subgraphs), 4)
    fb.string(len(model.description.encode()))
    for buffer in model.buffers:
        # Buffer 0 is the empty sentinel; a deduplicated constant's own buffer stays, empty.
        if buffer.nbytes:
            fb.vector(buffer.nbytes, 1)
            fb.table(((0, _OFFSET),))
        else:
            fb.table(())
    fb.vector(len(model.buffers), 4)
    for entry in model.metadata:
        fb.string(len(entry.name.encode()))
        fb.table(((0, _OFFSET), (1, 4)))
    fb.vector(len(model.metadata), 4)
    fb.vector(len(model.signature_defs), 4)
    fb.table(((0, 4), (1, _OFFSET), (2, _OFFSET), (3, _OFFSET), (4, _OFFSET), (6, _OFFSET), (7, _OFFSET)))
    return fb.finish()


# ---------------------------------------------------------------------------
# 3. The TFLM arena
#
# MicroAllocator splits one arena: the *tail* grows down from the end and
# holds everything persistent (interpreter structs, per-op data); the *head*
# grows up from the start and holds, in turn, the scratch-buffer requests and
# temporary TfLiteTensors of each kernel's Prepare, the memory planner's own
# working arrays, and finally the activation plan. The minimal arena is the
# smallest size for which every one of those phases fits.

ARENA_ALIGNMENT = 16  # MicroArenaBufferAlignment(): tensor buffers, op data
# The host build's sizes under their historical names (the patch search's quick bound uses them).
EVAL_TENSOR_BYTES = HOST_X86_64.eval_tensor[0]
NODE_AND_REGISTRATION_BYTES = HOST_X86_64.node_and_registration[0]


@dataclass(frozen=True)
class Runtime:
    """Which TFLM build the arena is replayed for: struct sizes, kernel library, cpu.

    The host interpreter runs the reference kernels; a device build runs its
    target's kernel library, whose Init structs and scratch requests differ
    (CMSIS-NN's depend on the core: DSP extension or Helium).
    """

    abi: TflmAbi = HOST_X86_64
    kernel_library: str = "reference"
    cpu: str = ""

    def builtin(self, op: Operator) -> tuple[int, int]:
        return self.abi.builtin_options.get(op.kind, (0, 0))

    def op_data(self, op: Operator) -> int:
        size = self.abi.op_data(op.kind, self.kernel_library)
        if size is None:
            raise NotModelledError(f"{op.kind}'s op data in the {self.abi.name} build is not modelled")
        return size

    def scratch_requests(self, graph: Graph, op: Operator) -> list[int]:
        """Bytes of each RequestScratchBufferInArena call of the op's Prepare, in order."""
        if self.kernel_library == "cmsis-nn" and op.kind in CMSIS_NN_KERNELS:
            return cmsis_nn_scratch_requests(graph, op, self.cpu)
        return _scratch_requests(graph, op)


HOST = Runtime()


def device_runtime(kernel_library: str, cpu: str) -> Runtime:
    """The 32-bit Cortex-M firmware build for `kernel_library` on `cpu`.

    NotModelledError for builds whose structs are not in tinyscale.graph.tflm_abi
    (ESP-NN, the Xtensa/RISC-V ESP32s' toolchains, other kernel libraries).
    """
    if kernel_library not in ARM32_EABI.op_data_bytes or not cpu.startswith("cortex-m"):
        raise NotModelledError(f"the 32-bit arena of {kernel_library} kernels on {cpu or 'this cpu'} is not modelled")
    return Runtime(ARM32_EABI, kernel_library, cpu)


# What each kernel of the TFLM reference library does in Prepare, read from
# its sources and checked against the interpreter's measured minimal arena
# (tests/test_arena_model.py); the sizes of its parsed builtin options and of
# its Init allocation are per build, in tinyscale.graph.tflm_abi:
# - `temps`: the tensors its Prepare fetches as temporary TfLiteTensors, in
#   order ("I0" input 0, "O0" output 0, "I*" every input; a tensor fetched
#   twice is allocated twice, an omitted optional input not at all);
# - `temps_before_arrays`: how many of them come before the per-channel
#   output multiplier and shift arrays it allocates (conv and depthwise);
# - `per_channel`: where those arrays' length comes from (None: no arrays).
# Operators not in this table are not modelled: the arena model refuses them.


@dataclass(frozen=True)
class _Kernel:
    temps: tuple[str, ...]
    temps_before_arrays: int | None = None  # None: after all of them
    per_channel: str | None = None  # "filter_dim0", "filter_dim3", "filter_scales"


_CONV_TEMPS = ("O0", "I0", "I1", "I0", "I1", "I2", "O0")  # ConvPrepare, then CalculateOpDataConv
_UNARY = ("I0", "O0")
_KERNELS = {
    "CONV_2D": _Kernel(_CONV_TEMPS, 3, "filter_dim0"),  # TfLiteConvParams, OpDataConv
    "DEPTHWISE_CONV_2D": _Kernel(_CONV_TEMPS, 3, "filter_dim3"),  # TfLiteDepthwiseConvParams
    "FULLY_CONNECTED": _Kernel(("I0", "I1", "I2", "O0"), None, "filter_scales"),
    "ADD": _Kernel(("I0", "I1", "O0")),  # TfLiteAddParams, OpDataAdd
    "MUL": _Kernel(("I0", "I1", "O0")),  # TfLiteMulParams, OpDataMul
    "MEAN": _Kernel(("I0", "O0", "I1", "I0", "O0")),  # TfLiteReducerParams, OpDataReduce
    "SOFTMAX": _Kernel(_UNARY),  # TfLiteSoftmaxParams, SoftmaxParams (int8: no LUTs)
    "LOGISTIC": _Kernel(_UNARY),  # OpDataLogistic
    "STRIDED_SLICE": _Kernel(("I0", "I1", "I2", "I3", "O0")),  # StridedSliceParams
    "PAD": _Kernel(("I0", "I1", "O0")),  # pad.h OpData (PadParams, zero point)
    "PADV2": _Kernel(("I0", "I1", "I2", "O0")),
    # Type check on input 0 and the output, then every input in turn.
    "CONCATENATION": _Kernel(("I0", "O0", "I*")),  # ConcatenationParams + 10 scratch indices
    "AVERAGE_POOL_2D": _Kernel(_UNARY),  # TfLitePoolParams, OpDataPooling
    "MAX_POOL_2D": _Kernel(_UNARY),
    "RELU": _Kernel(_UNARY),  # ReluOpData
    "RELU6": _Kernel(_UNARY),  # Relu6OpData
    "TANH": _Kernel(("I0", "I0", "O0")),  # tanh.cc OpData; CalculateArithmeticOpData refetches
    "LEAKY_RELU": _Kernel(_UNARY),  # TfLiteLeakyReluParams, LeakyReluOpData
    "RESHAPE": _Kernel(_UNARY),  # TfLiteReshapeParams; no Init
    "QUANTIZE": _Kernel(_UNARY),  # OpDataQuantizeReference
    "HARD_SWISH": _Kernel(_UNARY),  # HardSwishParams
    "ELU": _Kernel(_UNARY),  # elu.cc OpData: an int8 lookup table
    "ABS": _Kernel(_UNARY),  # OpDataAbsRsqrt
    "RSQRT": _Kernel(_UNARY),
    "SUB": _Kernel(("I0", "I1", "O0")),  # TfLiteSubParams, OpDataSub
    "MAXIMUM": _Kernel(()),  # no Init, no Prepare
    "MINIMUM": _Kernel(()),
}
# Kernels whose allocations depend on the activation type: modelled for int8 only
# (int16 SOFTMAX allocates lookup tables, float kernels other op data).
_INT8_ONLY = frozenset(_KERNELS) - {"RESHAPE"}


def kernel(op: Operator) -> _Kernel:
    """The allocation record of `op`'s kernel; NotModelledError when there is none."""
    record = _KERNELS.get(op.kind)
    if record is None or op.custom:
        raise NotModelledError(f"TFLM's allocations for {op.kind} are not modelled")
    return record


def check_modelled(model: Model) -> None:
    """NotModelledError unless the arena model covers every allocation TFLM makes for `model`."""
    if len(model.subgraphs) != 1:
        raise NotModelledError(f"models with {len(model.subgraphs)} subgraphs are not modelled")
    graph = model.graph
    variables = [t.name or f"tensor {i}" for i, t in enumerate(graph.tensors) if t.is_variable]
    if variables:
        raise NotModelledError(f"variable tensors ({len(variables)}, e.g. {variables[0]!r}) are not modelled")
    for op in graph.operators:
        kernel(op)
        if op.kind in _INT8_ONLY:
            dtypes = {graph.tensors[t].dtype for t in (op.inputs[:1] + op.outputs) if t >= 0}
            if dtypes != {"int8"}:
                raise NotModelledError(f"TFLM's allocations for {op.kind} on {'/'.join(sorted(dtypes))} "
                                       "are not modelled (int8 only)")


def _align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment


class _Requirement:
    """SingleArenaBufferAllocator, solved for the arena size instead of run in one.

    The head (and temporaries) grow up from the arena start, which is 16-byte
    aligned (malloc); the tail grows down from the arena end. Tail positions
    are kept relative to an unknown 16-aligned base, so every alignment is
    computed exactly, and each check TFLM makes ("does this fit?") becomes a
    lower bound on that base: `need`.
    """

    def __init__(self, tail: int = 0) -> None:
        self.head = self.temp = 0
        self.tail = tail  # relative to the base
        self.need = 0  # smallest base for which every check so far passes

    def _require(self, base: int) -> None:
        if base > self.need:
            self.need = base

    def persistent(self, size: int, alignment: int = ARENA_ALIGNMENT) -> None:
        self.tail = _align_down(self.tail - size, alignment)
        self._require(self.head - self.tail)

    def temporary(self, size: int, alignment: int) -> None:
        start = align_up(self.temp, alignment)
        self._require(start + size - self.tail)
        self.temp = start + size

    def temporaries_until(self, end: int) -> None:
        """Temporary allocations from the (16-aligned) head that end at head + end."""
        self.temp = self.head + end
        self._require(self.temp - self.tail)

    def reset_temporaries(self) -> None:
        self.temp = self.head

    def resize_head(self, size: int) -> None:
        self._require(size - self.tail)
        self.head = self.temp = size

    def planner_scratch(self, buffer_count: int) -> None:
        """GreedyMemoryPlanner::Init gets all free memory; it must hold every buffer."""
        free_start = align_up(self.temp, ARENA_ALIGNMENT)
        self._require(free_start + PLANNER_BYTES_PER_BUFFER * buffer_count - _align_down(self.tail, ARENA_ALIGNMENT))


def _tensor_struct_allocations(channels: int, abi: TflmAbi = HOST_X86_64) -> list[tuple[int, int]]:
    """(size, alignment) of a TfLiteTensor and its quantization copy."""
    allocations = [abi.tflite_tensor]
    if channels:
        # TfLiteAffineQuantization plus an int zero-point array (TfLiteIntArray).
        allocations += [abi.affine_quantization, (4 + 4 * channels, abi.int_array_alignment)]
    return allocations


def _channels(tensor: Tensor) -> int:
    """Quantization parameter pairs of a tensor (0: not quantized)."""
    return len(tensor.quantization.scale) if tensor.quantization is not None else 0


def _prepare_temps(op: Operator) -> list[int]:
    """Tensor indices of the temporary TfLiteTensors the op's Prepare fetches, in order."""
    indices = []
    for temp in kernel(op).temps:
        tensors = op.inputs if temp[0] == "I" else op.outputs
        positions = range(len(tensors)) if temp[1] == "*" else (int(temp[1:]),)
        indices += [tensors[p] for p in positions if p < len(tensors) and tensors[p] >= 0]
    return indices


def _prepare_channels(graph: Graph, op: Operator) -> tuple[int, ...]:
    """Quantization channels of each temporary TfLiteTensor the op's Prepare fetches."""
    return tuple(_channels(graph.tensors[index]) for index in _prepare_temps(op))


@functools.lru_cache(maxsize=4096)
def _temporary_ends(channels: tuple[int, ...], abi: TflmAbi = HOST_X86_64) -> tuple[int, ...]:
    """Where the temporary area ends after each tensor, relative to a 16-aligned head.

    Each temporary TfLiteTensor comes with a copy of its quantization. They
    only grow until the op's Prepare is done, so checking the end after each
    group of them against the tail is the same as checking each allocation.
    """
    end, ends = 0, []
    for count in channels:
        for size, alignment in _tensor_struct_allocations(count, abi):
            end = align_up(end, alignment) + size
        ends.append(end)
    return tuple(ends)


def _per_channel_channels(graph: Graph, op: Operator) -> int:
    """Length of the per-channel multiplier/shift arrays Prepare allocates (0: none).

    Conv and depthwise size them by the filter's output-channel dimension
    whatever the quantization; fully-connected only when per-channel quantized.
    """
    source = kernel(op).per_channel
    if source is None:
        return 0
    weights = graph.tensors[op.inputs[1]]
    if source == "filter_dim0":
        return weights.shape[0]
    if source == "filter_dim3":
        return weights.shape[3]
    channels = _channels(weights)
    return channels if channels > 1 else 0


def _scratch_requests(graph: Graph, op: Operator) -> list[int]:
    """Bytes of each RequestScratchBufferInArena call of the reference kernel's Prepare."""
    if op.kind == "MEAN":
        # int8 MEAN: int32 accumulators per output element, then the input
        # iterator (one int per input dimension) and the resolved axes.
        output = graph.tensors[op.outputs[0]]
        elements = output.nbytes  # int8: one byte per element
        rank = len(graph.tensors[op.inputs[0]].shape)
        axes = graph.tensors[op.inputs[1]].shape[0]
        return [4 * elements, 4 * rank, 4 * axes]
    return []


@dataclass(frozen=True)
class _Buffer:
    """One planned head buffer: a tensor or a scratch buffer, with its lifetime."""

    size: int  # aligned to ARENA_ALIGNMENT
    first: int
    last: int


def planned_buffers(model: Model, runtime: Runtime = HOST) -> list[_Buffer]:
    """AllocationInfoBuilder: lifetimes in "allocation scopes", in planner order.

    Graph inputs are created at scope 0, operator i runs at scope i + 1, graph
    outputs live to the last scope. Tensors come in index order (constants
    need no allocation), then scratch buffers in request order.
    """
    graph = model.graph
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for index in graph.inputs:
        first[index] = last[index] = 0
    scratch: list[_Buffer] = []
    for position, op in enumerate(graph.operators):
        scope = position + 1
        for index in op.outputs:
            first.setdefault(index, scope)
        for index in (*op.inputs, *op.outputs):
            if index >= 0:
                last[index] = scope
        for size in runtime.scratch_requests(graph, op):
            scratch.append(_Buffer(align_up(size, ARENA_ALIGNMENT), scope, scope))
    end = len(graph.operators)
    for index in graph.outputs:
        first.setdefault(index, end)
        last[index] = end
    buffers = [
        _Buffer(align_up(tensor.nbytes, ARENA_ALIGNMENT), first[index], last[index])
        for index, tensor in enumerate(graph.tensors)
        if index in first and tensor.nbytes and not model.is_constant(tensor)
    ]
    return buffers + scratch


def greedy_plan(buffers: list[_Buffer]) -> list[int]:
    """GreedyMemoryPlanner::CalculateOffsetsIfNeeded: one offset per buffer.

    Buffers are placed largest first; ReverseSortInPlace is a stable bubble
    sort over the buffers listed in *reverse* order of addition, so equal
    sizes go latest-added first. Each buffer takes the first gap, in offset
    order, between the already placed buffers whose lifetimes overlap its own.
    """
    count = len(buffers)
    order = sorted(range(count - 1, -1, -1), key=lambda i: -buffers[i].size)
    offsets = [0] * count
    # Placed buffers overlapping in time, found through a lifetime sweep:
    # lifetimes are short, so each buffer overlaps only a few others.
    by_first = sorted(range(count), key=lambda i: buffers[i].first)
    overlaps: list[list[int]] = [[] for _ in range(count)]
    for position, i in enumerate(by_first):
        last = buffers[i].last
        for later in range(position + 1, count):
            j = by_first[later]
            if buffers[j].first > last:
                break
            overlaps[i].append(j)
            overlaps[j].append(i)
    placed_rank = [-1] * count  # insertion order among equal offsets
    for rank, i in enumerate(order):
        wanted = buffers[i].size
        # The planner's offset-ordered list keeps insertion order for equal offsets.
        active = sorted((offsets[j], placed_rank[j], j) for j in overlaps[i] if placed_rank[j] >= 0)
        offset = 0
        for start, _, j in active:
            if start - offset >= wanted:
                break
            offset = max(offset, start + buffers[j].size)
        offsets[i] = offset
        placed_rank[i] = rank
    return offsets


def plan_bytes(buffers: list[_Buffer], offsets: list[int]) -> int:
    """GetMaximumMemorySize: the head the activations need."""
    return max((offset + buffer.size for offset, buffer in zip(offsets, buffers)), default=0)


@dataclass(frozen=True)
class ArenaPlan:
    arena_bytes: int  # minimal arena
    head_bytes: int  # activation plan (GreedyMemoryPlanner's maximum)
    tail_bytes: int  # persistent allocations at the minimal arena
    # arena_used_bytes() after AllocateTensors in a larger arena ending 16-aligned (the
    # firmware's): head + tail, without Prepare's temporaries and the planner's arrays.
    used_bytes: int = 0


def _options_bytes(graph: Graph, runtime: Runtime = HOST) -> int:
    """Tail bytes of the parsed builtin options.

    Replayed from a 16-aligned tail: they follow the node array, whose
    alignment every option's alignment divides, so the bytes are the same.
    """
    options = _Requirement()
    for op in graph.operators:  # PrepareNodeAndRegistrationDataFromFlatbuffer
        size, alignment = runtime.builtin(op)
        if size:
            options.persistent(size, alignment)
    return -options.tail


def _start_allocations(graph: Graph, arena: _Requirement, options_bytes: int, runtime: Runtime = HOST) -> None:
    """Interpreter and allocator structs, model arrays and parsed options.

    These come before the first 16-aligned allocation, so their padding
    depends on the arena size modulo 16.
    """
    abi = runtime.abi
    for allocation in abi.fixed_tail:
        arena.persistent(*allocation)
    arena.resize_head(abi.scratch_request[0] * MAX_SCRATCH_BUFFERS_PER_OP)
    arena.persistent(abi.eval_tensor[0] * len(graph.tensors), abi.eval_tensor[1])
    arena.persistent(abi.node_and_registration[0] * len(graph.operators), abi.node_and_registration[1])
    # The options' own alignments divide the node array's, so from here on they
    # take the same bytes whatever the residue; the last one is the tightest check.
    arena.persistent(options_bytes, 1)


class _Prepare(NamedTuple):
    """What one operator's Init and Prepare allocate (the same for every arena size)."""

    op_data: int  # Init's persistent buffer (0: none)
    temporary_ends: tuple[int, ...]  # see _temporary_ends
    temps_before_arrays: int
    per_channel: int  # length of the per-channel multiplier and shift arrays (0: none)
    scratch_requests: int  # RequestScratchBufferInArena calls


def _prepares(graph: Graph, runtime: Runtime) -> list[_Prepare]:
    prepares = []
    for op in graph.operators:
        ends = _temporary_ends(_prepare_channels(graph, op), runtime.abi)
        split = kernel(op).temps_before_arrays
        prepares.append(_Prepare(runtime.op_data(op), ends, len(ends) if split is None else split,
                                 _per_channel_channels(graph, op), len(runtime.scratch_requests(graph, op))))
    return prepares


def _remaining_allocations(graph: Graph, arena: _Requirement, head_bytes: int, buffer_count: int,
                           runtime: Runtime = HOST, prepares: list[_Prepare] | None = None) -> None:
    """Init, Prepare, memory planning and the interpreter's I/O tensors."""
    abi = runtime.abi
    prepares = _prepares(graph, runtime) if prepares is None else prepares
    for prepare in prepares:  # InitSubgraphs
        if prepare.op_data:
            arena.persistent(prepare.op_data)
    requests = 0
    for prepare in prepares:  # PrepareSubgraphs
        ends, split, channels = prepare.temporary_ends, prepare.temps_before_arrays, prepare.per_channel
        if split:
            arena.temporaries_until(ends[split - 1])
        if channels:
            arena.persistent(4 * channels)  # per-channel output multipliers
            arena.persistent(4 * channels)  # per-channel output shifts
        if split < len(ends):
            arena.temporaries_until(ends[-1])
        requests += prepare.scratch_requests
        arena.reset_temporaries()  # FinishPrepareNodeAllocations
        arena.resize_head(abi.scratch_request[0] * (requests + MAX_SCRATCH_BUFFERS_PER_OP))
    if requests:
        arena.persistent(abi.scratch_handle[0] * requests, abi.scratch_handle[1])
    # CommitStaticMemoryPlan: allocation info, then all the rest for the planner.
    arena.temporary(abi.size_t_bytes, abi.size_t_bytes)  # subgraph offsets
    arena.temporary(abi.allocation_info[0] * (len(graph.tensors) + requests), abi.allocation_info[1])
    arena.planner_scratch(buffer_count)
    arena.reset_temporaries()
    arena.resize_head(0)
    arena.resize_head(head_bytes)  # the activation plan now occupies the head
    for indices in (graph.inputs, graph.outputs):  # the interpreter's input, then output TfLiteTensors
        arena.persistent(abi.size_t_bytes * len(indices))  # the pointer array
        for index in indices:
            for allocation in _tensor_struct_allocations(_channels(graph.tensors[index]), abi):
                arena.persistent(*allocation)


def fits_in_arena(model: Model, size: int, runtime: Runtime = HOST) -> bool:
    """Whether MicroInterpreter::AllocateTensors succeeds with an arena of `size` (direct replay)."""
    check_modelled(model)
    graph = model.graph
    buffers = planned_buffers(model, runtime)
    head = plan_bytes(buffers, greedy_plan(buffers))
    arena = _Requirement(tail=size)
    _start_allocations(graph, arena, _options_bytes(graph, runtime), runtime)
    _remaining_allocations(graph, arena, head, len(buffers), runtime)
    return arena.need <= 0


def arena_used_bytes(model: Model, runtime: Runtime = HOST) -> int:
    """What MicroInterpreter::arena_used_bytes() reports after AllocateTensors.

    The activation plan (head) plus every persistent allocation (tail), for an
    arena large enough and ending 16-aligned (the firmware's arena is a
    16-aligned section of a 16-byte multiple). It is below the minimal arena:
    Prepare's temporaries and the planner's working arrays are gone by then.
    """
    return arena_plan(model, runtime).used_bytes


def device_arena_used_bytes(model: Model, kernel_library: str, cpu: str) -> int:
    """arena_used_bytes() of 32-bit Cortex-M firmware running `kernel_library` kernels on `cpu`."""
    return arena_used_bytes(model, device_runtime(kernel_library, cpu))


def arena_plan(model: Model, runtime: Runtime = HOST) -> ArenaPlan:
    """The minimal arena, solved for every arena size modulo 16.

    The start allocations are replayed for each of the 16 residues of the
    arena size. They are 8-aligned (4-aligned in a 32-bit build), so the rest
    (from the first op data on) begins at one of a few offsets from a
    16-aligned address; it is replayed once per offset (a 16-aligned allocation from an unaligned tail takes
    fewer bytes than from the aligned-down one, so the offset matters).

    Any single-subgraph int8 model whose operators the kernel table covers
    (built from a spec, read from a flatbuffer, patched); NotModelledError
    for the others, never a guess.
    """
    check_modelled(model)
    graph = model.graph
    buffers = planned_buffers(model, runtime)
    head = plan_bytes(buffers, greedy_plan(buffers))
    options_bytes = _options_bytes(graph, runtime)
    prepares = _prepares(graph, runtime)
    rests: dict[int, _Requirement] = {}
    best: tuple[int, int] | None = None
    for residue in range(ARENA_ALIGNMENT):
        start = _Requirement(tail=residue)
        _start_allocations(graph, start, options_bytes, runtime)
        offset = start.tail % ARENA_ALIGNMENT
        aligned_tail = start.tail - offset  # a 16-aligned point the rest is replayed from
        if offset not in rests:
            rest = _Requirement(tail=offset)
            rest.head = rest.temp = start.head  # the scratch-request area the start left
            _remaining_allocations(graph, rest, head, len(buffers), runtime, prepares)
            rests[offset] = rest
        rest = rests[offset]
        if residue == 0:  # an arena ending 16-aligned: what arena_used_bytes() reports
            used = -(aligned_tail + rest.tail) + max(rest.head, rest.temp)
        base = align_up(max(start.need, rest.need - aligned_tail, 0), ARENA_ALIGNMENT)
        size = base + residue
        tail = size - (base + aligned_tail + rest.tail)
        if best is None or size < best[0]:
            best = (size, tail)
    return ArenaPlan(arena_bytes=best[0], head_bytes=head, tail_bytes=best[1], used_bytes=used)


# ---------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted flash and RAM of the int8 TFLM deployment of one network."""

    model_bytes: int  # flatbuffer size
    arena_bytes: int  # minimal TFLM tensor arena (x86-64 host build)
    weights_bytes: int  # constant tensor data stored in the flatbuffer (after deduplication)
    activations_peak_bytes: int  # the memory planner's head: activations and scratch buffers
    persistent_bytes: int  # the tail: interpreter structs and per-op data
    tensors: int
    operators: int


def _weights_bytes(model: Model) -> int:
    """Bytes of the constant buffers the tensors use (shared ones once)."""
    used = {tensor.buffer for tensor in model.graph.tensors if model.is_constant(tensor)}
    return sum(model.buffers[buffer].nbytes for buffer in used)


@functools.lru_cache(maxsize=512)
def estimate_memory(spec: NetworkSpec) -> MemoryEstimate:
    """Flatbuffer size and minimal TFLM arena of `spec` as converted by tinyscale.

    Memoised: specs are hashable and the fitter asks for the same ones repeatedly.
    """
    model = tflite_graph(spec)
    graph = model.graph
    plan = arena_plan(model)
    return MemoryEstimate(
        model_bytes=flatbuffer_bytes(model),
        arena_bytes=plan.arena_bytes,
        weights_bytes=_weights_bytes(model),
        activations_peak_bytes=plan.head_bytes,
        persistent_bytes=plan.tail_bytes,
        tensors=len(graph.tensors),
        operators=len(graph.operators),
    )
