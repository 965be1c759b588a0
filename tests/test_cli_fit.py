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


def _row(table: str, label: str) -> str:
    """The value of a table row: its label, then at least two spaces."""
    import re

    return next(m.group(1) for line in table.splitlines() if (m := re.fullmatch(rf"{re.escape(label)} {{2,}}(.*)", line)))


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
    assert result.exit_code == 3, result.output  # does not fit: exit 3, the JSON still printed first
    data = json.loads(result.stdout)
    assert data["fits"] is False and data["sram_needed_bytes"] > data["sram_budget_bytes"]
    assert result.stderr.count("\n") == 1 and "does not fit nucleo-l476rg" in result.stderr


def test_scale_with_target_exits_0_when_it_fits_and_3_when_not():
    fitting = invoke("scale", "--phi", "-9.43", "--target", "nucleo-l476rg")
    assert fitting.exit_code == 0, fitting.output
    assert _row(fitting.stdout, "fits") == "yes"
    table = invoke("scale", "--phi", "-7.5", "--target", "nucleo-l476rg")
    assert table.exit_code == 3 and "fits" in table.stdout and "no: SRAM" in table.stdout
    assert table.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [("fit", "--no-verify"), ("scale", "--phi", "-7.604")])
def test_flash_sram_and_arena_lines_show_every_term_and_add_up(command):
    result = invoke(*command, "--target", "esp32")
    assert result.exit_code == 0, result.output
    data = json.loads(invoke(*command, "--target", "esp32", "--json").stdout)
    flash = _row(result.stdout, "flash")
    need, budget = data["flash_needed_bytes"], data["flash_budget_bytes"]
    assert f"{need:,} / {budget:,} B" in flash
    terms = (data["model_bytes"], data["flash_reserved_bytes"], data["extra_kernel_flash_bytes"],
             data["selftest_flash_bytes"])
    assert sum(terms) == need and all(f"{term:,}" in flash.split("=")[1] for term in terms if term)
    assert "self-test vectors" in flash and "reserved runtime" in flash
    # fit's default --patch auto patches esp32's network: its kernels are a term of their own.
    assert ("patch kernels" in flash) == (data["extra_kernel_flash_bytes"] > 0) == (data.get("patch_grid", [1, 1]) != [1, 1])
    sram = _row(result.stdout, "SRAM (dram)")
    assert data["device_arena_bytes"] + data["sram_reserved_bytes"] == data["sram_needed_bytes"]
    assert f"{data['device_arena_bytes']:,} + reserved {data['sram_reserved_bytes']:,} B" in sram
    arena = _row(result.stdout, "device arena")
    # ESP-NN's ANSI kernels on the plain ESP32 use no scratch: the margin is all slack.
    assert data["kernel_scratch_bytes"] == 0 and data["arena_slack_bytes"] == data["arena_margin_bytes"] >= 256
    assert f"kernel scratch 0 + slack {data['arena_slack_bytes']:,} B" in arena
    assert data["arena_bytes"] + data["kernel_scratch_bytes"] + data["arena_slack_bytes"] == data["device_arena_bytes"]


def test_kernel_scratch_is_named_apart_from_slack_under_the_host_rule():
    # ESP-NN's SIMD kernels on the S3: no 32-bit model, so host + scratch margin + slack.
    data = json.loads(invoke("scale", "--phi", "-9.43", "--target", "esp32-s3", "--json").stdout)
    assert data["arena_rule"] == "host + margin" and data["device_arena_used_bytes"] is None
    assert data["kernel_scratch_bytes"] > 0
    assert data["kernel_scratch_bytes"] + data["arena_slack_bytes"] == data["arena_margin_bytes"]
    assert 256 <= data["arena_slack_bytes"] < 256 + 16


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


# ---------------------------------------------------------------------------
# Every printed phi gives the fitted network back


def _bundled_targets() -> list[str]:
    from tinyscale.boards.targets import load_all_targets

    return [target.name for target in load_all_targets()]


@pytest.mark.parametrize("target", _bundled_targets())
def test_printed_phis_give_the_fitted_network_back(target):
    from tinyscale.network import arch

    table = invoke("fit", "--target", target, "--no-verify")
    data = json.loads(invoke("fit", "--target", target, "--no-verify", "--json").stdout)
    assert table.exit_code == 0, table.output

    def spec(phi) -> arch.NetworkSpec:
        return arch.scale(data["base"], float(phi), classes=data["classes"], channels=data["channels"]).spec

    fitted = spec(data["phi"])
    printed = _row(table.stdout, "phi")
    assert float(printed) == data["phi"] and spec(printed) == fitted
    assert len(printed.split(".")[-1]) <= 6
    # The scale command given the printed phi describes the same network.
    again = json.loads(invoke("scale", "--phi", printed, "--target", target, "--json").stdout)
    assert (again["resolution"], again["blocks"], again["params"]) == (data["resolution"], data["blocks"], data["params"])
    low, high = data["phi_interval"]
    assert spec(low) == fitted and spec(round(low - 1e-6, 6)) != fitted
    assert spec(round(high - 1e-6, 6)) == fitted and spec(high) != fitted
    assert spec(data["next_phi"]) != fitted and spec(round(data["next_phi"] - 1e-4, 4)) in (fitted, spec(high))
    assert f"[{low!r}, {high!r})" in _row(table.stdout, "phi interval")
    assert _row(table.stdout, "next phi").startswith(f"{data['next_phi']!r} ")


