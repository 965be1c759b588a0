"""`tinyscale firmware`: rendering, golden trees, bad input, and the generated C compiled.

Uses the `tiny` base model at phi=0 (tests/golden/tiny.tflite, made by
``spec_to_tflite(scale("tiny", 0).spec)``) so no TensorFlow runs here.
Regenerate the golden trees with ``TINYSCALE_UPDATE_GOLDEN=1 pytest tests/test_firmware.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import repack_model
from typer.testing import CliRunner

from tinyscale import fsutil
from tinyscale.boards.budget import (
    DEVICE_ARENA_SLACK_BYTES,
    DEVICE_MODEL_RULE,
    HOST_MARGIN_RULE,
)
from tinyscale.boards.kernels import (
    ARENA_ALIGNMENT,
    align_up,
    arena_margin_bytes,
    op_shapes,
)
from tinyscale.boards.targets import load_all_targets, load_target
from tinyscale.cli import app
from tinyscale.errors import (
    DoesNotFitError,
    ModelError,
    OutputExistsError,
    TemplateError,
    TinyscaleError,
)
from tinyscale.graph import estimate, latency
from tinyscale.graph.tflite_model import input_quantization, read_model
from tinyscale.project import render as fw
from tinyscale.project.board_glue import clock_setup, uart_glue
from tinyscale.project.context import (
    FLOAT_TOLERANCE_EPSILON_STEPS,
    SELFTEST_TYPES,
    FirmwareOptions,
    ProjectContext,
    _c_float,
    check_identifier,
    default_project_name,
)
from tinyscale.project.selftest import host_expected_output, selftest_input

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FIRMWARE = GOLDEN / "firmware"
TINY_MODEL = GOLDEN / "tiny.tflite"
GOLDEN_TARGETS = ("mps2-an386", "nucleo-h743zi2", "esp32", "nano33ble", "rpi-pico")
# Model data (large) and files copied verbatim from firmware/ or templates/ (their
# sources are in the repository already): the golden tree holds their sha256.
HASHED_FILES = ("model_data.c", "selftest_data.c", "tinyscale_runner.cc", "tinyscale_runner.cpp", "tinyscale_runner.h",
                "tinyscale_platform.h", "board.h")
UPDATE_GOLDEN = os.environ.get("TINYSCALE_UPDATE_GOLDEN") == "1"

ARM_GCC = shutil.which("arm-none-eabi-gcc")
ARM_GXX = shutil.which("arm-none-eabi-g++")
HOST_GCC = shutil.which("gcc")
HOST_GXX = shutil.which("g++")
QEMU = shutil.which("qemu-system-arm")
needs_arm = pytest.mark.skipif(not (ARM_GCC and ARM_GXX), reason="arm-none-eabi-gcc/g++ not installed")
needs_host_gcc = pytest.mark.skipif(not (HOST_GCC and HOST_GXX), reason="host gcc/g++ not installed")

CMAKE_ARM_TARGETS = [t.name for t in load_all_targets() if t.build_system == "cmake-arm"]
ESP_IDF_TARGETS = [t.name for t in load_all_targets() if t.build_system == "esp-idf"]


@pytest.fixture(scope="module")
def model() -> bytes:
    return TINY_MODEL.read_bytes()


@pytest.fixture(scope="module")
def host_figures(model) -> tuple[int, np.ndarray]:
    """Host-measured arena and expected output, once per module (each costs a TFLM worker)."""
    arena = fw.measure_arena_bytes(model)
    info = read_model(model)
    expected = host_expected_output(model, selftest_input(input_quantization(info)), arena + 4096)
    return arena, expected


def context_for(model: bytes, figures, target_name: str, **options) -> ProjectContext:
    arena, expected = figures
    target = load_target(target_name)
    opts = FirmwareOptions(target=target, out_dir=Path("unused"), name="tiny", model_file="tiny.tflite", **options)
    return fw.build_context(model, opts, measured_arena_bytes=arena, expected=expected)


def render(context: ProjectContext, directory: Path) -> Path:
    fw.write_project(context, directory, force=False)
    return directory


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# Golden trees and determinism


def _golden_view(files: dict[str, bytes]) -> dict[str, bytes]:
    view = {}
    for name, data in files.items():
        if Path(name).name in HASHED_FILES:
            view[name + ".sha256"] = (hashlib.sha256(data).hexdigest() + "\n").encode()
        else:
            view[name] = data
    return view


@pytest.fixture
def frozen_cost_tables(monkeypatch):
    """Frozen copies of the latency cost tables: a refit of the bundled ones must not change the goldens."""
    monkeypatch.setattr(latency, "costs_dir", lambda: GOLDEN_FIRMWARE / "costs" / "latency")
    latency.cost_table.cache_clear()
    yield
    latency.cost_table.cache_clear()


@pytest.mark.parametrize("target_name", GOLDEN_TARGETS)
def test_rendered_tree_matches_golden(target_name, tmp_path, frozen_cost_tables):
    # Frozen copies of the target files: a board file's edit must not change these goldens.
    target = load_target(str(GOLDEN_FIRMWARE / "targets" / f"{target_name}.toml"))
    options = FirmwareOptions(target=target, out_dir=tmp_path / "out", name="tiny", model_file="tiny.tflite")
    fw.generate_firmware(TINY_MODEL.read_bytes(), options)
    rendered = _golden_view(tree(tmp_path / "out"))
    golden_dir = GOLDEN_FIRMWARE / target_name
    if UPDATE_GOLDEN:
        shutil.rmtree(golden_dir, ignore_errors=True)
        for name, data in rendered.items():
            (golden_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (golden_dir / name).write_bytes(data)
    golden = tree(golden_dir)
    assert sorted(rendered) == sorted(golden)
    for name in golden:
        assert rendered[name] == golden[name], f"{target_name}/{name} differs from the golden file"


def test_same_inputs_give_byte_identical_projects(model, tmp_path):
    target = load_target("mps2-an386")
    for name in ("a", "b"):
        fw.generate_firmware(model, FirmwareOptions(target=target, out_dir=tmp_path / name, model_file="m.tflite"))
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_project_contents_follow_the_model_and_target(model, host_figures, tmp_path):
    context = context_for(model, host_figures, "nucleo-h743zi2")
    out = render(context, tmp_path / "h7")
    ops = (out / "src/model_ops.h").read_text()
    assert "#define TS_OP_COUNT 6" in ops
    assert [op.name for op in context.operators] == list(read_model(model).operator_names)
    for op in context.operators:
        assert f"resolver.{op.method}()" in ops
    model_c = (out / "src/model_data.c").read_text()
    assert "__attribute__((aligned(16)))" in model_c and f"[{len(model)}]" in model_c
    linker = (out / "linker.ld").read_text()
    assert "} > AXI_SRAM" in linker and "KEEP(*(.init))" in linker and "KEEP(*(.init_array*))" in linker
    manifest = (out / "manifest.json").read_text()
    assert hashlib.sha256(model).hexdigest() in manifest and '"target": "nucleo-h743zi2"' in manifest
    readme = (out / "README.md").read_text()
    assert "cmake -S . -B build -DTFLM_ROOT=" in readme and "STM32_Programmer_CLI" in readme
    assert "picocom -b 115200 /dev/ttyACM0" in readme


def test_patched_model_project_registers_the_patch_operators(model, host_figures, tmp_path):
    pytest.importorskip("tflite_micro")
    from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
    from tinyscale.graph.patch import patch_model, split_candidates

    original = read_flatbuffer(model)
    split = next(c for c in split_candidates(original) if "b1_dw_act" in c.name)
    patched = write_flatbuffer(patch_model(original, split, (2, 2)))
    options = FirmwareOptions(target=load_target("mps2-an386"), out_dir=tmp_path / "p", model_file="p.tflite")
    context = fw.generate_firmware(patched, options).context
    ops = (tmp_path / "p" / "src" / "model_ops.h").read_text()
    assert [op.name for op in context.operators] == list(read_model(patched).operator_names)
    for method in ("AddStridedSlice", "AddPad", "AddConcatenation", "AddConv2D", "AddDepthwiseConv2D"):
        assert f"resolver.{method}()" in ops
    assert f"#define TS_OP_COUNT {len(context.operators)}" in ops
    # The expected outputs come from the host interpreter running the patched
    # model: bit for bit those of the unpatched model.
    assert np.array_equal(np.array(context.expected[0].values), host_figures[1])


# ---------------------------------------------------------------------------
# Sizing rules


def test_arena_is_measured_plus_margin_where_the_32_bit_model_does_not_reach(model, host_figures):
    # ESP-NN on the ESP32's Xtensa toolchain: no modelled build, today's host rule.
    arena, _ = host_figures
    context = context_for(model, host_figures, "esp32")
    plan = context.arena
    assert plan.rule == HOST_MARGIN_RULE and plan.device_arena_used_bytes is None
    assert plan.measured_bytes == arena
    assert plan.arena_bytes % ARENA_ALIGNMENT == 0
    assert plan.margin_bytes >= arena_margin_bytes(op_shapes(read_model(model).graph), context.target.kernel_library, context.target.cpu)
    assert plan.arena_bytes == plan.measured_bytes + plan.margin_bytes


def test_cortex_m_arena_is_the_modelled_32_bit_minimum(model, host_figures):
    graph = read_model(model).model
    for target_name in ("mps2-an386", "mps3-an547"):
        context = context_for(model, host_figures, target_name)
        plan, target = context.arena, context.target
        runtime = estimate.device_runtime(target.kernel_library, target.cpu)
        minimum = estimate.arena_plan(graph, runtime).arena_bytes
        assert plan.rule == DEVICE_MODEL_RULE
        assert plan.arena_bytes == align_up(minimum + DEVICE_ARENA_SLACK_BYTES, ARENA_ALIGNMENT)
        assert plan.device_arena_used_bytes == estimate.device_arena_used_bytes(graph, target.kernel_library, target.cpu)
        assert plan.device_arena_used_bytes <= minimum <= plan.arena_bytes
        assert plan.arena_bytes == plan.measured_bytes + plan.margin_bytes
        manifest = fw.manifest_data(context, [], {})
        assert manifest["arena"]["device_arena_used_bytes"] == plan.device_arena_used_bytes


def test_esp32_s3_arena_moves_to_psram_when_internal_ram_is_short(model, host_figures, tmp_path):
    _, expected = host_figures
    context = context_for(model, (400_000, expected), "esp32-s3")
    assert context.arena.region == "psram" and context.esp_idf.psram
    out = render(context, tmp_path / "s3")
    assert "CONFIG_SPIRAM=y" in (out / "sdkconfig.defaults").read_text()
    assert "MALLOC_CAP_SPIRAM" in (out / "main/main.cc").read_text()


def test_partition_table_only_when_the_image_exceeds_one_megabyte(model, host_figures, tmp_path):
    context = context_for(model, host_figures, "esp32")
    assert context.esp_idf.factory_partition_bytes is None
    assert not (render(context, tmp_path / "small") / "partitions.csv").exists()

    target = load_target("esp32")
    big_flash = replace(target.flash, budget_bytes=3 * 1024 * 1024, reserved_bytes=1024 * 1024)
    arena, expected = host_figures
    options = FirmwareOptions(target=replace(target, flash=big_flash), out_dir=Path("unused"), name="tiny")
    context = fw.build_context(model, options, measured_arena_bytes=arena, expected=expected)
    size = context.esp_idf.factory_partition_bytes
    assert size is not None and size % 0x10000 == 0 and size >= context.predicted_flash_bytes
    out = render(context, tmp_path / "big")
    assert f"factory,  app,  factory, 0x10000, 0x{size:X}," in (out / "partitions.csv").read_text()
    assert 'CONFIG_PARTITION_TABLE_CUSTOM_FILENAME="partitions.csv"' in (out / "sdkconfig.defaults").read_text()


@pytest.mark.parametrize("name, expected", [
    ("person-det.v2.tflite", "person_det_v2"), ("2class.tflite", "app_2class"), ("int.tflite", "app_int"),
])
def test_default_project_name_is_a_c_identifier(name, expected):
    assert default_project_name(name) == expected


@pytest.mark.parametrize("bad", ["1abc", "a-b", "int", "", "a b"])
def test_invalid_identifiers_are_refused(bad):
    with pytest.raises(TemplateError, match="not a valid C identifier"):
        check_identifier(bad, "project name")


# ---------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written


def run_cli(*args: str):
    return CliRunner().invoke(app, ["firmware", *args])


def assert_refused(result, exit_code: int, message: str, parent: Path, before: set[str]):
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert {p.name for p in parent.iterdir()} == before  # no project, no temporary directory


def write_edited_model(model: bytes, path: Path, edit) -> Path:
    path.write_bytes(repack_model(model, edit))
    return path


@pytest.fixture
def workdir(tmp_path, model):
    (tmp_path / "model.tflite").write_bytes(model)
    return tmp_path


def test_unknown_target_is_refused(workdir):
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "model.tflite"), "--target", "nucleo-h999", "-o", str(workdir / "out"))
    assert_refused(result, 2, "unknown target 'nucleo-h999'", workdir, before)


def test_build_system_without_template_is_refused(workdir, monkeypatch):
    # Every build system the target schema knows has templates now: pretend pico-sdk had none.
    monkeypatch.setattr(fw, "TEMPLATE_BUILD_SYSTEMS", tuple(b for b in fw.TEMPLATE_BUILD_SYSTEMS if b != "pico-sdk"))
    board = workdir / "future-board.toml"
    board.write_text(load_target("rpi-pico").path.read_text().replace('name = "rpi-pico"', 'name = "future-board"'))
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "model.tflite"), "--target", str(board), "-o", str(workdir / "out"))
    assert_refused(result, 1, "build system 'pico-sdk', which has no firmware template", workdir, before)


def _set_first_operator(code: int):
    def edit(obj):
        obj.operatorCodes[0].builtinCode = code
        obj.operatorCodes[0].deprecatedBuiltinCode = min(code, 127)
    return edit


def test_operator_tflm_lacks_is_refused(workdir, model):
    write_edited_model(model, workdir / "odd.tflite", _set_first_operator(15))  # LSH_PROJECTION: no TFLM kernel
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "odd.tflite"), "--target", "mps2-an386", "-o", str(workdir / "out"))
    assert_refused(result, 1, "operator LSH_PROJECTION has no TFLM MicroMutableOpResolver Add method", workdir, before)


SMALL_TARGET = """
schema_version = 1
name = "small-ram"
board = "test board (STM32F411RE) with 8 KB of RAM"
core = "Arm Cortex-M4"
cpu = "cortex-m4"
clock_hz = 16_000_000
kernel_library = "cmsis-nn"
build_system = "cmake-arm"

