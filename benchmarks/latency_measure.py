"""Per-operator instruction counts of a model suite on QEMU's Cortex-M cores, with each operator's shape.

Every (board, kernel library) pair builds one `tinyscale firmware --profile`
project per model and runs it under `qemu-system-arm -icount shift=0`, where
QEMU's virtual clock advances 1 ns per executed instruction. SysTick counts the
emulated processor clock from that virtual clock, so one tick of the profile is
exactly 1e9 / clock_hz instructions (40 at mps2's 25 MHz, 50 at mps2-an505's
20 MHz, 31.25 at mps3-an547's 32 MHz): the counts are deterministic, not timed.

    python benchmarks/latency_measure.py [--board mps2-an386 ...] [--kernels cmsis-nn ...] \\
        [--model tiny-phi0 ...] [--work DIR] [--data benchmarks/data/latency_measurements.json]
    python benchmarks/latency_measure.py --table     # print the table of the data file only

Trees: the variables of tests/test_firmware_integration.py (TFLM_ROOT / TFLM_REFERENCE_ROOT
for the Cortex-M4, TFLM_ROOT_CORTEX_M7 ... for the others, TFLM_ROOT_CORTEX_M0PLUS for the
M0+ that mps2-an386-m0plus builds for); a pair without a tree is skipped.
Models are made once into WORK/models (tinyscale scale / patch / fit through the CLI) or
read from TFLM's examples under $TFLM_SOURCE. Each (board, kernels) pair reuses one build
directory, so TFLM compiles once per tree and each model recompiles only the application.
The data file gets one record per operator run and is rewritten after every model, so an
interrupted run keeps what it measured; a rerun skips what the file already has.

A record: core (cortex-m0plus/m4/m7/m33/m55), machine (the M0+'s is mps2-an386: HOSTED_CORES),
kernel_library, model (suite id), model_sha256, op_index, op_type (builtin name), ticks,
instructions; the operator's shape from tinyscale's graph:
macs (graph.analysis.operator_macs), input_shapes (non-constant inputs), output_shape,
filter_shape (weights of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED; else null), stride [h, w],
pool_size [h, w] (pooling), padding (SAME/VALID), input_elements, output_elements, dtype (of the
first activation input: int8 / int16 kernels differ); and the model's totals for cross-checks:
model_total_instructions (the self-test's INFERENCE us timer x 1000, 1 us resolution),
model_invoke_instructions (SysTick ticks around Invoke) and model_operator_sum_instructions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import firmware_sizes  # noqa: E402

from tinyscale.fsutil import atomic_write_text  # noqa: E402
from tinyscale.graph.analysis import operator_macs  # noqa: E402
from tinyscale.graph.flatbuffer import read_flatbuffer  # noqa: E402
from tinyscale.graph.model import Graph, Model, Operator  # noqa: E402
from tinyscale.graph.patch import split_candidates  # noqa: E402
from tinyscale.project import render as fw  # noqa: E402
from tinyscale.project.board_glue import qemu_machine  # noqa: PLC0415
from tinyscale.project.context import FirmwareOptions  # noqa: PLC0415

DATA_FILE = Path(__file__).resolve().parent / "data" / "latency_measurements.json"
# Cores QEMU has no machine for, run on one whose core executes their code unchanged: ARMv6-M
# (the M0+) is a subset of ARMv7-M, so a -mcpu=cortex-m0plus build runs as it is on the AN386's
# Cortex-M4 model and QEMU counts the M0+ build's own instructions. Each image's disassembly is
# checked (armv6m_violations), so no instruction the M0+ lacks is ever counted.
# measurement board -> (the QEMU board that hosts it, the core its code is built for)
HOSTED_CORES = {"mps2-an386-m0plus": ("mps2-an386", "cortex-m0plus")}
BOARDS = ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547", *HOSTED_CORES)
KERNELS = ("cmsis-nn", "reference")
# QEMU's -icount shift=N: 2^N ns of virtual time per instruction; 0 makes it one.
ICOUNT_SHIFT = 0
NS_PER_SECOND = 10**9
# TFLM example models in the tflite-micro checkout ($TFLM_SOURCE) that are real flatbuffers
# with int8/int16 activations tinyscale's firmware runs.
TFLM_MODELS = {
    "tflm-person-detect": "tensorflow/lite/micro/models/person_detect.tflite",
    "tflm-micro-speech": "tensorflow/lite/micro/examples/micro_speech/models/micro_speech_quantized.tflite",
    "tflm-hello-world-int8": "tensorflow/lite/micro/examples/hello_world/models/hello_world_int8.tflite",
    "tflm-mnist-lstm-int8": "tensorflow/lite/micro/examples/mnist_lstm/trained_lstm_int8.tflite",
    "tflm-micro-speech-lstm": "third_party/xtensa/examples/micro_speech_lstm/micro_speech_lstm.tflite",
    "tflm-dtln": "tensorflow/lite/micro/examples/dtln/dtln_noise_suppression.tflite",
}
# The suite, smallest first so a partial run already spans several networks: (id, how to make it).
# scale:BASE:PHI -> `tinyscale scale --tflite`; patch:ID:GRID:SPLIT -> `tinyscale patch --grid GRID
# --split-tensor` (the one split candidate whose name holds SPLIT: tiny networks are too small
# for patch's own search to find a schedule worth it); fit:TARGET -> `tinyscale fit --out`;
# tflm:ID -> TFLM_MODELS.
SUITE = (
    ("tiny-phi0", "scale:tiny:0"),
    ("tflm-hello-world-int8", "tflm:tflm-hello-world-int8"),
    ("tiny-se-phi0", "scale:tiny-se:0"),
    ("tiny-phi1", "scale:tiny:1"),
    ("tflm-micro-speech", "tflm:tflm-micro-speech"),
    ("tiny-phi2", "scale:tiny:2"),
    ("tiny-phi2-patch2x2", "patch:tiny-phi2:2x2:b1_add"),
    ("tflm-mnist-lstm-int8", "tflm:tflm-mnist-lstm-int8"),
    ("tiny-se-phi2", "scale:tiny-se:2"),
    ("efficientnet-lite0-phi-12", "scale:efficientnet-lite0:-12"),
    ("tiny-se-phi1", "scale:tiny-se:1"),
    ("efficientnet-b0-phi-12", "scale:efficientnet-b0:-12"),
    ("efficientnet-lite0-phi-10", "scale:efficientnet-lite0:-10"),
    ("fit-nucleo-l476rg", "fit:nucleo-l476rg"),
    ("tiny-phi3", "scale:tiny:3"),
    ("tflm-person-detect", "tflm:tflm-person-detect"),
    ("tiny-phi4", "scale:tiny:4"),
    ("tiny-phi4-patch3x3", "patch:tiny-phi4:3x3:b2_add"),
    ("efficientnet-lite0-phi-10-patch2x2", "patch:efficientnet-lite0-phi-10:2x2:b1_dw_act"),
    ("tflm-micro-speech-lstm", "tflm:tflm-micro-speech-lstm"),
    ("tflm-dtln", "tflm:tflm-dtln"),
    ("tiny-phi5", "scale:tiny:5"),
    ("efficientnet-lite0-fixed-phi-10", "scale:efficientnet-lite0-fixed:-10"),
    ("efficientnet-lite0-phi-8", "scale:efficientnet-lite0:-8"),
    ("efficientnet-lite0-phi-6", "scale:efficientnet-lite0:-6"),
    ("efficientnet-lite0-phi-11", "scale:efficientnet-lite0:-11"),
    ("efficientnet-b0-phi-11", "scale:efficientnet-b0:-11"),
    ("tiny-se-phi3", "scale:tiny-se:3"),
    ("efficientnet-lite0-phi-10-patch3x3", "patch:efficientnet-lite0-phi-10:3x3:b1_dw_act"),
    ("fit-nucleo-f411re", "fit:nucleo-f411re"),
    ("efficientnet-b0-phi-10", "scale:efficientnet-b0:-10"),
    ("fit-rpi-pico", "fit:rpi-pico"),
    ("efficientnet-lite0-phi-4", "scale:efficientnet-lite0:-4"),
    ("efficientnet-lite0-phi-3", "scale:efficientnet-lite0:-3"),
)
# Weights of these operators are their second input.
FILTERED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
PADDING = {0: "SAME", 1: "VALID"}


def ticks_to_instructions(ticks: int, ticks_per_second: int, shift: int = ICOUNT_SHIFT) -> int:
    """Instructions QEMU executed in `ticks` of a timer counting at `ticks_per_second`.

    Under -icount shift=N the virtual clock advances 2^N ns per instruction, and a
    timer at f Hz counts once per 1e9/f ns: one tick is 1e9 / (f * 2^N) instructions.
    Rounded to the nearest instruction (31.25 per tick at 32 MHz).
    """
    if ticks_per_second <= 0:
        raise ValueError(f"ticks_per_second must be positive, got {ticks_per_second}")
    denominator = ticks_per_second << shift
    return (ticks * NS_PER_SECOND + denominator // 2) // denominator


@dataclass(frozen=True)
class ProfileEvent:
    index: int
    tag: str
    ticks: int


@dataclass(frozen=True)
class Profile:
    events: tuple[ProfileEvent, ...]
    total_ticks: int  # sum of the events
    invoke_ticks: int  # around the whole Invoke
    ticks_per_second: int
    dropped: int
    inference_us: int | None  # the self-test's own INFERENCE us line
    passed: bool


_EVENT = re.compile(r"^PROFILE (\d+) (\S+) (\d+)$", re.MULTILINE)
_TOTAL = re.compile(r"^PROFILE TOTAL (\d+) INVOKE (\d+) TICKS_PER_SECOND (\d+) EVENTS (\d+) DROPPED (\d+)$",
                    re.MULTILINE)


def parse_profile(text: str) -> Profile:
    """The PROFILE lines of a --profile self-test; ValueError if they are missing or inconsistent."""
    total = _TOTAL.search(text)
    if total is None:
        raise ValueError("no PROFILE TOTAL line (was the project rendered with --profile?)")
    events = tuple(ProfileEvent(int(i), tag, int(ticks)) for i, tag, ticks in _EVENT.findall(text))
    total_ticks, invoke_ticks, per_second, count, dropped = (int(v) for v in total.groups())
    if len(events) != count or [e.index for e in events] != list(range(count)):
        raise ValueError(f"{len(events)} PROFILE lines for {count} events")
    if sum(e.ticks for e in events) != total_ticks:
        raise ValueError("PROFILE lines do not sum to PROFILE TOTAL")
    inference = re.search(r"^INFERENCE us (\d+)$", text, re.MULTILINE)
    return Profile(events, total_ticks, invoke_ticks, per_second, dropped,
                   int(inference.group(1)) if inference else None, "SELFTEST PASS" in text)


# ---------------------------------------------------------------------------
# Operator shapes, from the one graph


def _shape(graph: Graph, index: int) -> list[int] | None:
    return list(graph.tensors[index].shape) if index >= 0 else None


def operator_features(model: Model, op: Operator) -> dict:
    """The shape features of one operator the latency model may use."""
    graph = model.graph
    activations = [i for i in op.inputs if i >= 0 and not model.is_constant(graph.tensors[i])]
    weights = op.inputs[1] if op.kind in FILTERED_OPS and len(op.inputs) > 1 else -1
    outputs = [i for i in op.outputs if i >= 0]
    stride = (op.option("strideH"), op.option("strideW"))
    pool = (op.option("filterHeight"), op.option("filterWidth"))
    padding = op.option("padding")
    return {
        "macs": operator_macs(graph, op),
        "input_shapes": [_shape(graph, i) for i in activations],
        "output_shape": _shape(graph, outputs[0]) if outputs else None,
        "filter_shape": _shape(graph, weights) if weights >= 0 else None,
        "pool_size": list(pool) if None not in pool else None,
        "stride": list(stride) if None not in stride else None,
        "padding": PADDING.get(padding) if padding is not None else None,
        "input_elements": sum(graph.tensors[i].elements for i in activations),
        "output_elements": sum(graph.tensors[i].elements for i in outputs),
        # int8 and int16 kernels differ: the dtype of the first activation input.
        "dtype": graph.tensors[activations[0]].dtype if activations else None,
    }


def records(profile: Profile, model_bytes: bytes, model_id: str, target, kernels: str) -> list[dict]:
    """One record per operator: its instruction count, its shape and the model's totals."""
    model = read_flatbuffer(model_bytes)
    operators = model.graph.operators
    kinds = [op.kind for op in operators]
    if profile.dropped or [e.tag for e in profile.events] != kinds:
        raise ValueError(f"{model_id}: {len(profile.events)} profiled events do not match the "
                         f"{len(operators)} operators of the main subgraph one to one")
    per_second = profile.ticks_per_second
    common = {
        "core": target.cpu,
        "machine": qemu_machine(target),
        "kernel_library": kernels,
        "model": model_id,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "clock_hz": per_second,
        "icount_shift": ICOUNT_SHIFT,
        # The self-test's INFERENCE us timer: 1 us = 1000 instructions under shift=0.
        "model_total_instructions": profile.inference_us * 1000 if profile.inference_us is not None else None,
        "model_invoke_instructions": ticks_to_instructions(profile.invoke_ticks, per_second),
        "model_operator_sum_instructions": ticks_to_instructions(profile.total_ticks, per_second),
    }
    return [{**common, "op_index": event.index, "op_type": event.tag, "ticks": event.ticks,
             "instructions": ticks_to_instructions(event.ticks, per_second),
             **operator_features(model, op)}
            for event, op in zip(profile.events, operators)]


