"""`tinyscale train`, `convert`, `simulate` and `build`: from data to a verified int8 model."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from tinyscale.boards.targets import Target, load_target
from tinyscale.commands.app import app, reports_errors
from tinyscale.commands.core import (
    DEFAULT_BASE,
    DEFAULT_MAX_EXTRA_MACS,
    UNPATCHED_MODEL_FILE,
    AlphaOption,
    Base,
    BaseOption,
    BetaOption,
    CoefficientsOption,
    GammaOption,
    JsonOption,
    MaxExtraMacsOption,
    PatchMode,
    PatchOption,
    _bytes,
    _network_rows,
    _placement_rows,
    _table,
    latency_text,
)
from tinyscale.commands.tune_options import (
    DEFAULT_TUNE_EPOCHS,
    Backend,
    BackendOption,
    JobsOption,
    RayAddressOption,
)
from tinyscale.commands.wording import plural
from tinyscale.errors import DataError, ModelError, TinyscaleError, UsageError
from tinyscale.fsutil import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    check_writable_dir,
    check_writable_file,
    keep_failed_directory,
    publish_tree,
    refuse_clobber,
    relative_files,
    staging_directory,
)
from tinyscale.network import arch
from tinyscale.network.arch import ScaledNetwork
from tinyscale.network.coefficients import resolve_coefficients
from tinyscale.network.scaling import Coefficients, format_phi
from tinyscale.progress import Progress, before_output, no_progress, status
from tinyscale.training.data import (
    FASHION_MNIST,
    Dataset,
    load_dataset,
    network_inputs,
    split,
)

log = logging.getLogger(__name__)

FIT_FILE = "fit.json"
TUNE_DIR = "tune"  # build --tune's trials and coefficients.toml, inside OUT
TFLITE_FILE = "model.tflite"
SIMULATION_FILE = "simulation.json"
REPORT_FILE = "report.json"
# Image folders and .npz files have no test split: `build` holds this much out
# (per class) before training, to measure accuracy on images never trained on.
BUILD_TEST_FRACTION = 0.2
DEFAULT_CALIBRATION_SAMPLES = 200

DataOption = Annotated[
    str, typer.Option("--data", "-d", help=f"Image folder (one sub-folder per class), a .npz with x and y, or {FASHION_MNIST!r}.")
]
LimitOption = Annotated[Optional[int], typer.Option("--limit", min=1, help="Use a random subset of N samples (quick runs).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for the split, shuffling, augmentation and weights.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
EpochsOption = Annotated[int, typer.Option("--epochs", min=1, help="Maximum training epochs (early stopping may end sooner).")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Training batch size.")]
WorkersOption = Annotated[
    Optional[int], typer.Option("--workers", min=1, help="Parallel TFLM worker processes for evaluation (default: all cores).")
]
DataChannelsOption = Annotated[
    Optional[int], typer.Option("--channels", min=1, max=3, help="Network input channels (default: the data's).")
]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Refuse an image folder with an unreadable image (default: skip it, warn).")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume/--no-resume", help="Continue a training this same command left unfinished "
                       "(interrupted, killed) from its last saved epoch; --no-resume starts it over.")
]
CalibrationOption = Annotated[
    int, typer.Option("--calibration-samples", min=1, help="Real training images used to calibrate the int8 ranges.")
]


def _err(message: str) -> None:
    before_output()  # a status line in progress is erased first, not overwritten halfway
    typer.echo(message, err=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# ---------------------------------------------------------------------------
# Which network: fit.json, --target (run the fitter) or --phi


def _read_fit_json(path: Path) -> dict[str, Any]:
    path = path / FIT_FILE if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    missing = {"base", "phi", "classes", "channels", "alpha", "beta", "gamma"} - set(data)
    if not isinstance(data, dict) or missing:
        raise UsageError(f"{path} is not a fit.json from `tinyscale fit` (missing {', '.join(sorted(missing))})")
    return data


def _network_from_fit_json(data: dict[str, Any], dataset: Dataset, source: Path) -> ScaledNetwork:
    if int(data["classes"]) != dataset.classes:
        raise DataError(
            f"{source} was fitted for {data['classes']} classes but {dataset.source} has {dataset.classes}; "
            f"rerun `tinyscale fit --classes {dataset.classes}`"
        )
    coefficients = Coefficients(float(data["alpha"]), float(data["beta"]), float(data["gamma"]))
    network = arch.scale(data["base"], float(data["phi"]), coefficients, int(data["classes"]), int(data["channels"]))
    if "resolution" in data and int(data["resolution"]) != network.spec.resolution:
        raise UsageError(f"{source}: phi {data['phi']} gives {network.spec.resolution} px, the file says {data['resolution']}")
    return network


def _run_fit(target: Target, base: str, coefficients: Coefficients, classes: int, channels: int,
             progress: Progress = no_progress, patch: str = "auto",
             max_extra_macs: float = DEFAULT_MAX_EXTRA_MACS) -> dict[str, Any]:
    """The fit result as fit.json holds it; `patch` as `fit --patch` (the network may need its schedule)."""
    from tinyscale.search.fit import FitRequest, fit  # noqa: PLC0415 - the fitter pulls in the converter

    request = FitRequest(target, base, classes, channels, coefficients)
    return fit(request, progress=progress, patch=patch, max_extra_macs=max_extra_macs).to_dict()


def _fitted_schedule(fitted: dict[str, Any]) -> tuple[tuple[int, int], str] | None:
    """fit.json's patch schedule ((rows, cols), split tensor name), None when unpatched."""
    grid = tuple(int(n) for n in fitted.get("patch_grid") or (1, 1))
    split = fitted.get("patch_split_tensor")
    if grid == (1, 1) or not split:
        return None
    return (grid[0], grid[1]), split


