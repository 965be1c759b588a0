"""Fit the Cortex-M latency cost tables to QEMU-measured instruction counts, and validate them.

    python benchmarks/latency_fit.py --measurements benchmarks/data/latency_measurements.json [--write]

The measurement file (written by benchmarks/latency_measure.py)
holds one record per operator invocation of a network run under
``qemu-system-arm -icount shift=0`` (one instruction = one virtual ns), per
core and kernel library: the operator's type, shapes, MACs and its
instruction count, and per network the Invoke total.

Per (core, kernel library, operator type[:variant]) the script fits
``instructions = fixed + a * MACs + b * output elements + c * input elements``
by weighted least squares (numpy; each record weighted by 1/measured, so a
small operator counts as much as a large one in relative terms; a coefficient
that comes out negative is dropped and the rest refitted). Variants (the
filter size of a convolution) get their own row when they have enough
records. Invoke's own cost beside the operators is the mean per network.

Validation holds out whole networks: every network's total is predicted from
tables fitted without any of that network's records (leave one network out),
and the table printed compares it with the measured total. ``--write``
then fits on every network and writes ``costs/latency/<cpu>-<kernel>.toml``
with the documented cycles per instruction of each core (CPI below), the
measurement file's sha256 (and ``--commit``), and the held-out error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinyscale.graph.latency import (  # noqa: E402
    COEFFICIENTS,
    SCHEMA_VERSION,
    costs_dir,
    kernel_variant,
)

FEATURES = [feature for feature in COEFFICIENTS.values()]  # None (constant), macs, output/input elements
MIN_VARIANT_RECORDS = 1  # a kernel variant gets its own coefficients from this many records on

# Cycles per instruction of each emulated core (and kernel library, where the code differs in
# kind): QEMU counts instructions, the real core takes cycles. Each figure is a documented
# estimate for int8 inner loops (loads, multiply-accumulates, a loop branch) from Arm's published
# pipeline timings and CoreMark scores, for code and data in zero-wait-state memory (TCM, SRAM);
# flash wait states and caches on a real board add to it (see the published comparison).
CPI = {
    # The M0+ has no published CoreMark ratio that would carry over (its ARMv6-M code has other
    # instructions than the M4's), so its factor comes from its own instruction timings applied
    # to the hot loops of the measured build itself (benchmarks/latency_measure.py's M0+ image).
    "cortex-m0plus": (1.35, "Arm Cortex-M0+ TRM (DDI 0484) 'Instruction set summary': data processing and MULS "
                      "1 cycle (the single-cycle multiplier the RP2040 is built with [assumed]; the small one "
                      "takes 32), LDR/LDRSB/STR 2, taken branch 2; the inner loops of this build's CMSIS-NN "
                      "pure-C kernels at those timings: arm_nn_mat_mult_nt_t_s8 1.29 (2x2 block) and 1.38 "
                      "(row tail), arm_depthwise_conv_3x3_s8 1.42, arm_depthwise_conv_s8 1.52; weighted "
                      "towards the 1x1 convolutions that dominate: ~1.35 [est.]"),
    "cortex-m4": (1.25, "Arm Cortex-M4 TRM (DDI 0439) 'Instruction set summary': data processing and "
                  "SMLAD/SXTB16 1 cycle, LDR 2 (1 when pipelined), taken branch 1+P (P 1-3); the int8 "
                  "inner loops mix ~1/3 loads with 1-cycle DSP ops and one loop branch: ~1.25 [est.]"),
    "cortex-m7": (0.80, "Cortex-M7 dual-issue 6-stage pipeline (Arm Cortex-M7 TRM DDI 0489, 'Dual issue'); "
                  "Arm's CoreMark/MHz 5.01 for the M7 against 3.40 for the M4 on the same code: "
                  "1.25 x 3.40 / 5.01 = 0.85, rounded down for loops with single-cycle TCM loads [est.]"),
    "cortex-m33": (1.10, "Cortex-M33 3-stage pipeline (Arm Cortex-M33 TRM 100230); Arm's CoreMark/MHz 4.02 "
                   "against the M4's 3.40 on the same code: 1.25 x 3.40 / 4.02 = 1.06 [est.]"),
    # The M55's reference kernels are scalar code: its 4-stage scalar pipeline, CoreMark/MHz 4.2
    # (Arm Cortex-M55 product page) against the M4's 3.40: 1.25 x 3.40 / 4.2 = 1.01 [est.].
    ("cortex-m55", "reference"): (1.00, "Cortex-M55 scalar pipeline (the reference kernels use no MVE): Arm's "
                                  "CoreMark/MHz 4.2 for the M55 against 3.40 for the M4: 1.25 x 3.40 / 4.2 = 1.01 [est.]"),
    "cortex-m55": (1.50, "Cortex-M55 dual-beat MVE (Arm Cortex-M55 TRM 101051, 'Helium: beats per tick'): a "
                   "128-bit vector instruction takes 2 beats, overlapping with the next (e.g. VLDRB with "
                   "VMLADAVA); CMSIS-NN's MVE loops are mostly vector: ~1.5 cycles per instruction [est.]"),
}

# What a table's user should know beyond its provenance, per core (the table's `notes`).
NOTES = {
    "cortex-m0plus": ("QEMU has no Cortex-M0+ board: counted on mps2-an386's Cortex-M4 model running this "
                      "core's ARMv6-M build, checked to hold no other instruction (benchmarks/latency_measure.py "
                      "HOSTED_CORES). The RP2040 runs code and reads weights from QSPI flash through a 16 KB "
                      "XIP cache: layers whose weights do not fit in it wait on flash, which this "
                      "zero-wait-state prediction leaves out."),
}


def load_records(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["records"] if isinstance(data, dict) else data


def norm_core(name: str) -> str:
    return name.strip().lower().replace(" ", "-")


def variant(record: dict) -> str | None:
    """The same kernel variant tinyscale.graph.latency derives from a graph, from a record's shapes."""
    return kernel_variant(record["op_type"], record.get("filter_shape"), record.get("input_shapes") or [])