def test_phi_has_the_fewest_decimals_that_give_the_network():
    from tinyscale.network import arch

    data = json.loads(invoke("fit", "--target", "esp32", "--no-verify", "--patch", "off", "--json").stdout)
    low, high = data["phi_interval"]
    decimals = len(repr(data["phi"]).split(".")[-1])
    # No phi with fewer decimals lies in the interval (esp32's is 0.002 wide: 3 decimals).
    import math

    coarse = 10 ** (decimals - 1)
    largest_coarser = math.floor(high * coarse) / coarse
    assert largest_coarser < low  # the biggest phi with one decimal fewer is below the interval
    assert data["phi"] == -7.604
    assert arch.scale(data["base"], -7.60).spec != arch.scale(data["base"], data["phi"]).spec  # the old -7.60


# ---------------------------------------------------------------------------
# --prove shows the next network's figures; nothing fits still prints JSON


def test_next_network_figures_in_table_and_json():
    # Unpatched, esp32 is SRAM-bound (patched, flash binds: tests/test_patch_fit.py).
    table = invoke("fit", "--target", "esp32", "--no-verify", "--patch", "off")
    data = json.loads(invoke("fit", "--target", "esp32", "--no-verify", "--patch", "off", "--json").stdout)
    following = data["next"]
    assert following["phi"] == data["next_phi"] and following["fits"] is False
    assert following["measured"] is False and following["sram_needed_bytes"] > following["sram_budget_bytes"]
    assert f"model {following['model_bytes']:,} B, arena {following['arena_bytes']:,} B (estimated" in _row(
        table.stdout, "next network"
    )
    over = following["sram_needed_bytes"] - following["sram_budget_bytes"]
    assert _row(table.stdout, "next SRAM (dram)").endswith(f"over by {over:,} B")
    assert _row(table.stdout, "next flash").endswith("fits")


def test_nothing_fits_json_says_what_the_smallest_needs(tmp_path):
    board = board_toml(tmp_path / "board.toml", 300_000, 30_000)
    result = invoke("fit", "--target", board, "--no-verify", "--json")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["fits"] is False and data["phi_searched_down_to"] == -20.0
    assert data["sram_needed_bytes"] > data["sram_budget_bytes"] == 30_000 and data["binding"] == "sram"
    # A Cortex-M4 with CMSIS-NN: the 32-bit replay sizes the arena, below the 64-bit host's here.
    assert data["model_bytes"] > 0 and data["arena_bytes"] > data["device_arena_bytes"] > 0
    assert data["arena_rule"] == "32-bit model" and data["device_arena_used_bytes"] <= data["device_arena_bytes"]
    assert "--base tiny" in data["hint"] and "--channels 1" in data["hint"] and "--classes" in data["hint"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nothing fits") and "--base tiny" in lines[0]


# ---------------------------------------------------------------------------
# Logging: one line per record, even when something configured the root logger


def test_verbose_logs_once_when_root_has_a_handler():
    import io
    import logging

    root_sink = io.StringIO()
    root_handler = logging.StreamHandler(root_sink)  # what TensorFlow's import leaves behind
    logging.getLogger().addHandler(root_handler)
    try:
        result = invoke("-v", "scale", "--phi", "-6", "--alpha", "1.5")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("far from 2") == 1
    assert root_sink.getvalue() == ""
    # After the command the library's records reach root again (an embedding program's logging).
    assert logging.getLogger("tinyscale").propagate is True


@pytest.mark.slow
def test_fit_prove_shows_the_measured_next_network(tmp_path):
    board = board_toml(tmp_path / "board.toml", 60_000, 40_000)
    data = json.loads(invoke("fit", "--target", board, "--base", "tiny", "--prove", "--json").stdout)
    following = data["next"]
    assert data["next_verified"] is True and following["measured"] is True and following["fits"] is False
    table = invoke("fit", "--target", board, "--base", "tiny", "--prove")
    assert table.exit_code == 0, table.output
    assert _row(table.stdout, "next network").endswith("(measured in TFLM by --prove)")
    assert f"model {following['model_bytes']:,} B, arena {following['arena_bytes']:,} B" in table.stdout


def test_nothing_fits_says_no_other_base_fits_before_what_to_try():
    # 10 ms is below even the smallest network of every base on the Pico's Cortex-M0+.
    result = invoke("fit", "--target", "rpi-pico", "--no-verify", "--max-latency-ms", "10")
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "; no other base fits either (--base efficientnet-b0, " in lines[0]
    assert "); try fewer --classes; --channels 1; a larger --max-latency-ms" in lines[0]
