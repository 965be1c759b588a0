"""Questions passes ask of a graph: who produces and reads a tensor, what an op costs."""

from __future__ import annotations

from tinyscale.graph.model import Graph, Model, Operator, element_count


def producers(graph: Graph) -> dict[int, int]:
    """Tensor index -> index of the operator that writes it."""
    return {tensor: position for position, op in enumerate(graph.operators) for tensor in op.outputs}


def consumers(graph: Graph) -> dict[int, list[int]]:
    """Tensor index -> indices of the operators that read it, in execution order."""
    readers: dict[int, list[int]] = {}
    for position, op in enumerate(graph.operators):
        for tensor in dict.fromkeys(op.inputs):
            if tensor >= 0:
                readers.setdefault(tensor, []).append(position)
    return readers


def _input(graph: Graph, op: Operator, position: int):
    """Input `position` of `op`, or None when it is absent or left out (-1)."""
    if position >= len(op.inputs) or op.inputs[position] < 0:
        return None
    return graph.tensors[op.inputs[position]]


def operator_macs(graph: Graph, op: Operator) -> int:
    """Multiply-accumulates of convolutions, fully-connected layers and LSTMs (0 for the rest)."""
    if not op.outputs or op.outputs[0] < 0:
        return 0
    out = graph.tensors[op.outputs[0]].shape
    weights = _input(graph, op, 1)
    if op.kind == "CONV_2D" and weights is not None and len(weights.shape) == 4:
        _, kh, kw, cin = weights.shape
        return element_count(out) * kh * kw * cin
    if op.kind == "DEPTHWISE_CONV_2D" and weights is not None and len(weights.shape) == 4:
        return element_count(out) * weights.shape[1] * weights.shape[2]
    if op.kind == "FULLY_CONNECTED" and weights is not None and len(weights.shape) == 2:
        return element_count(out) * weights.shape[1]
    if op.kind == "TRANSPOSE_CONV":
        source = _input(graph, op, 2)
        if weights is not None and source is not None:
            return element_count(source.shape) * element_count(weights.shape[:3])
    if op.kind == "UNIDIRECTIONAL_SEQUENCE_LSTM":
        source = _input(graph, op, 0)
        steps = element_count(source.shape[:-1]) if source is not None else 1
        gates = [_input(graph, op, i) for i in range(1, 9)]
        return steps * sum(element_count(t.shape) for t in gates if t is not None)
    return 0


def model_macs(model: Model) -> int:
    graph = model.graph
    return sum(operator_macs(graph, op) for op in graph.operators)


def float_tensors(model: Model) -> list[str]:
    """Names of the main subgraph's float activations and inputs (an int8 model has none)."""
    graph = model.graph
    return [t.name for t in graph.tensors if t.dtype.startswith("float") and not model.is_constant(t)]