def features(record: dict) -> list[float]:
    values = {"macs": record.get("macs") or 0, "output_elements": record.get("output_elements") or 0,
              "input_elements": record.get("input_elements") or 0}
    return [1.0 if name is None else float(values[name]) for name in FEATURES]


def fit_linear(rows: list[dict]) -> tuple[list[float], float]:
    """Non-negative weighted least squares (drop negative terms, refit): coefficients, RMS relative error %."""
    x = np.array([features(r) for r in rows])
    y = np.array([float(r["instructions"]) for r in rows])
    weights = 1.0 / np.maximum(y, 1.0)
    # Keep only the terms the records can tell apart (in COEFFICIENTS order): an element count
    # equal or proportional to another (input = output of an activation) adds nothing.
    active: list[int] = []
    for column in range(x.shape[1]):
        candidate = active + [column]
        if np.linalg.matrix_rank(x[:, candidate] * weights[:, None]) == len(candidate):
            active = candidate
    if len(rows) < len(active) or len(np.unique(x, axis=0)) < 2:
        # Too few records (or one shape) for every term: keep the one that scales with the
        # operator's size (per MAC, else per output element), not a constant.
        active = [next((i for i in (1, 2) if x[:, i].any()), 0)]
    while True:
        a = x[:, active] * weights[:, None]
        solution, *_ = np.linalg.lstsq(a, y * weights, rcond=None)
        negative = [active[i] for i, value in enumerate(solution) if value < 0]
        if not negative or len(active) == 1:
            break
        worst = min(range(len(solution)), key=lambda i: solution[i])
        active.pop(worst)
    coefficients = [0.0] * x.shape[1]
    for index, value in zip(active, solution):
        coefficients[index] = max(0.0, float(value))
    predicted = x @ np.array(coefficients)
    error = float(np.sqrt(np.mean(((predicted - y) / np.maximum(y, 1.0)) ** 2)) * 100)
    return coefficients, error


