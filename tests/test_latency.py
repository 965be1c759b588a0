"""tinyscale.graph.latency: cost tables (schema), operator features, predictions against stored QEMU
measurements, and the latency budget of `fit` (--max-latency-ms), `simulate` and `firmware`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyscale.cli import app
from tinyscale.errors import CostTableError
from tinyscale.graph.flatbuffer import read_flatbuffer
from tinyscale.graph.latency import (
    bundled_cost_tables,
    cost_table,
    load_cost_table_file,
    op_features,
    parse_cost_table,
    predict,
)
from tinyscale.graph.model import Buffer, Graph, Model, Operator, Tensor

HERE = Path(__file__).parent
TINY = HERE / "golden" / "tiny.tflite"
RECORDS = json.loads((HERE / "data" / "latency_records.json").read_text())["records"]
# Per-operator error the fitted Cortex-M4 table may have on these common shapes (its fit
# error per type is 0.1-11% RMS; benchmarks/latency_fit.py prints it).
OPERATOR_TOLERANCE = 0.20

MINIMAL = {
    "schema_version": 1, "cpu": "cortex-m4", "kernel_library": "cmsis-nn", "estimate": True,
    "cycles_per_instruction": 1.25, "cycles_per_instruction_source": "test",
    "provenance": {"method": "test", "source": "test", "fitted_by": "test"},
    "invoke": {"cycles_fixed": 1000, "cycles_per_operator": 10}, "fallback": {"cycles_fixed": 500, "cycles_per_output_element": 2},
    "ops": {"CONV_2D": {"cycles_fixed": 100, "cycles_per_mac": 1.5},
            "CONV_2D:1x1": {"cycles_per_mac": 1.0}},
}


def runner() -> CliRunner:
    return CliRunner()


def _graph_of(record: dict) -> Model:
    """A one-operator model with the record's shapes: activations, a constant filter, the output."""
    tensors = [Tensor(f"in{i}", tuple(shape), "int8") for i, shape in enumerate(record["input_shapes"])]
    inputs = list(range(len(tensors)))
    buffers = [Buffer()]
    if record["filter_shape"]:
        buffers.append(Buffer(data=None, size=1))
        tensors.append(Tensor("filter", tuple(record["filter_shape"]), "int8", buffer=1))
        inputs.append(len(tensors) - 1)
    tensors.append(Tensor("out", tuple(record["output_shape"]), "int8"))
    op = Operator(record["op_type"], tuple(inputs), (len(tensors) - 1,))
    graph = Graph(tuple(tensors), (op,), (0,), (len(tensors) - 1,))
    return Model((graph,), tuple(buffers))


# ---------------------------------------------------------------------------
# Cost tables