def _apply_schedule(flatbuffer: bytes, schedule: tuple[tuple[int, int], str], max_extra_macs: float):
    """The trained model's conversion patched with fit's schedule (outputs checked bit for bit).

    The same architecture converts to the same tensor names, so the split is
    found; if not (another converter), the schedule is searched on this model.
    """
    from tinyscale.search.patching import patch_flatbuffer  # noqa: PLC0415

    grid, split = schedule
    try:
        return patch_flatbuffer(flatbuffer, grid=grid, split=split)
    except UsageError as exc:
        log.warning("fit's split tensor is not in the trained model's conversion (%s); searching a schedule", exc)
        return patch_flatbuffer(flatbuffer, max_extra_macs=max_extra_macs)


def _choose_network(
    dataset: Dataset,
    fit_file: Optional[Path],
    target: Optional[str],
    phi: Optional[float],
    base: str,
    coefficients: Coefficients,
    channels: Optional[int],
    progress: Progress = no_progress,
) -> tuple[ScaledNetwork, Optional[dict[str, Any]]]:
    """The network to train, and the fit result it came from (if any)."""
    given = [name for name, value in (("--fit", fit_file), ("--target", target), ("--phi", phi)) if value is not None]
    if len(given) != 1:
        raise UsageError("say which network to train: exactly one of --fit fit.json, --target T or --phi P")
    if fit_file is not None:
        data = _read_fit_json(fit_file)
        return _network_from_fit_json(data, dataset, fit_file), data
    channels = channels or dataset.channels
    if target is not None:
        data = _run_fit(load_target(target), base, coefficients, dataset.classes, channels, progress)
        return _network_from_fit_json(data, dataset, Path(f"fit for {target}")), data
    return arch.scale(base, phi, coefficients, dataset.classes, channels), None


def _network_dict(network: ScaledNetwork) -> dict[str, Any]:
    spec = network.spec
    return {
        "base": spec.base,
        "phi": network.phi,
        "alpha": network.coefficients.alpha,
        "beta": network.coefficients.beta,
        "gamma": network.coefficients.gamma,
        "resolution": spec.resolution,
        "channels": spec.channels,
        "classes": spec.classes,
        "blocks": len(spec.blocks),
        "params": arch.count_params(spec),
        "macs": arch.count_macs(spec),
    }


def _training_metadata(data: str, limit: Optional[int], seed: int, dataset: Dataset, network: ScaledNetwork,
                       target: Optional[str]) -> dict[str, Any]:
    """What history.json records about a run, so `convert` can find the calibration data."""
    return {
        "data": data,
        "limit": limit,
        "seed": seed,
        "class_names": list(dataset.class_names),
        "network": _network_dict(network),
        "target": target,
    }


def _load_data(source: str, split_name: str, limit: Optional[int], seed: int, strict: bool = False) -> Dataset:
    dataset = load_dataset(source, split_name, strict=strict)
    return dataset.limit(limit, seed)


# ---------------------------------------------------------------------------
# train


def _checkpoint(out: Path, network: ScaledNetwork, dataset: Dataset, config, resume: bool):
    """The training's per-epoch checkpoint for output `out`; --no-resume drops a saved one."""
    from tinyscale.training.train_checkpoint import checkpoint_for  # noqa: PLC0415 - hashes the data; no TensorFlow

    checkpoint = checkpoint_for(out, network, dataset, config)
    if not resume:
        checkpoint.forget()
    return checkpoint


def _train(network: ScaledNetwork, dataset: Dataset, config, quiet: bool, checkpoint=None):
    from tinyscale.training.train import train_network, training_device  # noqa: PLC0415 - imports TensorFlow

    spec = network.spec
    done = checkpoint.completed_epochs() if checkpoint is not None else 0
    if done and not quiet:
        _err(f"resuming the interrupted training after epoch {done}/{config.epochs} (saved in "
             f"{checkpoint.directory}; --no-resume starts over)")
    if not quiet:
        with status() as progress:
            progress("starting TensorFlow")
            device = training_device()
        _err(
            f"training {spec.base} phi={format_phi(network.phi)} ({spec.resolution}x{spec.resolution}x{spec.channels}, "
            f"{arch.count_params(spec):,} params) on {plural(len(dataset), 'sample')} of {dataset.source}, "
            f"device {device}"
        )
    if quiet:
        return train_network(network, dataset, config, checkpoint=checkpoint)
    # Epoch lines scroll by (and go to pipes too); on a terminal a status line below
    # them says which epoch is running, and covers the silent graph tracing first.
    with status() as running:
        running("building the network, tracing the first epoch")

        def epoch_line(report) -> None:
            _err(report.line())
            running(_epoch_status(report))

        return train_network(network, dataset, config, progress=epoch_line, checkpoint=checkpoint)


def _resumed_text(epochs) -> str:
    """', resumed at epoch 13' for a training that continued from a checkpoint, else ''."""
    return f", resumed at epoch {', '.join(map(str, epochs))}" if epochs else ""


def _epoch_status(report) -> str:
    """The epoch running after `report` (an in-epoch report: still the same one)."""
    epoch = report.epoch if report.partial else report.epoch + 1
    return f"training epoch {epoch}/{report.epochs}" if epoch <= report.epochs else "finishing training"


def _train_config(epochs, batch_size, learning_rate, validation_split, patience, augment, flip, seed):
    from tinyscale.training.train import TrainConfig  # noqa: PLC0415

    return TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                       validation_fraction=validation_split, patience=patience, augment=augment, flip=flip, seed=seed)