def fit_group(records: list[dict]) -> dict:
    """The cost table (in instructions) of one core and kernel library."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_key[record["op_type"]].append(record)
        if variant(record) is not None:
            by_key[f"{record['op_type']}:{variant(record)}"].append(record)
    ops = {}
    for key, rows in sorted(by_key.items()):
        if ":" in key and len(rows) < MIN_VARIANT_RECORDS:
            continue
        coefficients, error = fit_linear(rows)
        ops[key] = {"coefficients": coefficients, "records": len(rows), "fit_error_percent": round(error, 2)}
    return {"ops": ops, "fallback": fallback_coefficients(ops), "invoke": invoke_overhead(records)}


def fallback_coefficients(ops: dict) -> list[float]:
    """The cost of a type the table lacks: the median of the fitted types' terms (types, not variants).

    Fixed cost: the median fixed term; per MAC: the median of the MAC types' per-MAC terms; per
    output element: the median over the other types of their per-output plus per-input terms.
    A middle-of-the-road guess, flagged as unmodelled wherever it is used.
    """
    kinds = [entry["coefficients"] for key, entry in ops.items() if ":" not in key]
    fixed, per_mac, per_output, per_input = (list(column) for column in zip(*kinds)) if kinds else ([], [], [], [])
    mac_types = [value for value in per_mac if value > 0]
    element_types = [out + inp for out, inp, mac in zip(per_output, per_input, per_mac) if mac == 0]
    median = lambda values: float(np.median(values)) if values else 0.0  # noqa: E731
    return [median(fixed), median(mac_types), median(element_types), 0.0]


def network_key(record: dict) -> str:
    return record["model"]


def invoke_overhead(records: list[dict]) -> tuple[float, float]:
    """(once, per operator): Invoke's total minus its operators' sum, fitted over the networks
    (interpreter loop and dispatch; (0, 0) when totals are absent)."""
    totals = network_totals(records)
    rows = []
    for name, total in totals.items():
        ops = [r for r in records if network_key(r) == name]
        if total is not None:
            rows.append({"instructions": total - sum(r["instructions"] for r in ops), "output_elements": len(ops)})
    if not rows:
        return 0.0, 0.0
    fixed, _, per_operator, _ = fit_linear(rows)[0]
    return fixed, per_operator


def network_totals(records: list[dict]) -> dict[str, float | None]:
    totals: dict[str, float | None] = {}
    for record in records:
        total = record.get("model_invoke_instructions")
        totals.setdefault(network_key(record), total)
    return totals


def invoke_instructions(table: dict, operators: int) -> float:
    fixed, per_operator = table["invoke"]
    return fixed + per_operator * operators


def predict_record(table: dict, record: dict) -> float:
    key = f"{record['op_type']}:{variant(record)}"
    entry = table["ops"].get(key) or table["ops"].get(record["op_type"])
    coefficients = entry["coefficients"] if entry else table["fallback"]
    return float(np.dot(coefficients, features(record)))


def measured_total(records: list[dict], name: str) -> float:
    total = network_totals(records)[name]
    return total if total is not None else sum(r["instructions"] for r in records if network_key(r) == name)


def held_out_rows(group: list[dict]) -> list[tuple[str, int, float, float, tuple[str, ...]]]:
    """(network, operators, measured, predicted without that network's records, its operator
    types no other network has: predicted by the fallback) per network."""
    rows = []
    for name in sorted({network_key(r) for r in group}):
        train = [r for r in group if network_key(r) != name]
        test = [r for r in group if network_key(r) == name]
        if not train:
            continue
        table = fit_group(train)
        predicted = invoke_instructions(table, len(test)) + sum(predict_record(table, r) for r in test)
        unseen = tuple(sorted({r["op_type"] for r in test} - {r["op_type"] for r in train}))
        rows.append((name, len(test), measured_total(group, name), predicted, unseen))
    return rows


def _error(row) -> float:
    return abs(row[3] - row[2]) / row[2] * 100


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.6e}"
    return json.dumps(value)


def render_cost_table(header: dict, provenance: dict, invoke: dict, fallback: dict, ops: dict,
                      comment: str) -> str:
    """A cost table file (tinyscale.graph.latency's schema): `invoke`, `fallback` and each of `ops` map keys to values."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in {"schema_version": SCHEMA_VERSION, **header}.items()]
    lines += ["", "[provenance]", *(f"{key} = {_toml_value(value)}" for key, value in provenance.items())]
    lines += ["", "[invoke]", *(f"{key} = {_toml_value(float(value))}" for key, value in invoke.items()), "",
              "[fallback]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in fallback.items()]
    for name, entry in ops.items():
        lines += ["", f'[ops."{name}"]', *(f"{key} = {_toml_value(value)}" for key, value in entry.items())]
    return "\n".join(lines) + "\n"


def cycle_coefficients(coefficients: list[float], cpi: float) -> dict[str, float]:
    """Instruction coefficients (in COEFFICIENTS order) as cycle coefficients; zero terms left out."""
    keys = list(COEFFICIENTS)
    found = {keys[i]: value * cpi for i, value in enumerate(coefficients) if value > 0}
    return found or {"cycles_fixed": 0.0}


def cycles_per_instruction(cpu: str, kernels: str) -> tuple[float, str] | None:
    """The documented factor for this core and kernel library (a per-library entry wins)."""
    return CPI.get((cpu, kernels)) or CPI.get(cpu)


def write_table(cpu: str, kernels: str, table: dict, held_out: list, source: str, sha256: str,
                commit: str | None) -> Path:
    cpi, cpi_source = cycles_per_instruction(cpu, kernels)
    worst = max(map(_error, held_out), default=None)
    names = sorted({row[0] for row in held_out})
    provenance = {"method": "qemu-icount", "source": source, "measurements_sha256": sha256}
    if commit:
        provenance["measurements_commit"] = commit
    provenance |= {"fitted_by": "python benchmarks/latency_fit.py --write", "fit_networks": names,
                   "held_out_networks": names}
    if worst is not None:
        provenance["held_out_error_percent"] = round(worst, 2)
    ops = {key: {**cycle_coefficients(entry["coefficients"], cpi), "records": entry["records"],
                 "fit_error_percent": entry["fit_error_percent"]} for key, entry in table["ops"].items()}
    header = {"cpu": cpu, "kernel_library": kernels, "estimate": False, "cycles_per_instruction": cpi,
              "cycles_per_instruction_source": cpi_source}
    if cpu in NOTES:
        header["notes"] = NOTES[cpu]
    fixed, per_operator = table["invoke"]
    invoke = {"cycles_fixed": fixed * cpi, "cycles_per_operator": per_operator * cpi}
    text = render_cost_table(header, provenance, invoke, cycle_coefficients(table["fallback"], cpi),
                             ops, "Latency cost table: cycles of one operator invocation on this core with these kernels.\n"
                             "Written by benchmarks/latency_fit.py --write from QEMU -icount instruction counts x\n"
                             "cycles_per_instruction; held_out_error_percent: each network predicted from a fit\n"
                             "without it (leave one network out). Re-run the script rather than editing.")
    path = costs_dir() / f"{cpu}-{kernels}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measurements", type=Path, default=ROOT / "benchmarks/data/latency_measurements.json")
    parser.add_argument("--commit", help="the commit the measurement file comes from (recorded as provenance)")
    parser.add_argument("--write", action="store_true", help="write costs/latency/<cpu>-<kernels>.toml")
    args = parser.parse_args()
    raw = args.measurements.read_bytes()
    records = [r for r in load_records(args.measurements) if r.get("instructions") is not None]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(norm_core(record["core"]), record["kernel_library"])].append(record)

    print("| core | kernels | held-out network | ops | measured instructions | predicted | error | op types no other network has |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for (cpu, kernels), group in sorted(groups.items()):
        rows = held_out_rows(group)
        for name, ops, measured, predicted, unseen in rows:
            error = (predicted - measured) / measured * 100
            print(f"| {cpu} | {kernels} | {name} | {ops} | {measured:,.0f} | {predicted:,.0f} | {error:+.1f}% | "
                  f"{', '.join(unseen)} |")
        covered = [_error(row) for row in rows if not row[4]]
        summary.append((cpu, kernels, len(rows), max(map(_error, rows), default=float("nan")), len(covered),
                        max(covered, default=float("nan")), float(np.mean(covered)) if covered else float("nan")))
        if args.write:
            if cycles_per_instruction(cpu, kernels) is None:
                print(f"skipping {cpu}: no documented cycles per instruction", file=sys.stderr)
                continue
            source = str(args.measurements.relative_to(ROOT) if args.measurements.is_relative_to(ROOT)
                         else "benchmarks/data/latency_measurements.json")
            path = write_table(cpu, kernels, fit_group(group), rows, source, hashlib.sha256(raw).hexdigest(),
                               args.commit)
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    print()
    print("Per operator type (fitted to every network): records and RMS relative error of the fit.\n")
    print("| core | kernels | operator[:variant] | records | instructions per MAC | fit error |")
    print("|---|---|---|---|---|---|")
    for (cpu, kernels), group in sorted(groups.items()):
        for key, entry in fit_group(group)["ops"].items():
            per_mac = entry["coefficients"][1]
            print(f"| {cpu} | {kernels} | {key} | {entry['records']} | {f'{per_mac:.3g}' if per_mac else '-'} | "
                  f"{entry['fit_error_percent']:.1f}% |")
    print()
    print("| core | kernels | networks | worst held-out error | networks whose op types others have | their worst error | their mean abs. error |")
    print("|---|---|---|---|---|---|---|")
    for cpu, kernels, count, worst, covered, covered_worst, covered_mean in summary:
        print(f"| {cpu} | {kernels} | {count} | {worst:.1f}% | {covered} | {covered_worst:.1f}% | {covered_mean:.1f}% |")


if __name__ == "__main__":
    main()