def test_bundled_tables_load_and_name_their_provenance():
    tables = {(t.cpu, t.kernel_library): t for t in bundled_cost_tables()}
    assert ("cortex-m4", "cmsis-nn") in tables and ("esp32s3", "esp-nn") in tables
    for table in tables.values():
        assert table.cycles_per_instruction > 0 and table.cycles_per_instruction_source
        assert table.provenance["source"] and table.provenance["fitted_by"]
    assert not tables[("cortex-m4", "cmsis-nn")].estimate  # fitted to QEMU measurements
    assert tables[("esp32", "esp-nn")].estimate  # calibrated from published figures


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("cycles_per_instruction"), "missing required key 'cycles_per_instruction'"),
    (lambda d: d.update(cycles_per_instructions=1), "unknown key 'cycles_per_instructions'"),
    (lambda d: d["ops"]["CONV_2D"].update(cycles_per_mac=-1), "[ops.CONV_2D]: 'cycles_per_mac' must be a finite number >= 0"),
    (lambda d: d["ops"]["CONV_2D"].update(cycles_per_flop=1), "[ops.CONV_2D]: unknown key 'cycles_per_flop'"),
    (lambda d: d["ops"].update(conv={"cycles_fixed": 1}), "'conv' is not an operator type"),
    (lambda d: d["invoke"].update(cycles_fixed="many"), "'cycles_fixed' must be int/float"),
    (lambda d: d["invoke"].update(cycles_per_operator=-5), "[invoke]: 'cycles_per_operator' must be a finite number >= 0"),
    (lambda d: d.update(schema_version=2), "schema_version 2 unsupported"),
    (lambda d: d.update(cycles_per_instruction=0), "'cycles_per_instruction' must be positive"),
])
def test_schema_errors_are_one_line_naming_the_key(change, message):
    data = json.loads(json.dumps(MINIMAL))
    change(data)
    with pytest.raises(CostTableError) as error:
        parse_cost_table(data, "table.toml")
    text = str(error.value)
    assert message in text and text.startswith("table.toml") and "\n" not in text


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "cortex-m4-cmsis-nn.toml"
    bad.write_text("schema_version = [")
    with pytest.raises(CostTableError, match=r"cortex-m4-cmsis-nn.toml: invalid TOML"):
        load_cost_table_file(bad)
    misnamed = tmp_path / "cortex-m7-cmsis-nn.toml"
    misnamed.write_text((Path(cost_table("cortex-m4", "cmsis-nn").path)).read_text())
    with pytest.raises(CostTableError, match="belong in cortex-m4-cmsis-nn.toml"):
        load_cost_table_file(misnamed)


