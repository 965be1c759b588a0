"""Train a scaled network on a :class:`~tinyscale.training.data.Dataset` with Keras.

Images stay uint8 at their stored size; a tf.data pipeline resizes each batch
to the network's resolution (and grey <-> RGB) on the fly, so memory does not
grow with the resolution. TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from tinyscale.errors import DataError, TinyscaleError, UsageError, one_line
from tinyscale.fsutil import (
    atomic_write,
    atomic_write_text,
    refuse_clobber,
    remove_generated,
    safe_relative,
)
from tinyscale.network.arch import ScaledNetwork
from tinyscale.network.scaling import format_phi
from tinyscale.quiet import quiet_tensorflow
from tinyscale.training.data import Dataset, check_classes, split
from tinyscale.training.train_checkpoint import ResumePoint, TrainingCheckpoint

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
# history.json's list of the files tinyscale wrote into the run folder for this
# run (train, then convert/simulate into the same folder): what a later
# `train --force` there removes, so no output of the old run outlives it.
OUTPUTS_KEY = "outputs"
# Translation of up to 10% of the side: objects in photos and Fashion-MNIST are
# roughly centred, so small shifts add variety without cutting them off.
TRANSLATE_FRACTION = 0.1
# Below this many optimizer steps, batch-norm momentum 0.99 leaves the moving
# statistics mostly at their initial values; 0.9 converges in ~50 steps.
# Tracing the training step into a graph costs ~10 s; for a handful of steps
# (quick --limit runs, tests) running eagerly is faster overall.
EAGER_MAX_STEPS = 50
# Epochs of at least this many batches also report progress about every 10%.
LONG_EPOCH_STEPS = 100
SHORT_RUN_STEPS = 2000
SHORT_RUN_BN_MOMENTUM = 0.9
# Early stopping watches validation accuracy (the figure users read), and its
# patience starts counting only in the second half of the cosine schedule: while
# the rate is still high the metric is noisy, and a 25-epoch Fashion-MNIST run
# with patience 5 from epoch 1 stopped at epoch 12, below a 10-epoch run.
EARLY_STOP_MONITOR = "val_accuracy"
EARLY_STOP_START_FRACTION = 0.5


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    validation_fraction: float = 0.1
    patience: int = 5  # epochs without a better validation accuracy before stopping (second half only)
    augment: bool = True
    flip: bool = True  # horizontal flips (wrong for text or digits: turn off with --no-flip)
    dropout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UsageError(f"--validation-split must lie in (0, 1), got {self.validation_fraction}")
        if self.patience < 1:
            raise UsageError(f"--patience must be at least 1, got {self.patience}")


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    step: int | None = None  # set on reports from inside an epoch (no validation yet)
    steps: int | None = None

    @property
    def partial(self) -> bool:
        return self.step is not None

    def line(self) -> str:
        if self.partial:
            return (
                f"epoch {self.epoch}/{self.epochs}  {self.step}/{self.steps} batches  loss {self.loss:.4f}"
                f"  acc {self.accuracy:.4f}  {self.seconds:.1f}s"
            )
        return (
            f"epoch {self.epoch}/{self.epochs}  loss {self.loss:.4f}  acc {self.accuracy:.4f}"
            f"  val_loss {self.val_loss:.4f}  val_acc {self.val_accuracy:.4f}  {self.seconds:.1f}s"
        )


@dataclass
class TrainResult:
    model: Any  # keras.Model with the best validation weights restored
    history: dict[str, list[float]]
    best_epoch: int  # 1-based
    val_accuracy: float
    train_samples: int
    val_samples: int
    seconds: float  # training time, summed over the runs a resumed training took
    config: TrainConfig = field(default_factory=TrainConfig)
    resumed_at: tuple[int, ...] = ()  # 1-based epochs at which an interrupted training resumed

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))

    def summary(self) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "val_accuracy": self.val_accuracy,
            "train_samples": self.train_samples,
            "val_samples": self.val_samples,
            "train_seconds": round(self.seconds, 2),
            "resumed_at_epochs": list(self.resumed_at),
            "config": asdict(self.config),
            "history": self.history,
        }


def import_tensorflow():
    """(tensorflow, keras), imported silenced: the one way tinyscale's training code loads them."""
    with quiet_tensorflow():
        import keras  # noqa: PLC0415 - TF/Keras stay out of the core import path
        import tensorflow as tf  # noqa: PLC0415
    tf.get_logger().setLevel(logging.ERROR)
    return tf, keras


