"""`tinyscale fit`, `scale` and `targets` through Typer's CliRunner, JSON parsed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tinyscale.cli import app

runner = CliRunner()

FIT_KEYS = {
    "target", "base", "phi", "next_phi", "depth_multiplier", "width_multiplier", "resolution", "params", "macs",
    "model_bytes", "arena_bytes", "flash_needed_bytes", "sram_needed_bytes", "flash_budget_bytes",
    "sram_budget_bytes", "binding", "verified",
}


def board_toml(path, flash_budget: int, arena_budget: int) -> str:
    path.write_text(
        f"""
schema_version = 1
name = "test-board"
board = "test board"
core = "Cortex-M4F"
cpu = "cortex-m4"
fpu = "fpv4-sp-d16"
clock_hz = 100_000_000
kernel_library = "cmsis-nn"
build_system = "cmake-arm"
[flash]
size_bytes = {flash_budget}
budget_bytes = {flash_budget}
reserved_bytes = 0
origin = 0x08000000
[[memory]]
name = "sram"
kind = "sram"
origin = 0x20000000
size_bytes = {arena_budget}
reserved_bytes = 0
arena = true
"""
    )
    return str(path)


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_fit_no_verify_json_has_the_documented_keys():
    result = invoke("fit", "--target", "esp32", "--no-verify", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert FIT_KEYS <= data.keys()
    assert data["verified"] is False
    assert data["target"] == "esp32" and data["base"] == "efficientnet-lite0"
    assert data["phi"] < 0 and data["next_phi"] > data["phi"]
    assert data["flash_needed_bytes"] <= data["flash_budget_bytes"]
    assert data["sram_needed_bytes"] <= data["sram_budget_bytes"]


def test_fit_table_names_the_binding_constraint():
    result = invoke("fit", "--target", "esp32", "--no-verify")
    assert result.exit_code == 0, result.output
    for label in ("phi", "multipliers", "input", "params", "MACs", "flash", "SRAM", "binding", "headroom"):
        assert label in result.stdout


@pytest.mark.slow
def test_fit_verified_writes_model_and_fit_json(tmp_path):
    board = board_toml(tmp_path / "board.toml", 60_000, 40_000)
    out = tmp_path / "out"
    result = invoke("fit", "--target", board, "--base", "tiny", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verified"] is True
    model = (out / "model.tflite").read_bytes()
    assert len(model) == data["model_bytes"]
    assert json.loads((out / "fit.json").read_text()) == data
    assert sorted(p.name for p in out.iterdir()) == ["fit.json", "model.tflite"]


def test_fit_refuses_a_non_empty_out_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = invoke("fit", "--target", "esp32", "--out", str(out))
    assert result.exit_code == 4
    assert "--force" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_unknown_target_suggests_close_names():
    result = invoke("fit", "--target", "esp23")
    assert result.exit_code == 2
    assert "esp32" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_nothing_fits_says_what_the_smallest_network_needs(tmp_path):
    board = board_toml(tmp_path / "board.toml", 20_000, 4_000)
    result = invoke("fit", "--target", board, "--no-verify")
    assert result.exit_code == 3
    assert "smallest" in result.stderr and "needs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option, value", [("--alpha", "0.5"), ("--gamma", "nan"), ("--beta", "0")])
def test_invalid_coefficients_fail_cleanly(option, value):
    result = invoke("fit", "--target", "esp32", "--no-verify", option, value)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_unbalanced_coefficients_warn_but_run():
    result = invoke("fit", "--target", "esp32", "--no-verify", "--alpha", "1.5", "--json")
    assert result.exit_code == 0
    assert "far from 2" in result.stderr


def test_scale_json_describes_the_network():
    result = invoke("scale", "--phi", "-6", "--channels", "1", "--classes", "5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["resolution"] == 96 and data["channels"] == 1 and data["classes"] == 5
    assert data["estimated_model_bytes"] > 0 and data["estimated_arena_bytes"] > 0


def test_scale_with_target_reports_fit():
    result = invoke("scale", "--phi", "0", "--target", "nucleo-l476rg", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fits"] is False and data["sram_needed_bytes"] > data["sram_budget_bytes"]


@pytest.mark.slow
def test_scale_measure_and_tflite(tmp_path):
    path = tmp_path / "m.tflite"
    result = invoke("scale", "--phi", "0", "--base", "tiny", "--measure", "--tflite", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert path.read_bytes()[4:8] == b"TFL3"
    assert data["measured_model_bytes"] == path.stat().st_size
    again = invoke("scale", "--phi", "0", "--base", "tiny", "--tflite", str(path))
    assert again.exit_code == 4  # refuses to clobber without --force


def test_targets_json_lists_every_board():
    result = invoke("targets", "--json")
    assert result.exit_code == 0
    boards = {board["name"]: board for board in json.loads(result.stdout)}
    assert {"esp32", "mps2-an386", "nucleo-h743zi2"} <= boards.keys()
    assert (boards["nucleo-h743zi2"]["mcu"], boards["nucleo-h743zi2"]["cpu"]) == ("STM32H743ZI", "cortex-m7")


def test_console_entry_point_turns_usage_errors_into_one_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from tinyscale.cli import main; main()", "scale", "--phi", "abc"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--phi" in done.stderr and "Traceback" not in done.stderr