# ---------------------------------------------------------------------------
# Models


def tinyscale_cli(*args: str) -> None:
    """Runs the tinyscale CLI of this checkout (TensorFlow stays out of this process)."""
    command = [sys.executable, "-m", "tinyscale", *args]
    result = subprocess.run(["nice", "-n", "10", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")


def split_tensor(model: bytes, fragment: str) -> str:
    """The name of the model's one split candidate whose name contains `fragment`."""
    names = [c.name for c in split_candidates(read_flatbuffer(model)) if fragment in c.name]
    if len(names) != 1:
        raise RuntimeError(f"expected one split candidate named like {fragment!r}, found {len(names)}")
    return names[0]


def make_model(model_id: str, recipe: str, models_dir: Path) -> Path:
    """The model's .tflite in `models_dir`, made on first use."""
    path = models_dir / f"{model_id}.tflite"
    if path.is_file():
        return path
    kind, _, rest = recipe.partition(":")
    models_dir.mkdir(parents=True, exist_ok=True)
    if kind == "scale":
        base, phi = rest.split(":")
        tinyscale_cli("scale", "--base", base, "--phi", phi, "--tflite", str(path))
    elif kind == "patch":
        source_id, grid, fragment = rest.split(":")
        source = make_model(source_id, dict(SUITE)[source_id], models_dir)
        split = split_tensor(source.read_bytes(), fragment)
        tinyscale_cli("patch", str(source), "--grid", grid, "--split-tensor", split, "-o", str(path))
        if path.read_bytes() == source.read_bytes():
            path.unlink()
            raise RuntimeError(f"{model_id}: tinyscale patch left {source_id} unpatched")
    elif kind == "fit":
        out = models_dir / f"{model_id}.fit"
        tinyscale_cli("fit", "--target", rest, "--out", str(out), "--force")
        path.write_bytes((out / "model.tflite").read_bytes())
    elif kind == "tflm":
        source = os.environ.get("TFLM_SOURCE")
        if not source:
            raise RuntimeError("set TFLM_SOURCE to a tflite-micro checkout for the TFLM example models")
        return Path(source) / TFLM_MODELS[rest]
    else:
        raise ValueError(f"unknown recipe {recipe!r}")
    return path


# ---------------------------------------------------------------------------
# Building and running


def measurement_target(kernels: str, board: str):
    """The target a board's records are measured on: a bundled QEMU board, or (HOSTED_CORES) that
    board's target with the hosted core's cpu and no FPU, so the project is built for that core."""
    if board not in HOSTED_CORES:
        return firmware_sizes.mps2_target(kernels, board)
    host, cpu = HOSTED_CORES[board]
    return replace(firmware_sizes.mps2_target(kernels, host), name=board, cpu=cpu, fpu=None,
                   core=f"{cpu} code on the {host} model")


# ARMv6-M (ARM DDI 0419, "The ARMv6-M instruction set"): the 16-bit Thumb instructions of
# ARMv7-M except CBZ, CBNZ and IT, and of the 32-bit ones only these.
ARMV6M_WIDE = frozenset({"bl", "dmb", "dsb", "isb", "mrs", "msr"})
ARMV7M_ONLY_NARROW = ("cbz", "cbnz", "it")


def armv6m_violations(elf: Path) -> list[str]:
    """The instructions of `elf`'s code that ARMv6-M lacks, from its disassembly (the linker
    script discards .ARM.attributes, so the build attributes cannot be read from the image)."""
    listing = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True,
                             check=True).stdout
    return armv6m_violations_in(listing)


def armv6m_violations_in(listing: str) -> list[str]:
    """The lines of an `objdump -d` listing whose instruction ARMv6-M lacks."""
    found = []
    for line in listing.splitlines():
        fields = line.split("\t")  # "  addr:", "hex halfwords ", "mnemonic", "operands"
        if len(fields) < 3 or not fields[0].strip().endswith(":") or fields[2].startswith("."):
            continue  # headers, labels, literal pool words
        mnemonic = fields[2].strip().split(".")[0]
        wide = len(fields[1].split()) == 2
        if (wide and mnemonic not in ARMV6M_WIDE) or (not wide and mnemonic.startswith(ARMV7M_ONLY_NARROW)):
            found.append(line.strip())
    return found


def check_hosted_build(elf: Path, board: str) -> None:
    """A hosted core's ELF must hold no instruction that core lacks (see HOSTED_CORES)."""
    if board in HOSTED_CORES:
        violations = armv6m_violations(elf)
        if violations:
            raise RuntimeError(f"{elf} is not ARMv6-M code ({len(violations)} instructions such as "
                               f"{violations[0]!r}): its count would not be the M0+'s")


def profiled_run(model: bytes, model_id: str, target, tree: Path, slot: Path, timeout: float) -> Profile:
    """Render with --profile into the pair's slot, build, run under -icount; the parsed profile."""
    options = FirmwareOptions(target=target, out_dir=slot / "project", name="app", force=True,
                                 overwrite_edits=True, allow_overflow=True, model_file=f"{model_id}.tflite",
                                 profile=True)
    fw.generate_firmware(model, options)
    elf = firmware_sizes.build(slot / "project", slot / "build", tree)
    check_hosted_build(elf, target.name)
    command = [*firmware_sizes.qemu_command(qemu_machine(target)), "-icount", f"shift={ICOUNT_SHIFT}",
               "-kernel", str(elf)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, timeout=timeout)
    try:
        return parse_profile(result.stdout)
    except ValueError as exc:
        failure = [line for line in result.stdout.splitlines() if "FAIL" in line or "error" in line.lower()]
        raise ValueError(f"{exc}; QEMU exit {result.returncode}: {' | '.join(failure[-3:]) or result.stdout[-300:]}") from None


def fits(model: bytes, target) -> bool:
    """Whether the model's flash need fits the board (the self-test vectors included)."""
    info = fw.read_model(model)
    _, placement = fw.plan_arena(info, 0, target)
    return placement.flash_needed_bytes <= placement.flash_budget_bytes


def refresh_features(rows: list[dict], models_dir: Path) -> list[dict]:
    """The records with their shape features derived again from their model files (after a
    feature is added): the counts stay, no model is rebuilt. A model not on disk keeps its row."""
    recipes = dict(SUITE)
    models: dict[str, Model | None] = {}
    for row in rows:
        model_id = row["model"]
        if model_id not in models:
            path = models_dir / f"{model_id}.tflite"
            if recipes.get(model_id, "").startswith("tflm:") and os.environ.get("TFLM_SOURCE"):
                path = Path(os.environ["TFLM_SOURCE"]) / TFLM_MODELS[recipes[model_id].partition(":")[2]]
            data = path.read_bytes() if path.is_file() else b""
            models[model_id] = read_flatbuffer(data) if hashlib.sha256(data).hexdigest() == row["model_sha256"] else None
            if models[model_id] is None:
                print(f"keep {model_id}: its model file is not in {models_dir} (or differs)", file=sys.stderr)
    return [{**row, **operator_features(models[row["model"]], models[row["model"]].graph.operators[row["op_index"]])}
            if models[row["model"]] is not None else row for row in rows]


def load_records(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_records(path: Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["core"], r["kernel_library"], r["model"], r["op_index"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    # One record per line: a valid JSON list that diffs by record and stays a third of the indented size.
    atomic_write_text(path, "[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")


def measure_pairs(boards, kernel_libraries) -> list[tuple]:
    """(target, tree) of every (board, kernels) pair whose tree is set; says which are skipped."""
    pairs = []
    for board in boards:
        for kernels in kernel_libraries:
            target = measurement_target(kernels, board)
            tree = firmware_sizes.tree_for(target.cpu, kernels)
            if tree is None or firmware_sizes.kernels_of(tree) != kernels:
                print(f"skip {board} {kernels}: set {' or '.join(firmware_sizes.tree_variables(target.cpu, kernels))}",
                      file=sys.stderr)
                continue
            pairs.append((target, tree))
    return pairs


def measure_suite(boards, kernel_libraries, suite, work: Path, data: Path, timeout: float) -> list[dict]:
    """Each model on every pair in turn (model by model, so a partial run covers every core)."""
    rows = load_records(data)
    # A hosted core shares its host's machine: the core tells their records apart.
    done = {(r["core"], r["machine"], r["kernel_library"], r["model_sha256"]) for r in rows}
    pairs = measure_pairs(boards, kernel_libraries)
    for model_id, recipe in suite:
        try:
            model = make_model(model_id, recipe, work / "models").read_bytes()
        except (RuntimeError, OSError) as exc:
            print(f"FAIL {model_id}: {exc}", file=sys.stderr)
            continue
        for target, tree in pairs:
            board, kernels = target.name, target.kernel_library
            if (target.cpu, qemu_machine(target), kernels, hashlib.sha256(model).hexdigest()) in done:
                continue
            if not fits(model, target):
                print(f"skip {board} {kernels} {model_id}: does not fit the board's flash", file=sys.stderr)
                continue
            started = time.monotonic()
            try:
                profile = profiled_run(model, model_id, target, tree, work / f"{board}-{kernels}", timeout)
                new = records(profile, model, model_id, target, kernels)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                print(f"FAIL {board} {kernels} {model_id}: {exc}", file=sys.stderr)
                continue
            if not profile.passed:
                print(f"FAIL {board} {kernels} {model_id}: self-test did not pass", file=sys.stderr)
                continue
            rows += new
            done.add((new[0]["core"], new[0]["machine"], kernels, new[0]["model_sha256"]))
            save_records(data, rows)
            print(f"{board} {kernels} {model_id}: {new[0]['model_invoke_instructions']:,} instructions, "
                  f"{len(new)} ops, {time.monotonic() - started:.1f} s", flush=True)
    return rows


# ---------------------------------------------------------------------------
# The table


def table(rows: list[dict], top: int = 3) -> str:
    """Per (model, core, kernels): total instructions (INFERENCE timer, Invoke, sum of ops) and top ops."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["core"], row["kernel_library"]), []).append(row)
    lines = [f"{'model':36} {'core':10} {'kernels':9} {'MACs':>11} {'INFERENCE':>13} {'Invoke':>13} "
             f"{'sum ops':>13} {'instr/MAC':>9}  top operators (share of the sum)"]
    for (model, core, kernels), ops in sorted(groups.items()):
        first = ops[0]
        total = first["model_operator_sum_instructions"]
        macs = sum(op["macs"] for op in ops)
        ranked = sorted(ops, key=lambda op: -op["instructions"])[:top]
        tops = ", ".join(f"#{op['op_index']} {op['op_type']} {op['instructions'] / total:.0%}" for op in ranked)
        inference = first["model_total_instructions"]
        lines.append(f"{model:36} {core:10} {kernels:9} {macs:>11,} {inference or 0:>13,} "
                     f"{first['model_invoke_instructions']:>13,} {total:>13,} "
                     f"{first['model_invoke_instructions'] / macs if macs else 0:>9.2f}  {tops}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", action="append", choices=BOARDS, help="default: all of them")
    parser.add_argument("--kernels", action="append", choices=KERNELS, help="default: both")
    parser.add_argument("--model", action="append", choices=[m for m, _ in SUITE], help="default: the whole suite")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tinyscale-latency"), help="models and build directories")
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="the measurements file (JSON list), extended")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per QEMU run")
    parser.add_argument("--table", action="store_true", help="only print the table of --data")
    parser.add_argument("--refresh-features", action="store_true",
                        help="only derive the shape features of --data's records again from WORK/models")
    args = parser.parse_args(argv)
    if args.table:
        print(table(load_records(args.data)))
        return 0
    if args.refresh_features:
        save_records(args.data, refresh_features(load_records(args.data), args.work / "models"))
        return 0
    if firmware_sizes.tools_missing():
        return 2
    suite = [entry for entry in SUITE if not args.model or entry[0] in args.model]
    started = time.monotonic()
    rows = measure_suite(args.board or BOARDS, args.kernels or KERNELS, suite, args.work, args.data, args.timeout)
    print(table(rows))
    print(f"\n{len(rows)} operator records in {args.data}; this run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
