"""How long one inference takes on a board: cycles per operator from a cost table.

A cost table (``costs/latency/<cpu>-<kernel library>.toml``, schema-checked,
units in the key names) gives, per operator type, a linear model of the
cycles one invocation takes on that core with that kernel library::

    cycles = cycles_fixed + cycles_per_mac * MACs
           + cycles_per_output_element * output elements
           + cycles_per_input_element * input elements

A type may have variants (``"CONV_2D:1x1"`` beside ``"CONV_2D"``): CMSIS-NN
runs different kernels for 1x1 and larger filters, and the more specific key
wins. ``[invoke]`` is what TFLM's ``Invoke`` costs beside the operators:
``cycles_fixed`` once and ``cycles_per_operator`` for each operator it
dispatches. An operator type the table lacks gets the table's ``[fallback]``
coefficients and is flagged as unmodelled in every report.

The tables of the Cortex-M cores are fitted (``benchmarks/latency_fit.py``) to
instruction counts measured under QEMU with ``-icount shift=0``; QEMU counts
instructions, a real core takes cycles, so the fitted instruction counts are
multiplied by the table's documented ``cycles_per_instruction`` (its source
is in the file). The ESP32 family's tables are calibrated from Espressif's
published figures and marked ``estimate = true``.

Pure Python over :mod:`tinyscale.graph` (no TensorFlow): the fitter calls it
for every probed network.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyscale.boards.targets import check_fields, read_toml_file
from tinyscale.errors import CostTableError
from tinyscale.graph.analysis import operator_macs
from tinyscale.graph.model import Model, Operator, element_count
from tinyscale.resources import data_dir

SCHEMA_VERSION = 1
# Coefficient key -> the operator feature it multiplies (None: a constant per invocation).
COEFFICIENTS: dict[str, str | None] = {
    "cycles_fixed": None,
    "cycles_per_mac": "macs",
    "cycles_per_output_element": "output_elements",
    "cycles_per_input_element": "input_elements",
}
# Fit statistics an operator table may carry beside its coefficients (provenance, not used to predict).
_OP_STATS = {"records": int, "fit_error_percent": (int, float)}
_TOP_FIELDS = {
    "schema_version": (int, True),
    "cpu": (str, True),
    "kernel_library": (str, True),
    "estimate": (bool, True),  # calibrated from published figures, not from this project's measurements
    "cycles_per_instruction": ((int, float), True),
    "cycles_per_instruction_source": (str, True),
    "notes": (str, False),
    "provenance": (dict, True),
    "invoke": (dict, True),
    "fallback": (dict, True),
    "ops": (dict, True),
}
_PROVENANCE_FIELDS = {
    "method": (str, True),  # "qemu-icount" or "published"
    "source": (str, True),  # the measurement file (and commit) or the publication
    "fitted_by": (str, True),  # the command that wrote this file
    "fit_networks": (list, False),
    "held_out_networks": (list, False),
    "held_out_error_percent": ((int, float), False),  # largest |error| of a held-out network's total
    "measurements_sha256": (str, False),
    "measurements_commit": (str, False),
}

COSTS_DIR = "costs"


def costs_dir() -> Path:
    return data_dir(COSTS_DIR) / "latency"


# ---------------------------------------------------------------------------
# Operator features


@dataclass(frozen=True)
class OpFeatures:
    """What the cost of one operator depends on."""

    kind: str
    variant: str | None  # e.g. "1x1" for a CONV_2D with a 1x1 filter (kernel_variant)
    macs: int
    input_elements: int  # of all its activation (non-constant) inputs
    output_elements: int

    def value(self, feature: str | None) -> float:
        return 1.0 if feature is None else float(getattr(self, feature))


def kernel_variant(kind: str, filter_shape, activation_shapes) -> str | None:
    """The kernel variant the optimized libraries pick by shape, as a cost-table key suffix.

    Convolutions: the filter size ("1x1", "3x3"): CMSIS-NN and ESP-NN run separate kernels for
    1x1 and larger filters. A depthwise convolution with a channel multiplier above 1 (more
    output than input channels, e.g. from a one-channel image): "multiplier", the libraries'
    generic loop. Element-wise ADD/MUL: "broadcast" when the activations' shapes differ (the
    squeeze-excitation scale), a slower loop than the same-shape one.
    """
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and filter_shape is not None and len(filter_shape) == 4:
        if kind == "DEPTHWISE_CONV_2D" and activation_shapes and filter_shape[3] != activation_shapes[0][-1]:
            return "multiplier"
        return f"{filter_shape[1]}x{filter_shape[2]}"
    if kind in ("ADD", "MUL") and len({tuple(shape) for shape in activation_shapes}) > 1:
        return "broadcast"
    return None


def op_features(model: Model, op: Operator) -> OpFeatures:
    """An operator's cost features; input elements count its activations (non-constant inputs)."""
    graph = model.graph
    activations = [graph.tensors[i] for i in op.inputs if i >= 0 and not model.is_constant(graph.tensors[i])]
    weights = graph.tensors[op.inputs[1]].shape if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
    output = op.outputs[0] if op.outputs else -1
    return OpFeatures(
        kind=op.kind,
        variant=kernel_variant(op.kind, weights, [t.shape for t in activations]),
        macs=operator_macs(graph, op),
        input_elements=sum(element_count(t.shape) for t in activations),
        output_elements=element_count(graph.tensors[output].shape) if output >= 0 else 0,
    )


