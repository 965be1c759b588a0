"""Training: a learnable toy task, repeatability with a seed, saving without clobbering."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tinyscale.errors import DataError, OutputExistsError, UsageError
from tinyscale.network import arch
from tinyscale.training.data import Dataset
from tinyscale.training.train import (
    HISTORY_FILE,
    MODEL_FILE,
    TrainConfig,
    early_stopping_start,
    load_keras_model,
    save_training,
    train_network,
    training_device,
)
from tinyscale.training.train_checkpoint import checkpoint_for


def stripes(count: int = 96, size: int = 20, seed: int = 0) -> Dataset:
    """Two classes anyone can tell apart: horizontal vs vertical stripes, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    pattern = (np.arange(size) // 2 % 2 * 200).astype(np.float32)
    images = np.where(labels[:, None, None] == 0, pattern[None, :, None], pattern[None, None, :])
    images = images + rng.normal(0, 20, size=(count, size, size))
    x = np.clip(images, 0, 255).astype(np.uint8)[..., None]
    return Dataset(x, labels, ("horizontal", "vertical"), "stripes")


NETWORK = arch.scale("tiny", 0, classes=2, channels=1)
QUICK = TrainConfig(epochs=2, batch_size=32, augment=False, seed=7)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trained():
    reports = []
    logger, records = logging.getLogger("tinyscale.training.train"), _Records()  # this one run's INFO records
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        result = train_network(NETWORK, stripes(), QUICK, progress=reports.append)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return result, reports, records.messages


def test_training_logs_the_device_it_trains_on(trained):
    messages = trained[2]
    assert f"training on {training_device()}" in messages, messages


def test_training_device_names_a_visible_gpu_else_the_cpu(monkeypatch):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    assert training_device().startswith(gpus[0].name.removeprefix("/physical_device:") if gpus else "CPU")

    class FakeGpu:
        name, device_type = "/physical_device:GPU:0", "GPU"

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [FakeGpu()] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda device: {"device_name": "Tesla T4"})
    assert training_device() == "GPU:0 (Tesla T4)"


def test_training_reports_progress_and_keeps_the_best_epoch(trained):
    result, reports, _ = trained
    assert [r.epoch for r in reports] == [1, 2]
    assert result.epochs_run == 2
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    start = early_stopping_start(QUICK)
    best = start + int(np.argmax(result.history["val_accuracy"][start:]))
    assert result.best_epoch == best + 1
    assert result.val_accuracy == result.history["val_accuracy"][best]
    assert result.train_samples + result.val_samples == 96
    assert tuple(result.model.input_shape[1:]) == NETWORK.spec.input_shape


def test_early_stopping_waits_for_the_second_half_of_the_schedule():
    config = TrainConfig(epochs=6, batch_size=32, augment=False, patience=1, seed=3)
    assert early_stopping_start(config) == 3
    result = train_network(NETWORK, stripes(), config)
    # Patience counts only from epoch 4 (1-based): at least 5 epochs run, and the
    # kept epoch is the best validation accuracy among those watched.
    assert result.epochs_run >= 5
    watched = result.history["val_accuracy"][3:]
    assert result.best_epoch == 4 + int(np.argmax(watched))
    assert result.val_accuracy == max(watched)


def test_same_seed_same_history(trained):
    again = train_network(NETWORK, stripes(), QUICK)
    assert again.history == trained[0].history


