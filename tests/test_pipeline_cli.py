"""`tinyscale train`, `convert`, `simulate` and `build` through the CLI, good and bad input."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tinyscale.cli import app

runner = CliRunner()
NUCLEO = Path(__file__).resolve().parent.parent / "targets" / "nucleo-l476rg.toml"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int | None = None, match: str = "") -> str:
    """Assert a clean failure: non-zero exit, one `error:` line, no traceback."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert "internal error" not in lines[0], lines[0]
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def write_stripes(path: Path, count: int = 64, classes: int = 2, size: int = 16) -> Path:
    """A learnable npz: class k has stripes of period k+2."""
    rng = np.random.default_rng(0)
    labels = np.arange(count) % classes
    columns = np.arange(size)
    images = np.stack([((columns // (label + 1)) % 2 * 220)[None, :].repeat(size, 0) for label in labels])
    images = np.clip(images + rng.normal(0, 15, images.shape), 0, 255).astype(np.uint8)
    np.savez(path, x=images, y=labels, class_names=np.array([f"period{k + 2}" for k in range(classes)]))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def trained(workdir):
    data = write_stripes(workdir / "stripes.npz")
    out = workdir / "run"
    result = invoke("train", "--data", data, "--base", "tiny", "--phi", "0", "--epochs", "1",
                    "--batch-size", "16", "--seed", "3", "-o", out)
    assert result.exit_code == 0, result.output
    return data, out, result


@pytest.fixture(scope="module")
def converted(trained):
    _, out, _ = trained
    result = invoke("convert", out / "model.keras", "--calibration-samples", "16")
    assert result.exit_code == 0, result.output
    return out / "model.tflite", result


# ---------------------------------------------------------------------------
# train


def test_train_names_the_device_it_trains_on(trained):
    from tinyscale.training.train import training_device

    first = next(line for line in trained[2].stderr.splitlines() if line.startswith("training "))
    assert first.endswith(f", device {training_device()}"), first


def _folder_with_broken_image(root: Path) -> Path:
    import tensorflow as tf

    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            (root / name / f"{i}.png").write_bytes(tf.io.encode_png(np.full((8, 8, 1), 40 * i, np.uint8)).numpy())
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def test_train_skips_an_unreadable_image_with_a_warning_and_strict_refuses_it(tmp_path):
    images = _folder_with_broken_image(tmp_path / "imgs")
    # --fit names no file: the command stops right after loading the data.
    lenient = invoke("train", "--data", images, "--fit", tmp_path / "none.json", "-o", tmp_path / "run")
    assert lenient.exit_code == 2, lenient.output
    assert re.search(r"WARNING: skipped 1 unreadable image in .*imgs: .*broken\.jpg", lenient.stderr), lenient.stderr
    assert "cannot read" in lenient.stderr  # got past the images to the missing fit.json
    strict = invoke("train", "--data", images, "--strict", "--fit", tmp_path / "none.json", "-o", tmp_path / "run")
    one_line_error(strict, 1, r"cannot decode image .*broken\.jpg")


def test_train_writes_model_and_history(trained):
    data, out, result = trained
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model.keras"]
    history = json.loads((out / "history.json").read_text())
    assert history["data"] == str(data)
    assert history["network"]["base"] == "tiny" and history["network"]["classes"] == 2
    assert history["network"]["channels"] == 1 and history["epochs_run"] == 1
    assert "epoch 1/1" in result.stderr and "val accuracy" in result.stdout


def test_train_refuses_to_clobber(trained):
    data, out, _ = trained
    before = (out / "model.keras").read_bytes()
    result = invoke("train", "--data", data, "--base", "tiny", "--phi", "0", "--epochs", "1", "-o", out)
    one_line_error(result, 4, "--force")
    assert (out / "model.keras").read_bytes() == before


def _interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C right after `epoch` (1-based) ends, as a user would press it."""
    from tinyscale.commands import pipeline

    real = pipeline._epoch_status

    def status_then_interrupt(report):
        if not report.partial and report.epoch == epoch:
            raise KeyboardInterrupt
        return real(report)

    monkeypatch.setattr(pipeline, "_epoch_status", status_then_interrupt)


def interrupted_line(result) -> str:
    """The error line an interrupted run ends with (the epoch lines before it are progress)."""
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    return errors[0]


def test_an_interrupted_train_resumes_when_the_same_command_runs_again(workdir, trained, monkeypatch):
    data, out = trained[0], workdir / "resumed"
    command = ("train", "--data", data, "--base", "tiny", "--phi", "0", "--epochs", "3", "--batch-size", "16",
               "--seed", "3", "-o", out)
    with monkeypatch.context() as patched:
        _interrupt_after_epoch(patched, 2)
        interrupted = invoke(*command)
    line = interrupted_line(interrupted)
    assert line.startswith("error: interrupted; training is saved after epoch 2/3 in "), line
    assert not (out / "model.keras").exists()
    saved = Path(line.split(" in ", 1)[1].split(": the same command")[0])
    assert (saved / "state.json").is_file()
    resumed = invoke(*command)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming the interrupted training after epoch 2/3" in resumed.stderr
    assert "epoch 1/3" not in resumed.stderr and "epoch 3/3" in resumed.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["epochs_run"] == 3 and history["resumed_at_epochs"] == [3]
    assert "3 run, best" in resumed.stdout and "resumed at epoch 3" in resumed.stdout
    assert not saved.exists()  # a finished run leaves no checkpoint behind


def test_train_no_resume_starts_over(workdir, trained, monkeypatch):
    data, out = trained[0], workdir / "restarted"
    command = ("train", "--data", data, "--base", "tiny", "--phi", "0", "--epochs", "2", "--batch-size", "16",
               "-o", out)
    with monkeypatch.context() as patched:
        _interrupt_after_epoch(patched, 1)
        assert "training is saved after epoch 1/2" in interrupted_line(invoke(*command))
    restarted = invoke(*command, "--no-resume")
    assert restarted.exit_code == 0, restarted.output
    assert "resuming" not in restarted.stderr and "epoch 1/2" in restarted.stderr
    assert json.loads((out / "history.json").read_text())["resumed_at_epochs"] == []


def test_train_needs_exactly_one_network_source(workdir, trained):
    data = trained[0]
    one_line_error(invoke("train", "--data", data, "-o", workdir / "x"), 2, "exactly one of")
    one_line_error(invoke("train", "--data", data, "--phi", "0", "--target", "esp32", "-o", workdir / "x"), 2)


def test_train_from_fit_json_with_class_mismatch(workdir, trained):
    fit = {"target": "x", "base": "tiny", "phi": 0, "classes": 5, "channels": 1,
           "alpha": 1.2, "beta": 1.1, "gamma": 1.15, "resolution": 32}
    (workdir / "fit.json").write_text(json.dumps(fit))
    result = invoke("train", "--data", trained[0], "--fit", workdir / "fit.json", "-o", workdir / "y")
    one_line_error(result, 1, "fitted for 5 classes .* has 2")
    assert not (workdir / "y").exists()


def test_train_bad_datasets(workdir):
    np.savez(workdir / "empty.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, int))
    one_line_error(invoke("train", "--data", workdir / "empty.npz", "--base", "tiny", "--phi", "0",
                          "-o", workdir / "z"), 1, "empty")
    (workdir / "noise.npz").write_bytes(b"not a zip at all")
    one_line_error(invoke("train", "--data", workdir / "noise.npz", "--base", "tiny", "--phi", "0",
                          "-o", workdir / "z"), 1, "cannot read")
    one_line_error(invoke("train", "--data", workdir / "missing", "--base", "tiny", "--phi", "0",
                          "-o", workdir / "z"), 1, "no dataset")
    assert not (workdir / "z").exists()


# ---------------------------------------------------------------------------
# convert


def test_convert_prints_ops_sizes_and_quantization(converted):
    path, result = converted
    assert path.read_bytes()[4:8] == b"TFL3"
    assert "CONV_2D" in result.stdout and "zero point" in result.stdout
    assert "loads (checked)" in result.stdout


def test_convert_json_and_no_clobber(trained, converted):
    _, out, _ = trained
    one_line_error(invoke("convert", out / "model.keras"), 4, "--force")
    result = invoke("convert", out / "model.keras", "-o", out / "again.tflite", "--json", "--calibration-samples", "8")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model_bytes"] == (out / "again.tflite").stat().st_size
    assert data["inputs"][0]["dtype"] == "int8" and data["outputs"][0]["dtype"] == "int8"
    assert data["calibration_samples"] == 8


def test_convert_saved_model_directory(workdir, trained):
    data, out, _ = trained
    from tinyscale.quiet import quiet_tensorflow
    from tinyscale.training.train import load_keras_model

    with quiet_tensorflow():
        load_keras_model(out / "model.keras").export(str(workdir / "saved"))
    result = invoke("convert", workdir / "saved", "-o", workdir / "saved.tflite", "--data", data,
                    "--calibration-samples", "8", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["shape"] == [1, 2]
    one_line_error(invoke("convert", workdir, "-o", workdir / "d.tflite"), 1, "without saved_model.pb")


def test_convert_bad_inputs(workdir, trained, converted):
    tflite, _ = converted
    one_line_error(invoke("convert", tflite, "-o", workdir / "c.tflite"), 1, "already a TFLite flatbuffer")
    (workdir / "junk.keras").write_bytes(b"PK\x03\x04junk")  # looks like a zip, is not a Keras model
    one_line_error(invoke("convert", workdir / "junk.keras", "-o", workdir / "c.tflite"), 1, "cannot load")
    lonely = workdir / "lonely"
    lonely.mkdir()
    (lonely / "model.keras").write_bytes((trained[1] / "model.keras").read_bytes())
    one_line_error(invoke("convert", lonely / "model.keras"), 2, "pass --data")
    three = write_stripes(workdir / "three.npz", classes=3)
    one_line_error(invoke("convert", lonely / "model.keras", "--data", three), 1, "3 classes .* predicts 2")
    assert not (workdir / "c.tflite").exists() and not (lonely / "model.tflite").exists()


def test_convert_judges_its_input_before_the_default_output_clobber_check(tmp_path):
    # The default output of `convert X.tflite` is X.tflite itself, which exists.
    text = tmp_path / "notes.tflite"
    text.write_text("not a model\n")
    one_line_error(invoke("convert", text), 1, "notes.tflite is not a Keras model .* nor a SavedModel directory")
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes((Path(__file__).parent / "golden" / "tiny.tflite").read_bytes())
    one_line_error(invoke("convert", tflite), 1, "already a TFLite flatbuffer; convert takes a Keras model")
    (tmp_path / "text.keras").write_text("hello")
    one_line_error(invoke("convert", tmp_path / "text.keras"), 1, "is not a Keras model")
    assert text.read_text() == "not a model\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.tflite", "notes.tflite", "text.keras"]


# ---------------------------------------------------------------------------
# simulate


def test_simulate_table(converted):
    result = invoke("simulate", converted[0], "--target", "nucleo-l476rg")
    assert result.exit_code == 0, result.output
    assert "arena (minimal)" in result.stdout and "<- peak" in result.stdout
    assert "fits" in result.stdout and "headroom" in result.stdout
    analytic = next(line for line in result.stdout.splitlines() if "arena (analytic)" in line)
    assert "equal to the measured minimum" in analytic


def test_simulate_exits_3_after_its_report_when_the_model_does_not_fit(converted, workdir):
    board = workdir / "crowded.toml"
    text = NUCLEO.read_text().replace('name = "nucleo-l476rg"', 'name = "crowded-board"')
    text, regions = re.subn(r"(\[\[memory\]\].*?size_bytes = )[\d_]+", r"\g<1>2_048", text, count=1, flags=re.S)
    board.write_text(re.sub(r"(\[\[memory\]\].*?reserved_bytes = )[\d_]+", r"\g<1>0", text, count=1, flags=re.S))
    table = invoke("simulate", converted[0], "--target", board)
    assert "fits" in table.stdout and "no: SRAM" in table.stdout and "<- peak" in table.stdout
    one_line_error(table, 3, "does not fit crowded-board: SRAM")
    as_json = invoke("simulate", converted[0], "--target", board, "--json")
    assert json.loads(as_json.stdout)["fits"] is False
    one_line_error(as_json, 3, "does not fit")


def test_simulate_json_with_data_and_keras(trained, converted):
    data, out, _ = trained
    result = invoke("simulate", converted[0], "--target", "nucleo-l476rg", "--data", data,
                    "--keras", out / "model.keras", "--workers", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("model_bytes", "arena_bytes", "ops", "fits", "flash_needed_bytes", "sram_needed_bytes",
                "int8_accuracy", "float_accuracy", "agreement", "per_class_accuracy", "confusion_matrix",
                "images_per_second", "layers"):
        assert key in report, key
    assert report["samples"] == 64 and np.sum(report["confusion_matrix"]) == 64
    assert 0.0 <= report["agreement"] <= 1.0
    assert report["model_bytes"] == converted[0].stat().st_size


def test_simulate_plot_needs_matplotlib_or_writes_png(converted, workdir):
    result = invoke("simulate", converted[0], "--plot", workdir / "memory.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        one_line_error(result, 2, "matplotlib")
        assert not (workdir / "memory.png").exists()
        return
    assert result.exit_code == 0, result.output
    assert (workdir / "memory.png").read_bytes()[:4] == b"\x89PNG"


def test_simulate_plot_without_matplotlib_names_the_extra_before_any_work(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    not_a_model = workdir / "never-read.tflite"  # the check comes before the model is read
    not_a_model.write_bytes(b"not a model")
    result = invoke("simulate", not_a_model, "--plot", workdir / "never.png")
    line = one_line_error(result, 2, r"matplotlib")
    assert "plot extra" in line and "'.[plot]'" in line, line
    assert not (workdir / "never.png").exists()


def test_simulate_bad_models(workdir, converted):
    good = converted[0].read_bytes()
    cases = {
        "truncated.tflite": good[: len(good) // 2],
        "random.tflite": np.random.default_rng(1).bytes(5000),
        "empty.tflite": b"",
        "zeros.tflite": bytes(len(good)),
    }
    for name, content in cases.items():
        (workdir / name).write_bytes(content)
        one_line_error(invoke("simulate", workdir / name), 1)
    one_line_error(invoke("simulate", workdir / "absent.tflite"), 1, "cannot read")


def test_simulate_float_model_is_refused(workdir):
    import keras
    import tensorflow as tf

    from tinyscale.quiet import quiet_tensorflow

    inputs = keras.Input(shape=(8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with quiet_tensorflow():
        float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    (workdir / "float.tflite").write_bytes(float_model)
    one_line_error(invoke("simulate", workdir / "float.tflite"), 1, "float model; convert it")


def test_simulate_bad_data(workdir, converted):
    three = write_stripes(workdir / "three-classes.npz", classes=3)
    one_line_error(invoke("simulate", converted[0], "--data", three), 1, "3 classes but the model predicts 2")
    np.savez(workdir / "empty2.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, int))
    one_line_error(invoke("simulate", converted[0], "--data", workdir / "empty2.npz"), 1, "empty")
    one_line_error(invoke("simulate", converted[0], "--keras", "x.keras"), 2, "--data")


# ---------------------------------------------------------------------------
# build


def small_target(path: Path) -> Path:
    """nucleo-l476rg with budgets that the `tiny` base fills near phi 0 (fast to train)."""
    text = NUCLEO.read_text()
    text = text.replace('name = "nucleo-l476rg"', 'name = "small-board"')
    text = re.sub(r"budget_bytes = 1_048_576", "budget_bytes = 180_000", text)
    text, regions = re.subn(r"(\[\[memory\]\].*?size_bytes = )[\d_]+", r"\g<1>50_000", text, count=1,
                             flags=re.S)
    assert regions == 1
    path.write_text(text)
    return path


def build_small(workdir: Path, data: Path, out: Path):
    """A quick `build --json` of the tiny base for small_target (one epoch)."""
    target = small_target(workdir / "small-board.toml")
    return invoke("build", "--target", target, "--data", data, "--base", "tiny", "--epochs", "1",
                  "--calibration-samples", "16", "-o", out, "--json")


def build_failing(monkeypatch, module, attribute: str, error: Exception, workdir: Path, trained, name: str):
    """build_small into workdir/name with module.attribute raising `error`: (out, result)."""

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, attribute, fails)
    out = workdir / name
    return out, build_small(workdir, trained[0], out)


def test_build_end_to_end(workdir, trained):
    data = trained[0]
    out = workdir / "built"
    target = small_target(workdir / "small-board.toml")
    result = invoke("build", "--target", target, "--data", data, "--base", "tiny", "--epochs", "1",
                    "--calibration-samples", "16", "--workers", "2", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("phi", "resolution", "model_bytes", "arena_bytes", "float_accuracy", "int8_accuracy", "fits"):
        assert key in summary, key
    names = {p.name for p in out.iterdir()}
    assert {"fit.json", "model.keras", "history.json", "model.tflite", "simulation.json", "report.json"} <= names
    assert summary["model_bytes"] == (out / "model.tflite").stat().st_size
    assert json.loads((out / "report.json").read_text())["int8_accuracy"] == summary["int8_accuracy"]
    assert summary["firmware"] is True and (out / "firmware" / "README.md").is_file()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".built.")]  # no staging left behind
    one_line_error(invoke("build", "--target", target, "--data", data, "-o", out), 4, "--force")


def test_build_force_keeps_firmware_files_the_user_edited_unless_told(workdir, trained):
    out = workdir / "built-edited"
    assert build_small(workdir, trained[0], out).exit_code == 0
    main = next((out / "firmware").rglob("main.c*"))
    main.write_text(main.read_text() + "\n// my change\n")
    target = workdir / "small-board.toml"
    again = ["build", "--target", target, "--data", trained[0], "--base", "tiny", "--epochs", "1",
             "--calibration-samples", "16", "-o", out, "--force"]
    result = invoke(*again)
    one_line_error(result, 4, "was edited since tinyscale generated it.*--overwrite-edits")
    assert "fitting" not in result.stderr  # refused before any work
    assert main.read_text().endswith("// my change\n")
    assert invoke(*again, "--overwrite-edits").exit_code == 0
    assert "// my change" not in main.read_text()


def test_build_says_what_each_split_got_in_words_and_paths_that_work(workdir):
    out = workdir / "built-fashion"
    target = small_target(workdir / "small-board.toml")
    result = invoke("build", "--target", target, "--data", "fashion-mnist", "--limit", "60", "--base", "tiny",
                    "--epochs", "1", "--calibration-samples", "8", "--workers", "1", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    counts = report["train_samples"], report["validation_samples"], report["test_samples"]
    # The 60 limited samples are shared by training and validation; the test split is cut to 60 // 6.
    assert counts[0] + counts[1] == 60 and counts[1] >= 6 and counts[2] == 10, counts
    split_words = "{:,} train / {:,} validation / {:,} test samples".format(*counts)
    assert f"data: {split_words} (--limit 60 cuts the test split to limit/6" in result.stderr, result.stderr
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines() if line.strip())
    assert rows["data"] == split_words
    assert rows["training"].startswith("1 epoch,"), rows["training"]
    wrote = rows["wrote"].split(", ")
    assert len(wrote) == len(report["files"]) and all(Path(path).exists() for path in wrote), wrote
    assert Path(rows["firmware"].split(" (see ")[0]).is_dir()


def test_build_failing_after_training_keeps_the_trained_model(workdir, trained, monkeypatch):
    from tinyscale.commands import pipeline
    from tinyscale.errors import MeasurementError

    error = MeasurementError("the TFLM worker process died (exit -6): abort")
    out, result = build_failing(monkeypatch, pipeline, "_simulation", error, workdir, trained, "aborted")
    kept = workdir / "aborted.failed"
    one_line_error(result, 1, f"the trained model is kept in {kept / 'model.keras'}")
    assert not out.exists()  # the output itself is never half-written
    assert {p.name for p in kept.iterdir()} >= {"fit.json", "model.keras", "history.json"}
    assert not [p for p in workdir.iterdir() if p.name.startswith(".aborted.")]


def test_an_interrupted_build_resumes_its_training(workdir, trained, monkeypatch):
    out = workdir / "build-resumed"
    command = ("build", "--target", small_target(workdir / "small-board.toml"), "--data", trained[0], "--base",
               "tiny", "--epochs", "2", "--calibration-samples", "16", "-o", out)
    with monkeypatch.context() as patched:
        _interrupt_after_epoch(patched, 1)
        assert "training is saved after epoch 1/2" in interrupted_line(invoke(*command))
    assert not out.exists() and not [p for p in workdir.iterdir() if p.name.startswith(".build-resumed.")]
    resumed = invoke(*command)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming the interrupted training after epoch 1/2" in resumed.stderr
    assert json.loads((out / "report.json").read_text())["resumed_at_epochs"] == [2]
    assert re.search(r"training +2 epochs, \d+ s, resumed at epoch 2", resumed.stdout), resumed.stdout


def test_a_build_that_failed_after_training_reruns_without_training_again(workdir, trained, monkeypatch):
    from tinyscale.commands import pipeline
    from tinyscale.errors import MeasurementError

    with monkeypatch.context() as patched:
        out, failed = build_failing(patched, pipeline, "_simulation", MeasurementError("worker died"), workdir,
                                    trained, "rebuilt")
    assert failed.exit_code == 1
    def no_epoch_may_run(report):
        raise AssertionError(f"epoch {report.epoch} ran again")

    monkeypatch.setattr(pipeline, "_epoch_status", no_epoch_may_run)
    target = small_target(workdir / "small-board.toml")
    rebuilt = invoke("build", "--target", target, "--data", trained[0], "--base", "tiny", "--epochs", "1",
                     "--calibration-samples", "16", "-o", out)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "resuming the interrupted training after epoch 1/1" in rebuilt.stderr
    kept = json.loads((workdir / "rebuilt.failed" / "history.json").read_text())
    assert json.loads((out / "history.json").read_text())["history"] == kept["history"]


def test_a_terminated_build_cleans_up_and_names_its_saved_training(workdir, trained, tmp_path):
    """SIGTERM (a scheduler, a closing session) unwinds like Ctrl-C: no staging folder is left."""
    import os
    import signal
    import subprocess
    import time

    out, checkpoints = workdir / "terminated", tmp_path / "checkpoints"
    command = [sys.executable, "-m", "tinyscale", "build", "--target", str(small_target(workdir / "small-board.toml")),
               "--data", str(trained[0]), "--base", "tiny", "--epochs", "200", "--calibration-samples", "16",
               "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TINYSCALE_CHECKPOINT_DIR": str(checkpoints)})
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/*/state.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert re.match(r"error: terminated; training is saved after epoch \d+/200 in .*: the same command resumes it$",
                    last), stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not [p for p in workdir.iterdir() if p.name.startswith(".terminated.")]


def test_build_for_a_board_the_templates_cannot_serve_fails_before_training(workdir, trained):
    target = small_target(workdir / "bad-pin-board.toml")
    target.write_text(target.read_text().replace('tx_pin = "PA2"', 'tx_pin = "PZ2"'))
    out = workdir / "bad-pin"
    result = invoke("build", "--target", target, "--data", trained[0], "--base", "tiny", "--epochs", "1", "-o", out)
    one_line_error(result, 1, "console pin 'PZ2' is not an STM32 pin")
    assert "fitting" not in result.stderr  # refused before the fit and the training
    assert not out.exists() and not (workdir / "bad-pin.failed").exists()


def test_build_whose_firmware_step_fails_exits_non_zero_and_keeps_the_rest(workdir, trained, monkeypatch):
    from tinyscale.errors import TemplateError
    from tinyscale.project import render

    error = TemplateError("template main.cc.jinja: 'ctx' has no attribute 'x'")
    out, result = build_failing(monkeypatch, render, "build_context", error, workdir, trained, "no-firmware")
    one_line_error(result, TemplateError.exit_code, f"has no attribute 'x'; firmware not generated; .* in {out}$")
    summary = json.loads(result.stdout)
    assert summary["firmware"] is False and "has no attribute" in summary["firmware_problem"]
    assert {"model.keras", "model.tflite", "report.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "firmware").exists()
