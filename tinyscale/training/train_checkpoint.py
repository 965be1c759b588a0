"""Resumable training: a run's state after every epoch, so that an interrupted
`train` or `build` (Ctrl-C, a killed job, a closed laptop lid) continues where
it stopped when the same command runs again, instead of losing hours.

One folder per run, under the checkpoint root (``$TINYSCALE_CHECKPOINT_DIR``,
else ``checkpoints/`` in tinyscale's cache folder): ``<output key>/<run key>``.
The run key hashes everything that decides the training (network, data,
settings, versions), so a run never resumes another run's weights; the output
key groups the runs that write to one folder, so a finished run clears the
checkpoints its folder's earlier runs left.

Each epoch writes ``epoch-N.weights.h5`` (model and optimizer, so the cosine
schedule continues at its step), early stopping's best weights as
``best-N.npz``, then ``state.json`` atomically, naming both: a kill at any
moment leaves the previous epoch's state whole. A resumed run is not
bit-identical to an uninterrupted one (tf.data's shuffle and the augmentation
start their random sequences again); the history records where it resumed.

Keras objects come in as arguments: this module imports no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyscale import __version__
from tinyscale.fsutil import atomic_write, atomic_write_text, make_dirs
from tinyscale.network.arch import ScaledNetwork
from tinyscale.training.convert import cache_root, tensorflow_version
from tinyscale.training.data import Dataset

log = logging.getLogger(__name__)

CHECKPOINT_DIR_VARIABLE = "TINYSCALE_CHECKPOINT_DIR"
STATE_FILE = "state.json"
RUN_FILE = "run.json"  # what the run is, for a person looking into the folder
# Early stopping's fields that carry from one epoch to the next (keras.callbacks.EarlyStopping).
STOPPER_FIELDS = ("best", "best_epoch", "wait", "stopped_epoch")
KEY_CHARS = 16


def checkpoint_root() -> Path:
    configured = os.environ.get(CHECKPOINT_DIR_VARIABLE)
    return Path(configured) if configured else cache_root() / "checkpoints"


def _digest(*parts: str | bytes | memoryview) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
        hashed.update(b"\0")
    return hashed.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """The samples' bytes, labels and class names: another data set (or --limit) is another run."""
    x, y = np.ascontiguousarray(dataset.x), np.ascontiguousarray(dataset.y)
    return _digest(repr((x.shape, str(x.dtype), y.shape, str(y.dtype), tuple(dataset.class_names))),
                   memoryview(x).cast("B"), memoryview(y).cast("B"))


@dataclass
class ResumePoint:
    """What a checkpoint restores: the epochs done, the history and time they took, and early
    stopping's state (Keras resets its callback when training begins: it is handed back then)."""

    epochs_done: int
    history: dict[str, list[float]]
    seconds: float
    resumed_at: list[int] = field(default_factory=list)  # 1-based epochs at which earlier runs resumed
    finished: bool = False  # early stopping had stopped, or every epoch ran
    stopper: dict[str, Any] = field(default_factory=dict)  # STOPPER_FIELDS
    best_weights: list[np.ndarray] | None = None

    def restore_stopper(self, stopper: Any) -> None:
        """Early stopping as it was after the saved epoch (nothing for a fresh run)."""
        if not self.stopper:
            return
        for name in STOPPER_FIELDS:
            setattr(stopper, name, self.stopper[name])
        stopper.best_weights = self.best_weights