def training_device() -> str:
    """Where Keras will train: the first GPU TensorFlow sees (it places ops there), else the CPU."""
    tf, _ = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU (TensorFlow sees no GPU)"
    name = gpus[0].name.removeprefix("/physical_device:")
    model = tf.config.experimental.get_device_details(gpus[0]).get("device_name")
    others = f", {len(gpus) - 1} more GPU(s) unused" if len(gpus) > 1 else ""
    return f"{name} ({model}{others})" if model else f"{name}{others}"


def _make_deterministic(tf, keras, seed: int) -> None:
    # Same seed, same data, same machine -> same weights and history.
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _to_network(tf, images, resolution: int, channels: int):
    """A uint8/float batch -> float32 in [0, 1] at `resolution` with `channels` (inside tf.data)."""
    images = tf.cast(images, tf.float32) / 255.0  # the pipeline always carries 0..255
    if images.shape[-1] == 3 and channels == 1:
        images = tf.image.rgb_to_grayscale(images)
    elif images.shape[-1] == 1 and channels == 3:
        images = tf.image.grayscale_to_rgb(images)
    if images.shape[1] != resolution or images.shape[2] != resolution:
        images = tf.image.resize(images, (resolution, resolution), method="bilinear")
    return tf.clip_by_value(images, 0.0, 1.0)


def _dataset_pipeline(tf, keras, dataset: Dataset, resolution: int, channels: int, config: TrainConfig,
                      training: bool):
    x = dataset.x if dataset.x.dtype == np.uint8 else (dataset.x * 255.0).astype(np.float32)
    pipeline = tf.data.Dataset.from_tensor_slices((x, dataset.y))
    if training:
        pipeline = pipeline.shuffle(len(dataset), seed=config.seed, reshuffle_each_iteration=True)
    pipeline = pipeline.batch(config.batch_size)
    augment = None
    if training and config.augment:
        augment = keras.Sequential(
            [keras.layers.RandomTranslation(TRANSLATE_FRACTION, TRANSLATE_FRACTION, fill_mode="nearest",
                                            seed=config.seed)]
            + ([keras.layers.RandomFlip("horizontal", seed=config.seed + 1)] if config.flip else []),
            name="augment",
        )

    def prepare(images, labels):
        images = _to_network(tf, images, resolution, channels)
        if augment is not None:
            images = augment(images, training=True)
        return images, labels

    return pipeline.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)


class _ProgressCallback:
    """Adapts Keras' logs to EpochReports: one per epoch, and about ten inside long epochs."""

    def __init__(self, keras, epochs: int, steps: int, progress: Callable[[EpochReport], None]) -> None:
        outer = self
        interval = steps // 10 if steps >= LONG_EPOCH_STEPS else 0

        def report(epoch: int, logs: dict | None, step: int | None = None) -> None:
            logs = logs or {}
            progress(
                EpochReport(
                    epoch=epoch + 1,
                    epochs=epochs,
                    loss=float(logs.get("loss", float("nan"))),
                    accuracy=float(logs.get("accuracy", float("nan"))),
                    val_loss=float(logs.get("val_loss", float("nan"))),
                    val_accuracy=float(logs.get("val_accuracy", float("nan"))),
                    seconds=time.perf_counter() - outer.started,
                    step=step,
                    steps=steps if step is not None else None,
                )
            )

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.started = time.perf_counter()
                outer.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                if interval and (batch + 1) % interval == 0 and batch + 1 < steps:
                    report(outer.epoch, logs, step=batch + 1)

            def on_epoch_end(self, epoch, logs=None):
                report(epoch, logs)

        self.started = time.perf_counter()
        self.epoch = 0
        self.callback = Callback()