def test_variant_wins_over_type_and_fallback_is_flagged():
    table = parse_cost_table(json.loads(json.dumps(MINIMAL)))
    model = read_flatbuffer(TINY.read_bytes())
    estimate = predict(model, table, 25_000_000)
    assert len(estimate.ops) == len(model.graph.operators)
    by_index = {op.index: op for op in estimate.ops}
    for index, op in enumerate(model.graph.operators):
        features = op_features(model, op)
        if op.kind == "CONV_2D":
            coefficients = {"cycles_per_mac": 1.0} if features.variant == "1x1" else {"cycles_fixed": 100, "cycles_per_mac": 1.5}
            expected = coefficients.get("cycles_fixed", 0) + coefficients["cycles_per_mac"] * features.macs
            assert by_index[index].modelled and by_index[index].cycles == pytest.approx(expected)
        else:
            assert not by_index[index].modelled
            assert by_index[index].cycles == pytest.approx(500 + 2 * features.output_elements)
    assert estimate.unmodelled == ("DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "SOFTMAX")
    assert estimate.cycles == pytest.approx(1000 + 10 * len(estimate.ops) + sum(op.cycles for op in estimate.ops))
    assert estimate.latency_ms == pytest.approx(estimate.cycles / 25_000)
    assert estimate.instructions == pytest.approx(estimate.cycles / 1.25)


# ---------------------------------------------------------------------------
# Against stored QEMU measurements (tests/data/latency_records.json)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"{r['model']}-{r['op_index']}-{r['op_type']}")
def test_operator_prediction_against_stored_measurement(record):
    model = _graph_of(record)
    features = op_features(model, model.graph.operators[0])
    # The graph's features are the ones the measurement recorded (tinyscale's one MAC count).
    assert (features.macs, features.input_elements, features.output_elements) == (
        record["macs"], record["input_elements"], record["output_elements"])
    table = cost_table(record["core"], record["kernel_library"])
    estimate = predict(model, table, record["clock_hz"])
    assert estimate.ops[0].modelled
    predicted = estimate.ops[0].cycles / table.cycles_per_instruction
    assert predicted == pytest.approx(record["instructions"], rel=OPERATOR_TOLERANCE)


# ---------------------------------------------------------------------------
# The CLI


def _fit_json(*options: str) -> dict:
    result = runner().invoke(app, ["fit", "--target", "mps2-an386", "--no-verify", "--patch", "off", "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_fit_reports_latency_and_a_small_budget_binds():
    free = _fit_json()
    assert free["latency_ms"] > 0 and free["next"]["latency_ms"] >= free["latency_ms"]
    assert free["max_latency_ms"] is None and free["latency_fits"] and free["binding"] != "latency"
    budget = free["latency_ms"] / 20
    bound = _fit_json("--max-latency-ms", str(budget))
    assert bound["binding"] == "latency" and bound["phi"] < free["phi"]
    assert bound["latency_ms"] <= budget < bound["next"]["latency_ms"]
    assert bound["latency_fits"] and bound["max_latency_ms"] == budget


def test_fit_with_a_large_budget_gives_the_unbounded_answer():
    free = _fit_json()
    loose = _fit_json("--max-latency-ms", str(free["next"]["latency_ms"] * 10))
    assert (loose["phi"], loose["binding"], loose["latency_ms"]) == (free["phi"], free["binding"], free["latency_ms"])


def test_a_patched_answer_is_costed_from_the_patched_graph():
    from tinyscale.boards.targets import load_target
    from tinyscale.graph.estimate import tflite_graph
    from tinyscale.search.fit import FitRequest, fit

    target = load_target("nucleo-l476rg")  # SRAM-bound: --patch auto patches its answer
    result = fit(FitRequest(target), verify=False, patch="auto")
    schedule = result.schedule
    assert schedule.patched and schedule.model is not None
    assert len(result.latency.ops) == len(schedule.model.graph.operators)
    unpatched = predict(tflite_graph(result.network.spec), cost_table(target.cpu, target.kernel_library),
                        target.clock_hz)
    # The halos' extra MACs and the STRIDED_SLICE/PAD/CONCATENATION operators cost time.
    assert result.latency.cycles > unpatched.cycles
    assert result.to_dict()["latency_ms"] == pytest.approx(result.latency.latency_ms, abs=1e-3)


def test_fit_table_prints_latency_rows():
    result = runner().invoke(app, ["fit", "--target", "mps2-an386", "--no-verify", "--patch", "off",
                                   "--max-latency-ms", "1000"])
    assert result.exit_code == 0, result.output
    assert "latency  " in result.stdout and "next latency" in result.stdout and "budget 1000 ms" in result.stdout


def cortex_m3_board(tmp_path: Path) -> str:
    """A user's board whose core (the Cortex-M3) no bundled cost table covers: mps2-an386's facts, no FPU."""
    text = (Path(__file__).parents[1] / "targets" / "mps2-an386.toml").read_text()
    text = re.sub(r'^(mcu|fpu) = .*$', "", text, flags=re.MULTILINE)
    text = text.replace('name = "mps2-an386"', 'name = "m3-board"').replace('cpu = "cortex-m4"', 'cpu = "cortex-m3"')
    path = tmp_path / "m3-board.toml"
    path.write_text(text)
    return str(path)


def test_latency_budget_without_a_cost_table_is_refused(tmp_path):
    board = cortex_m3_board(tmp_path)
    result = runner().invoke(app, ["fit", "--target", board, "--no-verify", "--max-latency-ms", "50"])
    assert result.exit_code == 2
    assert "no latency cost table for cortex-m3" in result.output
    assert result.output.count("\n") == 1


def test_latency_budget_must_be_positive():
    result = runner().invoke(app, ["fit", "--target", "mps2-an386", "--no-verify", "--max-latency-ms", "0"])
    assert result.exit_code == 2 and "--max-latency-ms must be a positive number" in result.output


def test_fit_without_a_cost_table_reports_null_latency(tmp_path):
    board = cortex_m3_board(tmp_path)
    result = runner().invoke(app, ["fit", "--target", board, "--no-verify", "--patch", "off", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["latency_ms"] is None and "cortex-m3" in data["latency_note"]


def test_simulate_json_has_latency_and_cycles_per_operator():
    result = runner().invoke(app, ["simulate", str(TINY), "--target", "mps2-an386", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["cycles"]) == data["operators"] == len(data["layers"])
    latency = data["latency"]
    assert sum(data["cycles"]) + latency["invoke_cycles"] == pytest.approx(latency["total_cycles"], abs=len(data["cycles"]))
    assert data["latency_ms"] == pytest.approx(1000 * latency["total_cycles"] / 25_000_000, rel=1e-3)
    assert latency["cost_table"] == "cortex-m4-cmsis-nn" and latency["clock_hz"] == 25_000_000


def test_simulate_table_prints_each_operators_share():
    result = runner().invoke(app, ["simulate", str(TINY), "--target", "mps2-an386"])
    assert result.exit_code == 0, result.output
    assert "cycles" in result.stdout and "share" in result.stdout and "cycles at 25 MHz" in result.stdout


def test_firmware_records_the_prediction(tmp_path):
    out = tmp_path / "project"
    result = runner().invoke(app, ["firmware", str(TINY), "--target", "mps2-an386", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    predicted = manifest["predicted"]
    assert predicted["latency_ms"] > 0 and predicted["latency_cost_table"] == "cortex-m4-cmsis-nn"
    header = (out / "src" / "selftest_data.h").read_text()
    rendered = re.search(r"#define TS_PREDICTED_LATENCY_US (\d+)u", header)
    assert rendered and abs(int(rendered.group(1)) - 1000 * predicted["latency_ms"]) <= 1
    assert "predicted latency" in (out / "README.md").read_text()


def test_cost_table_files_parse_as_toml_everywhere():
    for table in bundled_cost_tables():
        assert tomllib.loads(Path(table.path).read_text())["cpu"] == table.cpu


# ---------------------------------------------------------------------------
# Under QEMU (skips without the tools or a Cortex-M4 CMSIS-NN tree)

QEMU_TOOLS = [tool for tool in ("cmake", "arm-none-eabi-gcc", "qemu-system-arm") if not shutil.which(tool)]
# Virtual time advances one nanosecond per instruction, so INFERENCE us counts thousands of them.
ICOUNT = ["-icount", "shift=0"]


@pytest.mark.skipif(bool(QEMU_TOOLS), reason=f"missing tools: {', '.join(QEMU_TOOLS)}")
def test_selftest_prints_the_prediction_beside_the_measured_count(tmp_path):
    tree = os.environ.get("TFLM_ROOT_CORTEX_M4") or os.environ.get("TFLM_ROOT")
    if not tree or not (Path(tree) / "tensorflow/lite/micro/micro_interpreter.h").is_file():
        pytest.skip("set TFLM_ROOT to a cmsis-nn TFLite Micro tree made by create_tflm_tree.py for cortex-m4")
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import firmware_sizes  # noqa: PLC0415

    work = Path(os.environ.get("TINYSCALE_FIRMWARE_BUILD_DIR") or tmp_path) / "latency-mps2-an386"
    project = work / "project"
    result = runner().invoke(app, ["firmware", str(TINY), "--target", "mps2-an386", "-o", str(project), "--force"])
    assert result.exit_code == 0, result.output
    elf = firmware_sizes.build(project, work / "build", Path(tree))
    run = subprocess.run([*firmware_sizes.qemu_command("mps2-an386"), *ICOUNT, "-kernel", str(elf)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                         timeout=600)
    predicted = re.search(r"PREDICTED us (\d+) instructions (\d+)", run.stdout)
    measured = re.search(r"INFERENCE us (\d+)", run.stdout)
    assert predicted and measured and "SELFTEST PASS" in run.stdout, run.stdout
    manifest = json.loads((project / "manifest.json").read_text())
    assert abs(int(predicted.group(1)) - 1000 * manifest["predicted"]["latency_ms"]) <= 1
    instructions = 1000 * int(measured.group(1))
    assert int(predicted.group(2)) == pytest.approx(instructions, rel=0.10)
