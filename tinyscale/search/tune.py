"""`tinyscale tune`: the paper's coefficient search, run against a board's budgets and the user's data.

For each candidate (alpha, beta, gamma) of :mod:`tinyscale.search.tune_grid` the fitter
finds the largest phi for the target (analytic, no conversion); candidates that
round to the same network share one trial. A trial is a short proxy training on
part of the training data, an int8 conversion, and the int8 accuracy in TFLM on
a held-out validation share that no trial trains on (the test split stays for
the final report). The winner is verified by a real conversion, as `fit` does.

This module plans, stores and reports (no TensorFlow); :mod:`tinyscale.search.tune_trial`
runs one trial and :mod:`tinyscale.search.tune_backends` runs many (process pool or Ray).
Each finished trial is written atomically to ``DIR/trials/<key>.json``; a rerun
with the same settings reads those back instead of training again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tinyscale import __version__
from tinyscale.errors import (
    DoesNotFitError,
    NothingFitsError,
    OutputExistsError,
    TinyscaleError,
    one_line,
)
from tinyscale.fsutil import (
    atomic_write_text,
    check_writable_dir,
    make_dirs,
    remove_generated,
    safe_relative,
)
from tinyscale.network import arch
from tinyscale.network.arch import NetworkSpec, ScaledNetwork
from tinyscale.network.coefficients import CoefficientsFile, write_coefficients
from tinyscale.network.scaling import Coefficients, format_phi
from tinyscale.search.tune_grid import PAPER

log = logging.getLogger(__name__)

MANIFEST_FILE = "tune.json"
TRIALS_JSON = "trials.json"
TRIALS_CSV = "trials.csv"
TRIALS_PNG = "trials.png"
COEFFICIENTS_FILE = "coefficients.toml"
TRIAL_DIR = "trials"
# The share of the training data held out to score candidates (per class); the
# proxy training never sees it, and the test split is left to the final report.
VALIDATION_FRACTION = 0.2
DEFAULT_EPOCHS = 3
DEFAULT_CALIBRATION_SAMPLES = 100


@dataclass(frozen=True)
class TuneSettings:
    """Everything a trial's result depends on besides its network: a rerun resumes only when these match."""

    target: str
    data: str
    base: str
    classes: int
    channels: int
    epochs: int = DEFAULT_EPOCHS
    limit: int | None = None
    seed: int = 0
    batch_size: int = 64
    patch: str = "auto"
    max_extra_macs: float = 0.0
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    validation_fraction: float = VALIDATION_FRACTION
    # TensorFlow's threads per trial (from --jobs). Not part of a run's identity, so a rerun
    # with other --jobs resumes rather than retraining hours of trials. Op determinism does
    # not make results independent of it: another thread count can change an accuracy's last
    # digits (measured, README), so such a resumed table mixes two thread counts.
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The settings a rerun must match to resume."""
        return {key: value for key, value in asdict(self).items() if key != "threads"}

    def training_dict(self) -> dict[str, Any]:
        """What a trial's training depends on (not the target: that only chooses the network)."""
        return {key: value for key, value in self.to_dict().items()
                if key not in ("target", "patch", "max_extra_macs")}


@dataclass(frozen=True)
class TrialJob:
    """One network to train and score: what a worker (process or Ray task) receives."""

    key: str
    network: ScaledNetwork
    settings: TuneSettings

    @property
    def cost(self) -> int:
        """Relative training cost (MACs): the longest trials start first, so workers finish together."""
        return arch.count_macs(self.network.spec)


@dataclass
class Candidate:
    index: int  # 1-based, as the table numbers it
    coefficients: Coefficients
    fit: dict[str, Any] | None = None  # FitResult.to_dict() of the analytic fit
    error: str | None = None  # why there is no network (nothing fits)
    key: str | None = None  # the trial this candidate's network is scored by
    same_as: int | None = None  # an earlier candidate with the identical network