class _CheckpointCallback:
    """Saves the training state after every epoch; hands early stopping its saved state back."""

    def __init__(self, keras, checkpoint: TrainingCheckpoint, stopper: Any, resumed: ResumePoint,
                 epochs: int) -> None:
        point = dataclasses.replace(resumed, history={k: list(v) for k, v in resumed.history.items()},
                                    resumed_at=list(resumed.resumed_at))
        started = time.perf_counter()

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                resumed.restore_stopper(stopper)  # after EarlyStopping's own reset: it comes first

            def on_epoch_end(self, epoch, logs=None):
                for key, value in (logs or {}).items():
                    point.history.setdefault(key, []).append(float(value))
                point.epochs_done = epoch + 1
                point.seconds = resumed.seconds + time.perf_counter() - started
                point.finished = bool(self.model.stop_training) or epoch + 1 >= epochs
                if outer.saving:
                    outer.save(self.model, epoch + 1)

        outer = self
        self.saving = True
        self.checkpoint, self.stopper, self.point = checkpoint, stopper, point
        self.callback = Callback()

    def save(self, model: Any, epoch: int) -> None:
        try:
            self.checkpoint.save(model, self.stopper, epoch, self.point)
        except Exception as error:  # noqa: BLE001 - a checkpoint is insurance: never the reason a training fails
            self.saving = False
            log.warning("cannot save the training state in %s (%s); it goes on without: an interruption "
                        "now loses it", self.checkpoint.directory, _reason(error))


def _reason(error: BaseException) -> str:
    """An exception as one short line for a log or error message."""
    return one_line(str(error), 200) or type(error).__name__


def early_stopping_start(config: TrainConfig) -> int:
    """The first epoch (0-based) early stopping may keep or stop at."""
    return int(config.epochs * EARLY_STOP_START_FRACTION)


def _adapt_batchnorm_momentum(model: Any, total_steps: int) -> None:
    """Short runs: a lower BN momentum so the moving statistics converge in time.

    With the default 0.99, the moving mean/variance need a few hundred steps to
    forget their initial 0/1; a quick run (a small dataset, --limit, few epochs)
    would validate and convert with statistics that never saw the data.
    """
    if total_steps >= SHORT_RUN_STEPS:
        return
    for layer in model.layers:
        if hasattr(layer, "moving_variance"):
            layer.momentum = SHORT_RUN_BN_MOMENTUM


def _compiled_model(tf, keras, spec, config: TrainConfig, steps: int) -> tuple[Any, Any]:
    """The network with fresh seeded weights, compiled, and its early stopping: (model, stopper)."""
    _make_deterministic(tf, keras, config.seed)  # first, so a rebuilt model has the same weights
    from tinyscale.training.keras_builder import build_keras_model  # noqa: PLC0415 - imports Keras

    model = build_keras_model(spec, dropout=config.dropout, seed=config.seed)
    _adapt_batchnorm_momentum(model, steps * config.epochs)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps * config.epochs,
                                                      alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,  # XLA compilation costs more than it saves on these small CPU runs
        run_eagerly=steps * config.epochs <= EAGER_MAX_STEPS,
    )
    stopper = keras.callbacks.EarlyStopping(monitor=EARLY_STOP_MONITOR, mode="max", patience=config.patience,
                                            start_from_epoch=early_stopping_start(config),
                                            restore_best_weights=True)
    return model, stopper