[flash]
size_bytes = 524_288
origin = 0x0800_0000
budget_bytes = 524_288
reserved_bytes = 131_072

[[memory]]
name = "sram"
kind = "sram"
origin = 0x2000_0000
size_bytes = 8_192
reserved_bytes = 4_096
arena = true

[console]
kind = "semihosting"
"""


@pytest.mark.parametrize("tensor_type, message", [
    (0, "float32 input 'images' is not read by a QUANTIZE operator"),  # FLOAT32 straight into CONV_2D
    (3, "input 'images' is uint8; tinyscale runs int8 or int16x8"),  # UINT8
])
def test_unsupported_input_types_are_refused(workdir, model, tensor_type, message):
    def retype_input(obj):
        obj.subgraphs[0].tensors[obj.subgraphs[0].inputs[0]].type = tensor_type

    write_edited_model(model, workdir / "odd-input.tflite", retype_input)
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "odd-input.tflite"), "--target", "esp32", "-o", str(workdir / "out"))
    assert_refused(result, 1, message, workdir, before)


def test_weight_without_data_is_refused(workdir, model):
    def drop_stem_filter_data(obj):
        graph = obj.subgraphs[0]
        obj.buffers[graph.tensors[graph.operators[0].inputs[1]].buffer].data = None

    write_edited_model(model, workdir / "damaged.tflite", drop_stem_filter_data)
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "damaged.tflite"), "--target", "mps2-an386", "-o", str(workdir / "out"))
    assert_refused(result, 1, "weight tensor 28 ", workdir, before)


def test_model_that_does_not_fit_is_refused_with_numbers(workdir):
    target_file = workdir / "small-ram.toml"
    target_file.write_text(SMALL_TARGET)
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "model.tflite"), "--target", str(target_file), "-o", str(workdir / "out"))
    assert_refused(result, 3, "does not fit small-ram: SRAM (sram)", workdir, before)
    assert " B > 8,192 B" in result.output

    assert "--allow-overflow" in result.output

    allowed = run_cli(str(workdir / "model.tflite"), "--target", str(target_file), "-o", str(workdir / "out"),
                      "--allow-overflow")
    assert allowed.exit_code == 0, allowed.output
    assert "generated with `--allow-overflow`" in (workdir / "out" / "README.md").read_text()
    manifest = json.loads((workdir / "out" / "manifest.json").read_text())
    assert "--target small-ram.toml" in manifest["regenerate"] and "--allow-overflow" in manifest["regenerate"]
    assert manifest["options"]["allow_overflow"] is True and manifest["predicted"]["fits"] is False


def test_force_alone_does_not_ignore_the_budget(workdir):
    # Overwriting a project and ignoring the budget are separate decisions.
    target_file = workdir / "small-ram.toml"
    target_file.write_text(SMALL_TARGET)
    (workdir / "out").mkdir()
    (workdir / "out" / "notes.txt").write_text("mine")
    result = run_cli(str(workdir / "model.tflite"), "--target", str(target_file), "-o", str(workdir / "out"), "--force")
    assert result.exit_code == 3, result.output
    assert "does not fit small-ram" in result.output
    assert [p.name for p in (workdir / "out").iterdir()] == ["notes.txt"]


def test_existing_directory_is_not_overwritten(workdir):
    out = workdir / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "model.tflite"), "--target", "mps2-an386", "-o", str(out))
    assert_refused(result, 4, "exists and is not empty", workdir, before)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    replaced = run_cli(str(workdir / "model.tflite"), "--target", "mps2-an386", "-o", str(out), "--force")
    assert replaced.exit_code == 0, replaced.output
    assert (out / "keep.txt").read_text() == "mine" and (out / "manifest.json").is_file()
    assert {p.name for p in workdir.iterdir()} == before  # no staging dir or old tree beside it
    assert not [p for p in out.rglob(".*")]  # nor inside it


def _user_files(project: Path) -> dict[str, bytes]:
    """The user's own additions to a generated project: a source, a config, a build tree."""
    files = {"src/sensor.c": b"int sensor(void) { return 1; }\n", "sdkconfig": b"CONFIG_X=y\n",
             "build/app.elf": b"\x7fELF", "build/deep/obj.o": b"o"}
    for name, data in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(data)
    return files