def trial_key(spec: NetworkSpec, settings: TuneSettings) -> str:
    """A name for (network, training settings): equal networks after rounding share it."""
    text = json.dumps({"spec": repr(spec), "training": settings.training_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


FitFunction = Callable[[Coefficients], Any]  # coefficients -> FitResult (raises NothingFitsError)


def plan(coefficients: Iterable[Coefficients], settings: TuneSettings, fit_candidate: FitFunction,
         ) -> tuple[list[Candidate], list[TrialJob]]:
    """Each candidate's analytic fit, and the distinct networks to train (first occurrence wins)."""
    candidates: list[Candidate] = []
    jobs: dict[str, TrialJob] = {}
    first_with: dict[str, int] = {}
    for index, value in enumerate(coefficients, start=1):
        candidate = Candidate(index, value)
        candidates.append(candidate)
        try:
            result = fit_candidate(value)
        except NothingFitsError as exc:
            candidate.error = str(exc)  # NothingFitsError's message starts "nothing fits: "
            continue
        candidate.fit = result.to_dict()
        network = result.network
        candidate.key = trial_key(network.spec, settings)
        if candidate.key in first_with:
            candidate.same_as = first_with[candidate.key]
            continue
        first_with[candidate.key] = index
        jobs[candidate.key] = TrialJob(candidate.key, network, settings)
    if not jobs:
        reason = candidates[0].error if candidates else "no candidates"
        raise DoesNotFitError(f"no candidate of the grid yields a network that fits {settings.target}: {reason}")
    return candidates, sorted(jobs.values(), key=lambda job: -job.cost)


# ---------------------------------------------------------------------------
# The output directory: manifest, finished trials, safety rules


@dataclass
class TuneDirectory:
    """DIR of one tune run. Its manifest records the settings and every file tune wrote there."""

    path: Path
    settings: TuneSettings
    outputs: set[str] = field(default_factory=set)

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_FILE

    def trial_path(self, key: str) -> Path:
        return self.path / TRIAL_DIR / f"{key}.json"

    def finished(self, key: str) -> dict[str, Any] | None:
        """A trial finished by an earlier run (None if absent or unreadable: it runs again)."""
        try:
            data = json.loads(self.trial_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("key") == key and "int8_accuracy" in data else None

    def record(self, name: str) -> None:
        self.outputs.add(name)
        self.write_manifest()

    def write_manifest(self, extra: dict[str, Any] | None = None) -> None:
        document = {"tinyscale_version": __version__, "settings": self.settings.to_dict(),
                    "outputs": sorted(self.outputs | {MANIFEST_FILE}), **(extra or {})}
        atomic_write_text(self.manifest, json.dumps(document, indent=2) + "\n")

    def save_trial(self, result: dict[str, Any]) -> None:
        """One finished trial, atomically: a ^C an instant later still leaves it whole."""
        name = f"{TRIAL_DIR}/{result['key']}.json"
        atomic_write_text(self.path / name, json.dumps(result, indent=2) + "\n")
        self.record(name)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("settings"), dict) else None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [f"{key} {old.get(key)!r} there, {new.get(key)!r} now" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)]
    return "; ".join(changed[:3])


def open_directory(path: Path, settings: TuneSettings, force: bool) -> TuneDirectory:
    """The run's directory, following the rules of `train -o` and `fit --out`.

    A new or empty folder starts a run. A folder holding a tune run with the same
    settings resumes it (finished trials are kept). Anything else is refused
    without --force; with --force, the files an earlier tune wrote there are
    removed (the user's own files stay) and the run starts over.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory")
    manifest = _read_manifest(path)
    new = settings.to_dict()
    if manifest is not None and not force:
        if manifest["settings"] != new:
            raise OutputExistsError(f"{path} holds a tune run with other settings ({_differences(manifest['settings'], new)});"
                                    " use --force to start over, or another -o")
        directory = TuneDirectory(path, settings, safe_relative(manifest.get("outputs", [])) - {MANIFEST_FILE})
        log.info("resuming the tune run in %s", path)
        return directory
    if manifest is None and not force and path.is_dir() and any(path.iterdir()):
        raise OutputExistsError(f"output directory {path} exists and is not empty; use --force to write into it")
    check_writable_dir(path)
    if manifest is not None:  # --force: the earlier run's files go, the user's stay
        remove_generated(path, safe_relative(manifest.get("outputs", [])))
    make_dirs(path)
    directory = TuneDirectory(path, settings)
    directory.write_manifest()
    return directory


# ---------------------------------------------------------------------------
# Rows, the table, the winner


def row(candidate: Candidate, trial: dict[str, Any] | None, native_resolution: int) -> dict[str, Any]:
    """One line of trials.json: the candidate, its network's fit against the budgets, its trial's scores."""
    c = candidate.coefficients
    data: dict[str, Any] = {"candidate": candidate.index, "alpha": c.alpha, "beta": c.beta, "gamma": c.gamma,
                            "flops_base": c.flops_base}
    fit = candidate.fit
    if fit is None:
        return {**data, "phi": None, "resolution": None, "int8_accuracy": None, "float_accuracy": None,
                "seconds": None, "status": "no fit", "error": candidate.error}
    data.update({
        "phi": fit["phi"], "resolution": fit["resolution"], "native_resolution": native_resolution,
        "upsampled": fit["resolution"] > native_resolution, "blocks": fit["blocks"], "params": fit["params"],
        "macs": fit["macs"], "model_bytes": fit["model_bytes"], "arena_bytes": fit["arena_bytes"],
        "device_arena_bytes": fit.get("device_arena_bytes"),
        "flash_utilisation": fit["flash_utilisation"], "sram_utilisation": fit["sram_utilisation"],
        "binding": fit["binding"], "patch_grid": fit.get("patch_grid"), "trial": candidate.key,
        "same_as": candidate.same_as,
    })
    if trial is None:
        return {**data, "int8_accuracy": None, "float_accuracy": None, "seconds": None, "status": "not run",
                "error": None}
    if "error" in trial:
        return {**data, "int8_accuracy": None, "float_accuracy": None, "seconds": trial.get("seconds"),
                "status": "failed", "error": trial["error"]}
    return {**data, "int8_accuracy": trial["int8_accuracy"], "float_accuracy": trial["float_accuracy"],
            "seconds": trial["seconds"], "epochs_run": trial.get("epochs_run"),
            "converted_model_bytes": trial.get("model_bytes"), "measured_arena_bytes": trial.get("arena_bytes"),
            "validation_samples": trial.get("validation_samples"), "status": "ok", "error": None}


def winner(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best int8 accuracy; ties go to the float accuracy, then to the earlier candidate (the paper's first)."""
    scored = [r for r in rows if r["status"] == "ok"]
    if not scored:
        return None
    return max(scored, key=lambda r: (r["int8_accuracy"], r["float_accuracy"] or 0.0, -r["candidate"]))


NOISE_STANDARD_ERRORS = 2.0  # a lead smaller than this many standard errors may be the proxy's noise


def correct_bits(correct: Iterable[bool]) -> str:
    """Which validation images a trial's int8 model got right, as hex (one bit per image, first
    image highest): what lets two trials be compared image by image, not only by their totals."""
    bits = "".join("1" if c else "0" for c in correct)
    return f"{int(bits, 2):0{(len(bits) + 3) // 4}x}" if bits else ""


def _read_bits(text: str, samples: int) -> list[bool] | None:
    try:
        value = int(text, 16)
    except (TypeError, ValueError):
        return None
    bits = f"{value:0{samples}b}"
    return None if len(bits) != samples else [bit == "1" for bit in bits]


@dataclass(frozen=True)
class Lead:
    """The winner's proxy int8 accuracy over the paper's point, in percentage points, and how sure it is.

    Both networks are scored on the same validation images. Paired (both trials
    kept which images they got right), the standard error comes from the images
    on which they disagree; otherwise the two scores are taken as independent
    binomial estimates, which overstates it when the networks miss the same
    images (they tend to): such a lead called noise may be real.
    """

    paper_candidate: int
    points: float
    standard_error_points: float
    validation_samples: int
    paired: bool

    @property
    def within_noise(self) -> bool:
        # No lead (a tie broken by float accuracy) is never "beyond noise", even with no error at all.
        return self.points <= 0 or self.points < NOISE_STANDARD_ERRORS * self.standard_error_points

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_noise": self.within_noise}

    def sentence(self) -> str:
        """One line for `tune`'s output: what the lead is worth."""
        verdict = (f"within the proxy's noise (under {NOISE_STANDARD_ERRORS:g} standard errors): compare both "
                   "with a full training before trusting it, or tune with a larger --limit or more --epochs"
                   if self.within_noise else
                   (f"{self.points / self.standard_error_points:.1f} standard errors" if self.standard_error_points
                    else "no image scored otherwise") + ", beyond the proxy's noise")
        return (f"lead over the paper's point (#{self.paper_candidate}): {self.points:+.2f} points of int8 "
                f"accuracy, one standard error {self.standard_error_points:.2f} on {self.validation_samples:,} "
                f"validation images ({'paired' if self.paired else 'unpaired'}); " + verdict)


def _standard_error(a: float, b: float, samples: int, a_correct: list[bool] | None,
                    b_correct: list[bool] | None) -> tuple[float, bool]:
    """Of accuracy a - b, as a fraction, and whether it was paired image by image."""
    if a_correct is None or b_correct is None:
        return math.sqrt((a * (1 - a) + b * (1 - b)) / samples), False
    only_a = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    only_b = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    mean = (only_a - only_b) / samples  # per image: +1, -1 or 0
    return math.sqrt(max(0.0, (only_a + only_b) / samples - mean * mean) / samples), True


def lead_over_paper(rows: list[dict[str, Any]], best: dict[str, Any],
                    trials: dict[str, dict[str, Any]] | None = None) -> Lead | None:
    """None when the paper's point won, was not scored, or the sample count is unknown. `trials`
    (trial key -> result) pairs the comparison when both results kept `int8_correct`."""
    paper = next((r for r in rows if r["status"] == "ok"
                  and (r["alpha"], r["beta"], r["gamma"]) == (PAPER.alpha, PAPER.beta, PAPER.gamma)), None)
    samples = best.get("validation_samples")
    if paper is None or paper["candidate"] == best["candidate"] or not samples:
        return None

    def correct(r: dict[str, Any]) -> list[bool] | None:
        text = (trials or {}).get(r.get("trial"), {}).get("int8_correct")
        return None if text is None else _read_bits(text, samples)

    a, b = best["int8_accuracy"], paper["int8_accuracy"]
    error, paired = _standard_error(a, b, samples, correct(best), correct(paper))
    return Lead(paper["candidate"], round(100 * (a - b), 2), round(100 * error, 2), samples, paired)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table(rows: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """The text table `tinyscale tune` prints; '*' marks a resolution above the data's native one."""
    header = ("#", "alpha", "beta", "gamma", "phi", "px", "params", "MACs", "model B", "arena B", "flash%",
              "SRAM%", "binding", "float%", "int8%", "s", "note")
    lines = [header]
    for r in rows:
        if r["resolution"] is None:
            lines.append((str(r["candidate"]), f"{r['alpha']:.4f}", f"{r['beta']:.4f}", f"{r['gamma']:.4f}",
                          *["-"] * 12, r["error"] or "no fit"))
            continue
        notes = []
        if r["same_as"]:
            notes.append(f"same network as #{r['same_as']}")
        if r["status"] == "failed":
            notes.append(f"failed: {r['error']}")
        elif r["status"] == "not run":
            notes.append("not run")
        if best is not None and r["candidate"] == best["candidate"]:
            notes.append("<- best")
        lines.append((
            str(r["candidate"]), f"{r['alpha']:.4f}", f"{r['beta']:.4f}", f"{r['gamma']:.4f}", format_phi(r["phi"]),
            f"{r['resolution']}{'*' if r['upsampled'] else ''}", f"{r['params']:,}", f"{r['macs']:,}",
            f"{r['model_bytes']:,}", f"{r['arena_bytes']:,}", f"{100 * r['flash_utilisation']:.1f}",
            f"{100 * r['sram_utilisation']:.1f}", r["binding"], _percent(r["float_accuracy"]),
            _percent(r["int8_accuracy"]), "-" if r["seconds"] is None else f"{r['seconds']:.1f}", "; ".join(notes),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.rjust(width) if i < 15 and i != 12 else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in lines)
    if any(r.get("upsampled") for r in rows):
        native = next(r["native_resolution"] for r in rows if r.get("upsampled"))
        text += (f"\n* above the data's native {native} px: upsampling costs SRAM and adds no information")
    return text


CSV_COLUMNS = ("candidate", "alpha", "beta", "gamma", "flops_base", "phi", "resolution", "native_resolution",
               "upsampled", "blocks", "params", "macs", "model_bytes", "arena_bytes", "device_arena_bytes",
               "flash_utilisation", "sram_utilisation", "binding", "float_accuracy", "int8_accuracy", "seconds",
               "same_as", "trial", "status", "error")


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({key: "" if r.get(key) is None else r.get(key) for key in CSV_COLUMNS})
    return buffer.getvalue()


def plot_png(rows: list[dict[str, Any]]) -> bytes | None:
    """A bar chart of float and int8 accuracy per candidate; None without matplotlib (the `plot` extra)."""
    from tinyscale.errors import UsageError  # noqa: PLC0415
    from tinyscale.simulation.simulate import figure_png, pyplot  # noqa: PLC0415

    try:
        plt = pyplot()
    except UsageError:  # matplotlib (the plot extra) is optional here: the PNG is skipped
        return None
    scored = [r for r in rows if r["status"] == "ok"]
    if not scored:
        return None
    labels = [f"#{r['candidate']}\n{r['alpha']:.2f}/{r['beta']:.2f}/{r['gamma']:.2f}\n{r['resolution']} px"
              for r in scored]
    positions = range(len(scored))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.0 * len(scored)), 4.0))
    axes.bar([p - 0.2 for p in positions], [100 * (r["float_accuracy"] or 0) for r in scored], 0.4, label="float")
    axes.bar([p + 0.2 for p in positions], [100 * r["int8_accuracy"] for r in scored], 0.4, label="int8 (TFLM)")
    low = min(100 * min(r["int8_accuracy"], r["float_accuracy"] or 1) for r in scored)
    axes.set_ylim(max(0.0, low - 5), 100)
    axes.set_xticks(list(positions), labels, fontsize=7)
    axes.set_ylabel("validation accuracy %")
    axes.set_title("tinyscale tune: proxy accuracy per candidate (alpha/beta/gamma)")
    axes.legend(loc="lower right")
    return figure_png(plt, figure)