def train_network(
    network: ScaledNetwork,
    dataset: Dataset,
    config: TrainConfig | None = None,
    progress: Callable[[EpochReport], None] | None = None,
    checkpoint: TrainingCheckpoint | None = None,
) -> TrainResult:
    """Train `network` on `dataset` (a validation split is held out); best weights kept.

    With `checkpoint`, the state is saved after every epoch and a saved state is
    resumed: the epochs it holds are not run again.
    """
    config = config or TrainConfig()
    spec = network.spec
    check_classes(dataset, spec.classes, f"the network ({spec.base}, phi={format_phi(network.phi)})")
    train_set, val_set = split(dataset, config.validation_fraction, seed=config.seed)
    if len(train_set) < 1 or len(val_set) < 1:
        raise DataError(f"{dataset.source}: too few samples to train ({len(dataset)})")
    tf, keras = import_tensorflow()
    log.info("training on %s", training_device())
    steps = math.ceil(len(train_set) / config.batch_size)
    model, stopper = _compiled_model(tf, keras, spec, config, steps)
    resumed = None
    if checkpoint is not None:
        try:
            resumed = checkpoint.restore(model)
        except Exception as error:  # noqa: BLE001 - h5py, Keras: a state that does not load is no state
            log.warning("cannot resume from %s (%s); the training starts over", checkpoint.directory,
                        _reason(error))
            checkpoint.forget()
            model, stopper = _compiled_model(tf, keras, spec, config, steps)  # the failed load filled part of it
    resumed = resumed or ResumePoint(0, {}, 0.0)
    callbacks = [stopper]
    if checkpoint is not None:
        callbacks.append(_CheckpointCallback(keras, checkpoint, stopper, resumed, config.epochs).callback)
    if progress is not None:
        callbacks.append(_ProgressCallback(keras, config.epochs, steps, progress).callback)
    resolution, channels = spec.resolution, spec.channels
    started = time.perf_counter()
    if resumed.finished:  # interrupted after its last epoch: only the best weights are left to restore
        new_history: dict[str, list] = {}
        resumed.restore_stopper(stopper)
        if stopper.best_weights is not None:
            model.set_weights(stopper.best_weights)
    else:
        try:
            new_history = model.fit(
                _dataset_pipeline(tf, keras, train_set, resolution, channels, config, training=True),
                validation_data=_dataset_pipeline(tf, keras, val_set, resolution, channels, config, training=False),
                epochs=config.epochs,
                initial_epoch=resumed.epochs_done,
                callbacks=callbacks,
                shuffle=False,  # the pipeline shuffles, seeded
                verbose=0,
            ).history
        except BaseException as failure:
            _note_checkpoint(failure, checkpoint, config.epochs)
            raise
    seconds = resumed.seconds + time.perf_counter() - started
    history = {key: [float(v) for v in [*resumed.history.get(key, []), *new_history.get(key, [])]]
               for key in {**resumed.history, **new_history}}
    if not history.get("val_loss") or not all(math.isfinite(v) for v in history["loss"]):
        raise TinyscaleError("training diverged (loss is not finite); try a lower --learning-rate")
    best = stopper.best_epoch  # the epoch whose weights were restored (0-based)
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best + 1,
        val_accuracy=history["val_accuracy"][best],
        train_samples=len(train_set),
        val_samples=len(val_set),
        seconds=seconds,
        config=config,
        resumed_at=tuple(resumed.resumed_at),
    )


def _note_checkpoint(failure: BaseException, checkpoint: TrainingCheckpoint | None, epochs: int) -> None:
    done = checkpoint.completed_epochs() if checkpoint else 0
    if done:
        failure.add_note(f"training is saved after epoch {done}/{epochs} in {checkpoint.directory}: "
                         "the same command resumes it")


# ---------------------------------------------------------------------------
# Saving and loading


def save_keras_model(model: Any, path: Path) -> None:
    """Save atomically: Keras writes a temporary `.keras` file beside `path`, which is then renamed."""

    def save(tmp: Path) -> None:
        with quiet_tensorflow():
            model.save(tmp)

    atomic_write(path, save, suffix=".keras")


class SavedRun(NamedTuple):
    model: Path
    history: Path
    removed: tuple[str, ...]  # the previous run's outputs deleted from the folder


def _read_history_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_outputs(run_dir: Path) -> set[str]:
    """What tinyscale wrote into this run folder, as its history.json records it (empty if unknown)."""
    recorded = (_read_history_file(Path(run_dir) / HISTORY_FILE) or {}).get(OUTPUTS_KEY)
    return safe_relative(recorded) if isinstance(recorded, list) else set()


def set_run_outputs(run_dir: Path, names: Iterable[str]) -> None:
    """Record `names` (relative to the run folder) as this run's outputs in its history.json."""
    path = Path(run_dir) / HISTORY_FILE
    document = _read_history_file(path)
    if document is None or not isinstance(document.get(OUTPUTS_KEY), list):
        return  # not a run folder of this tinyscale: nothing to keep track of
    document[OUTPUTS_KEY] = sorted(safe_relative([*document[OUTPUTS_KEY], *names]))
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def record_run_output(path: Path) -> None:
    """Note a file written into a run folder (convert's model.tflite, a plot) in the run's history.json."""
    path = Path(path)
    if path.name in run_outputs(path.parent):
        return
    try:
        set_run_outputs(path.parent, [path.name])
    except TinyscaleError as exc:  # the output itself is written: a missing note is no reason to fail
        log.warning("%s is not recorded as this run's output (%s)", path, exc)


