"""`tinyscale patch` through Typer's CliRunner: schedules, checks, refusals, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tinyscale.cli import app
from tinyscale.errors import UsageError
from tinyscale.search.patching import parse_grid

pytest.importorskip("tflite_micro")
runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden" / "tiny.tflite"


def _network_file(tmp_path: Path, name: str) -> Path:
    pytest.importorskip("tensorflow")
    from tiny_networks import int8_network

    path = tmp_path / f"{name}.tflite"
    path.write_bytes(int8_network(name))
    return path


def _patch(*args: str):
    return runner.invoke(app, ["patch", *args])


def test_parse_grid():
    assert parse_grid("2x3") == (2, 3) and parse_grid("1X4") == (1, 4)
    for bad in ("2", "0x2", "2x", "axb", "-1x2"):
        with pytest.raises(UsageError):
            parse_grid(bad)


def test_explicit_schedule_is_written_and_runs_bit_for_bit(tmp_path):
    from tiny_networks import random_inputs

    from tinyscale.graph.flatbuffer import read_flatbuffer
    from tinyscale.graph.patch import split_candidates
    from tinyscale.simulation.tflm import run_model

    source = _network_file(tmp_path, "mbconv")
    split = split_candidates(read_flatbuffer(source.read_bytes()))[1]  # the residual ADD's output
    out = tmp_path / "patched.tflite"
    result = _patch(str(source), "-o", str(out), "--grid", "2x2", "--split-tensor", split.name, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["patched"] and data["grid"] == [2, 2] and data["split_tensor"] == split.name
    assert data["max_diff"] == 0 and data["checked_inputs"] > 0
    assert data["extra_macs"] > 0 and data["after"]["macs"] > data["before"]["macs"]
    assert data["after"]["model_bytes"] == out.stat().st_size > data["before"]["model_bytes"]
    inputs = random_inputs(source.read_bytes(), 3, seed=11)  # not the inputs the command checked
    assert np.array_equal(run_model(out.read_bytes(), inputs), run_model(source.read_bytes(), inputs))


def test_search_never_returns_a_larger_arena(tmp_path):
    out = tmp_path / "out.tflite"
    result = _patch(str(_network_file(tmp_path, "valid_and_pools")), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["after"]["arena_bytes"] <= data["before"]["arena_bytes"]
    assert data["extra_macs"] <= 0.3 and data["max_diff"] == 0
    measured = data["measured_schedules"]
    assert data["ranked_schedules"] >= 2
    if data["patched"]:
        # Ranked by the exact analytic arena: only the winner is measured, and it agrees.
        assert len(measured) == 1 and measured[0]["ranking_bytes"] == measured[0]["arena_bytes"]
        assert data["after"]["arena_bytes"] == measured[0]["arena_bytes"]
        assert [measured[0]["split_tensor"], measured[0]["grid"]] == [data["split_tensor"], data["grid"]]
    else:  # the best schedule loses to the original: kept, with the reason
        assert "nothing worth patching" in data["note"]


def test_search_measures_finalists_when_the_analytic_arena_disagrees(monkeypatch, caplog):
    from tinyscale.search import patching

    data = _network_file_bytes("mbconv")
    honest = patching.ranking_bytes
    # A wrong analytic model, optimistic enough that every schedule seems to beat the original.
    monkeypatch.setattr(patching, "ranking_bytes", lambda model: honest(model) - 1_000_000)
    result = patching.patch_flatbuffer(data)
    assert "differs from TFLM's measured" in caplog.text
    _assert_measurement_decided(result, patching.MEASURED_FINALISTS)


def _assert_measurement_decided(result, finalists: int) -> None:
    assert len(result.measured) == finalists
    best = min(s.arena_bytes for s in result.measured)
    if result.patched:
        assert result.after.arena_bytes == best
    else:
        assert best >= result.before.arena_bytes and "nothing worth patching" in result.note


def test_search_measures_finalists_for_operators_the_arena_model_lacks(monkeypatch, caplog):
    from tinyscale.errors import NotModelledError
    from tinyscale.graph import estimate
    from tinyscale.search import patching

    def refuse(model):
        raise NotModelledError("TFLM's allocations for X are not modelled")

    monkeypatch.setattr(estimate, "check_modelled", refuse)
    result = patching.patch_flatbuffer(_network_file_bytes("mbconv"))
    assert "ranking patch schedules approximately" in caplog.text
    _assert_measurement_decided(result, patching.MEASURED_FINALISTS)


def _network_file_bytes(name: str) -> bytes:
    pytest.importorskip("tensorflow")
    from tiny_networks import int8_network

    return int8_network(name)


def test_nothing_to_patch_writes_the_model_unchanged_with_a_note(tmp_path):
    source = _network_file(tmp_path, "dense_only")
    out = tmp_path / "out.tflite"
    result = _patch(str(source), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == source.read_bytes()
    assert "nothing to patch" in result.stdout
    assert len([line for line in result.stderr.splitlines() if "nothing to patch" in line]) == 1


def test_a_mac_cap_of_zero_allows_only_schedules_without_halo_recomputation(tmp_path):
    out = tmp_path / "out.tflite"
    result = _patch(str(_network_file(tmp_path, "mbconv")), "-o", str(out), "--max-extra-macs", "0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["extra_macs"] == 0 and data["after"]["macs"] == data["before"]["macs"]


def test_existing_output_is_refused_without_force(tmp_path):
    out = tmp_path / "out.tflite"
    out.write_bytes(b"keep me")
    result = _patch(str(GOLDEN), "-o", str(out), "--grid", "1x2")
    assert result.exit_code == 4 and out.read_bytes() == b"keep me"
    assert "--force" in result.stderr


def test_float_model_is_refused_in_one_line(tmp_path):
    pytest.importorskip("tensorflow")
    from tiny_networks import float_network

    source = tmp_path / "float.tflite"
    source.write_bytes(float_network())
    result = _patch(str(source), "-o", str(tmp_path / "out.tflite"))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "not int8" in result.stderr
    assert not (tmp_path / "out.tflite").exists()


@pytest.mark.parametrize("args, message", [
    (["--grid", "3"], "ROWSxCOLS"),
    (["--split-tensor", "nope"], "not a tensor"),
    (["--grid", "40x40", "--split-tensor", "SPLIT"], "does not fit"),
])
def test_bad_options_are_usage_errors(tmp_path, args, message):
    from tinyscale.graph.flatbuffer import read_flatbuffer
    from tinyscale.graph.patch import split_candidates

    split = split_candidates(read_flatbuffer(GOLDEN.read_bytes()))[0].name
    args = [split if a == "SPLIT" else a for a in args]
    result = _patch(str(GOLDEN), "-o", str(tmp_path / "out.tflite"), *args)
    assert result.exit_code == 2 and message in result.stderr