def write_reports(directory: TuneDirectory, rows: list[dict[str, Any]]) -> list[str]:
    """trials.json, trials.csv and (with matplotlib) trials.png; the names written."""
    atomic_write_text(directory.path / TRIALS_JSON, json.dumps(rows, indent=2) + "\n")
    atomic_write_text(directory.path / TRIALS_CSV, csv_text(rows))
    written = [TRIALS_JSON, TRIALS_CSV]
    png = plot_png(rows)
    if png is not None:
        from tinyscale.fsutil import atomic_write_bytes  # noqa: PLC0415

        atomic_write_bytes(directory.path / TRIALS_PNG, png)
        written.append(TRIALS_PNG)
    for name in written:
        directory.outputs.add(name)
    directory.write_manifest()
    return written


def provenance(settings: TuneSettings, rows: list[dict[str, Any]], best: dict[str, Any],
               verified_phi: float) -> dict[str, Any]:
    trials = len({r["trial"] for r in rows if r["status"] == "ok"})
    document = {"target": settings.target, "data": settings.data, "base": settings.base, "trials": trials,
                "seeds": [settings.seed], "tinyscale_version": __version__, "epochs": settings.epochs,
                "int8_accuracy": best["int8_accuracy"], "phi": verified_phi,
                "method": "tinyscale tune: proxy int8 validation accuracy at the fitted phi"}
    if settings.limit is not None:
        document["limit"] = settings.limit
    return document


def write_winner(directory: TuneDirectory, best: dict[str, Any], verified_phi: float,
                 rows: list[dict[str, Any]]) -> Path:
    coefficients = Coefficients(best["alpha"], best["beta"], best["gamma"])
    path = directory.path / COEFFICIENTS_FILE
    write_coefficients(path, CoefficientsFile(coefficients, provenance(directory.settings, rows, best, verified_phi)))
    directory.record(COEFFICIENTS_FILE)
    return path


def failed_trial(key: str, error: BaseException | str, seconds: float | None = None) -> dict[str, Any]:
    """A trial's failure as its result: reported in the table, never written as finished."""
    text = str(error) if isinstance(error, TinyscaleError) or isinstance(error, str) \
        else f"{type(error).__name__}: {error}"
    return {"key": key, "error": one_line(text), "seconds": seconds}