# ---------------------------------------------------------------------------
# Cost tables


@dataclass(frozen=True)
class OpCost:
    """The linear cycle model of one operator type (coefficient key -> cycles per unit)."""

    coefficients: tuple[tuple[str, float], ...]
    records: int | None = None  # measured invocations it was fitted to
    fit_error_percent: float | None = None

    def cycles(self, features: OpFeatures) -> float:
        return sum(value * features.value(COEFFICIENTS[key]) for key, value in self.coefficients)


@dataclass(frozen=True)
class CostTable:
    cpu: str
    kernel_library: str
    estimate: bool
    cycles_per_instruction: float
    cycles_per_instruction_source: str
    provenance: dict[str, Any]
    invoke_cycles: float  # TFLM's Invoke beside the operators: once per inference
    invoke_cycles_per_operator: float  # and per operator it dispatches
    fallback: OpCost
    ops: dict[str, OpCost] = field(hash=False)
    path: Path | None = None
    notes: str | None = None

    def cost(self, features: OpFeatures) -> tuple[OpCost, bool]:
        """(the model of this operator, whether the table models its type)."""
        if features.variant is not None:
            specific = self.ops.get(f"{features.kind}:{features.variant}")
            if specific is not None:
                return specific, True
        general = self.ops.get(features.kind)
        return (general, True) if general is not None else (self.fallback, False)

    @property
    def label(self) -> str:
        return f"{self.cpu} {self.kernel_library}" + (", an estimate" if self.estimate else "")


def _check_fields(where: str, table: dict[str, Any], fields: dict[str, tuple[Any, bool]]) -> None:
    check_fields(where, table, fields, CostTableError)  # the boards' schema rule, with this file's error


def _op_cost(where: str, table: Any) -> OpCost:
    if not isinstance(table, dict):
        raise CostTableError(f"{where}: must be a table of coefficients ({', '.join(COEFFICIENTS)})")
    fields = {key: ((int, float), False) for key in COEFFICIENTS} | {k: (t, False) for k, t in _OP_STATS.items()}
    _check_fields(where, table, fields)
    coefficients = tuple((key, float(table[key])) for key in COEFFICIENTS if key in table)
    if not coefficients:
        raise CostTableError(f"{where}: needs at least one of {', '.join(COEFFICIENTS)}")
    for key, value in coefficients:
        if value < 0 or not math.isfinite(value):
            raise CostTableError(f"{where}: {key!r} must be a finite number >= 0, got {value!r}")
    return OpCost(coefficients, table.get("records"), table.get("fit_error_percent"))


def parse_cost_table(data: dict[str, Any], source: str = "<cost table>", path: Path | None = None) -> CostTable:
    """Validate a decoded cost table; CostTableError (one line naming the file and key) when it is wrong."""
    _check_fields(source, data, _TOP_FIELDS)
    if data["schema_version"] != SCHEMA_VERSION:
        raise CostTableError(f"{source}: schema_version {data['schema_version']} unsupported (want {SCHEMA_VERSION})")
    cpi = float(data["cycles_per_instruction"])
    if not 0 < cpi < 100:
        raise CostTableError(f"{source}: 'cycles_per_instruction' must be positive (and below 100), got {cpi}")
    _check_fields(f"{source} [provenance]", data["provenance"], _PROVENANCE_FIELDS)
    _check_fields(f"{source} [invoke]", data["invoke"],
                  {"cycles_fixed": ((int, float), True), "cycles_per_operator": ((int, float), False)})
    invoke = float(data["invoke"]["cycles_fixed"])
    per_operator = float(data["invoke"].get("cycles_per_operator", 0))
    for key, value in (("cycles_fixed", invoke), ("cycles_per_operator", per_operator)):
        if value < 0 or not math.isfinite(value):
            raise CostTableError(f"{source} [invoke]: {key!r} must be a finite number >= 0, got {value}")
    ops = {}
    for name, table in data["ops"].items():
        kind, _, variant = name.partition(":")
        if not kind or kind != kind.upper() or (variant == "" and ":" in name):
            raise CostTableError(f"{source} [ops]: {name!r} is not an operator type (CONV_2D) or type:variant (CONV_2D:1x1)")
        ops[name] = _op_cost(f"{source} [ops.{name}]", table)
    return CostTable(
        cpu=data["cpu"], kernel_library=data["kernel_library"], estimate=data["estimate"],
        cycles_per_instruction=cpi, cycles_per_instruction_source=data["cycles_per_instruction_source"],
        provenance=dict(data["provenance"]), invoke_cycles=invoke, invoke_cycles_per_operator=per_operator,
        fallback=_op_cost(f"{source} [fallback]", data["fallback"]), ops=ops, path=path, notes=data.get("notes"),
    )


