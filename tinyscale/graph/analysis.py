"""Questions passes ask of a graph: who produces and reads a tensor, what an op costs."""

from __future__ import annotations

from tinyscale.graph.model import Graph, Model, Operator


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


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= max(dim, 1)
    return count


def operator_macs(graph: Graph, op: Operator) -> int:
    """Multiply-accumulates of convolutions and fully-connected layers (0 for the rest)."""
    if not op.outputs or op.outputs[0] < 0 or len(op.inputs) < 2 or op.inputs[1] < 0:
        return 0
    out = graph.tensors[op.outputs[0]].shape
    weights = graph.tensors[op.inputs[1]].shape
    if op.kind == "CONV_2D" and len(weights) == 4:
        return _elements(out) * weights[1] * weights[2] * weights[3]
    if op.kind == "DEPTHWISE_CONV_2D" and len(weights) == 4:
        return _elements(out) * weights[1] * weights[2]
    if op.kind == "FULLY_CONNECTED" and len(weights) == 2:
        return _elements(out) * weights[1]
    return 0


def model_macs(model: Model) -> int:
    graph = model.graph
    return sum(operator_macs(graph, op) for op in graph.operators)


def float_tensors(model: Model) -> list[str]:
    """Names of the main subgraph's float activations and inputs (an int8 model has none)."""
    graph = model.graph
    return [t.name for t in graph.tensors if t.dtype.startswith("float") and not model.is_constant(t)]
