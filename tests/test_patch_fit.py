"""`fit --patch auto|off`: patched schedules in the search, verified by measurement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tinyscale.boards.targets import load_target
from tinyscale.cli import app
from tinyscale.graph.estimate import tflite_graph
from tinyscale.graph.patch import split_candidates
from tinyscale.search.fit import FitRequest, analytic_memory, fit, placement_for

runner = CliRunner()
PATCH_KEYS = {"patch_grid", "patch_split_tensor", "macs_overhead", "phi_unpatched"}
# Keys that differ between two runs of the same search (wall time).
TIMING_KEYS = {"search_seconds", "verify_seconds"}


def fit_json(*args: str) -> dict:
    result = runner.invoke(app, ["fit", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_patch_off_is_the_unpatched_search_with_unpatched_keys():
    data = fit_json("--target", "esp32", "--no-verify", "--patch", "off")
    today = fit(FitRequest(load_target("esp32")), verify=False).to_dict()  # the library default: off
    assert {k: v for k, v in data.items() if k not in TIMING_KEYS} == {
        k: v for k, v in today.items() if k not in TIMING_KEYS}
    assert data["patch_grid"] == [1, 1] and data["patch_split_tensor"] is None and data["macs_overhead"] == 0
    assert data["phi_unpatched"] == data["phi"]


def test_patch_auto_answers_a_larger_phi_on_an_sram_bound_board():
    off = fit_json("--target", "esp32", "--no-verify", "--patch", "off")
    auto = fit_json("--target", "esp32", "--no-verify")  # auto is the default
    assert PATCH_KEYS <= auto.keys()
    assert off["binding"] == "sram"
    assert auto["phi_unpatched"] == off["phi"] and auto["phi"] > off["phi"]
    assert auto["resolution"] >= off["resolution"] and auto["params"] > off["params"]
    rows, cols = auto["patch_grid"]
    assert rows * cols > 1 and 0 < auto["macs_overhead"] <= 0.3
    # The split tensor is one the pass can end at in the answer's own graph (the converter's names).
    request = FitRequest(load_target("esp32"))
    spec = request.spec(auto["phi"])
    assert auto["patch_split_tensor"] in {c.name for c in split_candidates(tflite_graph(spec))}
    # Unpatched, the answer's network would not fit: the schedule is what makes it fit.
    assert not placement_for(request.target, spec, analytic_memory(spec)).fits
    assert auto["sram_needed_bytes"] <= auto["sram_budget_bytes"]
    assert auto["flash_needed_bytes"] <= auto["flash_budget_bytes"]


def test_max_extra_macs_zero_leaves_no_schedule():
    data = fit_json("--target", "esp32", "--no-verify", "--max-extra-macs", "0")
    assert data["patch_grid"] == [1, 1] and data["phi"] == data["phi_unpatched"]


def test_bad_patch_mode_is_a_usage_error():
    result = runner.invoke(app, ["fit", "--target", "esp32", "--no-verify", "--patch", "sometimes"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_patch_table_shows_schedule_cost_and_gain():
    result = runner.invoke(app, ["fit", "--target", "esp32", "--no-verify"])
    assert result.exit_code == 0, result.output
    for label in ("patch ", "patch cost", "patch gain"):
        assert label in result.stdout


# ---------------------------------------------------------------------------
# Real conversions: a small SRAM-bound board (lite0 at 56 px, ~1 s per conversion)


def _sram_bound_board(synthetic_target):
    """SRAM 2% above what the phi=-10 lite0 network needs unpatched; flash ample."""
    probe = FitRequest(synthetic_target(10**9, 10**9))
    spec = probe.spec(-10.0)
    need = placement_for(probe.target, spec, analytic_memory(spec))
    return synthetic_target(10**8, int(need.sram_needed_bytes * 1.02))


@pytest.mark.slow
def test_patched_fit_is_larger_and_both_answers_are_measured(synthetic_target):
    target = _sram_bound_board(synthetic_target)
    off = fit(FitRequest(target), patch="off")
    auto = fit(FitRequest(target), patch="auto")
    assert off.verified and auto.verified
    assert auto.phi > off.phi and auto.phi_unpatched == off.phi
    assert auto.network.spec != off.network.spec
    assert auto.schedule.patched and auto.placement.fits and off.placement.fits
    # Measured: the patched file's size is what the writer-based estimate said, to the byte.
    assert auto.measured.model_bytes == auto.estimate.model_bytes == len(auto.measured.tflite)
    # The patched network does not fit unpatched (measured: the converter's own file).
    from tinyscale.simulation.tflm import measure_arena

    unpatched = auto.measured.unpatched_tflite
    plain = placement_for(target, auto.network.spec,
                          type(auto.measured)(len(unpatched), measure_arena(unpatched).arena_bytes))
    assert not plain.fits


@pytest.mark.slow
def test_fit_out_writes_patched_and_unpatched_models(tmp_path, synthetic_target):
    from test_cli_fit import board_toml

    from tinyscale.graph.flatbuffer import read_flatbuffer
    from tinyscale.training.convert import spec_to_tflite

    target = _sram_bound_board(synthetic_target)
    sram = target.arena_regions[0].arena_budget_bytes
    board = board_toml(tmp_path / "board.toml", target.flash.budget_bytes, sram)
    out = tmp_path / "out"
    data = fit_json("--target", board, "--out", str(out))
    assert data["verified"] and data["patch_grid"] != [1, 1]
    spec = FitRequest(target).spec(data["phi"])
    unpatched = (out / "model_unpatched.tflite").read_bytes()
    assert unpatched == spec_to_tflite(spec)  # the converter's file, as `convert` would write it
    patched = (out / "model.tflite").read_bytes()
    assert len(patched) == data["model_bytes"] == data["estimated_model_bytes"]
    graph = read_flatbuffer(patched).graph
    assert any(op.kind == "CONCATENATION" for op in graph.operators)
    assert json.loads((out / "fit.json").read_text()) == data

    plain = tmp_path / "plain"
    off = fit_json("--target", board, "--out", str(plain), "--patch", "off")
    assert sorted(p.name for p in plain.iterdir()) == ["fit.json", "model.tflite"]
    assert off["phi"] == data["phi_unpatched"] < data["phi"]


@pytest.mark.slow
@pytest.mark.parametrize("base", ["tiny", "tiny-se", "efficientnet-lite0", "efficientnet-b0"])
def test_spec_graph_writes_to_the_converted_models_size_patched_or_not(base):
    """tflite_graph has the converted file's structure: the writer sizes both alike, to the byte."""
    from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
    from tinyscale.graph.patch import find_candidate, patch_model
    from tinyscale.training.convert import spec_to_tflite

    spec = FitRequest(load_target("esp32"), base=base).spec(-10.0 if base.startswith("efficientnet") else 0.0)
    built, converted = tflite_graph(spec), read_flatbuffer(spec_to_tflite(spec))
    assert len(write_flatbuffer(built)) == len(write_flatbuffer(converted))
    names = [c.name for c in split_candidates(built)]
    assert names == [c.name for c in split_candidates(converted)]
    for name in names[:2]:
        for grid in ((2, 2), (1, 3)):
            ours = patch_model(built, find_candidate(built, name), grid)
            theirs = patch_model(converted, find_candidate(converted, name), grid)
            assert len(write_flatbuffer(ours)) == len(write_flatbuffer(theirs))