def load_cost_table_file(path: Path) -> CostTable:
    table = parse_cost_table(read_toml_file(path, "cost table", CostTableError), str(path), path)
    expected = f"{table.cpu}-{table.kernel_library}.toml"
    if path.name != expected:
        raise CostTableError(f"{path}: cpu {table.cpu!r} and kernel_library {table.kernel_library!r} belong in {expected}")
    return table


def cost_table_path(cpu: str, kernel_library: str) -> Path:
    return costs_dir() / f"{cpu}-{kernel_library}.toml"


@functools.lru_cache(maxsize=None)
def cost_table(cpu: str, kernel_library: str) -> CostTable | None:
    """The bundled table of this core and kernel library, None when there is none."""
    path = cost_table_path(cpu, kernel_library)
    return load_cost_table_file(path) if path.is_file() else None


def bundled_cost_tables() -> list[CostTable]:
    return [load_cost_table_file(path) for path in sorted(costs_dir().glob("*.toml"))]


# ---------------------------------------------------------------------------
# Predictions


@dataclass(frozen=True)
class OpLatency:
    index: int
    kind: str
    cycles: float
    modelled: bool  # False: the table has no coefficients for this type (fallback used)


@dataclass(frozen=True)
class LatencyEstimate:
    """Predicted cycles of one inference of a model on one core at one clock."""

    table: CostTable
    clock_hz: int
    ops: tuple[OpLatency, ...]

    @property
    def invoke_cycles(self) -> float:
        """Invoke's own cycles beside the operators' (its loop, the dispatch of each operator)."""
        return self.table.invoke_cycles + self.table.invoke_cycles_per_operator * len(self.ops)

    @property
    def cycles(self) -> float:
        return self.invoke_cycles + sum(op.cycles for op in self.ops)

    @property
    def instructions(self) -> float:
        """What QEMU's -icount would count: cycles back through the table's cycles per instruction."""
        return self.cycles / self.table.cycles_per_instruction

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.cycles / self.clock_hz

    def op_ms(self, op: OpLatency) -> float:
        return 1000.0 * op.cycles / self.clock_hz

    def share(self, op: OpLatency) -> float:
        return op.cycles / self.cycles if self.cycles else 0.0

    @property
    def unmodelled(self) -> tuple[str, ...]:
        """Operator types predicted with the fallback coefficients (first-use order)."""
        return tuple(dict.fromkeys(op.kind for op in self.ops if not op.modelled))

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": round(self.latency_ms, 4),
            "cycles": [round(op.cycles) for op in self.ops],
            "latency": {
                "total_cycles": round(self.cycles),
                "invoke_cycles": round(self.invoke_cycles),
                "clock_hz": self.clock_hz,
                "cost_table": f"{self.table.cpu}-{self.table.kernel_library}",
                "estimate": self.table.estimate,
                "cycles_per_instruction": self.table.cycles_per_instruction,
                "unmodelled_ops": list(self.unmodelled),
            },
        }


def predict(model: Model, table: CostTable, clock_hz: int) -> LatencyEstimate:
    """Cycles and milliseconds of one inference of `model` (its main subgraph)."""
    ops = []
    for index, op in enumerate(model.graph.operators):
        features = op_features(model, op)
        cost, modelled = table.cost(features)
        ops.append(OpLatency(index, op.kind, cost.cycles(features), modelled))
    return LatencyEstimate(table, clock_hz, tuple(ops))


def no_model_reason(cpu: str, kernel_library: str) -> str:
    known = ", ".join(path.stem for path in sorted(costs_dir().glob("*.toml"))) or "none"
    return f"no latency cost table for {cpu} with {kernel_library} kernels (tables: {known})"


def describe(latency: LatencyEstimate | None, target) -> str:
    """One line for tables and READMEs: the prediction at the board's clock, or why there is none."""
    if latency is None:
        return f"not predicted: {no_model_reason(target.cpu, target.kernel_library)}"
    text = (f"{latency.latency_ms:,.2f} ms = {latency.cycles:,.0f} cycles at {target.clock_hz / 1e6:g} MHz "
            f"({latency.table.label} cost table)")
    if latency.unmodelled:
        text += f"; unmodelled ops (fallback cost): {', '.join(latency.unmodelled)}"
    return text


def predict_for_target(model: Model, target) -> LatencyEstimate | None:
    """The prediction at `target`'s clock with its core's table; None when the core has none."""
    table = cost_table(target.cpu, target.kernel_library)
    return None if table is None else predict(model, table, target.clock_hz)
