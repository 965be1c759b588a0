"""One tune trial: proxy training, int8 conversion, int8 accuracy in TFLM (TensorFlow imported here).

Runs inside a worker (a pool process or a Ray task) that owns `threads` cores:
TensorFlow's intra- and inter-op pools and the TFLM evaluation are sized to
them, so N workers on N cores do not oversubscribe the machine.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from tinyscale.search.tune import TrialJob, correct_bits, failed_trial
from tinyscale.training.data import Dataset, network_inputs

log = logging.getLogger(__name__)

BN_RECALIBRATION_SAMPLES = 512  # one batch, in training mode, sets every BN layer's statistics


@dataclass(frozen=True)
class TrialData:
    """The data every trial uses, shipped to each worker once: proxy training and scoring shares."""

    train: Dataset
    validation: Dataset


def limit_threads(threads: int) -> None:
    """Size TensorFlow's thread pools (once per process, before TensorFlow runs anything)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from tinyscale.training.train import import_tensorflow  # noqa: PLC0415

    tf, _ = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised in this process (a reused Ray worker): sized by its first trial
        pass


def run_trial(job: TrialJob, data: TrialData) -> dict[str, Any]:
    """The trial's result row: accuracies and seconds, or {"error": ...} (a failed trial never raises)."""
    started = time.perf_counter()
    try:
        return _run(job, data, started)
    except Exception as exc:  # a failed trial is a row in the table; the others go on
        log.warning("trial %s failed: %s", job.key, exc)
        return failed_trial(job.key, exc, round(time.perf_counter() - started, 1))


def _run(job: TrialJob, data: TrialData, started: float) -> dict[str, Any]:
    from tinyscale.simulation import tflm  # noqa: PLC0415
    from tinyscale.simulation.simulate import evaluate, load_model_bytes  # noqa: PLC0415
    from tinyscale.training.convert import calibrate_batchnorm, convert_keras_model  # noqa: PLC0415
    from tinyscale.training.train import TrainConfig, train_network  # noqa: PLC0415

    settings = job.settings
    limit_threads(settings.threads)
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, seed=settings.seed)
    trained = train_network(job.network, data.train, config)
    spec = job.network.spec
    # A proxy run is a few dozen steps: BN's moving statistics still lag the weights
    # (measured on tests' 3-class blobs after one epoch: validation at chance, 33%, while
    # training reached 52%). Recomputed on training images, the same run validates at 73%.
    recalibration = data.train.limit(BN_RECALIBRATION_SAMPLES, settings.seed)
    calibrate_batchnorm(trained.model, network_inputs(recalibration.x, spec.resolution, spec.channels))
    calibration = data.train.limit(settings.calibration_samples, settings.seed)
    representative = network_inputs(calibration.x, spec.resolution, spec.channels)
    flatbuffer = convert_keras_model(trained.model, representative, max_samples=settings.calibration_samples)
    info = load_model_bytes(flatbuffer, "the trial's model")
    arena = tflm.measure_arena(flatbuffer)
    evaluation = evaluate(flatbuffer, info, data.validation, arena.arena_bytes, workers=settings.threads,
                          keras_model=trained.model)
    return {
        "key": job.key,
        "phi": job.network.phi,
        "resolution": spec.resolution,
        "float_accuracy": evaluation.float_accuracy,
        "int8_accuracy": evaluation.int8_accuracy,
        "validation_samples": evaluation.samples,
        "int8_correct": correct_bits(evaluation.predictions == evaluation.labels),
        "train_samples": trained.train_samples,
        "epochs_run": trained.epochs_run,
        "model_bytes": len(flatbuffer),
        "arena_bytes": arena.arena_bytes,
        "seconds": round(time.perf_counter() - started, 1),
    }