def _inside(out_dir: Path, paths: Iterable[Path]) -> set[str]:
    """`paths` that lie in `out_dir`, relative to it."""
    root = Path(out_dir).resolve()
    inside = set()
    for path in paths:
        resolved = Path(path).resolve()
        if resolved.is_relative_to(root):
            inside.add(resolved.relative_to(root).as_posix())
    return inside


def save_training(result: TrainResult, out_dir: Path, metadata: dict[str, Any], force: bool = False,
                  inputs: Iterable[Path] = ()) -> SavedRun:
    """Write model.keras and history.json into `out_dir`; refuse to clobber without `force`.

    With `force`, the folder's previous run is replaced: the other files it
    recorded (a converted model.tflite, simulation.json) are removed, except
    `inputs` of this run (a fit.json trained from); files it did not record are
    the user's and stay.
    """
    out_dir = Path(out_dir)
    model_path, history_path = out_dir / MODEL_FILE, out_dir / HISTORY_FILE
    for path in (model_path, history_path):
        refuse_clobber(path, force)
    previous = run_outputs(out_dir)
    if force and (out_dir / HISTORY_FILE).is_file() and not previous:
        log.warning("%s records no outputs (an older tinyscale?): files a previous run wrote there are kept",
                    history_path)
    document = {**metadata, **result.summary(), OUTPUTS_KEY: sorted([HISTORY_FILE, MODEL_FILE])}
    save_keras_model(result.model, model_path)
    atomic_write_text(history_path, json.dumps(document, indent=2) + "\n")
    removed = remove_generated(out_dir, previous - {MODEL_FILE, HISTORY_FILE} - _inside(out_dir, inputs))
    if removed:
        log.info("removed the previous run's %s from %s", ", ".join(removed), out_dir)
    return SavedRun(model_path, history_path, removed)


def _load_or_fail(kind: str, path: Path, load: Callable[[], Any]) -> Any:
    """Run a TF/Keras loader silenced; any failure becomes one ModelError line."""
    from tinyscale.errors import ModelError  # noqa: PLC0415

    with quiet_tensorflow() as captured:
        try:
            result = load()
            error = None
        except Exception as caught:  # TF and Keras raise many types for a bad file
            error = caught
    if error is not None:
        reason = one_line(str(error), 200) or captured.last_lines(1)
        raise ModelError(f"cannot load {kind} {path}: {reason}")
    return result


def load_keras_model(path: Path) -> Any:
    """A Keras model from a .keras/.h5 file; ModelError if missing or unreadable."""
    from tinyscale.errors import ModelError  # noqa: PLC0415

    path = Path(path)
    if not path.exists():
        raise ModelError(f"no model at {path}")
    _, keras = import_tensorflow()
    return _load_or_fail("Keras model", path, lambda: keras.models.load_model(path, compile=False))


def read_history(model_path: Path) -> dict[str, Any] | None:
    """The history.json saved next to a trained model, if any."""
    path = Path(model_path).parent / HISTORY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_saved_model(path: Path) -> Any:
    """A SavedModel directory wrapped as a Keras model (its serving signature, one image input)."""
    from tinyscale.errors import ModelError  # noqa: PLC0415

    tf, keras = import_tensorflow()

    def input_specs():
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        return list(signature.structured_input_signature[1].values())

    specs = _load_or_fail("SavedModel", path, input_specs)
    if len(specs) != 1:
        raise ModelError(f"SavedModel {path} has {len(specs)} inputs; tinyscale converts single-image models")
    inputs = keras.Input(shape=tuple(specs[0].shape[1:]), name="input")
    outputs = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ModelError(f"SavedModel {path} has {len(outputs)} outputs; tinyscale converts single-output models")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs, name="saved_model")