@app.command()
@reports_errors
def train(
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for model.keras and history.json.")],
    fit_file: Annotated[Optional[Path], typer.Option("--fit", help="fit.json (or its directory) from `tinyscale fit`.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Fit this target first and train its network.")] = None,
    phi: Annotated[Optional[float], typer.Option("--phi", help="Train the network at this phi.")] = None,
    base: BaseOption = Base(DEFAULT_BASE),
    channels: DataChannelsOption = None,
    alpha: AlphaOption = None,
    beta: BetaOption = None,
    gamma: GammaOption = None,
    coefficients_file: CoefficientsOption = None,
    epochs: EpochsOption = 30,
    batch_size: BatchOption = 64,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="Adam's initial rate (cosine decay).")] = 2e-3,
    validation_split: Annotated[float, typer.Option("--validation-split", help="Fraction held out for validation.")] = 0.1,
    patience: Annotated[int, typer.Option("--patience", min=1, help="Stop after this many epochs without a better validation accuracy (counted in the second half of the run).")] = 5,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random shifts (and flips) while training.")] = True,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Horizontal flips in augmentation (off for text, digits).")] = True,
    limit: LimitOption = None,
    seed: SeedOption = 0,
    strict: StrictOption = False,
    resume: ResumeOption = True,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Train the fitted network on a dataset; writes model.keras and history.json."""
    from tinyscale.training.train import HISTORY_FILE, MODEL_FILE, save_training  # noqa: PLC0415

    config = _train_config(epochs, batch_size, learning_rate, validation_split, patience, augment, flip, seed)
    for name in (MODEL_FILE, HISTORY_FILE):
        refuse_clobber(out / name, force)
    check_writable_dir(out)  # before the training run, not after it
    with status(enabled=not json_output) as progress:
        progress(f"loading {data}")
        dataset = _load_data(data, "train", limit, seed, strict)
        coefficients = resolve_coefficients(coefficients_file, alpha, beta, gamma, target)
        network, fitted = _choose_network(dataset, fit_file, target, phi, base.value, coefficients, channels,
                                          progress)
    checkpoint = _checkpoint(out, network, dataset, config, resume)
    result = _train(network, dataset, config, quiet=json_output, checkpoint=checkpoint)
    metadata = _training_metadata(data, limit, seed, dataset, network, fitted.get("target") if fitted else None)
    inputs = [path for path in (fit_file, Path(data)) if path is not None]
    model_path, history_path, removed = save_training(result, out, metadata, force=force, inputs=inputs)
    checkpoint.discard()
    summary = {**metadata, **{k: v for k, v in result.summary().items() if k != "history"},
               "model": str(model_path), "history": str(history_path), "removed": list(removed)}
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(_table(_network_rows(network) + [
        ("data", f"{dataset.source}: {result.train_samples:,} train / {result.val_samples:,} validation"),
        ("epochs", f"{result.epochs_run} run, best {result.best_epoch}" + _resumed_text(result.resumed_at)),
        ("val accuracy", _percent(result.val_accuracy)),
        ("train time", f"{result.seconds:.1f} s"),
        ("wrote", f"{model_path}, {history_path}"),
        *([("removed", f"the previous run's {', '.join(removed)}")] if removed else []),
    ]))


# ---------------------------------------------------------------------------
# convert


def _is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def _file_head(path: Path, size: int = 8) -> bytes:
    with path.open("rb") as file:
        return file.read(size)


# File signatures of what keras.models.load_model reads: a .keras zip, a legacy HDF5 .h5.
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _check_float_model(path: Path) -> None:
    """ModelError unless `path` holds a Keras model or a SavedModel, judged by content, not name.

    Runs before anything else looks at the output, so that `convert model.tflite`
    (whose default output is the input itself) says what is wrong with the input.
    """
    if not path.exists():
        raise ModelError(f"no model at {path}")
    if path.is_dir():
        if not _is_saved_model(path):
            raise ModelError(f"{path} is a directory without saved_model.pb: give a .keras file or a SavedModel "
                             "directory")
        return
    try:
        head = _file_head(path)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head[4:8] == b"TFL3":
        raise ModelError(f"{path} is already a TFLite flatbuffer; convert takes a Keras model (.keras) or a SavedModel "
                         "directory; run `tinyscale simulate` on a .tflite")
    if not head.startswith((_ZIP_MAGIC, _HDF5_MAGIC)):
        raise ModelError(f"{path} is not a Keras model (neither a .keras zip nor an .h5 file) nor a SavedModel "
                         "directory, which is what convert takes")


def _load_float_model(path: Path):
    _check_float_model(path)
    if path.is_dir():
        from tinyscale.training.train import load_saved_model  # noqa: PLC0415

        return load_saved_model(path)
    from tinyscale.training.train import load_keras_model  # noqa: PLC0415

    return load_keras_model(path)


def _model_geometry(model) -> tuple[tuple[int, int], int, int]:
    """((height, width), channels, classes) of an image classifier, else ModelError."""
    shape = tuple(model.input_shape)
    outputs = tuple(model.output_shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] not in (1, 3):
        raise ModelError(f"the model's input shape {list(shape)} is not (batch, H, W, 1|3) with a fixed size")
    if len(outputs) != 2 or not outputs[1]:
        raise ModelError(f"the model's output shape {list(outputs)} is not (batch, classes)")
    return (int(shape[1]), int(shape[2])), int(shape[3]), int(outputs[1])


def _calibration_inputs(model, data: Optional[str], history: Optional[dict], samples: int, seed: int,
                        strict: bool = False) -> np.ndarray:
    """Real training images for calibration, shaped for the model; never random data."""
    from tinyscale.training.data import check_classes  # noqa: PLC0415

    source = data or (history or {}).get("data")
    if not source:
        raise UsageError("no calibration data: pass --data (the training data), or convert a model saved by "
                         "`tinyscale train` (its history.json names the data)")
    size, channels, classes = _model_geometry(model)
    dataset = load_dataset(source, "train", strict=strict)
    check_classes(dataset, classes, "the model")
    subset = dataset.limit(samples, seed)
    return network_inputs(subset.x, size, channels)


def convert_model(model, representative: np.ndarray, max_samples: int) -> bytes:
    """Convert and check: full int8 that TFLM loads, or ModelError/ConversionError."""
    from tinyscale.simulation import tflm  # noqa: PLC0415
    from tinyscale.simulation.simulate import load_model_bytes  # noqa: PLC0415
    from tinyscale.training.convert import convert_keras_model  # noqa: PLC0415

    flatbuffer = convert_keras_model(model, representative, max_samples=max_samples)
    load_model_bytes(flatbuffer, "the converted model")
    tflm.check_loads(flatbuffer)
    return flatbuffer


def _io_rows(info) -> list[tuple[str, str]]:
    from tinyscale.simulation.simulate import io_dicts  # noqa: PLC0415

    rows = []
    for label, entries in io_dicts(info).items():
        for entry in entries:
            via = f" (as {entry['integer_dtype']})" if entry["dtype"] != entry["integer_dtype"] else ""
            rows.append((label[:-1], f"{entry['dtype']} {entry['shape']}{via}  scale {entry['scale']:.6g}  "
                                     f"zero point {entry['zero_point']}"))
    return rows


@app.command()
@reports_errors
def convert(
    model: Annotated[Path, typer.Argument(help="Keras model (.keras) or SavedModel directory.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output .tflite (default: MODEL with .tflite).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Training data for calibration (default: from history.json).")] = None,
    calibration_samples: CalibrationOption = DEFAULT_CALIBRATION_SAMPLES,
    seed: SeedOption = 0,
    strict: StrictOption = False,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Convert a trained model to a full-integer int8 TFLite Micro model, calibrated on real data."""
    from tinyscale.graph.tflite_model import read_model  # noqa: PLC0415
    from tinyscale.training.train import read_history, record_run_output  # noqa: PLC0415

    _check_float_model(model)  # before the clobber check: the default output may be the input itself
    out = out or model.with_suffix(".tflite")
    refuse_clobber(out, force)
    check_writable_file(out)  # before loading TensorFlow and converting
    with status(enabled=not json_output) as progress:
        progress(f"loading {model}")
        keras_model = _load_float_model(model)
        progress("loading the calibration data")
        representative = _calibration_inputs(keras_model, data, read_history(model), calibration_samples, seed,
                                             strict)
        progress(f"converting to int8 (calibrating on {plural(len(representative), 'image')}), checking TFLM loads it")
        flatbuffer = convert_model(keras_model, representative, calibration_samples)
    atomic_write_bytes(out, flatbuffer)
    record_run_output(out)
    info = read_model(flatbuffer)
    from tinyscale.simulation.simulate import io_dicts  # noqa: PLC0415

    result = {
        "model": str(out),
        "model_bytes": info.size_bytes,
        "ops": list(info.operator_names),
        "operators": len(info.operators),
        "calibration_samples": len(representative),
        **io_dicts(info),
    }
    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(_table([
        ("wrote", str(out)),
        ("size", _bytes(info.size_bytes)),
        ("operators", f"{len(info.operators)}: {', '.join(info.operator_names)}"),
        ("calibration", plural(len(representative), "training image")),
        *_io_rows(info),
        ("TFLM", "loads (checked)"),
    ]))


