"""`tinyscale tune`: fit the scaling coefficients to a board and a dataset by proxy trainings."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tinyscale.boards.targets import Target, load_target
from tinyscale.commands.app import app, reports_errors
from tinyscale.commands.core import (
    DEFAULT_BASE,
    DEFAULT_MAX_EXTRA_MACS,
    Base,
    BaseOption,
    JsonOption,
    MaxExtraMacsOption,
    PatchMode,
    PatchOption,
    TargetOption,
)
from tinyscale.commands.pipeline import (
    BatchOption,
    DataChannelsOption,
    DataOption,
    LimitOption,
    SeedOption,
    _err,
    _load_data,
)
from tinyscale.commands.tune_options import (
    DEFAULT_TUNE_EPOCHS,
    Backend,
    BackendOption,
    GridOption,
    JobsOption,
    RayAddressOption,
)
from tinyscale.commands.wording import plural
from tinyscale.errors import TinyscaleError, UsageError
from tinyscale.network.scaling import Coefficients, format_phi
from tinyscale.progress import status
from tinyscale.search.tune_backends import default_jobs, threads_per_trial
from tinyscale.training.data import Dataset

if TYPE_CHECKING:
    from tinyscale.search.tune import Lead

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TuneOptions:
    target: Target
    data: str
    out: Path
    base: str = DEFAULT_BASE
    channels: int | None = None
    grid: str | None = None
    epochs: int = DEFAULT_TUNE_EPOCHS
    batch_size: int = 64
    limit: int | None = None
    seed: int = 0
    jobs: int | None = None
    backend: str = "local"
    ray_address: str | None = None
    patch: str = "auto"
    max_extra_macs: float = DEFAULT_MAX_EXTRA_MACS
    force: bool = False


@dataclass(frozen=True)
class TuneOutcome:
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    coefficients: Coefficients
    verified_phi: float
    coefficients_file: Path
    written: list[str]
    trained: int  # trials run now (the others were finished by an earlier run)
    resumed: int
    seconds: float
    lead: Lead | None  # the winner's over the paper's point, and whether the proxy can tell


def _fit_function(options: TuneOptions, classes: int, channels: int):
    from tinyscale.search.fit import FitRequest, fit  # noqa: PLC0415

    def fit_candidate(coefficients: Coefficients):
        request = FitRequest(options.target, options.base, classes, channels, coefficients)
        return fit(request, verify=False, patch=options.patch, max_extra_macs=options.max_extra_macs)

    return fit_candidate


def run_tune(options: TuneOptions, quiet: bool = False, dataset: Dataset | None = None) -> TuneOutcome:
    """Plan, run (or resume) every trial, verify the winner, write DIR's files.

    `dataset`: the training data already loaded (build's training share), else
    `options.data`'s train split is loaded with `options.limit`.
    """
    from tinyscale.search.tune_backends import ray_session  # noqa: PLC0415
    from tinyscale.search.tune_grid import candidates  # noqa: PLC0415

    if options.ray_address is not None and options.backend != "ray":
        raise UsageError("--ray-address needs --backend ray")
    started = time.perf_counter()
    grid = candidates(options.grid)  # a bad --grid fails before the data loads
    # Ray joined or started first: a missing extra or an unreachable cluster fails before the long work.
    session = ray_session(options.ray_address) if options.backend == "ray" else contextlib.nullcontext()
    with session:
        return _run_tune(options, grid, quiet, dataset, started)


# A tune that compares this few networks has hardly searched: say so, and how to get more.
FEW_FITTING = 2


def few_fit_note(grid: str | None, planned: list, target: str) -> str | None:
    """One stderr line when at most FEW_FITTING of the grid's candidates fit `target`, else None."""
    from tinyscale.search.tune_grid import MAX_GRID_STEPS, candidates, grid_steps  # noqa: PLC0415

    fitting = sum(candidate.error is None for candidate in planned)
    if fitting > FEW_FITTING or fitting == len(planned):
        return None
    note = f"only {fitting} of {plural(len(planned), 'candidate')} fit {target}"
    if any(c.error is not None and min(c.coefficients.beta, c.coefficients.gamma) <= 1 + 1e-9 for c in planned):
        note += " (with beta or gamma 1, width or resolution stays the base's whatever phi)"
    steps = grid_steps(grid)
    if steps is not None and 2 * steps <= MAX_GRID_STEPS:
        note += f"; --grid {2 * steps} tries {len(candidates(str(2 * steps)))}"
    return note


def _run_tune(options: TuneOptions, grid: list[Coefficients], quiet: bool, dataset: Dataset | None,
              started: float) -> TuneOutcome:
    from tinyscale.search.tune import (  # noqa: PLC0415
        TuneSettings,
        lead_over_paper,
        open_directory,
        plan,
        row,
        table,
        winner,
        write_reports,
        write_winner,
    )
    from tinyscale.search.tune_backends import run  # noqa: PLC0415
    from tinyscale.search.tune_trial import TrialData  # noqa: PLC0415
    from tinyscale.training.data import split  # noqa: PLC0415

    jobs = options.jobs or default_jobs()
    given = dataset
    if dataset is None:
        with status(enabled=not quiet) as progress:
            progress(f"loading {options.data}")
            dataset = _load_data(options.data, "train", options.limit, options.seed)
    channels = options.channels or dataset.channels
    # A dataset handed in is build's training share: not the trials a plain `tune` of the same data would reuse.
    data_name = options.data if given is None else f"{options.data} (build's training share)"
    settings = TuneSettings(
        target=options.target.name, data=data_name, base=options.base, classes=dataset.classes, channels=channels,
        epochs=options.epochs, limit=options.limit, seed=options.seed, batch_size=options.batch_size,
        patch=options.patch, max_extra_macs=options.max_extra_macs, threads=threads_per_trial(jobs))
    with status(enabled=not quiet) as progress:
        progress(f"fitting {plural(len(grid), 'candidate')} to {options.target.name} (analytic)")
        planned, trial_jobs = plan(grid, settings, _fit_function(options, dataset.classes, channels))
    directory = open_directory(options.out, settings, options.force)  # after the fits: nothing fits, nothing written
    results = {job.key: directory.finished(job.key) for job in trial_jobs}
    results = {key: value for key, value in results.items() if value is not None}
    to_run = [job for job in trial_jobs if job.key not in results]
    native = max(dataset.x.shape[1:3])
    few = few_fit_note(options.grid, planned, options.target.name)
    if few is not None and not quiet:
        _err(few)
    if not quiet:
        _err(f"{plural(len(grid), 'candidate')}, {plural(len(trial_jobs), 'distinct network')}; "
             f"{len(results)} finished earlier, {len(to_run)} to train on {options.backend} "
             f"({plural(min(jobs, max(1, len(to_run))), 'trial')} at a time, "
             f"{plural(settings.threads, 'thread')} each)")
    train_share, validation = split(dataset, settings.validation_fraction, seed=settings.seed + 1)
    data = TrialData(train_share, validation)

    def on_result(result: dict[str, Any]) -> None:
        results[result["key"]] = result
        if "error" not in result:
            directory.save_trial(result)
        if not quiet:
            verdict = (f"failed: {result['error']}" if "error" in result else
                       f"int8 {100 * result['int8_accuracy']:.2f}%, float {100 * result['float_accuracy']:.2f}%")
            _err(f"trial {len(results)}/{len(trial_jobs)} ({result.get('resolution', '?')} px): {verdict}, "
                 f"{result.get('seconds') or 0:.1f} s")

    try:
        run(options.backend, to_run, data, jobs, on_result, options.ray_address)
    except KeyboardInterrupt as interrupt:
        finished = sum(1 for result in results.values() if "error" not in result)
        interrupt.add_note(f"{plural(finished, 'finished trial')} kept in {directory.path}; "
                           "rerun the same command to resume")
        raise
    rows = [row(candidate, results.get(candidate.key), native) for candidate in planned]
    best = winner(rows)
    if best is None:
        first = next((r["error"] for r in rows if r["error"]), "no trial ran")
        written = write_reports(directory, rows)
        raise TinyscaleError(f"every trial failed (first: {first}); see {directory.path / written[0]}")
    coefficients = Coefficients(best["alpha"], best["beta"], best["gamma"])
    verified_phi = _verify_winner(options, dataset.classes, channels, coefficients, best, quiet)
    written = write_reports(directory, rows)
    path = write_winner(directory, best, verified_phi, rows)
    if not quiet:
        typer.echo(table(rows, best))
    return TuneOutcome(rows, best, coefficients, verified_phi, path, [*written, path.name], len(to_run),
                       len(trial_jobs) - len(to_run), time.perf_counter() - started,
                       lead_over_paper(rows, best, results))


def _verify_winner(options: TuneOptions, classes: int, channels: int, coefficients: Coefficients,
                   best: dict[str, Any], quiet: bool) -> float:
    """The winner's fit verified by a real conversion in TFLM, once (as `fit` does)."""
    from tinyscale.search.fit import FitRequest, fit  # noqa: PLC0415

    request = FitRequest(options.target, options.base, classes, channels, coefficients)
    with status(enabled=not quiet) as progress:
        result = fit(request, verify=True, progress=progress, patch=options.patch,
                     max_extra_macs=options.max_extra_macs)
    if result.phi != best["phi"]:
        log.warning("the measurement moved the winner's phi from %s to %s (its trial trained the estimate's "
                    "network)", format_phi(best["phi"]), format_phi(result.phi))
    return result.phi


def _summary(outcome: TuneOutcome, out: Path) -> dict[str, Any]:
    return {"best": outcome.best, "alpha": outcome.coefficients.alpha, "beta": outcome.coefficients.beta,
            "gamma": outcome.coefficients.gamma, "verified_phi": outcome.verified_phi,
            "lead_over_paper": None if outcome.lead is None else outcome.lead.to_dict(), "trials": outcome.rows,
            "trained": outcome.trained, "resumed": outcome.resumed, "seconds": round(outcome.seconds, 1),
            "files": [str(out / name) for name in outcome.written]}


@app.command()
@reports_errors
def tune(
    target: TargetOption,
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the trials and coefficients.toml.")],
    base: BaseOption = Base(DEFAULT_BASE),
    channels: DataChannelsOption = None,
    grid: GridOption = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Proxy training epochs per trial.")] = DEFAULT_TUNE_EPOCHS,
    batch_size: BatchOption = 64,
    limit: LimitOption = None,
    seed: SeedOption = 0,
    jobs: JobsOption = None,
    backend: BackendOption = Backend("local"),
    ray_address: RayAddressOption = None,
    patch: PatchOption = PatchMode("auto"),
    max_extra_macs: MaxExtraMacsOption = DEFAULT_MAX_EXTRA_MACS,
    force: Annotated[bool, typer.Option("--force", help="Start over: remove an earlier tune's files from DIR "
                                                        "(yours stay), or write into a non-empty DIR.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Search alpha, beta, gamma for a target and a dataset: one short training per candidate.

    Writes DIR/trials.json, trials.csv, trials.png (with the plot extra) and
    coefficients.toml (the winner, for --coefficients of fit, scale, train and
    build). Rerunning the same command resumes: finished trials are not trained again.
    """
    options = TuneOptions(load_target(target), data, out, base.value, channels, grid, epochs, batch_size, limit, seed,
                          jobs, backend.value, ray_address, patch.value, max_extra_macs, force)
    outcome = run_tune(options, quiet=json_output)
    if json_output:
        typer.echo(json.dumps(_summary(outcome, out), indent=2))
        return
    c = outcome.coefficients
    typer.echo(f"\nbest: alpha {c.alpha:.4f}, beta {c.beta:.4f}, gamma {c.gamma:.4f} (candidate "
               f"#{outcome.best['candidate']}), int8 {100 * outcome.best['int8_accuracy']:.2f}% on "
               f"{plural(outcome.best.get('validation_samples') or 0, 'validation image')}; phi "
               f"{format_phi(outcome.verified_phi)} verified in TFLM")
    if outcome.lead is not None:
        typer.echo(outcome.lead.sentence())
    typer.echo(f"trained {plural(outcome.trained, 'trial')}, {outcome.resumed} from an earlier run, "
               f"{outcome.seconds:.1f} s")
    typer.echo("wrote " + ", ".join(str(out / name) for name in outcome.written))
