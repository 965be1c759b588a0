"""benchmarks/tune.py's ledger: finished tunes and final builds outlive the folder (and machine) that made them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tune as bench  # noqa: E402


def _build(out: Path, seed: int = 0) -> list[str]:
    return ["tinyscale", "build", "--target", "esp32", "-o", str(out), "--seed", str(seed), "--json"]


@pytest.fixture
def runs(monkeypatch):
    """Stands in for the subprocess: records each command run, answers with a report naming its folder."""
    calls = []

    def run_json(command, log, cores=None):
        calls.append(command)
        out = command[command.index("-o") + 1]
        return {"int8_accuracy": 0.9, "out": out, "files": [f"{out}/report.json"], "seconds": 1.0}, 1.0, ""

    monkeypatch.setattr(bench, "run_json", run_json)
    return calls


def test_the_ledger_key_is_the_command_without_its_output_folder(tmp_path):
    assert bench.ledger_key(_build(tmp_path / "a")) == bench.ledger_key(_build(tmp_path / "b"))
    assert bench.ledger_key(_build(tmp_path / "a")) == ["tinyscale", "build", "--target", "esp32", "--seed", "0",
                                                        "--json"]


def test_a_recorded_build_is_reused_once_its_folder_is_gone(tmp_path, runs):
    ledger = tmp_path / "ledger.json"
    first = tmp_path / "first"
    first.mkdir()
    built = bench.final_build(_build(first), first, tmp_path / "first.log", ledger=ledger)
    assert built["int8_accuracy"] == 0.9 and len(runs) == 1
    [entry] = json.loads(ledger.read_text())
    assert "out" not in entry["report"] and "files" not in entry["report"]  # this machine's paths stay out
    elsewhere = tmp_path / "elsewhere"  # another machine's --out: never built there
    assert bench.final_build(_build(elsewhere), elsewhere, tmp_path / "x.log", ledger=ledger) == entry["report"]
    assert bench.final_build(_build(elsewhere), elsewhere, tmp_path / "x.log", start=False,
                             ledger=ledger) == entry["report"]  # --finished-only sees it too
    assert len(runs) == 1


def test_without_a_ledger_nothing_is_recorded_or_reused(tmp_path, runs):
    out = tmp_path / "out"
    out.mkdir()
    assert bench.final_build(_build(out), out, tmp_path / "log", start=False) == bench.NOT_BUILT
    bench.final_build(_build(out), out, tmp_path / "log")
    assert len(runs) == 1 and not (tmp_path / "ledger.json").exists()


def test_a_build_made_before_the_ledger_is_recorded_when_reused(tmp_path, runs):
    out = tmp_path / "out"
    out.mkdir()
    command = _build(out)
    (out / "report.json").write_text(json.dumps({"int8_accuracy": 0.93, "out": str(out)}))
    (out / bench.FINISHED).write_text(json.dumps(command))
    ledger = tmp_path / "ledger.json"
    assert bench.final_build(command, out, tmp_path / "log", ledger=ledger)["int8_accuracy"] == 0.93
    assert not runs
    assert json.loads(ledger.read_text())[0]["report"] == {"int8_accuracy": 0.93}


def test_recording_again_replaces_that_command_and_keeps_the_others(tmp_path):
    ledger = tmp_path / "ledger.json"
    bench.record_run(ledger, _build(tmp_path, seed=0), {"int8_accuracy": 0.1})
    bench.record_run(ledger, _build(tmp_path, seed=1), {"int8_accuracy": 0.2})
    bench.record_run(ledger, _build(tmp_path / "again", seed=0), {"int8_accuracy": 0.3})
    entries = json.loads(ledger.read_text())
    assert [e["report"]["int8_accuracy"] for e in entries] == [0.2, 0.3]
    assert not list(tmp_path.glob("*.partial"))


def _tune_args(finished_only: bool = False) -> argparse.Namespace:
    return argparse.Namespace(base="tiny", grid="1", epochs=1, seed=0, limit=100, finished_only=finished_only)


def test_a_recorded_tune_is_reused_and_a_new_one_recorded(tmp_path, runs):
    ledger = tmp_path / "ledger.json"
    summary, _, _ = bench.tuned(_tune_args(), "esp32", tmp_path / "one", ledger)
    assert summary["int8_accuracy"] == 0.9 and len(runs) == 1
    again, seconds, _ = bench.tuned(_tune_args(finished_only=True), "esp32", tmp_path / "two", ledger)
    assert again == {"int8_accuracy": 0.9, "seconds": 1.0} and seconds == 1.0 and len(runs) == 1


def test_finished_only_without_a_record_reads_the_folder(tmp_path, runs):
    summary, _, why = bench.tuned(_tune_args(finished_only=True), "esp32", tmp_path, tmp_path / "ledger.json")
    assert summary is None and why == "not tuned yet" and not runs


def test_final_candidates_build_what_accuracy_builds_for_the_same_point():
    from tinyscale.search.tune_grid import lattice

    winner = next(c for c in lattice(4) if c.alpha == 2 ** 0.5 and c.beta == 2 ** 0.125)
    paper, given = bench.final_rows("1.2,1.1,1.15;1.4142135623730951,1.0905077326652577")
    args = argparse.Namespace(base="efficientnet-lite0", epochs=30, limit=None)
    row = {"alpha": winner.alpha, "beta": winner.beta, "gamma": winner.gamma}
    # The same command, hence the same ledger key: accuracy reuses what final built, and the reverse.
    assert bench.build_command(args, "esp32", Path("a"), given, 1) == bench.build_command(args, "esp32", Path("a"),
                                                                                          row, 1)
    assert (paper["candidate"], paper["alpha"], paper["gamma"]) == (1, 1.2, 1.15)


def test_final_prints_each_candidates_seeds_and_its_gain_over_the_first(tmp_path, runs, capsys, monkeypatch):
    def run_json(command, log, cores=None):
        runs.append(command)
        Path(command[command.index("-o") + 1]).mkdir()  # as `build` makes its output folder
        gamma = float(command[command.index("--gamma") + 1])
        return {"int8_accuracy": 0.9 if gamma == 1.15 else 0.915}, 1.0, ""

    monkeypatch.setattr(bench, "run_json", run_json)
    args = argparse.Namespace(target="esp32", candidates="1.2,1.1,1.15;1.4142135623730951,1.0905077326652577",
                              seeds=[0, 1], base="tiny", epochs=1, limit=100, jobs=1, finished_only=False,
                              no_ledger=True)
    bench.finals(args, tmp_path)
    table = capsys.readouterr().out.splitlines()
    assert len(runs) == 4 and sorted(p.name for p in tmp_path.iterdir()) == [
        "esp32-final1-s0", "esp32-final1-s1", "esp32-final2-s0", "esp32-final2-s1"]
    assert table[-2].split()[-4:] == ["90.00", "90.00", "90.00", "-"]  # the baseline: no gain over itself
    assert table[-1].split()[-2:] == ["91.50", "+1.50"]


def test_the_gain_over_the_paper_pairs_only_seeds_both_finished():
    # Seed 1 of the candidate is missing (a build still running): its paper score must not enter the mean.
    scores = {("esp32", 1, 0): 0.936, ("esp32", 1, 1): 0.937, ("esp32", 2, 0): 0.939, ("esp32", 2, 1): bench.NOT_BUILT}
    gain, seeds = bench.paired_gain(scores, "esp32", 2, [0, 1])
    assert seeds == [0] and gain == pytest.approx(0.003)
    assert bench.paired_gain(scores, "esp32", 3, [0, 1]) == (None, [])
    assert bench.paired_gain(scores, "esp32", 1, [0, 1])[0] is None  # no gain over itself


@pytest.mark.parametrize("mode, fields, line", [
    ("final", {"target": "esp32", "candidates": "x,y"}, "error: --candidates: 'x,y' is not alpha,beta"),
    ("final", {"target": "nosuch", "candidates": "1.2,1.1,1.15"}, "error: unknown target 'nosuch'"),
    ("accuracy", {"targets": ["esp32", "esp23"]}, "error: unknown target 'esp23'; did you mean esp32?"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_folder_is_made(mode, fields, line, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.check_arguments(argparse.Namespace(mode=mode, **fields))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(line) and err.count("\n") == 1