# ---------------------------------------------------------------------------
# simulate


def _simulation(model_bytes: bytes, source: str, target: Optional[Target], dataset: Optional[Dataset],
                keras_model, workers: int, quiet: bool):
    from tinyscale.simulation.simulate import evaluate, memory_report, output_classes  # noqa: PLC0415
    from tinyscale.training.data import check_classes  # noqa: PLC0415

    with status(enabled=not quiet) as progress:
        progress("measuring the minimal arena in TFLM (bisection)")
        report = memory_report(model_bytes, target, source)
    evaluation = None
    if dataset is not None:
        check_classes(dataset, output_classes(report.info), "the model")  # before any progress line
        if not quiet:
            processes = plural(workers, "worker process", "worker processes")
            _err(f"evaluating {plural(len(dataset), 'sample')} with {processes}")
        with status(enabled=not quiet) as progress:
            progress("evaluating in TFLM")
            evaluation = evaluate(model_bytes, report.info, dataset, report.arena_bytes, workers, keras_model,
                                  progress=lambda done: progress(f"evaluating in TFLM: {done:,}/{len(dataset):,}"))
    return report, evaluation


def _simulation_dict(report, evaluation, target: Optional[Target]) -> dict[str, Any]:
    data = report.to_dict()
    if target is not None:
        data["target"] = target.name
    if evaluation is not None:
        data.update(evaluation.to_dict())
    return data