@dataclass(frozen=True)
class TrainingCheckpoint:
    directory: Path
    description: dict[str, Any]  # written to run.json

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def _state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict):
            return None
        files = [state.get("weights"), state.get("best_weights")]
        if not all(name is None or (self.directory / name).is_file() for name in files):
            return None
        return state

    def completed_epochs(self) -> int:
        """Epochs a resumed run skips (0: none saved, or the state is unreadable)."""
        state = self._state()
        return int(state["epochs_done"]) if state else 0

    def restore(self, model: Any) -> ResumePoint | None:
        """Load the saved weights and optimizer into the compiled `model`: the point it resumes at."""
        state = self._state()
        if state is None or state["epochs_done"] < 1:
            return None
        model.optimizer.build(model.trainable_variables)  # load_weights fills its slots too
        model.load_weights(self.directory / state["weights"])
        best = state.get("best_weights")
        log.info("resuming training after epoch %d from %s", state["epochs_done"], self.directory)
        resumed_at = state.get("resumed_at", []) + ([] if state["finished"] else [state["epochs_done"] + 1])
        return ResumePoint(state["epochs_done"], state["history"], state["seconds"], resumed_at, state["finished"],
                           state["stopper"], None if best is None else _load_arrays(self.directory / best))

    def save(self, model: Any, stopper: Any, epoch: int, point: ResumePoint) -> None:
        """The state after `epoch` (1-based): weights first, then state.json naming them."""
        make_dirs(self.directory)
        if not (self.directory / RUN_FILE).exists():
            atomic_write_text(self.directory / RUN_FILE, json.dumps(self.description, indent=2) + "\n")
        weights = f"epoch-{epoch}.weights.h5"
        model.save_weights(self.directory / weights)
        best = None
        if stopper.best_weights is not None:
            best = f"best-{stopper.best_epoch + 1}.npz"
            if not (self.directory / best).exists():  # the same epoch's best weights never change
                _save_arrays(self.directory / best, stopper.best_weights)
        state = {
            "epochs_done": epoch,
            "weights": weights,
            "best_weights": best,
            "stopper": {name: _plain(getattr(stopper, name)) for name in STOPPER_FIELDS},
            "history": point.history,
            "seconds": point.seconds,
            "resumed_at": point.resumed_at,
            "finished": point.finished,
        }
        atomic_write_text(self.state_path, json.dumps(state) + "\n")
        for stale in self.directory.iterdir():  # the previous epoch's files, now unreferenced
            if stale.name not in (STATE_FILE, RUN_FILE, weights, best) and not stale.name.startswith("."):
                stale.unlink(missing_ok=True)

    def forget(self) -> None:
        """Start this run over (--no-resume): its saved state goes."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def discard(self) -> None:
        """After the run's outputs are saved: remove its checkpoint and those of earlier runs into
        the same output (superseded: the folder now holds this run)."""
        shutil.rmtree(self.directory.parent, ignore_errors=True)


def _plain(value: Any) -> Any:
    """Early stopping keeps numpy scalars; JSON wants Python numbers."""
    return value.item() if isinstance(value, np.generic) else value


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    def save(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a handle: np.savez would add .npz to a name without it
            np.savez(handle, *arrays)

    atomic_write(path, save)


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as arrays:
        return [arrays[f"arr_{index}"] for index in range(len(arrays.files))]


def _framework_version() -> str:
    """TensorFlow's and Keras' versions from their package metadata: part of the run key, read
    without importing TensorFlow (the commands name the checkpoint before training starts)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        keras = version("keras")
    except PackageNotFoundError:
        keras = "unknown"
    return f"tensorflow {tensorflow_version()}, keras {keras}"


def checkpoint_for(out: Path, network: ScaledNetwork, dataset: Dataset, config: Any) -> TrainingCheckpoint:
    """Where training `network` on `dataset` with `config` (a TrainConfig) for output `out` keeps
    its resumable state."""
    out, spec, framework_version = Path(os.path.abspath(out)), network.spec, _framework_version()
    settings = asdict(config)
    run = _digest(repr(spec), dataset_fingerprint(dataset), json.dumps(settings, sort_keys=True), __version__,
                  framework_version)
    directory = checkpoint_root() / _digest(str(out))[:KEY_CHARS] / run[:KEY_CHARS]
    description = {"output": str(out), "network": repr(spec), "data": dataset.source, "samples": len(dataset),
                   "settings": settings, "tinyscale": __version__, "tensorflow": framework_version}
    return TrainingCheckpoint(directory, description)
