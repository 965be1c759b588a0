"""The int8 :class:`Model` tinyscale's converter emits for a spec, built without converting.

For now an adapter over :func:`tinyscale.estimate.tflite_graph`, which
reproduces the converter's operators and tensors (names, shapes, quantization
channels, buffer sharing). What the adapter adds is what the patch pass and
the flatbuffer writer read: the operators' builtin options as the converter
writes them (strides from the shapes: EfficientNet's windows are SAME with
stride 1 or 2), per-channel quantization with the right lengths, and constant
buffers of the right sizes, zero-filled (the weights are random at fit time
anyway; sizes, not values, decide memory). The writer then gives the same
size for this model as for the converted one read back, patched or not.

Once estimate builds a graph.Model itself, this becomes the identity.
"""

from __future__ import annotations

import functools

from tinyscale import estimate
from tinyscale.arch import NetworkSpec
from tinyscale.graph.model import Buffer, Graph, Metadata, Model, Operator, Options, Quantization, Tensor

SAME = 0
RELU6 = 3  # the schema's ActivationFunctionType
# The converter's option tables with every field the reader sees (read off converted files).
_FIXED_OPTIONS = {
    "ADD": Options("AddOptions", (("fusedActivationFunction", 0), ("potScaleInt16", True))),
    "MUL": Options("MulOptions", (("fusedActivationFunction", 0),)),
    "SOFTMAX": Options("SoftmaxOptions", (("beta", 1.0),)),
    "FULLY_CONNECTED": Options("FullyConnectedOptions", (
        ("fusedActivationFunction", 0), ("weightsFormat", 0), ("keepNumDims", False),
        ("asymmetricQuantizeInputs", False), ("quantizedBiasType", 0), ("quantSpec", None))),
}
# The converter's opcode versions, metadata buffers (sizes only matter here),
# description and subgraph name, as estimate's flatbuffer sizing knows them.
_VERSIONS = estimate._OPCODE_VERSIONS
_METADATA_BYTES = estimate._METADATA
_DESCRIPTION = estimate._DESCRIPTION
_SUBGRAPH_NAME = estimate._SUBGRAPH_NAME


def _stride(graph: estimate.Graph, op: estimate.Operator) -> int:
    """SAME windows: out = ceil(in / stride), so the smallest stride giving that output."""
    size_in = graph.tensors[op.inputs[0]].shape[1]
    size_out = graph.tensors[op.outputs[0]].shape[1]
    return next(s for s in range(1, size_in + 1) if -(-size_in // s) == size_out)


def _options(graph: estimate.Graph, op: estimate.Operator) -> Options | None:
    activation = RELU6 if op.fused_relu6 else 0
    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        stride = _stride(graph, op)
        fields = [("padding", SAME), ("strideW", stride), ("strideH", stride)]
        if op.kind == "DEPTHWISE_CONV_2D":
            fields.append(("depthMultiplier", 1))
        fields += [("fusedActivationFunction", activation), ("dilationWFactor", 1), ("dilationHFactor", 1)]
        if op.kind == "CONV_2D":
            fields.append(("quantizedBiasType", 0))
        return Options("Conv2DOptions" if op.kind == "CONV_2D" else "DepthwiseConv2DOptions", tuple(fields))
    if op.kind == "MEAN":
        keep_dims = len(graph.tensors[op.outputs[0]].shape) == 4
        return Options("ReducerOptions", (("keepDims", keep_dims),))
    return _FIXED_OPTIONS.get(op.kind)  # LOGISTIC has none


def _quantization(tensor: estimate.Tensor, depthwise_weights: bool) -> Quantization | None:
    if not tensor.channels:
        return None
    # Placeholder scales: sizes, not values, matter to memory and to the pass.
    return Quantization((1.0,) * tensor.channels, (0,) * tensor.channels, 3 if depthwise_weights else 0)


def _buffers(graph: estimate.Graph) -> tuple[tuple[Buffer, ...], list[int]]:
    """The converter's buffer table: one per tensor (empty for activations and for
    a constant equal to an earlier one, which points at that one's), then metadata."""
    buffers, pointers, first = [Buffer()], [], {}
    for position, tensor in enumerate(graph.tensors):
        own = position + 1
        if not tensor.constant:
            buffers.append(Buffer())
            pointers.append(own)
        elif tensor.content in first:
            buffers.append(Buffer())
            pointers.append(first[tensor.content])
        else:
            first[tensor.content] = own
            buffers.append(Buffer(bytes(tensor.nbytes)))
            pointers.append(own)
    buffers += [Buffer(bytes(size)) for _, size in _METADATA_BYTES]
    return tuple(buffers), pointers


@functools.lru_cache(maxsize=256)
def graph_from_spec(spec: NetworkSpec) -> Model:
    """The converted int8 model of `spec`, with zero weights (memoised: the fitter asks repeatedly)."""
    source = estimate.tflite_graph(spec)
    buffers, pointers = _buffers(source)
    depthwise = {op.inputs[1] for op in source.operators if op.kind == "DEPTHWISE_CONV_2D"}
    tensors = tuple(
        Tensor(t.name, t.shape, t.dtype, buffer=pointers[i], quantization=_quantization(t, i in depthwise))
        for i, t in enumerate(source.tensors)
    )
    operators = tuple(
        Operator(op.kind, op.inputs, op.outputs, _options(source, op), version=_VERSIONS[op.kind])
        for op in source.operators
    )
    first_metadata = len(source.tensors) + 1
    metadata = tuple(Metadata(name, first_metadata + k) for k, (name, _) in enumerate(_METADATA_BYTES))
    graph = Graph(tensors, operators, source.inputs, source.outputs, _SUBGRAPH_NAME)
    return Model((graph,), buffers, description=_DESCRIPTION, metadata=metadata)
