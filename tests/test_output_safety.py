"""Issue 9 "nothing lost, nothing surprising", across commands: umask-respecting
permissions, unwritable outputs refused before long work, and run folders that
hold one run (train --force / build --force replace only what tinyscale wrote)."""

from __future__ import annotations

import errno
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyscale import fsutil
from tinyscale.cli import app

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_fit import board_toml  # noqa: E402
from test_pipeline_cli import one_line_error, small_target, write_stripes  # noqa: E402

MASKS = [0o022, 0o002]
TINY_MODEL = Path(__file__).parent / "golden" / "tiny.tflite"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def umask(request):
    """Run the test body under the parametrized umask, restoring the caller's."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def assert_modes(root: Path, mask: int) -> int:
    """Every file is 0666 & ~mask and every folder 0777 & ~mask, as open()/mkdir would make them."""
    checked = 0
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert mode == expected, f"{path} is {mode:o}, expected {expected:o} under umask {mask:03o}"
        checked += 1
    return checked


def train_run(data: Path, out: Path, *extra):
    result = invoke("train", "--data", data, "--base", "tiny", "--phi", "0", "--epochs", "1", "--batch-size", "16",
                    "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return write_stripes(tmp_path_factory.mktemp("data") / "stripes.npz")


# ---------------------------------------------------------------------------
# Item 4: permissions follow the umask


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_fsutil_outputs_follow_the_umask(tmp_path, umask):
    fsutil.atomic_write_text(tmp_path / "new" / "a.txt", "x")
    staged = fsutil.staging_directory(tmp_path / "tree")
    (staged / "sub").mkdir()
    (staged / "sub" / "f").write_text("y")
    fsutil.publish_tree(staged, tmp_path / "tree")
    assert assert_modes(tmp_path / "new", umask) == 2
    assert assert_modes(tmp_path / "tree", umask) == 3


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("the user's model")

    def half_written(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fsutil.atomic_write(target, half_written, suffix=".keras")
    assert target.read_text() == "the user's model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_firmware_project_follows_the_umask(tmp_path, umask):
    for out in (tmp_path / "new", tmp_path / "existing"):  # staged-and-renamed, and updated in place
        if out.name == "existing":
            out.mkdir()
        result = invoke("firmware", TINY_MODEL, "--target", "esp32", "-o", out)
        assert result.exit_code == 0, result.output
        assert assert_modes(out, umask) > 10


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_train_and_convert_follow_the_umask(tmp_path, stripes, umask):
    run = tmp_path / "run"
    train_run(stripes, run)
    result = invoke("convert", run / "model.keras", "--calibration-samples", "8")
    assert result.exit_code == 0, result.output
    assert assert_modes(run, umask) == 4  # run/, model.keras, history.json, model.tflite


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_fit_out_and_scale_tflite_follow_the_umask(tmp_path, umask):
    board = board_toml(tmp_path / "board.toml", 60_000, 40_000)
    result = invoke("fit", "--target", board, "--base", "tiny", "--out", tmp_path / "fit" / "deep")
    assert result.exit_code == 0, result.output
    assert assert_modes(tmp_path / "fit", umask) == 4
    result = invoke("scale", "--phi", "0", "--base", "tiny", "--tflite", tmp_path / "scaled" / "m.tflite")
    assert result.exit_code == 0, result.output
    assert assert_modes(tmp_path / "scaled", umask) == 2


@pytest.mark.parametrize("umask", MASKS, indirect=True)
def test_build_follows_the_umask(tmp_path, stripes, umask):
    target = small_target(tmp_path / "small-board.toml")
    result = invoke("build", "--target", target, "--data", stripes, "--base", "tiny", "--epochs", "1",
                    "--calibration-samples", "8", "--workers", "1", "-o", tmp_path / "built", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["firmware"] is True
    assert assert_modes(tmp_path / "built", umask) > 15


# ---------------------------------------------------------------------------
# Item 5: an output that cannot be written fails first, in one line


def _never(what: str):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} ran before the output was checked")
    return fail


def _blocked(tmp_path: Path) -> Path:
    """A path under a regular file: unwritable even for root."""
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "sub"


def test_unwritable_outputs_fail_before_the_long_work(tmp_path, stripes, monkeypatch):
    from tinyscale.commands import pipeline
    from tinyscale.search import fit as fit_module

    blocked = _blocked(tmp_path)
    monkeypatch.setattr(pipeline, "_train", _never("training"))
    monkeypatch.setattr(pipeline, "_load_float_model", _never("loading the model"))
    monkeypatch.setattr(pipeline, "_run_fit", _never("the fit"))
    monkeypatch.setattr(pipeline, "_simulation", _never("the simulation"))
    monkeypatch.setattr(fit_module, "fit", _never("the fit"))
    monkeypatch.setattr(fit_module, "measured_memory", _never("the conversion"))
    keras_file = tmp_path / "m.keras"  # convert judges its input's kind first: a zip, as a .keras is
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", "{}")
    commands = {
        "train": ["train", "--data", stripes, "--phi", "0", "--base", "tiny", "-o", blocked],
        "convert": ["convert", keras_file, "-o", blocked / "m.tflite"],
        "fit": ["fit", "--target", "esp32", "--out", blocked],
        "scale": ["scale", "--phi", "0", "--base", "tiny", "--tflite", blocked / "m.tflite"],
        "build": ["build", "--target", "esp32", "--data", stripes, "-o", blocked],
        "simulate": ["simulate", TINY_MODEL, "--plot", blocked / "p.png"],
    }
    for name, args in commands.items():
        line = one_line_error(invoke(*args), 1, "cannot write")
        assert str(blocked) in line, (name, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.keras"]
    assert (tmp_path / "file").read_text() == "x"


def test_probe_leaves_no_folder_behind(tmp_path):
    fsutil.check_writable_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def test_oserror_while_saving_the_model_is_one_line_naming_it(tmp_path, stripes, monkeypatch):
    import keras

    def read_only(self, path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(keras.Model, "save", read_only)
    out = tmp_path / "run"
    result = invoke("train", "--data", stripes, "--base", "tiny", "--phi", "0", "--epochs", "1", "-o", out, "--json")
    one_line_error(result, 1, f"cannot write {out / 'model.keras'}: Read-only file system")
    assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------
# Items 1 and 6: a run folder holds one run; the user's files are never touched


def test_train_force_removes_the_previous_runs_outputs_only(tmp_path, stripes):
    run = tmp_path / "run"
    train_run(stripes, run)
    assert invoke("convert", run / "model.keras", "--calibration-samples", "8").exit_code == 0
    assert json.loads((run / "history.json").read_text())["outputs"] == ["history.json", "model.keras", "model.tflite"]
    (run / "notes.txt").write_text("mine")
    (run / "other.tflite").write_bytes(b"mine too")  # not recorded: the user's

    again = train_run(stripes, run, "--force", "--seed", "1", "--json")
    assert json.loads(again.stdout)["removed"] == ["model.tflite"]
    assert sorted(p.name for p in run.iterdir()) == ["history.json", "model.keras", "notes.txt", "other.tflite"]
    assert json.loads((run / "history.json").read_text())["outputs"] == ["history.json", "model.keras"]
    assert (run / "notes.txt").read_text() == "mine"
    text = train_run(stripes, run, "--force")  # nothing left to remove: no removed line
    assert "removed" not in text.stdout


def test_build_force_and_train_force_in_a_build_folder(tmp_path, stripes, monkeypatch):
    target = small_target(tmp_path / "small-board.toml")
    built = tmp_path / "built"
    built.mkdir()
    (built / "notes.txt").write_text("mine")
    monkeypatch.chdir(built)  # `-o .`: updated in place, nothing beside or inside left over
    build = ["build", "--target", target, "--data", stripes, "--base", "tiny", "--epochs", "1",
             "--calibration-samples", "8", "--workers", "1", "-o", ".", "--json"]
    one_line_error(invoke(*build), 4, "--force")
    result = invoke(*build, "--force")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kept"] == ["notes.txt"] and report["replaced"] == [] and report["removed"] == []
    (built / "firmware" / "sdkconfig").write_text("CONFIG_MINE=y")
    again = json.loads(invoke(*build, "--force").stdout)
    assert again["kept"] == ["firmware/sdkconfig", "notes.txt"] and set(again["replaced"]) == set(again["written"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built", "small-board.toml"]
    assert not [p for p in built.rglob(".*")]

    # Training from the build's own fit.json replaces the run but keeps that input.
    result = invoke("train", "--fit", "fit.json", "--data", stripes, "--epochs", "1", "-o", ".", "--force", "--json")
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)["removed"]
    assert {"model.tflite", "simulation.json", "report.json", "firmware/manifest.json"} <= set(removed)
    assert "fit.json" not in removed and (built / "fit.json").is_file()
    assert sorted(p.relative_to(built).as_posix() for p in built.rglob("*")) == [
        "firmware", "firmware/sdkconfig", "fit.json", "history.json", "model.keras", "notes.txt"]


def test_train_force_over_a_run_without_a_record_keeps_its_files(tmp_path, stripes):
    run = tmp_path / "run"
    train_run(stripes, run)
    history = json.loads((run / "history.json").read_text())
    del history["outputs"]  # as an older tinyscale wrote it
    (run / "history.json").write_text(json.dumps(history))
    (run / "model.tflite").write_bytes(b"old run")
    result = train_run(stripes, run, "--force", "--json")
    assert json.loads(result.stdout)["removed"] == [] and (run / "model.tflite").read_bytes() == b"old run"
    assert "records no outputs" in result.stderr


def test_fit_out_force_replaces_its_two_files_and_keeps_the_rest(tmp_path):
    board = board_toml(tmp_path / "board.toml", 60_000, 40_000)
    out = tmp_path / "fit"
    out.mkdir()
    (out / "fit.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    result = invoke("fit", "--target", board, "--base", "tiny", "--out", out, "--force", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "fit.json").read_text()) == json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["fit.json", "model.tflite", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
