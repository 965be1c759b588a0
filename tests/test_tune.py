"""`tinyscale tune`: the candidate grid, coefficients files, planning, resumption, both backends, build --tune.

The trials are tiny (the `tiny` base on a board it fills near phi 0, a few
hundred generated 16 px images, one epoch): the module costs about a minute.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tinyscale.cli import app
from tinyscale.errors import DoesNotFitError, UsageError
from tinyscale.network.coefficients import (
    CoefficientsFile,
    load_coefficients,
    parse_coefficients,
    write_coefficients,
)
from tinyscale.network.scaling import Coefficients
from tinyscale.search.fit import FitRequest, fit
from tinyscale.search.tune import (
    Candidate,
    Lead,
    TuneSettings,
    correct_bits,
    failed_trial,
    lead_over_paper,
    plan,
    row,
    table,
    winner,
)
from tinyscale.search.tune_grid import (
    PAPER,
    candidates,
    lattice,
    parse_candidates,
    solve_gamma,
)

runner = CliRunner()
NUCLEO = Path(__file__).resolve().parent.parent / "targets" / "nucleo-l476rg.toml"
# The paper's point, one a hair away from it (the same network after rounding) and
# resolution only (gamma solved: sqrt 2): three candidates, two networks, one round of 2 jobs.
GRID = "1.2,1.1,1.1500001;1,1"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int | None = None, match: str = "") -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in lines[0], lines[0]
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def small_board(path: Path, flash: int = 300_000, sram: int = 100_000) -> Path:
    """nucleo-l476rg with budgets where the `tiny` base stays small (fast to train) yet GRID gives three networks."""
    text = NUCLEO.read_text().replace('name = "nucleo-l476rg"', 'name = "small-board"')
    text = re.sub(r"budget_bytes = 1_048_576", f"budget_bytes = {flash}", text)
    text, regions = re.subn(r"(\[\[memory\]\].*?size_bytes = )[\d_]+", rf"\g<1>{sram}", text, count=1, flags=re.S)
    assert regions == 1
    path.write_text(text)
    return path


def write_blobs(path: Path, count: int = 240, size: int = 16) -> Path:
    """Three learnable classes of 16 px images: a bright square top-left, bottom-right, or none."""
    rng = np.random.default_rng(0)
    labels = np.arange(count) % 3
    images = rng.normal(40, 15, (count, size, size))
    half = size // 2
    images[labels == 0, :half, :half] += 160
    images[labels == 1, half:, half:] += 160
    x = np.clip(images, 0, 255).astype(np.uint8)
    np.savez(path, x=x, y=labels, class_names=np.array(["top-left", "bottom-right", "none"]))
    return path


# ---------------------------------------------------------------------------
# The grid (pure)


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_grid_lies_on_the_constraint_and_includes_the_papers_point(steps):
    points = candidates(str(steps))
    assert points[0] == PAPER == Coefficients(1.2, 1.1, 1.15)  # as published, first
    assert abs(PAPER.flops_base - 1.92) < 0.001  # on the constraint only approximately
    lattice_points = points[1:]
    assert len(lattice_points) == (steps + 1) * (steps + 2) // 2
    for point in lattice_points:
        assert min(point.alpha, point.beta, point.gamma) >= 1.0
        assert math.isclose(point.alpha * point.beta ** 2 * point.gamma ** 2, 2.0, rel_tol=1e-12)
        assert math.isclose(point.gamma, solve_gamma(point.alpha, point.beta))
    assert Coefficients(2.0, 1.0, 1.0) in lattice_points  # the corners: depth, width, resolution only
    assert len(set(lattice_points)) == len(lattice_points)


def _planned(grid: str | None, fits) -> list[Candidate]:
    return [Candidate(index, value, error=None if fits(value) else "nothing fits: ...")
            for index, value in enumerate(candidates(grid), start=1)]


def test_a_grid_of_which_few_candidates_fit_says_so_and_how_to_get_more():
    from tinyscale.commands.tune import few_fit_note

    def inside(value):  # what nucleo-l476rg measured: no point with beta or gamma 1 fits
        return min(value.beta, value.gamma) > 1

    assert few_fit_note(None, _planned(None, inside), "nucleo-l476rg") == (
        "only 2 of 7 candidates fit nucleo-l476rg (with beta or gamma 1, width or resolution stays the base's "
        "whatever phi); --grid 4 tries 16")
    assert few_fit_note("4", _planned("4", inside), "nucleo-l476rg") is None  # 7 of 16 fit
    assert few_fit_note("1.3,1.1", _planned("1.3,1.1", lambda value: value == PAPER), "b") == \
        "only 1 of 2 candidates fit b"  # a list the user chose: no --grid to suggest, no edge to blame
    assert few_fit_note("1", _planned("1", lambda value: True), "b") is None  # all 4 fit


def test_explicit_candidates_solve_a_missing_gamma_and_keep_a_given_one():
    given = parse_candidates("1.3,1.1; 1.2,1.1,1.15")
    assert math.isclose(given[0].flops_base, 2.0) and given[1] == PAPER
    assert candidates("1.3,1.1")[0] == PAPER and len(candidates("1.3,1.1")) == 2
    for bad, message in [("1.5,1.3", "no gamma >= 1"), ("x,1", "not alpha,beta"), ("0", "1 to 20 steps"),
                         ("0.9,1.1", ">= 1")]:
        with pytest.raises(UsageError, match=message):
            candidates(bad)
    assert lattice(1) == [Coefficients(2.0, 1.0, 1.0), Coefficients(1.0, 2 ** 0.5, 1.0),
                          Coefficients(1.0, 1.0, 2 ** 0.5)]


# ---------------------------------------------------------------------------
# coefficients.toml (pure)


def test_coefficients_file_round_trips_and_refuses_missing_or_bad_keys(tmp_path):
    document = CoefficientsFile(Coefficients(1.4142135623730951, 1.0, 1.189207115002721),
                                {"target": "esp32", "data": "fashion-mnist", "trials": 5, "seeds": [0, 1],
                                 "tinyscale_version": "0.1.0"})
    path = tmp_path / "coefficients.toml"
    write_coefficients(path, document)
    assert load_coefficients(path) == document  # floats exactly, provenance intact
    source = "c.toml"
    good = {"schema_version": 1, "coefficients": {"alpha": 1.2, "beta": 1.1, "gamma": 1.15}}
    for data, message in [
        ({"schema_version": 1, "coefficients": {"alpha": 1.2, "beta": 1.1}},
         r"\[coefficients\]: missing required key 'gamma'"),
        ({"schema_version": 1}, "missing required key 'coefficients'"),
        ({**good, "coefficients": {"alpha": 1.2, "beta": 1.1, "gamma": 0.5}},
         r"\[coefficients\]: 'gamma' must be a finite number >= 1"),
        ({**good, "coefficients": {**good["coefficients"], "delta": 1}}, r"\[coefficients\]: unknown key 'delta'"),
        ({**good, "provenance": {"trials": "five"}}, r"\[provenance\]: 'trials' must be int"),
        ({**good, "schema_version": 2}, "schema_version must be 1"),
        ({**good, "coefficients": {"alpha": True, "beta": 1.1, "gamma": 1.15}}, "'alpha' must be int/float"),
        ({**good, "provenance": {"seeds": [0, "1"]}}, "'seeds' must be a list of integers"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_coefficients(data, source)


# ---------------------------------------------------------------------------
# Planning (analytic, no TensorFlow)


def test_identical_networks_are_planned_once_and_nothing_fitting_is_one_error(synthetic_target, tmp_path):
    from tinyscale.boards.targets import load_target

    board = load_target(str(small_board(tmp_path / "b.toml")))
    settings = TuneSettings(board.name, "data.npz", "tiny", classes=3, channels=1)

    def fit_candidate(target):
        return lambda c: fit(FitRequest(target, "tiny", 3, 1, c), verify=False, patch="off")

    planned, jobs = plan(candidates(GRID), settings, fit_candidate(board))
    assert len(planned) == 3 and len(jobs) == 2  # the paper's point and its near twin share a trial
    assert planned[1].same_as == 1 and planned[1].key == planned[0].key
    assert planned[2].key != planned[0].key and len({job.key for job in jobs}) == 2
    assert [job.cost for job in jobs] == sorted((job.cost for job in jobs), reverse=True)  # longest first
    with pytest.raises(DoesNotFitError, match="no candidate of the grid yields a network that fits"):
        plan(candidates(GRID), settings, fit_candidate(synthetic_target(2_000, 1_000)))


def test_a_candidate_whose_smallest_network_does_not_fit_is_a_row_with_the_fitters_reason(tmp_path):
    from tinyscale.boards.targets import load_target
    from tinyscale.errors import NothingFitsError

    board = load_target(str(small_board(tmp_path / "b.toml")))
    settings = TuneSettings(board.name, "data.npz", "tiny", classes=3, channels=1)
    grid = candidates(GRID)

    def fit_candidate(c):
        if c == grid[-1]:
            raise NothingFitsError("nothing fits: the smallest tiny network needs flash 9 B > 1 B", {})
        return fit(FitRequest(board, "tiny", 3, 1, c), verify=False, patch="off")

    planned, _ = plan(grid, settings, fit_candidate)
    assert planned[-1].error == "nothing fits: the smallest tiny network needs flash 9 B > 1 B"  # said once
    assert planned[-1].key is None and planned[0].error is None


def test_a_failed_trial_is_a_row_and_the_winner_is_the_best_of_the_others():
    fitted = {"phi": 0.5, "resolution": 32, "blocks": 4, "params": 10, "macs": 100, "model_bytes": 1000,
              "arena_bytes": 500, "flash_utilisation": 0.5, "sram_utilisation": 0.9, "binding": "sram"}
    first, second = (Candidate(i, c, fitted, key=f"k{i}") for i, c in ((1, PAPER), (2, Coefficients(2, 1, 1))))
    rows = [row(first, failed_trial("k1", RuntimeError("boom")), 16),
            row(second, {"key": "k2", "int8_accuracy": 0.5, "float_accuracy": 0.6, "seconds": 1.0}, 16)]
    assert rows[0]["status"] == "failed" and rows[0]["error"] == "RuntimeError: boom"
    assert winner(rows)["candidate"] == 2
    text = table(rows, winner(rows))
    assert "failed: RuntimeError: boom" in text and "<- best" in text and "32*" in text
    assert "native 16 px" in text


def test_the_winners_lead_over_the_papers_point_is_weighed_against_the_proxys_noise():
    fitted = {"phi": 0.5, "resolution": 32, "blocks": 4, "params": 10, "macs": 100, "model_bytes": 1000,
              "arena_bytes": 500, "flash_utilisation": 0.5, "sram_utilisation": 0.9, "binding": "sram"}
    paper, other = (Candidate(i, c, fitted, key=f"k{i}") for i, c in ((1, PAPER), (2, Coefficients(1.4, 1.1, 1.1))))

    def scored(paper_accuracy, other_accuracy, samples=2000, trials=None):
        rows = [row(candidate, {"key": candidate.key, "int8_accuracy": accuracy, "float_accuracy": accuracy,
                                "seconds": 1.0, "validation_samples": samples}, 28)
                for candidate, accuracy in ((paper, paper_accuracy), (other, other_accuracy))]
        return lead_over_paper(rows, winner(rows), trials)

    assert scored(0.85, 0.80) is None  # the paper's point won: nothing to weigh
    # The L476 tune's proxy numbers: 83.50% against 83.15% on 2,000 images.
    close = scored(0.8315, 0.8350)
    assert close.points == 0.35 and close.standard_error_points == pytest.approx(1.18, abs=0.01)
    assert close.within_noise and "within the proxy's noise" in close.sentence()
    clear = scored(0.80, 0.90)
    assert not clear.within_noise and "beyond the proxy's noise" in clear.sentence()
    assert scored(0.8315, 0.8350, samples=200_000).within_noise is False  # the same lead, 100x the images
    # Paired: the same 83.15% and 83.50%, but the winner gets right every image the paper's point does and
    # 7 more. Only those 7 images differ, so the lead is sure; unpaired, the same totals look like noise.
    paper_correct = [True] * 1663 + [False] * 337
    winner_correct = [True] * 1670 + [False] * 330
    assert (sum(paper_correct), sum(winner_correct)) == (1663, 1670)
    trials = {"k1": {"int8_correct": correct_bits(paper_correct)}, "k2": {"int8_correct": correct_bits(winner_correct)}}
    sure = scored(0.8315, 0.8350, trials=trials)
    assert sure.paired and sure.standard_error_points == pytest.approx(0.13, abs=0.01) and not sure.within_noise
    assert "(paired)" in sure.sentence() and "(unpaired)" in close.sentence()
    assert not scored(0.8315, 0.8350, trials={"k1": {"int8_correct": "zz"}, "k2": {}}).paired  # unreadable: unpaired
    # A tie broken by float accuracy, both networks perfect: no lead, and no division by a zero error.
    tie = Lead(paper_candidate=1, points=0.0, standard_error_points=0.0, validation_samples=100, paired=True)
    assert tie.within_noise and "within the proxy's noise" in tie.sentence()


def test_correct_bits_keep_every_image_in_order():
    for correct in ([True], [False], [False, False, True], [True, False] * 1000 + [False] * 3):
        text = correct_bits(correct)
        assert len(text) == (len(correct) + 3) // 4
        assert bin(int(text, 16))[2:].zfill(len(correct)) == "".join("1" if c else "0" for c in correct)


# ---------------------------------------------------------------------------
# Through the CLI: local and Ray backends, resumption, build


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    return root, small_board(root / "small-board.toml"), write_blobs(root / "blobs.npz")


def tune_args(problem, out, *extra):
    _, board, data = problem
    return ("tune", "--target", board, "--data", data, "--base", "tiny", "--grid", GRID, "--epochs", "1",
            "--batch-size", "32", "--seed", "3", "--jobs", "2", "-o", out, "--json", *extra)


@pytest.fixture(scope="module")
def tuned_local(problem):
    out = problem[0] / "local"
    result = invoke(*tune_args(problem, out))
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def without_seconds(rows):
    return [{key: value for key, value in r.items() if key != "seconds"} for r in rows]


def test_tune_writes_the_table_files_and_the_winner(tuned_local):
    out, summary = tuned_local
    rows = json.loads((out / "trials.json").read_text())
    assert rows == summary["trials"] and len(rows) == 3
    for r in rows:
        assert {"alpha", "beta", "gamma", "phi", "resolution", "int8_accuracy", "float_accuracy", "seconds"} <= set(r)
        assert r["status"] == "ok" and 0.0 <= r["int8_accuracy"] <= 1.0
        assert r["upsampled"] is True  # 16 px data, 32 px at least
    assert rows[1]["same_as"] == 1 and rows[1]["int8_accuracy"] == rows[0]["int8_accuracy"]
    assert len(list((out / "trials").glob("*.json"))) == 2  # three candidates, two networks trained
    assert summary["trained"] == 2
    csv_lines = (out / "trials.csv").read_text().splitlines()
    assert csv_lines[0].startswith("candidate,alpha,beta,gamma") and len(csv_lines) == 4
    document = load_coefficients(out / "coefficients.toml")
    best = summary["best"]
    assert document.coefficients == Coefficients(best["alpha"], best["beta"], best["gamma"])
    assert document.provenance["target"] == "small-board" and document.provenance["trials"] == 2
    assert document.provenance["seeds"] == [3]
    lead = summary["lead_over_paper"]  # None when the paper's point itself won
    assert lead is None or set(lead) == {"paper_candidate", "points", "standard_error_points", "validation_samples",
                                         "within_noise"}
    pytest.importorskip("matplotlib")
    assert (out / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_skips_finished_trials_and_other_settings_are_refused(tuned_local, problem):
    out, summary = tuned_local
    trial = sorted((out / "trials").glob("*.json"))[0]
    trial.unlink()  # as if ^C had stopped the run before this trial finished
    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*.json")}
    result = invoke(*tune_args(problem, out))
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert (again["trained"], again["resumed"]) == (1, 1)
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # untouched, not retrained
    assert trial.is_file()
    assert without_seconds(again["trials"]) == without_seconds(summary["trials"])  # seeded: the same again
    human = invoke(*[arg for arg in tune_args(problem, out) if arg != "--json"])  # the same run, for people
    assert human.exit_code == 0, human.output
    assert "<- best" in human.stdout and "trained 0 trials, 2 from an earlier run" in human.stdout
    assert ("lead over the paper's point" in human.stdout) == (again["lead_over_paper"] is not None)
    one_line_error(invoke(*tune_args(problem, out, "--epochs", "2")), 4, "other settings .*epochs 1 there, 2 now")


def test_ray_backend_gives_the_local_table(tuned_local, problem):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a stale /tmp/ray cluster
    try:
        result = invoke(*tune_args(problem, problem[0] / "ray", "--backend", "ray"))
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert without_seconds(json.loads(result.stdout)["trials"]) == without_seconds(tuned_local[1]["trials"])


def test_bad_input_is_one_line(problem, tmp_path, monkeypatch):
    _, board, data = problem
    tiny_board = small_board(tmp_path / "tiny-board.toml", flash=140_000, sram=30_000)
    one_line_error(invoke("tune", "--target", tiny_board, "--data", data, "--base", "tiny", "--grid", GRID,
                          "-o", tmp_path / "none"), 3, "no candidate of the grid yields a network that fits")
    assert not (tmp_path / "none").exists()  # nothing half-written
    one_line_error(invoke(*tune_args(problem, tmp_path / "g", "--grid", "3,3")), 2, "no gamma")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    one_line_error(invoke(*tune_args(problem, tmp_path / "noray", "--backend", "ray")), 2,
                   r"needs Ray.*pip install 'tinyscale\[ray\]'")
    one_line_error(invoke(*tune_args(problem, tmp_path / "local", "--ray-address", "h:1")), 2, "needs --backend ray")


def test_an_unreachable_ray_address_is_one_line(problem, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    one_line_error(invoke(*tune_args(problem, tmp_path / "unreachable", "--backend", "ray",
                                     "--ray-address", "127.0.0.1:1")), 1, "cannot reach a Ray cluster at 127.0.0.1:1")


def test_coefficients_file_round_trips_into_fit_and_build(tuned_local, problem, tmp_path):
    out, summary = tuned_local
    _, board, data = problem
    coefficients_file = out / "coefficients.toml"
    expected = load_coefficients(coefficients_file).coefficients
    fitted = invoke("fit", "--target", board, "--base", "tiny", "--classes", "3", "--channels", "1",
                    "--coefficients", coefficients_file, "--no-verify", "--json")
    assert fitted.exit_code == 0, fitted.output
    fit_json = json.loads(fitted.stdout)
    assert (fit_json["alpha"], fit_json["beta"], fit_json["gamma"]) == (expected.alpha, expected.beta, expected.gamma)
    assert fit_json["phi"] == summary["verified_phi"]
    built = invoke("build", "--target", board, "--data", data, "--base", "tiny", "--epochs", "1",
                   "--calibration-samples", "16", "--coefficients", coefficients_file, "-o", tmp_path / "b", "--json")
    assert built.exit_code == 0, built.output
    build_fit = json.loads((tmp_path / "b" / "fit.json").read_text())
    assert (build_fit["alpha"], build_fit["beta"], build_fit["gamma"]) == (expected.alpha, expected.beta, expected.gamma)
    one_line_error(invoke("fit", "--target", board, "--coefficients", coefficients_file, "--alpha", "1.3"), 2,
                   "exclude each other")
    broken = tmp_path / "broken.toml"
    broken.write_text("schema_version = 1\n[coefficients]\nalpha = 1.2\nbeta = 1.1\n")
    one_line_error(invoke("build", "--target", board, "--data", data, "--coefficients", broken, "-o", tmp_path / "c"),
                   2, r"\[coefficients\]: missing required key 'gamma'")


def test_build_tune_builds_with_the_winning_coefficients(problem, tmp_path):
    _, board, data = problem
    out = tmp_path / "built"
    result = invoke("build", "--target", board, "--data", data, "--base", "tiny", "--epochs", "1",
                    "--calibration-samples", "16", "--tune", "--tune-grid", "2,1", "--tune-epochs", "1",
                    "--jobs", "2", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    tuned = load_coefficients(out / "tune" / "coefficients.toml").coefficients
    fit_json = json.loads((out / "fit.json").read_text())
    assert Coefficients(fit_json["alpha"], fit_json["beta"], fit_json["gamma"]) == tuned
    assert (out / "tune" / "trials.json").is_file() and (out / "report.json").is_file()
