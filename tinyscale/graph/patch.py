"""Patch-based inference inside a standard int8 flatbuffer (graph in, graph out).

Everything from the model input up to a *split tensor* is computed in an
R x C grid of spatial patches, so that only one patch of the early, large
feature maps is alive at a time (MCUNetV2, Lin et al. 2021), while stock TFLM
with any kernel library runs the result:

- per patch, a STRIDED_SLICE takes the input region the patch needs (its
  receptive field, halo included);
- every operator is repeated with VALID padding; where the patch touches the
  real border of a map, a PAD in front of it restores that operator's SAME
  padding on those sides only (the input's zero point, which a SAME
  convolution treats as real zero; -128 in front of a max pool, which never
  wins a max) -- so the arithmetic is exactly the unpatched one;
- the copies reference the same weight and bias tensors (flash grows by
  operator tables and a few small constants only) and keep every tensor's
  quantization; an input computed over a larger region than an operator
  needs (a residual's skip, a map read by two kernel sizes) is cropped;
- CONCATENATION, along columns then rows, assembles the split tensor with its
  original quantization, which makes TFLM's int8 concatenation an exact copy.

Operators are written patch after patch (depth first), so TFLM's memory
planner reuses one patch's buffers for the next. The outputs equal the
unpatched model's bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from tinyscale.errors import ModelError, UsageError
from tinyscale.graph.analysis import consumers, float_tensors, producers
from tinyscale.graph.model import (
    Buffer,
    Graph,
    Model,
    Operator,
    Options,
    Quantization,
    Tensor,
)

log = logging.getLogger(__name__)

SAME, VALID = 0, 1  # the schema's Padding enum
WINDOW_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D")
# One activation input, output of the same shape, each element from its own.
UNARY_OPS = ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU",
             "QUANTIZE", "ABS", "NEG", "ELU", "GELU", "SQUARE", "RSQRT", "SQRT", "EXP", "LOG")
# Element-wise binary ops: maps of one shape, or a map and a constant broadcast over space.
BINARY_OPS = ("ADD", "MUL", "SUB", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE")
# Default cap on the halos' recomputation a schedule may cost, as a fraction of the
# model's MACs (`patch` and `fit --patch auto` both use it).
DEFAULT_MAX_EXTRA_MACS = 0.3
_OPCODE_VERSION = {"STRIDED_SLICE": 2, "PAD": 2, "PADV2": 2, "CONCATENATION": 2}


# ---------------------------------------------------------------------------
# Regions of a feature map


@dataclass(frozen=True)
class Span:
    """Half-open interval [lo, hi) of rows or columns."""

    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo

    def union(self, other: "Span") -> "Span":
        return Span(min(self.lo, other.lo), max(self.hi, other.hi))


@dataclass(frozen=True)
class Region:
    rows: Span
    cols: Span

    def union(self, other: "Region") -> "Region":
        return Region(self.rows.union(other.rows), self.cols.union(other.cols))


@dataclass(frozen=True)
class Window:
    """One spatial axis of a sliding-window operator."""

    kernel: int
    stride: int
    pad_before: int  # TensorFlow's SAME split: total // 2 before, the rest after


def same_padding(in_size: int, out_size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) of TensorFlow's SAME padding."""
    total = max((out_size - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


def input_span(window: Window, out: Span, in_size: int) -> tuple[Span, int, int]:
    """The input rows `out` reads, clipped to the map, and the padding rows cut off before and after."""
    lo = out.lo * window.stride - window.pad_before
    hi = (out.hi - 1) * window.stride - window.pad_before + window.kernel
    return Span(max(lo, 0), min(hi, in_size)), max(-lo, 0), max(hi - in_size, 0)


def split_spans(size: int, parts: int) -> list[Span]:
    """`parts` near-equal consecutive spans covering [0, size)."""
    edges = [round(k * size / parts) for k in range(parts + 1)]
    return [Span(edges[k], edges[k + 1]) for k in range(parts)]


# ---------------------------------------------------------------------------
# Which operators can run patch by patch


def _spatial(tensor: Tensor) -> bool:
    return len(tensor.shape) == 4 and tensor.shape[0] == 1


def _kernel(graph: Graph, op: Operator) -> tuple[int, int]:
    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        weights = graph.tensors[op.inputs[1]].shape
        return weights[1], weights[2]
    return op.option("filterHeight"), op.option("filterWidth")


def windows(graph: Graph, op: Operator) -> tuple[Window, Window]:
    """The (row, column) windows of a CONV_2D, DEPTHWISE_CONV_2D or pooling operator."""
    source, result = graph.tensors[op.inputs[0]].shape, graph.tensors[op.outputs[0]].shape
    kernels = _kernel(graph, op)
    strides = (op.option("strideH"), op.option("strideW"))
    axes = []
    for axis in (0, 1):
        before = 0
        if op.option("padding") == SAME:
            before = same_padding(source[1 + axis], result[1 + axis], kernels[axis], strides[axis])[0]
        axes.append(Window(kernels[axis], strides[axis], before))
    return axes[0], axes[1]


def _window_op_patchable(model: Model, op: Operator) -> bool:
    graph = model.graph
    if op.option("dilationHFactor", 1) != 1 or op.option("dilationWFactor", 1) != 1:
        return False
    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and not model.is_constant(graph.tensors[op.inputs[1]]):
        return False
    if op.kind == "AVERAGE_POOL_2D" and op.option("padding") == SAME:
        # A SAME average divides by the count of real elements, which no
        # padding value reproduces: only a SAME that pads nothing qualifies.
        source, result = graph.tensors[op.inputs[0]].shape, graph.tensors[op.outputs[0]].shape
        rows, cols = windows(graph, op)
        return same_padding(source[1], result[1], rows.kernel, rows.stride) == (0, 0) and \
            same_padding(source[2], result[2], cols.kernel, cols.stride) == (0, 0)
    return True


def _broadcasts_over_space(tensor: Tensor) -> bool:
    return len(tensor.shape) < 3 or all(dim == 1 for dim in tensor.shape[-3:-1])


def patchable(model: Model, op: Operator) -> bool:
    """Whether `op` computes any rectangle of its output from a rectangle of its inputs, exactly."""
    graph = model.graph
    if op.custom or len(op.outputs) != 1 or not _spatial(graph.tensors[op.outputs[0]]):
        return False
    output = graph.tensors[op.outputs[0]]
    if op.kind in WINDOW_OPS:
        return _spatial(graph.tensors[op.inputs[0]]) and _window_op_patchable(model, op)
    maps = [graph.tensors[t] for t in op.inputs if t >= 0 and not model.is_constant(graph.tensors[t])]
    constants = [graph.tensors[t] for t in op.inputs if t >= 0 and model.is_constant(graph.tensors[t])]
    if op.kind in UNARY_OPS:
        return len(maps) == 1 and maps[0].shape == output.shape
    if op.kind in BINARY_OPS:
        return bool(maps) and all(m.shape == output.shape for m in maps) and \
            all(_broadcasts_over_space(c) for c in constants)
    return False


# ---------------------------------------------------------------------------
# Split-tensor candidates


def check_int8(model: Model) -> None:
    """ModelError, in one line, unless the main subgraph is a full-integer model with one int8 image input."""
    floats = float_tensors(model)
    if floats:
        raise ModelError(f"the model is not int8 ({len(floats)} float tensors, e.g. {floats[0]!r}); "
                         "convert it to full int8 first (tinyscale convert)")
    graph = model.graph
    others = sorted({graph.tensors[t].dtype for t in graph.inputs} - {"int8"})
    if others:
        raise ModelError(f"the model is not int8 (its input is {others[0]}); convert it with int8 input and output")


def _single_image_input(model: Model) -> int | None:
    graph = model.graph
    if len(graph.inputs) != 1 or not _spatial(graph.tensors[graph.inputs[0]]):
        return None
    return graph.inputs[0]


def _prefixes(model: Model, source: int) -> dict[int, frozenset[int]]:
    """Operator -> the operators it depends on (itself included), for the patchable
    operators that read the input or such operators' outputs, and constants only."""
    graph = model.graph
    made_by = producers(graph)
    prefix: dict[int, frozenset[int]] = {}
    for position, op in enumerate(graph.operators):
        if not patchable(model, op):
            continue
        needed, reads_map, closed = {position}, False, True
        for tensor in op.inputs:
            if tensor < 0 or model.is_constant(graph.tensors[tensor]):
                continue
            reads_map = True
            if tensor == source:
                continue
            if made_by.get(tensor) not in prefix:
                closed = False
                break
            needed |= prefix[made_by[tensor]]
        if reads_map and closed:
            prefix[position] = frozenset(needed)
    return prefix


def _is_cut(graph: Graph, prefix: frozenset[int], split: int, source: int, readers: dict[int, list[int]]) -> bool:
    """Every path from the input to the outputs passes through `split`: nothing
    outside the prefix reads the input or a prefix tensor other than `split`."""
    if any(reader not in prefix for reader in readers.get(source, [])):
        return False
    for position in prefix:
        for tensor in graph.operators[position].outputs:
            if tensor == split:
                continue
            if tensor in graph.outputs or any(reader not in prefix for reader in readers.get(tensor, [])):
                return False
    return split not in graph.outputs


@dataclass(frozen=True)
class Candidate:
    tensor: int  # index of the split tensor
    name: str
    shape: tuple[int, ...]
    operators: tuple[int, ...]  # the prefix, in execution order


def split_candidates(model: Model) -> list[Candidate]:
    """Tensors the patched region can end at, in execution order."""
    graph = model.graph
    source = _single_image_input(model)
    if source is None:
        return []
    readers = consumers(graph)
    candidates = []
    for position, needed in _prefixes(model, source).items():
        split = graph.operators[position].outputs[0]
        if _is_cut(graph, needed, split, source, readers):
            tensor = graph.tensors[split]
            candidates.append(Candidate(split, tensor.name, tensor.shape, tuple(sorted(needed))))
    return candidates


def find_candidate(model: Model, name: str) -> Candidate:
    candidates = split_candidates(model)
    for candidate in candidates:
        if candidate.name == name:
            return candidate
    names = ", ".join(repr(c.name) for c in candidates[:6]) or "none"
    raise UsageError(f"{name!r} is not a tensor the patched region can end at (candidates: {names})")


# ---------------------------------------------------------------------------
# The rewrite


class _Emitter:
    """Appends tensors and operators to a graph; identical constants are shared."""

    def __init__(self, model: Model) -> None:
        self.tensors = list(model.graph.tensors)
        self.buffers = list(model.buffers)
        self.operators: list[Operator] = []
        self._constants: dict[tuple, int] = {}

    def tensor(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def constant(self, values: np.ndarray, name: str, quantization: Quantization | None = None) -> int:
        key = (values.dtype.str, values.shape, values.tobytes(), quantization)
        if key not in self._constants:
            self.buffers.append(Buffer(values.tobytes()))
            tensor = Tensor(name, tuple(values.shape), str(values.dtype), buffer=len(self.buffers) - 1,
                            quantization=quantization)
            self._constants[key] = self.tensor(tensor)
        return self._constants[key]

    def op(self, kind: str, inputs: tuple[int, ...], output: int, options: Options | None = None) -> None:
        self.operators.append(Operator(kind, inputs, (output,), options, version=_OPCODE_VERSION.get(kind, 1)))

    def like(self, tensor: int, region: Region, name: str) -> int:
        """A new activation tensor with `tensor`'s type and quantization over `region`."""
        original = self.tensors[tensor]
        shape = (1, region.rows.size, region.cols.size, original.shape[3])
        return self.tensor(replace(original, name=name, shape=shape, buffer=0, shape_signature=None))

    def slice(self, tensor: int, have: Region, want: Region, name: str) -> int:
        """STRIDED_SLICE of the `want` part of a tensor that holds the `have` part."""
        if want == have:
            return tensor
        channels = self.tensors[tensor].shape[3]
        begin = np.array([0, want.rows.lo - have.rows.lo, want.cols.lo - have.cols.lo, 0], np.int32)
        end = np.array([1, want.rows.hi - have.rows.lo, want.cols.hi - have.cols.lo, channels], np.int32)
        out = self.like(tensor, want, name)
        inputs = (tensor, self.constant(begin, "patch/begin"), self.constant(end, "patch/end"),
                  self.constant(np.ones(4, np.int32), "patch/strides"))
        self.op("STRIDED_SLICE", inputs, out, Options("StridedSliceOptions"))
        return out

    def pad(self, tensor: int, region: Region, pads: tuple[int, int, int, int], value: int | None, name: str) -> int:
        """PAD (the zero point) or PADV2 (`value`) of `pads` = (top, bottom, left, right)."""
        if not any(pads):
            return tensor
        top, bottom, left, right = pads
        padded = Region(Span(region.rows.lo - top, region.rows.hi + bottom),
                        Span(region.cols.lo - left, region.cols.hi + right))
        out = self.like(tensor, padded, name)
        paddings = self.constant(np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32), "patch/paddings")
        if value is None:
            self.op("PAD", (tensor, paddings), out, Options("PadOptions"))
        else:
            # PADV2 wants the fill in the padded tensor's own type and quantization.
            padded_tensor = self.tensors[tensor]
            fill = self.constant(np.array(value, padded_tensor.dtype), "patch/pad_value", padded_tensor.quantization)
            self.op("PADV2", (tensor, paddings, fill), out, Options("PadV2Options"))
        return out

    def concatenate(self, tiles: list[int], axis: int, out: int) -> None:
        options = Options("ConcatenationOptions", (("axis", axis), ("fusedActivationFunction", 0)))
        self.op("CONCATENATION", tuple(tiles), out, options)


@dataclass(frozen=True)
class _Need:
    """What one operator input reads for one patch: a region, and padding outside the map."""

    region: Region
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)


def _input_needs(graph: Graph, op: Operator, out: Region, is_map) -> dict[int, _Need]:
    """Per activation input of `op`, the region (and border padding) computing `out` takes."""
    if op.kind in WINDOW_OPS:
        source = graph.tensors[op.inputs[0]].shape
        row_window, col_window = windows(graph, op)
        rows, top, bottom = input_span(row_window, out.rows, source[1])
        cols, left, right = input_span(col_window, out.cols, source[2])
        return {op.inputs[0]: _Need(Region(rows, cols), (top, bottom, left, right))}
    return {t: _Need(out) for t in op.inputs if t >= 0 and is_map(t)}


def _same_pads_exactly(graph: Graph, op: Operator, needed: _Need) -> bool:
    """Whether SAME padding on the patch's own input pads exactly the border rows and columns it lacks.

    TFLM derives SAME padding from the input size alone (output ceil(in / stride),
    `before` = total // 2) and treats reads past the input's end as padding, so
    SAME is exact when that `before` equals the padding the patch needs before
    (top, left) on both axes; the padding after then follows from the region's
    size. Border patches that pass need no PAD operator (and no padded copy).
    """
    top, bottom, left, right = needed.pads
    if not (top or bottom or left or right):
        return False  # VALID, nothing to pad
    row_window, col_window = windows(graph, op)
    for window, before, size in ((row_window, top, needed.region.rows.size), (col_window, left, needed.region.cols.size)):
        computed_out = -(-size // window.stride)
        if same_padding(size, computed_out, window.kernel, window.stride)[0] != before:
            return False
    return True


def _backward(model: Model, prefix: tuple[int, ...], split: int, tile: Region) -> dict[int, Region]:
    """Region of each prefix tensor the tile needs: the union over its readers."""
    graph = model.graph
    is_map = lambda t: not model.is_constant(graph.tensors[t])  # noqa: E731
    need = {split: tile}
    for position in reversed(prefix):
        op = graph.operators[position]
        for tensor, needed in _input_needs(graph, op, need[op.outputs[0]], is_map).items():
            need[tensor] = needed.region if tensor not in need else need[tensor].union(needed.region)
    return need


def _emit_patch(model: Model, emit: _Emitter, prefix: tuple[int, ...], split: int, tile: Region, tag: str) -> int:
    """The operators of one patch; returns the tensor holding the tile of the split tensor."""
    graph = model.graph
    is_map = lambda t: not model.is_constant(graph.tensors[t])  # noqa: E731
    need = _backward(model, prefix, split, tile)
    source = graph.inputs[0]
    height, width = graph.tensors[source].shape[1:3]
    full = Region(Span(0, height), Span(0, width))
    # Short names: the converter's fused names are long, and every copy stores its own.
    have = {source: (emit.slice(source, full, need[source], f"{tag}/t{source}"), need[source])}
    for position in prefix:
        op = graph.operators[position]
        out_tensor = op.outputs[0]
        inputs, padding = list(op.inputs), VALID
        for tensor, needed in _input_needs(graph, op, need[out_tensor], is_map).items():
            name = f"{tag}/op{position}/t{tensor}"
            current, region = have[tensor]
            cropped = emit.slice(current, region, needed.region, name + "/crop")
            if op.kind in WINDOW_OPS and _same_pads_exactly(graph, op, needed):
                padding = SAME  # the kernel's own border handling: no PAD copy, no extra operator
            else:
                # A max pool's SAME padding never wins: the type's minimum does the same.
                fill = int(np.iinfo(graph.tensors[tensor].dtype).min) if op.kind == "MAX_POOL_2D" else None
                cropped = emit.pad(cropped, needed.region, needed.pads, fill, name + "/pad")
            inputs = [cropped if t == tensor else t for t in inputs]
        options = op.options.with_fields(padding=padding) if op.kind in WINDOW_OPS else op.options
        out = emit.like(out_tensor, need[out_tensor], f"{tag}/t{out_tensor}")
        emit.operators.append(replace(op, inputs=tuple(inputs), outputs=(out,), options=options))
        have[out_tensor] = (out, need[out_tensor])
    return have[split][0]


def _assemble(model: Model, emit: _Emitter, candidate: Candidate, grid: tuple[int, int]) -> None:
    """Patches row by row; each row concatenated along columns, then the rows along rows."""
    split = candidate.tensor
    height, width = candidate.shape[1:3]
    row_spans, col_spans = split_spans(height, grid[0]), split_spans(width, grid[1])
    strips = []
    for r, rows in enumerate(row_spans):
        tiles = [_emit_patch(model, emit, candidate.operators, split, Region(rows, cols), f"patch{r}_{c}")
                 for c, cols in enumerate(col_spans)]
        if len(tiles) == 1:
            strips.append(tiles[0])
            continue
        strip = split if grid[0] == 1 else emit.like(split, Region(rows, Span(0, width)), f"row{r}/t{split}")
        emit.concatenate(tiles, 2, strip)
        strips.append(strip)
    if grid[0] > 1:
        emit.concatenate(strips, 1, split)


def patch_model(model: Model, candidate: Candidate, grid: tuple[int, int]) -> Model:
    """`model` with everything up to `candidate`'s tensor computed in a `grid` of patches."""
    check_int8(model)
    rows, cols = grid
    height, width = candidate.shape[1:3]
    if rows < 1 or cols < 1 or rows > height or cols > width:
        raise UsageError(f"grid {rows}x{cols} does not fit the {height}x{width} split tensor {candidate.name!r}")
    if grid == (1, 1):
        return model
    graph = model.graph
    emit = _Emitter(model)
    _assemble(model, emit, candidate, grid)
    prefix = set(candidate.operators)
    rest = [op for position, op in enumerate(graph.operators) if position not in prefix]
    patched = replace(graph, tensors=tuple(emit.tensors), operators=(*emit.operators, *rest))
    return compact(model.with_graph(patched, tuple(emit.buffers)))


# ---------------------------------------------------------------------------
# Dropping what no operator uses any more


def _used_tensors(graph: Graph) -> list[int]:
    used = {t for op in graph.operators for t in (*op.inputs, *op.outputs) if t >= 0}
    used |= set(graph.inputs) | set(graph.outputs)
    return sorted(used)


def compact(model: Model) -> Model:
    """Drop main-subgraph tensors nothing reads or writes, and buffers no tensor or metadata uses.

    TFLM gives every tensor an eval record in the arena (and plans a buffer
    for an unused activation), so the tensors a pass replaced must go.
    """
    graph = model.graph
    kept = _used_tensors(graph)
    index = {old: new for new, old in enumerate(kept)}
    renumber = lambda ts: tuple(index[t] if t >= 0 else t for t in ts)  # noqa: E731
    graph = replace(graph, tensors=tuple(graph.tensors[t] for t in kept), inputs=renumber(graph.inputs),
                    outputs=renumber(graph.outputs),
                    operators=tuple(replace(op, inputs=renumber(op.inputs), outputs=renumber(op.outputs))
                                    for op in graph.operators))
    signatures = tuple(
        replace(s, inputs=tuple((n, index[t]) for n, t in s.inputs), outputs=tuple((n, index[t]) for n, t in s.outputs))
        if s.subgraph == 0 else s
        for s in model.signature_defs
    )
    model = replace(model.with_graph(graph), signature_defs=signatures)
    return _compact_buffers(model)


def _compact_buffers(model: Model) -> Model:
    used = {0} | {t.buffer for g in model.subgraphs for t in g.tensors} | {m.buffer for m in model.metadata}
    kept = sorted(b for b in used if b < len(model.buffers))
    index = {old: new for new, old in enumerate(kept)}
    subgraphs = tuple(replace(g, tensors=tuple(replace(t, buffer=index.get(t.buffer, 0)) for t in g.tensors))
                      for g in model.subgraphs)
    metadata = tuple(replace(m, buffer=index[m.buffer]) for m in model.metadata)
    return replace(model, subgraphs=subgraphs, buffers=tuple(model.buffers[b] for b in kept), metadata=metadata)