def test_force_replaces_only_generated_files_and_reports_them(workdir):
    model, out = str(workdir / "model.tflite"), workdir / "proj"
    first = run_cli(model, "--target", "mps2-an386", "-o", str(out), "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    generated = report["written"]
    assert generated == json.loads((out / "manifest.json").read_text())["files"]
    # The predicted `ARENA used` of the 32-bit firmware, in the manifest and the placement.
    used = report["arena"]["device_arena_used_bytes"]
    assert used == report["placement"]["device_arena_used_bytes"] > 0 and report["arena"]["rule"] == "32-bit model"
    mine = _user_files(out)
    (out / "README.md").write_text("edited")  # a generated file the user edited: kept unless told otherwise
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = run_cli(model, "--target", "esp32", "-o", str(out), "--force")
    assert refused.exit_code == 4 and "README.md was edited since tinyscale generated it" in refused.output
    assert "--overwrite-edits" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched

    # Same folder, another build system: the cmake project's files are removed, the user's kept.
    again = run_cli(model, "--target", "esp32", "-o", str(out), "--force", "--overwrite-edits", "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert report["kept"] == ["build/", "sdkconfig", "src/sensor.c"]
    assert set(report["replaced"]) == set(generated) & set(report["written"]) >= {"README.md", "manifest.json"}
    assert set(report["removed"]) == set(generated) - set(report["written"])
    assert "CMakeLists.txt" not in report["removed"] and "src/model_data.c" in report["removed"]
    assert (out / "README.md").read_text() != "edited"
    assert all((out / name).is_file() for name in report["written"])
    assert not any((out / name).exists() for name in report["removed"])
    assert not (out / "src" / "tinyscale_runner.cc").exists() and (out / "src" / "sensor.c").exists()
    assert not [p for p in out.rglob(".*")] and sorted(p.name for p in workdir.iterdir()) == ["model.tflite", "proj"]


def test_regenerating_an_unedited_project_needs_no_overwrite_flag_and_names_every_edit(workdir):
    model, out = str(workdir / "model.tflite"), workdir / "proj"
    assert run_cli(model, "--target", "mps2-an386", "-o", str(out)).exit_code == 0
    assert run_cli(model, "--target", "mps2-an386", "-o", str(out), "--force").exit_code == 0  # untouched: fine
    hashes = json.loads((out / "manifest.json").read_text())["file_sha256"]
    assert "manifest.json" not in hashes and "src/main.cc" in hashes
    for name in ("src/main.cc", "CMakeLists.txt"):
        (out / name).write_text((out / name).read_text() + "// mine\n")
    refused = run_cli(model, "--target", "mps2-an386", "-o", str(out), "--force")
    assert refused.exit_code == 4 and "2 generated files" in refused.output
    assert "CMakeLists.txt, src/main.cc" in refused.output
    assert (out / "src/main.cc").read_text().endswith("// mine\n")


def test_force_on_a_folder_without_manifest_replaces_only_what_it_writes(workdir):
    out = workdir / "proj"
    out.mkdir()
    (out / "CMakeLists.txt").write_text("old")
    (out / "notes.md").write_text("mine")
    result = run_cli(str(workdir / "model.tflite"), "--target", "mps2-an386", "-o", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert "  replaced: CMakeLists.txt\n" in result.output and "  kept (yours): notes.md\n" in result.output
    assert (out / "notes.md").read_text() == "mine" and (out / "CMakeLists.txt").read_text() != "old"


def test_firmware_json_reuses_manifest_and_placement(workdir):
    result = run_cli(str(workdir / "model.tflite"), "--target", "esp32", "-o", str(workdir / "p"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    manifest = json.loads((workdir / "p" / "manifest.json").read_text())
    assert {key: data[key] for key in manifest} == manifest
    assert data["placement"]["device_arena_bytes"] == manifest["arena"]["arena_bytes"]
    assert data["placement"]["flash_needed_bytes"] == manifest["predicted"]["flash_needed_bytes"]
    assert data["written"] == manifest["files"] and data["replaced"] == data["kept"] == data["removed"] == []


def test_output_dot_is_written_in_place(workdir, monkeypatch):
    project = workdir / "here"
    project.mkdir()
    (project / "mine.txt").write_text("mine")
    monkeypatch.chdir(project)
    for _ in range(2):  # a retry changes nothing either
        result = run_cli(str(workdir / "model.tflite"), "--target", "mps2-an386", "-o", ".", "--force")
        assert result.exit_code == 0, result.output
    assert (project / "manifest.json").is_file() and (project / "mine.txt").read_text() == "mine"
    assert not [p for p in project.rglob(".*")]
    assert sorted(p.name for p in workdir.iterdir()) == ["here", "model.tflite"]


def test_failure_in_the_middle_of_rendering_changes_nothing(model, host_figures, workdir, monkeypatch):
    out = workdir / "proj"
    render(context_for(model, host_figures, "mps2-an386"), out)
    _user_files(out)
    before = tree(out)
    real_render_tree = fw.render_tree

    def fails_after_the_first_tree(source, destination, context, suffixes=None):
        real_render_tree(source, destination, context, suffixes)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fw, "render_tree", fails_after_the_first_tree)
    for force_dir in (out, Path(".")):
        monkeypatch.chdir(out if force_dir == Path(".") else workdir)
        with pytest.raises(RuntimeError):
            fw.write_project(context_for(model, host_figures, "esp32"), force_dir, force=True)
        assert tree(out) == before
        assert sorted(p.name for p in workdir.iterdir()) == ["model.tflite", "proj"]


def test_failure_while_publishing_in_place_leaves_no_debris(model, host_figures, workdir, monkeypatch):
    out = workdir / "proj"
    render(context_for(model, host_figures, "mps2-an386"), out)
    real_replace, calls = os.replace, []

    def disk_full_after_two(source, destination):
        calls.append(destination)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(fsutil.os, "replace", disk_full_after_two)
    with pytest.raises(TinyscaleError, match=f"cannot write {out}: No space left on device"):
        fw.write_project(context_for(model, host_figures, "esp32"), out, force=True)
    assert not [p for p in out.rglob(".*")] and sorted(p.name for p in workdir.iterdir()) == ["model.tflite", "proj"]


def test_unwritable_output_fails_before_measuring(workdir, monkeypatch):
    (workdir / "file").write_text("x")
    monkeypatch.setattr(fw, "measure_arena_bytes", lambda _m: pytest.fail("measured before checking the output"))
    result = run_cli(str(workdir / "model.tflite"), "--target", "esp32", "-o", str(workdir / "file" / "sub"))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: cannot write {workdir / 'file' / 'sub'}") and "internal" not in result.output


@pytest.mark.parametrize("data", [b"", b"not a model at all", None])
def test_corrupt_model_is_refused(workdir, model, data):
    bad = workdir / "bad.tflite"
    bad.write_bytes(model[: len(model) // 3] if data is None else data)
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(bad), "--target", "mps2-an386", "-o", str(workdir / "out"))
    assert_refused(result, 1, "error: ", workdir, before)


def test_missing_model_file_is_refused(workdir):
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "absent.tflite"), "--target", "mps2-an386", "-o", str(workdir / "out"))
    assert_refused(result, 1, "cannot read", workdir, before)


def test_render_failure_leaves_nothing(model, host_figures, tmp_path, monkeypatch):
    context = context_for(model, host_figures, "mps2-an386")
    monkeypatch.setattr(fw, "manifest", lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        fw.write_project(context, tmp_path / "out", force=False)
    assert list(tmp_path.iterdir()) == []


def test_undefined_template_variable_is_an_error(model, host_figures, tmp_path):
    context = context_for(model, host_figures, "mps2-an386")
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "x.txt.jinja").write_text("{{ ctx.no_such_field }}")
    with pytest.raises(TemplateError, match="no_such_field"):
        fw.render_tree(tmp_path / "tpl", tmp_path / "out", context)


def test_library_errors_are_typed(model, host_figures, tmp_path):
    with pytest.raises(ModelError):
        fw.build_context(b"garbage!", FirmwareOptions(target=load_target("esp32"), out_dir=tmp_path))
    arena, expected = host_figures
    tight = load_target("esp32")  # the host-measured arena sizes it (no 32-bit model for its build)
    with pytest.raises(DoesNotFitError):
        fw.build_context(model, FirmwareOptions(target=tight, out_dir=tmp_path, name="x"),
                         measured_arena_bytes=10_000_000, expected=expected)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(OutputExistsError):
        fw.write_project(context_for(model, host_figures, "esp32"), tmp_path / "full", force=False)


# ---------------------------------------------------------------------------
# The generated C/C++ that needs no TFLM, compiled with -Wall -Werror

# Stand-ins for the two external APIs the glue calls: TFLM's debug-log hook and ESP-IDF's heap/timer.
STUB_HEADERS = {
    "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h": (
        "#pragma once\ntypedef void (*DebugLogCallback)(const char* s);\n"
        "#ifdef __cplusplus\nextern \"C\"\n#endif\nvoid RegisterDebugLogCallback(DebugLogCallback callback);\n"),
    "esp_heap_caps.h": (
        "#pragma once\n#include <stddef.h>\n#define MALLOC_CAP_INTERNAL (1 << 11)\n#define MALLOC_CAP_SPIRAM (1 << 10)\n"
        "#define MALLOC_CAP_8BIT (1 << 2)\nextern \"C\" void* heap_caps_aligned_alloc(size_t, size_t, unsigned);\n"
        "extern \"C\" size_t heap_caps_get_largest_free_block(unsigned);\nextern \"C\" void heap_caps_free(void*);\n"),
    "esp_timer.h": "#pragma once\n#include <stdint.h>\nextern \"C\" int64_t esp_timer_get_time(void);\n",
}
# What a link needs besides the glue: TFLM's hook and the inference core, replaced by a
# stub that exercises the console, the timer and the embedded data.
STUB_RUNNER = r"""
#include <stddef.h>
#include <stdint.h>
#include "model_data.h"
#include "selftest_data.h"
#include "tinyscale_platform.h"
typedef void (*DebugLogCallback)(const char* s);
extern "C" void RegisterDebugLogCallback(DebugLogCallback callback) { callback("hook registered\n"); }
int ts_run_selftest(uint8_t* arena, size_t arena_bytes) {
  uint32_t start = ts_time_us();
  arena[0] = 1; arena[arena_bytes - 1] = 2;
  volatile uint32_t sum = 0;
  for (unsigned i = 0; i < ts_model_data_len; ++i) sum += ts_model_data[i];
  ts_console_write(ts_model_data[4] == 'T' && ts_selftest_expected[0].length > 0 ? "STUB OK\n" : "STUB BAD\n");
  return ts_time_us() >= start ? 0 : 1;
}
"""


def write_stubs(directory: Path) -> Path:
    for name, text in STUB_HEADERS.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def compile_file(compiler: str, source: Path, flags: list[str], out: Path | None = None) -> None:
    command = [compiler, *flags, "-Wall", "-Wextra", "-Werror", "-O2", "-c", str(source),
               "-o", str(out or source.with_suffix(source.suffix + ".o"))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"


def arm_flags(context: ProjectContext) -> list[str]:
    flags = [f"-mcpu={context.cmake_arm.cpu}", "-mthumb", "-ffunction-sections", "-fdata-sections"]
    fpu = context.cmake_arm.fpu
    return flags + ([f"-mfpu={fpu}", "-mfloat-abi=hard"] if fpu else ["-mfloat-abi=soft"])


@needs_host_gcc
@pytest.mark.parametrize("target_name", ["mps2-an386", "nucleo-f411re", "esp32"])
def test_generated_sources_compile_with_host_gcc(model, host_figures, tmp_path, target_name):
    context = context_for(model, host_figures, target_name)
    out = render(context, tmp_path / "p")
    src = out / context.source_dir
    stubs = write_stubs(tmp_path / "stubs")
    for name in ("model_data.c", "selftest_data.c"):
        compile_file(HOST_GCC, src / name, ["-std=c11", f"-I{src}"], tmp_path / f"{name}.o")
    if context.build_system == "esp-idf":
        compile_file(HOST_GXX, src / "main.cc", ["-std=c++17", f"-I{src}", f"-I{stubs}"], tmp_path / "main.o")
    else:
        # Board glue holds Arm instructions and register addresses: the host checks its C only.
        for name in ("startup.c", "board.c"):
            compile_file(HOST_GCC, src / name, ["-std=c11", "-fsyntax-only", f"-I{src}"], tmp_path / f"{name}.o")


@needs_arm
@pytest.mark.parametrize("target_name", CMAKE_ARM_TARGETS)
def test_glue_compiles_and_links_into_the_planned_regions(model, host_figures, tmp_path, target_name):
    context = context_for(model, host_figures, target_name)
    elf = build_stub_elf(context, tmp_path)
    sections = section_table(elf)
    glue = context.cmake_arm
    regions = {r.symbol: r for r in glue.regions}
    arena_region = regions[glue.arena_region]
    data_region = regions[glue.data_region]

    assert sections[".isr_vector"][1] == glue.flash_origin
    addr, size = sections[".tensor_arena"][1], sections[".tensor_arena"][0]
    assert size == context.arena.arena_bytes and addr % 16 == 0
    assert arena_region.origin <= addr and addr + size <= arena_region.origin + arena_region.length
    for name in (".data", ".bss", ".stack"):
        size, addr = sections[name]
        assert data_region.origin <= addr and addr + size <= data_region.origin + data_region.length, name
    text_size, text_addr = sections[".text"]
    assert glue.flash_origin <= text_addr and text_addr + text_size <= glue.flash_origin + glue.flash_length
    # The model is const: it lands in flash (.text holds .rodata), not RAM.
    assert text_size > context.model_size_bytes
    assert sections[".data"][0] < 1024


QEMU_TARGETS = ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547")


@needs_arm
@pytest.mark.skipif(not QEMU, reason="qemu-system-arm not installed")
@pytest.mark.parametrize("target_name", QEMU_TARGETS)
def test_mps2_glue_boots_under_qemu(model, host_figures, tmp_path, target_name):
    """Startup, static init, semihosting console, SysTick timer and exit, without TFLM:
    each board's memory map and boot address (the M33 and M55 boot Secure) hold."""
    context = context_for(model, host_figures, target_name)
    machine = context.cmake_arm.qemu_machine
    assert machine == target_name  # the bundled QEMU boards are named after their machine
    elf = build_stub_elf(context, tmp_path)
    result = subprocess.run(
        [QEMU, "-M", machine, "-nographic", "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=60,
    )
    # QEMU writes semihosting output to stderr or stdout depending on the terminal: read both.
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == ["hook registered", f"tinyscale tiny on {target_name}", "STUB OK"]


def build_stub_elf(context: ProjectContext, tmp_path: Path, runner: str = STUB_RUNNER) -> Path:
    out = render(context, tmp_path / "p")
    src = out / "src"
    stubs = write_stubs(tmp_path / "stubs")
    (src / "stub_runner.cc").write_text(runner)
    flags = arm_flags(context)
    objects = []
    for name in ("startup.c", "board.c", "model_data.c", "selftest_data.c"):
        objects.append(tmp_path / f"{name}.o")
        compile_file(ARM_GCC, src / name, [*flags, "-std=c11", f"-I{src}"], objects[-1])
    for name in ("main.cc", "stub_runner.cc"):
        objects.append(tmp_path / f"{name}.o")
        compile_file(ARM_GXX, src / name, [*flags, "-std=c++17", "-fno-rtti", "-fno-exceptions", "-nostdinc++",
                                           f"-I{src}", f"-I{stubs}"], objects[-1])
    elf = tmp_path / "app.elf"
    # Linked by the C driver: the stub needs no libstdc++, which Debian packages apart
    # (libstdc++-arm-none-eabi-newlib) from gcc-arm-none-eabi.
    command = [ARM_GCC, *flags, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections",
               f"-T{out / 'linker.ld'}", *map(str, objects), "-o", str(elf)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return elf


def section_table(elf: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, address) from `arm-none-eabi-size -A`."""
    size_tool = shutil.which("arm-none-eabi-size")
    text = subprocess.run([size_tool, "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sections = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = (int(parts[1]), int(parts[2]))
    return sections


@pytest.mark.parametrize("target", load_all_targets(), ids=lambda t: t.name)
def test_every_bundled_target_renders_a_project(model, host_figures, tmp_path, target):
    context = context_for(model, host_figures, target.name)
    out = render(context, tmp_path / "p")
    readme = (out / "README.md").read_text()
    assert (out / context.source_dir / "model_data.c").is_file() and (out / "manifest.json").is_file()
    if target.build_system == "esp-idf":
        assert f"idf.py set-target {target.cpu}" in readme and "flash monitor" in readme
        assert f'CONFIG_IDF_TARGET="{target.cpu}"' in (out / "sdkconfig.defaults").read_text()
    elif target.build_system == "arduino":
        assert "arduino-cli compile --fqbn arduino:mbed_nano:nano33ble tiny" in readme
        assert (out / "tiny/tiny.ino").is_file() and (out / "tiny/src/tinyscale_runner.cpp").is_file()
    elif target.build_system == "pico-sdk":
        assert "cmake --build build" in readme and "build/tiny.uf2" in readme
        assert "pico_add_extra_outputs(tiny)" in (out / "CMakeLists.txt").read_text()
    else:
        assert "cmake --build build" in readme
        assert (out / "linker.ld").is_file() and (out / "src/startup.c").is_file()


# BRR = kernel clock / baud, rounded: the reset clock (every prescaler /1), and the APB clock
# each USART gets at the board's clock_hz (F411: USART2 on APB1 at 50 MHz; F746: USART1 on
# APB2 at 108 MHz; H743: USART3 on APB1 at 120 MHz; L476: USART2 at 80 MHz; U585: USART1 at 160 MHz).
@pytest.mark.parametrize("target_name, family, brr_reset, brr_pll", [
    ("nucleo-f411re", "F4", 139, 434), ("stm32f746g-disco", "F7", 139, 938), ("nucleo-h743zi2", "H7", 556, 1042),
    ("nucleo-l476rg", "L4", 35, 694), ("b-u585i-iot02a", "U5", 35, 1389),
])
def test_stm32_uart_divisor_follows_the_clock_that_runs(target_name, family, brr_reset, brr_pll):
    target = load_target(target_name)
    glue = uart_glue(target, clock_setup(target))
    assert (glue.family, glue.brr_reset, glue.brr_pll, glue.baud) == (family, brr_reset, brr_pll, 115200)


# ---------------------------------------------------------------------------
# The inference core (firmware/tinyscale_runner.cc) run on the host against a fake TFLM:
# its input copy, output comparison and report for every input/output type.

FAKE_TFLM_TYPES = r"""
#pragma once
#include <stddef.h>
#include <stdint.h>
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef enum { kTfLiteFloat32 = 1, kTfLiteInt16 = 7, kTfLiteInt8 = 9 } TfLiteType;
typedef union { int8_t* int8; int16_t* i16; float* f; char* raw; void* data; } TfLitePtrUnion;
typedef struct { TfLiteType type; TfLitePtrUnion data; size_t bytes; } TfLiteTensor;
"""
FAKE_TFLM_HEADERS = {
    "tensorflow/lite/micro/fake_types.h": FAKE_TFLM_TYPES,
    "tensorflow/lite/schema/schema_generated.h": (
        "#pragma once\n#define TFLITE_SCHEMA_VERSION 3\nnamespace tflite {\n"
        "class Model { public: unsigned version() const { return 3; } };\n"
        "inline const Model* GetModel(const void* data) { return static_cast<const Model*>(data); }\n}\n"),
    "tensorflow/lite/micro/micro_interpreter.h": (
        "#pragma once\n#include \"tensorflow/lite/micro/fake_types.h\"\nnamespace tflite {\nclass Model;\n"
        "extern TfLiteTensor fake_input, fake_output;\nclass MicroInterpreter {\n public:\n"
        "  template <typename R> MicroInterpreter(const Model*, R&, uint8_t*, size_t) {}\n"
        "  TfLiteStatus AllocateTensors() { return kTfLiteOk; }\n"
        "  size_t arena_used_bytes() const { return 1234; }\n"
        "  TfLiteTensor* input(size_t) { return &fake_input; }\n"
        "  TfLiteTensor* output(size_t) { return &fake_output; }\n"
        "  TfLiteStatus Invoke();\n};\n}\n"),
}
# The "device": checks that the runner copied the self-test input, answers the host's expected
# output with value 0 moved by argv[1] (towards zero, so an int8 value cannot saturate).
FAKE_TFLM_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "selftest_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tinyscale_platform.h"
#include "tinyscale_runner.h"
namespace {
alignas(16) char input_buffer[1 << 16];
alignas(16) char output_buffer[1 << 16];
float perturbation = 0.0f;
size_t value_bytes(TsType type) { return type == TS_INT8 ? 1 : type == TS_INT16 ? 2 : 4; }
TfLiteType tflite_type(TsType type) {
  return type == TS_INT8 ? kTfLiteInt8 : type == TS_INT16 ? kTfLiteInt16 : kTfLiteFloat32;
}
void fake_tensor(TfLiteTensor& tensor, const TsTensorData& data, char* buffer) {
  tensor.type = tflite_type(data.type);
  tensor.bytes = data.length * value_bytes(data.type);
  tensor.data.raw = buffer;
}
}  // namespace
namespace tflite {
TfLiteTensor fake_input, fake_output;
TfLiteStatus MicroInterpreter::Invoke() {
  if (memcmp(fake_input.data.raw, ts_selftest_inputs[0].data, fake_input.bytes) != 0) return kTfLiteError;
  memcpy(fake_output.data.raw, ts_selftest_expected[0].data, fake_output.bytes);
  switch (ts_selftest_expected[0].type) {
    case TS_INT8: fake_output.data.int8[0] += static_cast<int8_t>(fake_output.data.int8[0] > 0 ? -perturbation : perturbation); break;
    case TS_INT16: fake_output.data.i16[0] += static_cast<int16_t>(fake_output.data.i16[0] > 0 ? -perturbation : perturbation); break;
    case TS_FLOAT32: fake_output.data.f[0] += fake_output.data.f[0] > 0 ? -perturbation : perturbation; break;
  }
  return kTfLiteOk;
}
}  // namespace tflite
extern "C" void ts_console_write(const char* text) { fputs(text, stdout); }
extern "C" uint32_t ts_time_us(void) { return 0; }
int main(int argc, char** argv) {
  perturbation = argc > 1 ? strtof(argv[1], nullptr) : 0.0f;
  fake_tensor(tflite::fake_input, ts_selftest_inputs[0], input_buffer);
  fake_tensor(tflite::fake_output, ts_selftest_expected[0], output_buffer);
  static uint8_t arena[16];
  return ts_run_selftest(arena, sizeof(arena));
}
"""


def fake_op_resolver() -> str:
    methods = "".join(f"  TfLiteStatus {m}() {{ return kTfLiteOk; }}\n" for m in sorted(set(fw.OP_RESOLVER_METHODS.values())))
    return ("#pragma once\n#include \"tensorflow/lite/micro/fake_types.h\"\nnamespace tflite {\n"
            f"template <unsigned int N> class MicroMutableOpResolver {{\n public:\n{methods}}};\n}}\n")


def build_host_selftest(context: ProjectContext, tmp_path: Path) -> Path:
    """The project's runner, model and self-test data linked with the fake TFLM into a host program."""
    src = render(context, tmp_path / "p") / context.source_dir
    headers = dict(FAKE_TFLM_HEADERS, **{"tensorflow/lite/micro/micro_mutable_op_resolver.h": fake_op_resolver()})
    for name, text in headers.items():
        (tmp_path / "fake" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / name).write_text(text)
    (src / "fake_tflm_driver.cc").write_text(FAKE_TFLM_DRIVER)
    objects = []
    for name, compiler, std in (("model_data.c", HOST_GCC, "-std=c11"), ("selftest_data.c", HOST_GCC, "-std=c11"),
                                ("tinyscale_runner.cc", HOST_GXX, "-std=c++17"),
                                ("fake_tflm_driver.cc", HOST_GXX, "-std=c++17")):
        objects.append(tmp_path / f"{name}.o")
        compile_file(compiler, src / name, [std, f"-I{src}", f"-I{tmp_path / 'fake'}"], objects[-1])
    program = tmp_path / "selftest"
    result = subprocess.run([HOST_GXX, *map(str, objects), "-o", str(program)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return program


def run_host_selftest(program: Path, perturbation: float) -> tuple[int, list[str]]:
    result = subprocess.run([str(program), repr(perturbation)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout.splitlines()


@pytest.fixture(scope="module")
def io_models(model) -> dict[str, bytes]:
    """One model per input/output layout: tinyscale's int8 and TFLiteConverter's others."""
    from conftest import IO_KINDS, quantized_model

    return {"int8-int8": model, **{kind: quantized_model(kind) for kind in IO_KINDS}}


@needs_host_gcc
@pytest.mark.parametrize("kind", ["int8-int8", "int8-float", "int16-int16", "int16-float"])
def test_selftest_core_compares_every_io_type_within_its_tolerance(io_models, kind, tmp_path):
    model = io_models[kind]
    target = load_target("mps2-an386")  # cmsis-nn: a tolerance of one quantization step
    options = FirmwareOptions(target=target, out_dir=tmp_path / "unused", name="m", model_file="m.tflite")
    context = fw.build_context(model, options)
    (expected,), (inputs,) = context.expected, context.inputs
    info = read_model(model)
    assert (inputs.dtype, expected.dtype) == (info.input_tensors[0].dtype, info.output_tensors[0].dtype)
    is_float = expected.dtype == "float32"
    step = fw.output_quantization(info).scale if is_float else 1.0  # one quantization step of the output
    assert expected.tolerance == pytest.approx((1 + FLOAT_TOLERANCE_EPSILON_STEPS) * step if is_float else 1)
    program = build_host_selftest(context, tmp_path)

    code, lines = run_host_selftest(program, 0.0)
    assert code == 0 and lines[-1].startswith("SELFTEST PASS max_diff 0"), lines
    printed = [float(v) for v in lines[-2].split(":")[1].split()]
    assert printed == pytest.approx(expected.values, rel=1e-7)  # floats print with 9 significant digits
    assert run_host_selftest(program, step)[0] == 0  # one step off: within tolerance
    code, lines = run_host_selftest(program, 2 * step)
    assert code == 1 and lines[-1].startswith("SELFTEST FAIL max_diff "), lines
    if is_float:
        _, _, _, max_diff, _, tolerance = lines[-1].split()
        assert float(max_diff) == pytest.approx(2 * step, rel=1e-4) and "e-0" in max_diff
        assert float(tolerance) == pytest.approx(expected.tolerance, rel=1e-7)
    else:
        assert lines[-1] == "SELFTEST FAIL max_diff 2 tolerance 1"


@pytest.mark.parametrize("kind", ["int8-float", "int16-int16", "int16-float"])
def test_simulate_and_firmware_accept_the_same_io_layouts(io_models, kind, tmp_path):
    (tmp_path / "m.tflite").write_bytes(io_models[kind])
    simulated = CliRunner().invoke(app, ["simulate", str(tmp_path / "m.tflite"), "--target", "mps2-an386", "--json"])
    assert simulated.exit_code == 0, simulated.output
    result = run_cli(str(tmp_path / "m.tflite"), "--target", "mps2-an386", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    dtype = read_model(io_models[kind]).input_tensors[0].dtype
    assert f"{SELFTEST_TYPES[dtype][0]} ts_input_0[64]" in (tmp_path / "out/src/selftest_data.c").read_text()


@pytest.mark.parametrize("value, literal", [(1.0, "1.0f"), (-0.5, "-0.5f"), (1e-5, "9.99999975e-06f"), (3, "3.0f")])
def test_float_literals_read_back_as_the_same_float32(value, literal):
    assert _c_float(value) == literal
    assert np.float32(float(literal[:-1])) == np.float32(value)


def test_int16_per_channel_dense_is_refused_where_cmsis_nn_cannot_run_it(tmp_path):
    from conftest import quantized_model

    # Measured under QEMU: CMSIS-NN's FULLY_CONNECTED Prepare fails on it, the host runs it.
    (tmp_path / "m.tflite").write_bytes(quantized_model("int16-float", per_channel_dense=True))
    message = "mps2-an386 runs cmsis-nn kernels: operator 3 FULLY_CONNECTED has per-channel int8 weights on a int16"
    result = run_cli(str(tmp_path / "m.tflite"), "--target", "mps2-an386", "-o", str(tmp_path / "out"))
    assert_refused(result, 1, message, tmp_path, {"m.tflite"})
    simulated = CliRunner().invoke(app, ["simulate", str(tmp_path / "m.tflite"), "--target", "mps2-an386"])
    assert simulated.exit_code == 1 and message in simulated.output
    assert CliRunner().invoke(app, ["simulate", str(tmp_path / "m.tflite")]).exit_code == 0
    esp32 = run_cli(str(tmp_path / "m.tflite"), "--target", "esp32", "-o", str(tmp_path / "esp"))
    assert esp32.exit_code == 0, esp32.output


@pytest.mark.parametrize(("target_name", "machine", "workaround"), [
    ("mps2-an386", "mps2-an386", False), ("mps3-an547", "mps3-an547", True), ("nucleo-h743zi2", None, False)])
def test_cmake_projects_name_their_qemu_machine_and_the_m55_workaround(model, host_figures, tmp_path, target_name,
                                                                       machine, workaround):
    context = context_for(model, host_figures, target_name)
    assert context.cmake_arm.qemu_machine == machine
    out = render(context, tmp_path / "p")
    toolchain = (out / "cmake" / "arm-none-eabi.cmake").read_text()
    # gcc 12's IT-block VCVTs do not assemble for MVE cores (TFLM's resize_nearest_neighbor.cc).
    assert ("-fno-if-conversion2" in toolchain) == workaround
    if machine:
        assert f"qemu-system-arm -M {machine} -nographic" in (out / "README.md").read_text()


# ---------------------------------------------------------------------------
# The per-operator profile (`firmware --profile`, issue 10): rendered only when asked for,
# and its SysTick ticks are exact instruction counts under QEMU's -icount shift=0.

PROFILE_MARKERS = ("TINYSCALE_PROFILE", "micro_time.cc", "ts_time_ticks", "PROFILE")


def test_profile_code_is_rendered_only_with_profile(model, host_figures, tmp_path):
    plain = tree(render(context_for(model, host_figures, "mps2-an386"), tmp_path / "plain"))
    profiled = tree(render(context_for(model, host_figures, "mps2-an386", profile=True), tmp_path / "profiled"))
    # The shared runner holds the profiler behind #ifdef TINYSCALE_PROFILE; every other default file is free of it.
    for name, data in plain.items():
        if not name.endswith("tinyscale_runner.cc"):
            assert not any(marker.encode() in data for marker in PROFILE_MARKERS), name
    assert sorted(set(profiled) - set(plain)) == ["src/micro_time.cc"]
    cmake = profiled["CMakeLists.txt"].decode()
    assert "target_compile_definitions(tiny PRIVATE TINYSCALE_PROFILE)" in cmake
    assert "src/micro_time.cc)" in cmake and 'EXCLUDE REGEX "/cortex_m_generic/micro_time\\\\.cc$"' in cmake
    assert b"uint32_t ts_time_ticks(void)" in profiled["src/board.c"]
    assert b"GetCurrentTimeTicks() { return ts_time_ticks(); }" in profiled["src/micro_time.cc"]
    manifest = json.loads(profiled["manifest.json"])
    assert manifest["options"]["profile"] is True and manifest["regenerate"].endswith("--profile")
    assert json.loads(plain["manifest.json"])["options"]["profile"] is False
    assert b"## Per-operator profile" in profiled["README.md"] and b"-icount shift=0" in profiled["README.md"]


def test_profile_is_refused_for_build_systems_without_the_timer_hooks(workdir, model):
    result = CliRunner().invoke(app, ["firmware", str(workdir / "model.tflite"), "-t", "esp32", "-o",
                                      str(workdir / "out"), "--profile"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "--profile is for cmake-arm projects" in result.output
    assert not (workdir / "out").exists()


# The self-test stub times a loop of exactly two instructions per iteration (SUBS, BNE) for
# two lengths: the difference is 2 * (LONG - SHORT) instructions whatever the call overhead.
LOOP_SHORT, LOOP_LONG = 1_000_000, 3_000_000
LOOP_RUNNER = r"""
#include <stddef.h>
#include <stdint.h>
#include "tinyscale_platform.h"
extern "C" uint32_t ts_time_ticks(void);
extern "C" uint32_t ts_ticks_per_second(void);
typedef void (*DebugLogCallback)(const char* s);
extern "C" void RegisterDebugLogCallback(DebugLogCallback) {}
static void write_number(uint32_t value) {
  char text[12];
  char* cursor = text + sizeof(text) - 1;
  *cursor = '\0';
  do { *--cursor = (char)('0' + value % 10u); value /= 10u; } while (value != 0u);
  ts_console_write(cursor);
}
static uint32_t loop_ticks(uint32_t iterations) {
  const uint32_t start = ts_time_ticks();
  __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(iterations) : : "cc");
  return ts_time_ticks() - start;
}
int ts_run_selftest(uint8_t*, size_t) {
  const uint32_t iterations[2] = {LOOP_SHORT, LOOP_LONG};
  for (unsigned i = 0; i < 2; ++i) {
    ts_console_write("LOOP ");
    write_number(iterations[i]);
    ts_console_write(" ");
    write_number(loop_ticks(iterations[i]));
    ts_console_write("\n");
  }
  ts_console_write("HZ ");
  write_number(ts_ticks_per_second());
  ts_console_write("\n");
  return 0;
}
""".replace("LOOP_SHORT", str(LOOP_SHORT)).replace("LOOP_LONG", str(LOOP_LONG))


@needs_arm
@pytest.mark.skipif(not QEMU, reason="qemu-system-arm not installed")
@pytest.mark.parametrize("target_name", QEMU_TARGETS)
def test_profile_ticks_convert_to_the_instructions_of_a_known_loop(model, host_figures, tmp_path, target_name):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from latency_measure import ticks_to_instructions  # noqa: PLC0415 - a benchmark module

    context = context_for(model, host_figures, target_name, profile=True)
    elf = build_stub_elf(context, tmp_path, LOOP_RUNNER)
    result = subprocess.run(
        [QEMU, "-M", context.cmake_arm.qemu_machine, "-nographic", "-semihosting-config", "enable=on,target=native",
         "-icount", "shift=0", "-kernel", str(elf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout
    loops = dict(tuple(map(int, line.split()[1:])) for line in result.stdout.splitlines() if line.startswith("LOOP "))
    hz = int(result.stdout.split("HZ ")[1].split()[0])
    assert hz == load_target(target_name).clock_hz
    measured = ticks_to_instructions(loops[LOOP_LONG] - loops[LOOP_SHORT], hz)
    expected = 2 * (LOOP_LONG - LOOP_SHORT)
    print(f"\n{target_name}: {hz} Hz, loop ticks {loops}, {measured} instructions for {expected}")
    # Within one tick each way, plus the 1 kHz SysTick handler the longer loop runs a few more times.
    assert abs(measured - expected) <= 2 * 10**9 // hz + 100, (measured, expected, loops)


@needs_arm
@pytest.mark.parametrize("target_name", ["nucleo-f411re", "nucleo-h743zi2"])
def test_profiled_uart_board_glue_compiles(model, host_figures, tmp_path, target_name):
    # The UART boards' SysTick follows the clock that runs (a variable, not a constant).
    context = context_for(model, host_figures, target_name, profile=True)
    src = render(context, tmp_path / "p") / "src"
    compile_file(ARM_GCC, src / "board.c", [*arm_flags(context), "-std=c11", f"-I{src}"], tmp_path / "board.o")
    symbols = subprocess.run([shutil.which("arm-none-eabi-nm"), str(tmp_path / "board.o")], capture_output=True,
                             text=True, check=True).stdout
    assert " T ts_time_ticks" in symbols and " T ts_ticks_per_second" in symbols