def test_class_mismatch_and_bad_settings():
    three = Dataset(stripes().x, np.arange(96) % 3, ("a", "b", "c"), "three")
    with pytest.raises(DataError, match="3 classes but the network .* predicts 2"):
        train_network(NETWORK, three, QUICK)
    with pytest.raises(UsageError, match="--epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(UsageError, match="--validation-split"):
        TrainConfig(validation_fraction=1.0)


def test_save_writes_both_files_and_refuses_to_clobber(trained, tmp_path):
    result = trained[0]
    model_path, history_path, _ = save_training(result, tmp_path, {"data": "stripes"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [HISTORY_FILE, MODEL_FILE]
    history = json.loads(history_path.read_text())
    assert history["data"] == "stripes" and history["best_epoch"] == result.best_epoch
    reloaded = load_keras_model(model_path)
    x = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    assert np.allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-6)
    before = model_path.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        save_training(result, tmp_path, {"data": "other"})
    assert model_path.read_bytes() == before
    assert json.loads(history_path.read_text())["data"] == "stripes"


# ---------------------------------------------------------------------------
# Resuming an interrupted training

RESUMABLE = TrainConfig(epochs=4, batch_size=32, augment=False, patience=1, seed=7)


def _interrupt_at(epoch: int):
    def progress(report) -> None:
        if not report.partial and report.epoch == epoch:
            raise KeyboardInterrupt

    return progress


def _interrupted(checkpoint, epoch: int = 2) -> None:
    with pytest.raises(KeyboardInterrupt) as interrupted:
        train_network(NETWORK, stripes(), RESUMABLE, progress=_interrupt_at(epoch), checkpoint=checkpoint)
    assert interrupted.value.__notes__ == [
        f"training is saved after epoch {epoch}/4 in {checkpoint.directory}: the same command resumes it"]


def test_an_interrupted_training_resumes_after_its_last_saved_epoch(tmp_path):
    checkpoint = checkpoint_for(tmp_path / "run", NETWORK, stripes(), RESUMABLE)
    _interrupted(checkpoint, epoch=2)
    assert checkpoint.completed_epochs() == 2
    # One epoch's weights on disk, not one file per epoch.
    assert sorted(p.name for p in checkpoint.directory.iterdir()) == ["epoch-2.weights.h5", "run.json", "state.json"]
    resumed = train_network(NETWORK, stripes(), RESUMABLE, checkpoint=checkpoint)
    uninterrupted = train_network(NETWORK, stripes(), RESUMABLE)
    assert resumed.epochs_run == uninterrupted.epochs_run == 4
    assert resumed.resumed_at == (3,) and uninterrupted.resumed_at == ()
    # The saved epochs are kept as they ran; the optimizer's step count (the cosine schedule's
    # position) came back with the weights.
    assert resumed.history["loss"][:2] == uninterrupted.history["loss"][:2]
    steps = int(resumed.model.optimizer.iterations.numpy())
    assert steps == int(uninterrupted.model.optimizer.iterations.numpy()) == 4 * 3
    assert resumed.val_accuracy == resumed.history["val_accuracy"][resumed.best_epoch - 1]
    assert resumed.summary()["resumed_at_epochs"] == [3]


def test_a_training_interrupted_after_its_last_epoch_restores_its_best_weights_without_training(tmp_path):
    checkpoint = checkpoint_for(tmp_path / "run", NETWORK, stripes(), RESUMABLE)
    first = train_network(NETWORK, stripes(), RESUMABLE, checkpoint=checkpoint)  # not discarded: as if killed
    again = train_network(NETWORK, stripes(), RESUMABLE, checkpoint=checkpoint)
    assert again.history == first.history and again.best_epoch == first.best_epoch
    assert again.resumed_at == ()
    assert all(np.array_equal(a, b) for a, b in zip(again.model.get_weights(), first.model.get_weights()))
    checkpoint.discard()
    assert not checkpoint.directory.parent.exists()


def test_only_the_same_training_for_the_same_output_shares_a_checkpoint(tmp_path):
    data = stripes()
    here = checkpoint_for(tmp_path / "run", NETWORK, data, RESUMABLE).directory
    assert checkpoint_for(tmp_path / "run", NETWORK, stripes(), RESUMABLE).directory == here
    others = [
        checkpoint_for(tmp_path / "other", NETWORK, data, RESUMABLE),
        checkpoint_for(tmp_path / "run", arch.scale("tiny", 0, classes=3, channels=1),
                       Dataset(data.x, data.y, ("a", "b", "c"), "stripes"), RESUMABLE),
        checkpoint_for(tmp_path / "run", NETWORK, stripes(seed=1), RESUMABLE),
        checkpoint_for(tmp_path / "run", NETWORK, data, TrainConfig(epochs=4, batch_size=32, augment=False,
                                                                    patience=1, seed=8)),
    ]
    assert len({here, *(other.directory for other in others)}) == 5
    # Runs into one output share its folder: a finished one clears what earlier ones left.
    assert others[1].directory.parent == here.parent and others[0].directory.parent != here.parent


def test_an_unreadable_checkpoint_starts_over(tmp_path):
    checkpoint = checkpoint_for(tmp_path / "run", NETWORK, stripes(), RESUMABLE)
    _interrupted(checkpoint, epoch=1)
    (checkpoint.directory / "epoch-1.weights.h5").unlink()  # the state names a file that is gone
    assert checkpoint.completed_epochs() == 0
    assert train_network(NETWORK, stripes(), RESUMABLE, checkpoint=checkpoint).resumed_at == ()


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_training(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder would go")
    monkeypatch.setenv("TINYSCALE_CHECKPOINT_DIR", str(blocker))
    checkpoint = checkpoint_for(tmp_path / "run", NETWORK, stripes(), QUICK)
    with caplog.at_level(logging.WARNING, logger="tinyscale.training.train"):
        result = train_network(NETWORK, stripes(), QUICK, checkpoint=checkpoint)
    assert result.epochs_run == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"cannot save the training state in {checkpoint.directory}")


def test_a_checkpoint_that_does_not_load_starts_the_same_training_over(tmp_path, caplog):
    checkpoint = checkpoint_for(tmp_path / "run", NETWORK, stripes(), RESUMABLE)
    _interrupted(checkpoint, epoch=1)
    (checkpoint.directory / "epoch-1.weights.h5").write_bytes(b"not an HDF5 file")
    with caplog.at_level(logging.WARNING, logger="tinyscale.training.train"):
        again = train_network(NETWORK, stripes(), RESUMABLE, checkpoint=checkpoint)
    assert any(r.getMessage().startswith(f"cannot resume from {checkpoint.directory}") for r in caplog.records)
    # Started over from the seeded weights: the very run an uninterrupted training makes.
    assert again.resumed_at == () and again.history == train_network(NETWORK, stripes(), RESUMABLE).history