def _operator_table(report) -> str:
    from tinyscale.simulation.simulate import format_macs, format_shape  # noqa: PLC0415

    peak = report.peak
    latency = report.latency
    timing = ("cycles", "ms", "share") if latency is not None else ()
    rows = [("#", "operator", "output", "MACs", *timing, "live activations")]
    for row in report.rows:
        mark = "  <- peak" if peak is not None and row.index == peak.index else ""
        cells = ()
        if latency is not None:
            op = latency.ops[row.index]
            flag = " *" if not op.modelled else ""
            cells = (f"{op.cycles:,.0f}{flag}", f"{latency.op_ms(op):.3f}", f"{100 * latency.share(op):.1f}%")
        rows.append((str(row.index), row.name, format_shape(row.output_shape), format_macs(row.macs), *cells,
                     f"{row.live_bytes:,} B{mark}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _analytic_text(report) -> str:
    """The analytic arena beside the measured one: equal, off by how much, or why it is not modelled."""
    analytic = report.analytic_arena_bytes
    if analytic is None:
        return f"not modelled ({report.analytic_note})"
    difference = analytic - report.arena_bytes
    return f"{_bytes(analytic)}, {'equal to the measured minimum' if not difference else f'{difference:+,} B off'}"


def _memory_rows(report, target: Optional[Target]) -> list[tuple[str, str]]:
    info = report.info
    rows = [
        ("model", _bytes(report.model_bytes)),
        ("operators",
         f"{len(info.operators)} in {plural(info.subgraphs, 'subgraph')}: {', '.join(info.operator_names)}"),
        *_io_rows(info),
        ("arena (minimal)", f"{_bytes(report.arena_bytes)}; allocator reports {report.arena.reported_bytes:,} B"),
        ("arena (analytic)", _analytic_text(report)),
        ("peak activations", _bytes(report.peak.live_bytes) if report.peak else "-"),
        ("runtime flash", f"{report.runtime_bytes:,} B ({report.runtime_source})"),
        ("flash needed", _bytes(report.flash_needed_bytes)),
    ]
    if target is not None and report.placement is not None:
        placement = report.placement
        rows.append(("target", target.name))
        rows += _placement_rows(placement)
        rows.append(("fits", "yes" if placement.fits else f"no: {placement.describe_shortfall()}"))
        rows.append(("latency", _latency_summary(report, target)))
    return rows


def _latency_summary(report, target: Target) -> str:
    """The predicted total, with what `*` marks in the operator table (ops costed by the fallback)."""
    text = latency_text(report.latency, target)
    if report.latency is not None:
        text += f" (Invoke's own {report.latency.invoke_cycles:,.0f} included)"
        if report.latency.unmodelled:
            text += " (* in the table: fallback cost)"
    return text


def _accuracy_text(evaluation) -> str:
    rows = [
        ("samples", f"{evaluation.samples:,}"),
        ("int8 accuracy", _percent(evaluation.int8_accuracy)),
    ]
    if evaluation.float_accuracy is not None:
        rows += [("float accuracy", _percent(evaluation.float_accuracy)),
                 ("agreement", _percent(evaluation.agreement))]
    workers = plural(evaluation.workers, "worker")
    rows.append(("throughput", f"{evaluation.images_per_second:,.1f} images/s ({workers})"))
    names = evaluation.class_names
    per_class = evaluation.per_class_accuracy()
    rows += [(f"  class {name}", _percent(value)) for name, value in zip(names, per_class)]
    matrix = evaluation.confusion()
    width = max(5, max(len(str(v)) for v in matrix.flat) + 1)
    header = " " * 6 + "".join(f"{i:>{width}}" for i in range(len(names)))
    lines = [header] + [f"{i:>4}  " + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
    return _table(rows) + "\n\nconfusion matrix (rows: true class, columns: int8 prediction)\n" + "\n".join(lines)


def _read_tflite(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise ModelError(f"{path} is a directory, not a .tflite file") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None


def _arena_budget(placement) -> Optional[int]:
    """What the arena itself may take in its region (the region minus its reserved bytes)."""
    if placement is None:
        return None
    return placement.sram_budget_bytes - (placement.sram_needed_bytes - placement.arena_bytes)


@app.command()
@reports_errors
def simulate(
    model: Annotated[Path, typer.Argument(help="A quantized TFLite Micro model (.tflite): int8 or int16x8, integer or float32 I/O.")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Check flash and SRAM against this target.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help=f"Evaluate on this data (an image folder, .npz, or {FASHION_MNIST!r}: its test split).")] = None,
    keras: Annotated[Optional[Path], typer.Option("--keras", help="The float Keras model, for float accuracy and agreement.")] = None,
    limit: LimitOption = None,
    workers: WorkersOption = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of activation memory per operator.")] = None,
    seed: SeedOption = 0,
    strict: StrictOption = False,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Run the model in TFLM on the host: minimal arena, flash need, per-operator memory, accuracy."""
    from tinyscale.simulation.simulate import plot_memory, pyplot  # noqa: PLC0415
    from tinyscale.training.train import record_run_output  # noqa: PLC0415

    if keras is not None and data is None:
        raise UsageError("--keras compares accuracies on --data; pass --data too")
    if plot is not None:
        refuse_clobber(plot, force, "--plot file")
        pyplot()  # a missing matplotlib fails now, not after the measurement
        check_writable_file(plot)
    board = load_target(target) if target else None
    model_bytes = _read_tflite(model)
    dataset = keras_model = None
    with status(enabled=not json_output) as progress:
        if data is not None:
            progress(f"loading {data}")
            dataset = _load_data(data, "test", limit, seed, strict)
        if keras is not None:
            progress(f"loading {keras}")
            keras_model = _load_float_model(keras)
    report, evaluation = _simulation(model_bytes, str(model), board, dataset, keras_model,
                                     workers or os.cpu_count() or 1, json_output)
    if plot is not None:
        plot_memory(report, plot, _arena_budget(report.placement))
        record_run_output(plot)
    if json_output:
        typer.echo(json.dumps(_simulation_dict(report, evaluation, board), indent=2))
    else:
        parts = [_table(_memory_rows(report, board)), _operator_table(report)]
        if evaluation is not None:
            parts.append(_accuracy_text(evaluation))
        if plot is not None:
            parts.append(f"wrote {plot}")
        typer.echo("\n\n".join(parts))
    if board is not None:
        report.placement.require_fits(str(model), board.name)  # exit 3 after the full report


# ---------------------------------------------------------------------------
# build


def _build_datasets(source: str, limit: Optional[int], seed: int, strict: bool = False) -> tuple[Dataset, Dataset]:
    """(training data, test data): Fashion-MNIST's own test split, else a held-out share."""
    if source == FASHION_MNIST:
        train_set = _load_data(source, "train", limit, seed)
        test_limit = None if limit is None else max(1, limit // 6)  # keep Fashion-MNIST's 6:1 ratio
        return train_set, _load_data(source, "test", test_limit, seed)
    dataset = _load_data(source, "train", limit, seed, strict)
    return split(dataset, BUILD_TEST_FRACTION, seed=seed + 1)


def _split_counts(train_set: Dataset, test_set: Dataset, validation_fraction: float, seed: int) -> dict[str, int]:
    """What each split gets: training holds out its validation share the way train_network does."""
    fitted, validation = split(train_set, validation_fraction, seed=seed)
    return {"train_samples": len(fitted), "validation_samples": len(validation), "test_samples": len(test_set)}


def _split_line(counts: dict[str, int], source: str, limit: Optional[int]) -> str:
    line = (f"data: {counts['train_samples']:,} train / {counts['validation_samples']:,} validation / "
            f"{counts['test_samples']:,} test samples")
    if source == FASHION_MNIST and limit is not None:
        line += f" (--limit {limit:,} cuts the test split to limit/6, Fashion-MNIST's 6:1 ratio)"
    elif source != FASHION_MNIST:
        line += f" ({BUILD_TEST_FRACTION:.0%} of each class held out for test)"
    return line


def _render_firmware(flatbuffer: bytes, target: Target, phi: float, arena_bytes: int,
                     out_dir: Path) -> TinyscaleError | None:
    """Render the firmware project into out_dir/firmware; the error when it cannot be."""
    from tinyscale.errors import DoesNotFitError, TemplateError  # noqa: PLC0415
    from tinyscale.project.context import FirmwareOptions  # noqa: PLC0415
    from tinyscale.project.render import build_context, write_project  # noqa: PLC0415

    options = FirmwareOptions(target=target, out_dir=out_dir / "firmware", phi=phi, model_file=TFLITE_FILE)
    try:
        context = build_context(flatbuffer, options, measured_arena_bytes=arena_bytes)
    except (DoesNotFitError, TemplateError) as exc:
        return exc  # raised once the model and its reports are written: they are still useful
    write_project(context, options.out_dir, force=False)
    return None


@app.command()
@reports_errors
def build(
    target: Annotated[str, typer.Option("--target", "-t", help="Bundled target name or path to a board .toml.")],
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (everything is written here).")],
    base: BaseOption = Base(DEFAULT_BASE),
    channels: DataChannelsOption = None,
    alpha: AlphaOption = None,
    beta: BetaOption = None,
    gamma: GammaOption = None,
    coefficients_file: CoefficientsOption = None,
    epochs: EpochsOption = 30,
    batch_size: BatchOption = 64,
    limit: LimitOption = None,
    calibration_samples: CalibrationOption = DEFAULT_CALIBRATION_SAMPLES,
    workers: WorkersOption = None,
    seed: SeedOption = 0,
    strict: StrictOption = False,
    resume: ResumeOption = True,
    force: ForceOption = False,
    overwrite_edits: Annotated[bool, typer.Option("--overwrite-edits", help="With --force, also replace firmware files you have edited since the last build.")] = False,
    patch: PatchOption = PatchMode("auto"),
    max_extra_macs: MaxExtraMacsOption = DEFAULT_MAX_EXTRA_MACS,
    tune: Annotated[bool, typer.Option("--tune", help=f"Run `tune` first (into OUT/{TUNE_DIR}) and build with "
                                                      "its winning coefficients.")] = False,
    tune_grid: Annotated[Optional[str], typer.Option("--tune-grid", help="tune's --grid.")] = None,
    tune_epochs: Annotated[int, typer.Option("--tune-epochs", min=1, help="tune's --epochs (per trial).")]
    = DEFAULT_TUNE_EPOCHS,
    tune_limit: Annotated[Optional[int], typer.Option("--tune-limit", min=1, help="tune's --limit: training "
                                                      "samples per trial (default: all of build's).")] = None,
    jobs: JobsOption = None,
    backend: BackendOption = Backend("local"),
    ray_address: RayAddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Fit, train, convert and simulate (and generate firmware) in one go."""
    from tinyscale.project.render import check_board_glue, check_edits  # noqa: PLC0415
    from tinyscale.training.train import (  # noqa: PLC0415
        MODEL_FILE,
        TrainConfig,
        run_outputs,
        save_training,
        set_run_outputs,
    )

    started = time.perf_counter()
    if tune and (coefficients_file is not None or any(v is not None for v in (alpha, beta, gamma))):
        raise UsageError("--tune finds the coefficients; it excludes --coefficients, --alpha, --beta and --gamma")
    if not tune and (tune_grid is not None or tune_limit is not None or ray_address is not None):
        raise UsageError("--tune-grid, --tune-limit and --ray-address need --tune")
    _check_build_output(out, force, tune)
    # The earlier build's firmware/ is replaced with the rest of its outputs: refuse now, before
    # the training, if the user edited a file of that project (the `firmware` command's rule).
    check_edits(out / "firmware", overwrite_edits)
    previous = run_outputs(out)  # an earlier build's files: replaced or removed, the user's kept
    board = load_target(target)
    check_board_glue(board)  # a board the templates cannot serve fails now, not after training
    config = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed)
    with status(enabled=not json_output) as progress:
        progress(f"loading {data}")
        train_set, test_set = _build_datasets(data, limit, seed, strict)
    channels = channels or train_set.channels
    quiet = json_output
    if tune:
        coefficients = _tune_first(board, data, out, base.value, channels, tune_grid, tune_epochs, batch_size,
                                   tune_limit, seed, jobs, backend.value, ray_address, patch.value, max_extra_macs,
                                   force, train_set, quiet)
    else:
        coefficients = resolve_coefficients(coefficients_file, alpha, beta, gamma, board.name)
    if not quiet:
        _err(_split_line(_split_counts(train_set, test_set, config.validation_fraction, config.seed), data, limit))
    if not quiet:
        _err(f"fitting {base.value} to {board.name} ({train_set.classes} classes, {plural(channels, 'channel')})")
    with status(enabled=not quiet) as progress:
        fitted = _run_fit(board, base.value, coefficients, train_set.classes, channels, progress, patch.value,
                          max_extra_macs)
    network = _network_from_fit_json(fitted, train_set, Path(f"fit for {board.name}"))
    checkpoint = _checkpoint(out, network, train_set, config, resume)
    stage = staging_directory(out)
    try:
        atomic_write_text(stage / FIT_FILE, json.dumps(fitted, indent=2) + "\n")
        trained = _train(network, train_set, config, quiet, checkpoint)
        metadata = _training_metadata(data, limit, seed, train_set, network, board.name)
        save_training(trained, stage, metadata)
        size, model_channels, _ = _model_geometry(trained.model)
        representative = network_inputs(train_set.limit(calibration_samples, seed).x, size, model_channels)
        if not quiet:
            _err(f"converting to int8 (calibration on {plural(len(representative), 'training image')})")
        flatbuffer = convert_model(trained.model, representative, calibration_samples)
        flatbuffer, patched = _patch_conversion(flatbuffer, fitted, max_extra_macs, stage, quiet)
        atomic_write_bytes(stage / TFLITE_FILE, flatbuffer)
        report, evaluation = _simulation(flatbuffer, TFLITE_FILE, board, test_set, trained.model,
                                         workers or os.cpu_count() or 1, quiet)
        simulation = _simulation_dict(report, evaluation, board)
        atomic_write_text(stage / SIMULATION_FILE, json.dumps(simulation, indent=2) + "\n")
        firmware_problem = _render_firmware(flatbuffer, board, network.phi, report.arena_bytes, stage)
        summary = _build_summary(board, network, trained, report, evaluation, out,
                                 None if firmware_problem is None else str(firmware_problem), patched)
        summary.update(train_samples=trained.train_samples, validation_samples=trained.val_samples)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(stage / REPORT_FILE, json.dumps(summary, indent=2) + "\n")
        set_run_outputs(stage, relative_files(stage))
        _refuse_new_files(out, stage, force, TUNE_DIR if tune else None)  # appeared while we trained?
        changes = publish_tree(stage, out, previous)
        if tune:  # tune's folder is ours too, not a file of the user's that build kept
            changes = dataclasses.replace(changes, kept=tuple(name for name in changes.kept
                                                              if not name.startswith(f"{TUNE_DIR}/")))
    except BaseException as failure:
        if not (stage / MODEL_FILE).exists():  # nothing costly to keep yet
            shutil.rmtree(stage, ignore_errors=True)
            raise
        # Training is the costly step (minutes to hours): a later failure or ^C keeps
        # its result where the user can continue with `tinyscale convert`.
        kept = keep_failed_directory(stage, out)
        failure.add_note(f"the trained model is kept in {kept / MODEL_FILE}")
        raise
    # Only now: a build that failed after training resumes at its finished training, in seconds.
    checkpoint.discard()
    if json_output:
        typer.echo(json.dumps({**summary, **changes.to_dict()}, indent=2))
    else:
        typer.echo("\n".join([_build_text(summary, report, board), *changes.describe()]))
    report.placement.require_fits("the trained model", board.name)  # exit 3, like fit and simulate
    if firmware_problem is not None:
        # Firmware was asked for: its absence is a failure, though the rest is kept.
        firmware_problem.add_note(f"firmware not generated; the model and reports are in {out}")
        raise firmware_problem


def _refuse_new_files(out: Path, stage: Path, force: bool, tune_dir: str | None = None) -> None:
    """refuse_clobber for `out`, not counting the staging folder that may live inside it (nor tune's)."""
    if not force and out.is_dir() and any(entry.name not in (stage.name, tune_dir) for entry in out.iterdir()):
        refuse_clobber(out, force)


def _check_build_output(out: Path, force: bool, tune: bool) -> None:
    """check_output_dir; with --tune, an OUT holding only an interrupted tune folder resumes it."""
    if tune and out.is_dir() and [entry.name for entry in out.iterdir()] == [TUNE_DIR]:
        check_writable_dir(out)
        return
    check_output_dir(out, force)


def _tune_first(board: Target, data: str, out: Path, base: str, channels: int, grid: Optional[str], epochs: int,
                batch_size: int, limit: Optional[int], seed: int, jobs: Optional[int], backend: str,
                ray_address: Optional[str], patch: str, max_extra_macs: float, force: bool, train_set: Dataset,
                quiet: bool) -> Coefficients:
    """`tune` on build's training share only (its test split stays unseen), into OUT/tune: the winner."""
    from tinyscale.commands.tune import TuneOptions, run_tune  # noqa: PLC0415 - tune imports this module

    if not quiet:
        _err(f"tuning alpha, beta, gamma for {board.name} into {out / TUNE_DIR}")
    options = TuneOptions(board, data, out / TUNE_DIR, base, channels, grid, epochs, batch_size, limit, seed, jobs,
                          backend, ray_address, patch, max_extra_macs, force)
    outcome = run_tune(options, quiet=quiet, dataset=train_set.limit(limit, seed))
    c = outcome.coefficients
    if not quiet:
        _err(f"tuned: alpha {c.alpha:.4f}, beta {c.beta:.4f}, gamma {c.gamma:.4f} (int8 "
             f"{100 * outcome.best['int8_accuracy']:.2f}% on tune's validation share); building with them")
        if outcome.lead is not None:
            _err(outcome.lead.sentence())
    return c


def _patch_conversion(flatbuffer: bytes, fitted: dict[str, Any], max_extra_macs: float, stage: Path,
                      quiet: bool):
    """(the model to simulate and ship, the PatchResult or None): fit's schedule applied after conversion.

    The unpatched conversion is kept beside it as model_unpatched.tflite.
    """
    schedule = _fitted_schedule(fitted)
    if schedule is None:
        return flatbuffer, None
    (rows, cols), split = schedule
    if not quiet:
        _err(f"patching {rows}x{cols} up to {split} (fit's schedule), checking bit-equality in TFLM")
    result = _apply_schedule(flatbuffer, schedule, max_extra_macs)
    if not result.patched:
        return flatbuffer, None
    atomic_write_bytes(stage / UNPATCHED_MODEL_FILE, flatbuffer)
    return result.data, result


def _patch_summary(patched) -> dict[str, Any]:
    if patched is None:
        return {"patch_grid": [1, 1], "patch_split_tensor": None, "macs_overhead": 0.0, "unpatched_arena_bytes": None,
                "patch_max_diff": None}
    return {"patch_grid": list(patched.grid), "patch_split_tensor": patched.split_tensor,
            "macs_overhead": round(patched.extra_macs, 6), "unpatched_arena_bytes": patched.before.arena_bytes,
            "patch_max_diff": patched.max_diff}


def _build_summary(board: Target, network: ScaledNetwork, trained, report, evaluation, out: Path,
                   firmware_problem: str | None, patched=None) -> dict[str, Any]:
    placement = report.placement  # built from report.model_bytes and report.arena_bytes
    files = [FIT_FILE, "model.keras", "history.json", TFLITE_FILE, SIMULATION_FILE, REPORT_FILE]
    if patched is not None:
        files.insert(4, UNPATCHED_MODEL_FILE)
    if firmware_problem is None:
        files.append("firmware/")
    return {
        "target": board.name,
        "phi": network.phi,
        "base": network.spec.base,
        "resolution": network.spec.resolution,
        "channels": network.spec.channels,
        "classes": network.spec.classes,
        **placement.to_dict(),  # the one JSON form of a placement (model and arena bytes included)
        "latency_ms": None if report.latency is None else round(report.latency.latency_ms, 4),
        "float_accuracy": evaluation.float_accuracy,
        "int8_accuracy": evaluation.int8_accuracy,
        "agreement": evaluation.agreement,
        "test_samples": evaluation.samples,
        "images_per_second": round(evaluation.images_per_second, 2),
        "epochs_run": trained.epochs_run,
        "train_seconds": round(trained.seconds, 1),
        "resumed_at_epochs": list(trained.resumed_at),
        **_patch_summary(patched),
        "firmware": firmware_problem is None,
        "firmware_problem": firmware_problem,
        "out": str(out),
        "files": files,
    }


def _patch_text(summary: dict[str, Any]) -> list[tuple[str, str]]:
    if summary["patch_grid"] == [1, 1]:
        return [("patch", "none")]
    rows, cols = summary["patch_grid"]
    return [("patch", f"{rows}x{cols} up to {summary['patch_split_tensor']}: +{100 * summary['macs_overhead']:.1f}% "
                      f"MACs, arena {summary['unpatched_arena_bytes']:,} B unpatched, outputs bit-identical "
                      f"(max diff {summary['patch_max_diff']})")]


def _build_text(summary: dict[str, Any], report, board: Target) -> str:
    out = Path(summary["out"])
    fits = "yes" if summary["fits"] else f"NO: {report.placement.describe_shortfall()}"
    rows = [
        ("target", f"{board.name} ({board.board})"),
        ("network", f"{summary['base']} phi={format_phi(summary['phi'])}, {summary['resolution']}x{summary['resolution']}"
                    f"x{summary['channels']}, {summary['classes']} classes"),
        ("model", _bytes(summary["model_bytes"])),
        ("arena (minimal)", _bytes(summary["arena_bytes"])),
        *_patch_text(summary),
        *_placement_rows(report.placement),
        ("fits", fits),
        ("latency", latency_text(report.latency, board)),
        ("accuracy", f"int8 {_percent(summary['int8_accuracy'])}, float {_percent(summary['float_accuracy'])}, "
                     f"agreement {_percent(summary['agreement'])} on {plural(summary['test_samples'], 'test image')}"),
        ("data", f"{summary['train_samples']:,} train / {summary['validation_samples']:,} validation / "
                 f"{summary['test_samples']:,} test samples"),
        ("training", f"{plural(summary['epochs_run'], 'epoch')}, {summary['train_seconds']:.0f} s"
                     + _resumed_text(summary["resumed_at_epochs"])),
        ("firmware", f"{out / 'firmware'} (see {out / 'firmware' / 'README.md'})" if summary["firmware"]
         else f"not generated: {summary['firmware_problem']}"),
        # Paths as given, usable as they are (not names relative to an output folder).
        ("wrote", ", ".join(f"{out / name}/" if name.endswith("/") else str(out / name) for name in summary["files"])),
    ]
    return _table(rows)