# ---------------------------------------------------------------------------
# build applies fit's schedule after conversion


def _sram_bound_board_file(path):
    """nucleo-l476rg (real firmware glue) with its SRAM cut to 2% above the phi=-10 lite0 need."""
    import re

    from tinyscale.boards.targets import load_target as load

    nucleo = (Path(__file__).resolve().parent.parent / "targets" / "nucleo-l476rg.toml").read_text()
    nucleo = nucleo.replace('name = "nucleo-l476rg"', 'name = "patch-board"')

    def write(sram: int):
        text, count = re.subn(r"(\[\[memory\]\].*?size_bytes = )[\d_]+", rf"\g<1>{sram}", nucleo, count=1, flags=re.S)
        assert count == 1
        path.write_text(text)
        return load(str(path))

    probe = write(1_000_000)
    spec = FitRequest(probe).spec(-10.0)
    need = placement_for(probe, spec, analytic_memory(spec))
    headroom = need.sram_budget_bytes - need.sram_needed_bytes  # what the region keeps beyond the need
    write(1_000_000 - headroom + int(need.sram_needed_bytes * 0.02))
    return path


@pytest.mark.slow
def test_build_applies_fits_schedule_and_ships_the_patched_model(tmp_path):
    from test_pipeline_cli import write_stripes

    from tinyscale.graph.flatbuffer import read_flatbuffer
    from tinyscale.simulation.tflm import run_model

    board = _sram_bound_board_file(tmp_path / "board.toml")
    data = write_stripes(tmp_path / "stripes.npz", count=32)
    out = tmp_path / "built"
    result = runner.invoke(app, ["build", "--target", str(board), "--data", str(data), "--epochs", "1",
                                 "--calibration-samples", "8", "--workers", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    fitted = json.loads((out / "fit.json").read_text())
    assert fitted["patch_grid"] != [1, 1] and fitted["phi"] > fitted["phi_unpatched"]
    assert summary["patch_grid"] == fitted["patch_grid"]
    assert summary["patch_split_tensor"] == fitted["patch_split_tensor"]  # found in the trained conversion
    assert summary["patch_max_diff"] == 0 and summary["fits"]
    patched, unpatched = (out / "model.tflite").read_bytes(), (out / "model_unpatched.tflite").read_bytes()
    assert summary["model_bytes"] == len(patched) and "model_unpatched.tflite" in summary["files"]
    assert summary["arena_bytes"] < summary["unpatched_arena_bytes"]
    assert any(op.kind == "CONCATENATION" for op in read_flatbuffer(patched).graph.operators)
    inputs = np.random.default_rng(1).integers(-128, 128, (2, *read_flatbuffer(unpatched).graph.tensors[0].shape[1:]),
                                               dtype=np.int8)
    assert np.array_equal(run_model(patched, inputs), run_model(unpatched, inputs))
    # The firmware embeds the patched model (its op resolver has the patch operators).
    import hashlib

    manifest = json.loads((out / "firmware" / "manifest.json").read_text())
    assert summary["firmware"] and manifest["model"]["sha256"] == hashlib.sha256(patched).hexdigest()
    assert {"STRIDED_SLICE", "CONCATENATION"} <= set(manifest["operators"])


@pytest.mark.slow
def test_build_searches_a_schedule_when_fits_split_is_not_in_the_conversion(caplog):
    from tiny_networks import int8_network

    from tinyscale.commands.pipeline import _apply_schedule

    data = int8_network("mbconv")
    with caplog.at_level("WARNING"):
        result = _apply_schedule(data, ((2, 2), "not/a/tensor"), 0.3)
    assert "searching a schedule" in caplog.text
    assert result.split_tensor != "not/a/tensor" and result.max_diff == 0


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_build_passes_its_patch_mode_to_fit(tmp_path, monkeypatch, mode):
    from test_pipeline_cli import write_stripes

    import tinyscale.search.fit as fit_module
    from tinyscale.errors import DataError

    seen = {}

    def recording_fit(request, **options):
        seen.update(options)
        raise DataError("stop after the fit")

    monkeypatch.setattr(fit_module, "fit", recording_fit)
    data = write_stripes(tmp_path / "stripes.npz", count=8)
    result = runner.invoke(app, ["build", "--target", "nucleo-l476rg", "--data", str(data), "-o", str(tmp_path / "o"),
                                 "--patch", mode, "--max-extra-macs", "0.2"])
    assert result.exit_code == 1 and "stop after the fit" in result.stderr
    assert seen["patch"] == mode and seen["max_extra_macs"] == 0.2


def test_unpatched_fit_json_leaves_the_conversion_alone(tmp_path):
    from tinyscale.commands.pipeline import _patch_conversion

    data, patched = _patch_conversion(b"not even a model", {"patch_grid": [1, 1], "patch_split_tensor": None}, 0.3,
                                      tmp_path, quiet=True)
    assert data == b"not even a model" and patched is None and not list(tmp_path.iterdir())
    from tinyscale.commands.pipeline import _fitted_schedule

    assert _fitted_schedule({}) is None  # a fit.json from before patching
    assert _fitted_schedule({"patch_grid": [3, 2], "patch_split_tensor": "t"}) == ((3, 2), "t")


def test_scale_checks_the_phi_fit_prints_the_way_fit_does():
    """fit --patch auto's phi passed to scale --target fits there too (with its schedule), not with --patch off."""
    runner = CliRunner()
    fitted = json.loads(runner.invoke(app, ["fit", "--target", "esp32", "--no-verify", "--json"]).stdout)
    assert fitted["patch_grid"] != [1, 1]  # esp32's answer is patched: the case where the two could disagree
    phi = str(fitted["phi"])
    checked = runner.invoke(app, ["scale", "--phi", phi, "--target", "esp32", "--json"])
    assert checked.exit_code == 0, checked.output
    scaled = json.loads(checked.stdout)
    assert scaled["resolution"] == fitted["resolution"] and scaled["patch_grid"] == fitted["patch_grid"]
    assert scaled["patch_split_tensor"] == fitted["patch_split_tensor"]
    assert scaled["flash_needed_bytes"] == fitted["flash_needed_bytes"]
    assert scaled["sram_needed_bytes"] == fitted["sram_needed_bytes"]
    unpatched = runner.invoke(app, ["scale", "--phi", phi, "--target", "esp32", "--patch", "off"])
    assert unpatched.exit_code == 3


@pytest.mark.parametrize("base, phi, channels", [("tiny", -2.0, 1), ("efficientnet-lite0", -8.0, 3),
                                                 ("efficientnet-b0", -6.5, 1)])
def test_unpatched_size_is_a_lower_bound_of_every_patched_file(base, phi, channels):
    """fit --patch auto drops a schedule without writing it when even the unpatched size breaks flash."""
    from tinyscale.graph.estimate import flatbuffer_bytes
    from tinyscale.network.arch import scale
    from tinyscale.search.patch_fit import ranked_schedules

    spec = scale(base, phi, channels=channels).spec
    unpatched = flatbuffer_bytes(tflite_graph(spec))
    ranked = ranked_schedules(spec, 0.3)
    assert ranked
    assert all(schedule.memory.model_bytes > unpatched for schedule in ranked)
