"""`tinyscale tune`: wall time per backend and worker count, and tuned vs the paper's coefficients.

    python benchmarks/tune.py speed [--target nucleo-l476rg] [--base tiny] [--grid 1] [--limit 1000]
        [--epochs 1] [--configs local:1 local:2 ray:1 ray:2] [--out DIR]
    python benchmarks/tune.py accuracy [--targets nucleo-l476rg esp32] [--seeds 0 1] [--base efficientnet-lite0]
        [--grid 2] [--tune-epochs 3] [--tune-limit 10000] [--epochs 30] [--limit N] [--final all|best]
        [--jobs N] [--out DIR] [--finished-only] [--no-ledger]
    python benchmarks/tune.py final --target T --candidates 'A,B[,G];...' [--seeds 0 1] [--base B]
        [--epochs 30] [--limit N] [--jobs N] [--out DIR] [--finished-only] [--no-ledger]

speed: the same tune run (Fashion-MNIST, fresh output folder each time) with
each backend:jobs pair; prints wall seconds, the sum of the trials' own seconds,
the speed-up over the same backend with one worker, its bound (N workers x one
worker's trial seconds / these trial seconds: each trial runs with fewer threads
when N share the cores, so this is what N workers gain with nothing serial and
perfect packing), Ray's time relative to the local pool's, and checks that
every configuration printed the same table (seconds aside). Goal (issue 11):
>= 1.8x with 2 workers; Ray within 10% of local.

accuracy: per target, `tune` on Fashion-MNIST's training split, then `build`
with the full schedule of benchmarks/fashion_mnist_accuracy.py (up to 30
epochs, 60,000 training images minus a 10% validation split, int8 accuracy in
TFLM on the 10,000 test images) for the paper's coefficients and the tuned ones,
once per seed. `--final all` builds every distinct candidate of the tune, so the
proxy ranking can be compared with the final one (Kendall's tau); `--final best`
builds the paper's and the winner only (the rank agreement is then whether the
proxy's order of those two holds). Goal (issue 11): tuned beats the paper's by
>= 1.0 point on at least one board, and is not worse on the other beyond seed noise.
Hours on a 2-core machine; `--limit`, `--epochs` and `--seeds` make a reduced run.
`--jobs N` runs N final builds at a time, each pinned to its share of the cores.
Rerun with the same `--out` to resume: the tune skips its finished trials, a
final build whose folder holds the report of the same command is reused, and
an interrupted one continues its training after its last finished epoch.
`--finished-only` prints the table of what `--out` holds so far and trains nothing.

final: the final builds of `accuracy` for candidates named on the command line,
without the tune (the first candidate is the baseline the last column subtracts):
how the rest of an `accuracy` run is finished on another machine.

Every finished tune and final build is also recorded in
benchmarks/data/tune_accuracy_runs.json (its command without `-o`, its JSON
output, the commit it ran at): commit that file, and a rerun on another machine,
or after `--out` is gone, reuses those runs instead of spending hours on them
again, `--finished-only` included (`--no-ledger` neither reads nor writes it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def run_json(command: list[str], log: Path, cores: list[int] | None = None) -> tuple[dict | None, float, str]:
    """(the command's --json output or None, wall seconds, last stderr line); `cores` pins it (Linux)."""
    started = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    with log.open("w") as stderr:
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=pin)
    seconds = time.perf_counter() - started
    last = (log.read_text().strip().splitlines() or [""])[-1]
    if finished.returncode != 0:
        return None, seconds, last
    return json.loads(finished.stdout), seconds, last


# ---------------------------------------------------------------------------
# speed


def tune_command(args: argparse.Namespace, target: str, out: Path, *extra: str, fresh: bool = True) -> list[str]:
    """`fresh`: --force, a new run in `out` (speed: every configuration from nothing); without it a
    rerun resumes the tune run already in `out` (accuracy: the tune is the first hour)."""
    command = ["tinyscale", "tune", "--target", target, "--data", "fashion-mnist", "--base", args.base,
               "--channels", "1", "--grid", args.grid, "--epochs", str(args.epochs), "--seed", str(args.seed),
               "-o", str(out), "--json", *(["--force"] if fresh else []), *extra]
    if args.limit:
        command += ["--limit", str(args.limit)]
    return command


def comparable(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


def speed(args: argparse.Namespace, root: Path) -> None:
    print(f"tune wall time: {args.target}, base {args.base}, grid {args.grid}, Fashion-MNIST limit {args.limit}, "
          f"{args.epochs} epoch(s), {os.cpu_count()} cores; load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'backend':8} {'jobs':>4} {'trials':>6} {'wall s':>8} {'trial s':>8} {'speed-up':>8} {'bound':>8} "
          f"{'vs local':>8}  table")
    results: dict[tuple[str, int], tuple[float, list[dict]]] = {}
    trial_sums: dict[tuple[str, int], float] = {}
    for config in args.configs:
        backend, jobs = config.split(":")
        out = root / f"{backend}-{jobs}"
        summary, wall, last = run_json(tune_command(args, args.target, out, "--backend", backend, "--jobs", jobs),
                                       root / f"{backend}-{jobs}.log")
        if summary is None:
            print(f"{backend:8} {jobs:>4} failed: {last}", flush=True)
            continue
        rows = summary["trials"]
        results[(backend, int(jobs))] = (wall, rows)
        first = next(iter(results.values()))[1]
        trial_seconds = sum({r["trial"]: r["seconds"] or 0 for r in rows if r.get("trial")}.values())
        trial_sums[(backend, int(jobs))] = trial_seconds
        single = results.get((backend, 1))
        local = results.get(("local", int(jobs)))
        # What N workers could gain at best: N trials at a time, each as slow as it ran here
        # (fewer threads each), against one worker's trials with all the cores, nothing serial.
        lone = trial_sums.get((backend, 1))
        bound = int(jobs) * lone / trial_seconds if lone and trial_seconds else float("nan")
        # Same seeds and threads per trial: the same table. Another --jobs gives each trial other
        # thread counts, which may change the last digits; compare with the local run of the same --jobs.
        reference = (local or (wall, rows))[1]
        print(f"{backend:8} {jobs:>4} {summary['trained']:>6} {wall:>8.1f} {trial_seconds:>8.1f} "
              f"{(single[0] / wall if single else float('nan')):>7.2f}x {bound:>7.2f}x "
              f"{(wall / local[0] if local and backend != 'local' else float('nan')):>7.2f}x  "
              f"{'same as local' if comparable(rows) == comparable(reference) else 'DIFFERS from local'}"
              f" (same jobs), {'same' if comparable(rows) == comparable(first) else 'differs'} vs the first",
              flush=True)
        (root / f"{backend}-{jobs}.json").write_text(json.dumps(summary, indent=2))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


# ---------------------------------------------------------------------------
# accuracy


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-a of two score lists (None with fewer than two items)."""
    pairs = [(i, j) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    if not pairs:
        return None
    score = sum((xs[i] - xs[j]) * (ys[i] - ys[j]) > 0 for i, j in pairs) - \
        sum((xs[i] - xs[j]) * (ys[i] - ys[j]) < 0 for i, j in pairs)
    return score / len(pairs)


def build_command(args: argparse.Namespace, target: str, out: Path, row: dict, seed: int) -> list[str]:
    command = ["tinyscale", "build", "--target", target, "--data", "fashion-mnist", "-o", str(out), "--base",
               args.base, "--channels", "1", "--epochs", str(args.epochs), "--seed", str(seed), "--force", "--json",
               "--alpha", repr(row["alpha"]), "--beta", repr(row["beta"]), "--gamma", repr(row["gamma"])]
    if args.limit:
        command += ["--limit", str(args.limit)]
    return command


FINISHED = "benchmark_command.json"  # beside a final build's report.json: the command that made it


NOT_BUILT = "not built"  # --finished-only: a final build that has not finished yet


LEDGER = Path(__file__).resolve().parent / "data" / "tune_accuracy_runs.json"
_LEDGER_LOCK = threading.Lock()  # two final builds may finish at once (--jobs 2)
_MACHINE_KEYS = ("out", "files")  # where this machine put its outputs: not part of the result


def ledger_key(command: list[str]) -> list[str]:
    """A tune or build command without its output folder: the same run, wherever it was made."""
    at = command.index("-o")
    return command[:at] + command[at + 2:]


def _read_ledger(ledger: Path) -> list[dict]:
    return json.loads(ledger.read_text()) if ledger.is_file() else []


def recorded_run(ledger: Path | None, command: list[str]) -> dict | None:
    """The JSON output the ledger holds for this command, or None."""
    key = ledger_key(command)
    entries = [] if ledger is None else _read_ledger(ledger)
    return next((entry["report"] for entry in entries if entry["command"] == key), None)


def _commit() -> str | None:
    here = Path(__file__).resolve().parent
    found = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def record_run(ledger: Path, command: list[str], report: dict) -> None:
    """Adds (or replaces) this command's entry; written whole to a temporary file and renamed, so an
    interrupted write leaves the previous ledger, never half of one."""
    entry = {"command": ledger_key(command), "commit": _commit(), "recorded": time.strftime("%Y-%m-%d"),
             "report": {k: v for k, v in report.items() if k not in _MACHINE_KEYS}}
    with _LEDGER_LOCK:
        entries = [e for e in _read_ledger(ledger) if e["command"] != entry["command"]] + [entry]
        partial = ledger.with_name(ledger.name + ".partial")
        partial.write_text(json.dumps(entries, indent=1) + "\n")
        os.replace(partial, ledger)


def final_build(command: list[str], out: Path, log: Path, cores: list[int] | None = None,
                start: bool = True, ledger: Path | None = None) -> dict | str | None:
    """A final build's report: reused when `out` holds one made by this very command (a rerun with
    the same --out resumes: each build is hours, and an interrupted one continues its training
    from its last epoch, `build`'s own resume) or when `ledger` records it (a build made on another
    machine or in a folder since deleted), else built now (or NOT_BUILT when not `start`)."""
    finished, report = out / FINISHED, out / "report.json"
    if finished.is_file() and report.is_file() and json.loads(finished.read_text()) == command:
        built = json.loads(report.read_text())  # what `build --json` printed for it
        if ledger is not None and recorded_run(ledger, command) is None:
            record_run(ledger, command, built)  # made before the ledger existed
        return built
    recorded = recorded_run(ledger, command)
    if recorded is not None:
        return recorded
    if not start:
        return NOT_BUILT
    built, _, _ = run_json(command, log, cores)
    if built is not None:
        finished.write_text(json.dumps(command))
        if ledger is not None:
            record_run(ledger, command, built)
    return built


def core_sets(jobs: int) -> list[list[int] | None]:
    """The cores each of `jobs` concurrent builds is pinned to: a build's TensorFlow sizes its thread
    pools to the cores it may use, so N builds on N cores do not oversubscribe them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if jobs <= 1 or len(cores) < jobs:
        return [None] * max(1, jobs)
    share = len(cores) // jobs
    return [cores[i * share:(i + 1) * share] for i in range(jobs)]


def run_finals(args: argparse.Namespace, root: Path, builds: list[tuple[str, dict, int]]) -> dict:
    """Every (target, candidate row, seed) final build, `--jobs` at a time: {(target, candidate, seed): int8}."""
    free = queue.Queue()
    for cores in core_sets(args.jobs):
        free.put(cores)

    def one(build: tuple[str, dict, int]) -> tuple[tuple[str, int, int], float | None]:
        target, r, seed = build
        out = root / f"{target}-{r.get('folder', 'c' + str(r['candidate']))}-s{seed}"
        cores = free.get()
        try:
            built = final_build(build_command(args, target, out, r, seed), out, root / f"{out.name}.log", cores,
                                start=not args.finished_only, ledger=None if args.no_ledger else LEDGER)
        finally:
            free.put(cores)
        if built == NOT_BUILT:
            return (target, r["candidate"], seed), NOT_BUILT
        score = None if built is None else built["int8_accuracy"]
        print(f"  {out.name}: " + ("failed" if score is None else f"int8 {100 * score:.2f}%"), file=sys.stderr,
              flush=True)
        return (target, r["candidate"], seed), score

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return dict(pool.map(one, builds))


def finished_tune(folder: Path) -> dict | None:
    """--finished-only: the tune's rows as its last run wrote them (trials.json), winner included."""
    from tinyscale.search.tune import lead_over_paper, winner  # noqa: PLC0415 - the same rules `tune` applies

    rows_file = folder / "trials.json"
    if not rows_file.is_file():
        return None
    rows = json.loads(rows_file.read_text())
    best = winner(rows)
    if best is None:
        return None
    trials = {t["key"]: t for t in (json.loads(f.read_text()) for f in (folder / "trials").glob("*.json"))}
    lead = lead_over_paper(rows, best, trials)
    return {"trials": rows, "best": best, "lead_over_paper": None if lead is None else lead.to_dict()}


def tuned(args: argparse.Namespace, target: str, root: Path, ledger: Path | None) -> tuple[dict | None, float, str]:
    """(the tune's summary or None, its wall seconds, why not): the ledger's record of this tune, else
    the run in `root` (--finished-only: as far as it got), else the tune run now and recorded."""
    folder = root / f"{target}-tune"
    command = tune_command(args, target, folder, fresh=False)
    recorded = recorded_run(ledger, command)
    if recorded is not None:
        return recorded, recorded.get("seconds", float("nan")), ""
    if args.finished_only:
        return finished_tune(folder), float("nan"), "not tuned yet"
    summary, wall, last = run_json(command, root / f"{target}-tune.log")
    if summary is not None and ledger is not None:
        record_run(ledger, command, summary)
    return summary, wall, last


def _lead_text(lead: dict | None) -> str:
    if lead is None:
        return "-"
    return (f"{lead['points']:+.2f} +- {lead['standard_error_points']:.2f} points "
            f"({'paired' if lead['paired'] else 'unpaired'}{', within noise' if lead['within_noise'] else ''})")


def _score_cell(score: float | str | None) -> str:
    return "fail" if score is None else "-" if score == NOT_BUILT else f"{100 * score:.2f}"


def paired_gain(scores: dict, target: str, candidate: int, seeds: list[int]) -> tuple[float | None, list[int]]:
    """Mean of candidate minus #1 (the paper's point) over the seeds both finished, so a partial
    table (--finished-only) compares like with like; None for #1 itself or where no seed has both."""
    both = [seed for seed in seeds
            if all(isinstance(scores.get((target, c, seed)), float) for c in (1, candidate))]
    if candidate == 1 or not both:
        return None, both
    return statistics.mean(scores[(target, candidate, s)] - scores[(target, 1, s)] for s in both), both


def accuracy(args: argparse.Namespace, root: Path) -> None:
    plans = []  # (target, the candidates built, the winner's number, tune seconds, the proxy's lead)
    for target in args.targets:
        tune_args = argparse.Namespace(**{**vars(args), "epochs": args.tune_epochs, "limit": args.tune_limit,
                                          "seed": args.seeds[0]})
        summary, wall, last = tuned(tune_args, target, root, None if args.no_ledger else LEDGER)
        if summary is None:
            print(f"{target:16} tune failed: {last}", flush=True)
            continue
        rows = [r for r in summary["trials"] if r["status"] == "ok" and not r.get("same_as")]
        best = summary["best"]["candidate"]
        chosen = rows if args.final == "all" else [r for r in rows if r["candidate"] in (1, best)]
        plans.append((target, chosen, best, wall, summary.get("lead_over_paper")))
    scores = run_finals(args, root, [(target, r, seed) for target, chosen, *_ in plans for r in chosen
                                     for seed in args.seeds])
    print(f"tuned vs paper coefficients: base {args.base}, tune grid {args.grid} ({args.tune_epochs} epoch(s), "
          f"limit {args.tune_limit}), final builds {args.epochs} epochs"
          + (f" on {args.limit} training images" if args.limit else " on the full training set")
          + f", seeds {args.seeds}; folders in {root}")
    print(f"{'target':16} {'candidate':>9} {'alpha':>6} {'beta':>6} {'gamma':>6} {'phi':>6} {'px':>4} "
          f"{'proxy %':>7} " + " ".join(f"{'seed ' + str(s) + ' %':>9}" for s in args.seeds) + f" {'mean %':>7}")
    for target, chosen, best, wall, lead in plans:
        finals: dict[int, float] = {}
        for r in chosen:
            row_scores = [scores[(target, r["candidate"], seed)] for seed in args.seeds]
            valid = [s for s in row_scores if isinstance(s, float)]
            if valid:
                finals[r["candidate"]] = statistics.mean(valid)
            mean = f"{100 * finals[r['candidate']]:.2f}" if valid else "-"
            label = f"#{r['candidate']}" + (" paper" if r["candidate"] == 1 else "") + \
                (" tuned" if r["candidate"] == best else "")
            print(f"{target:16} {label:>9} {r['alpha']:>6.3f} {r['beta']:>6.3f} {r['gamma']:>6.3f} "
                  f"{r['phi']:>6.2f} {r['resolution']:>4} {100 * r['int8_accuracy']:>7.2f} "
                  + " ".join(f"{_score_cell(s):>9}" for s in row_scores)
                  + f" {mean:>7}", flush=True)
        ranked = [r for r in chosen if r["candidate"] in finals]
        tau = kendall_tau([r["int8_accuracy"] for r in ranked], [finals[r["candidate"]] for r in ranked])
        lift, both = paired_gain(scores, target, best, args.seeds)
        gain = f"{100 * lift:+.2f} points over seeds {both}" if lift is not None else "-"
        print(f"{target:16} tuned - paper: {gain}; proxy's lead {_lead_text(lead)}; proxy-vs-final Kendall tau over "
              f"{len(ranked)} networks: {'-' if tau is None else f'{tau:+.2f}'}; tune took "
              f"{'-' if wall != wall else f'{wall:.0f} s'}", flush=True)


# ---------------------------------------------------------------------------
# final


def final_rows(grid: str) -> list[dict]:
    """`final --candidates`: each alpha,beta[,gamma] as a candidate row (gamma solved as `tune` solves
    it, so the build command, and with it the ledger's key, is the one `accuracy` would run)."""
    from tinyscale.search.tune_grid import parse_candidates  # noqa: PLC0415 - tune's own parsing

    return [{"candidate": i, "folder": f"final{i}", "alpha": c.alpha, "beta": c.beta, "gamma": c.gamma}
            for i, c in enumerate(parse_candidates(grid), 1)]


def finals(args: argparse.Namespace, root: Path) -> None:
    """Final builds of the given candidates, without a tune: the rest of an `accuracy` run on another
    machine (recorded in the ledger, so `accuracy` reuses them); the first candidate is the baseline."""
    rows = final_rows(args.candidates)
    scores = run_finals(args, root, [(args.target, r, seed) for r in rows for seed in args.seeds])
    print(f"final builds: {args.target}, base {args.base}, {args.epochs} epochs"
          + (f" on {args.limit} training images" if args.limit else " on the full training set")
          + f", seeds {args.seeds}; folders in {root}")
    print(f"{'#':>2} {'alpha':>8} {'beta':>8} {'gamma':>8} " + " ".join(f"{'seed ' + str(s) + ' %':>9}"
                                                                      for s in args.seeds)
          + f" {'mean %':>7} {'- #1':>7}")
    for r in rows:
        row_scores = [scores[(args.target, r["candidate"], seed)] for seed in args.seeds]
        valid = [s for s in row_scores if isinstance(s, float)]
        mean = f"{100 * statistics.mean(valid):.2f}" if valid else "-"
        lift, _ = paired_gain(scores, args.target, r["candidate"], args.seeds)
        gain = "-" if lift is None else f"{100 * lift:+.2f}"
        print(f"{r['candidate']:>2} {r['alpha']:>8.4f} {r['beta']:>8.4f} {r['gamma']:>8.4f} "
              + " ".join(f"{_score_cell(s):>9}" for s in row_scores) + f" {mean:>7} {gain:>7}", flush=True)


def check_arguments(args: argparse.Namespace) -> None:
    """Bad targets or candidates end here, as one line and the exit code tinyscale's own commands use,
    before any output folder is made or a build is started."""
    from tinyscale.boards.targets import load_target  # noqa: PLC0415
    from tinyscale.errors import TargetError, UsageError  # noqa: PLC0415

    try:
        for target in getattr(args, "targets", None) or [args.target]:
            load_target(target)
        if args.mode == "final":
            final_rows(args.candidates)
    except TargetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except UsageError as error:
        print(f"error: --candidates: {str(error).removeprefix('--grid: ')}", file=sys.stderr)
        sys.exit(error.exit_code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    fast = sub.add_parser("speed", help="wall time per backend and worker count")
    fast.add_argument("--target", default="nucleo-l476rg")
    fast.add_argument("--base", default="tiny")
    fast.add_argument("--grid", default="1")
    fast.add_argument("--limit", type=int, default=1000)
    fast.add_argument("--epochs", type=int, default=1)
    fast.add_argument("--seed", type=int, default=0)
    fast.add_argument("--configs", nargs="+", default=["local:1", "local:2", "ray:1", "ray:2"])
    fast.add_argument("--out", type=Path, default=None)
    slow = sub.add_parser("accuracy", help="tuned vs paper coefficients, full training")
    slow.add_argument("--targets", nargs="+", default=["nucleo-l476rg", "esp32"])
    slow.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    slow.add_argument("--base", default="efficientnet-lite0")
    slow.add_argument("--grid", default="2")
    slow.add_argument("--tune-epochs", type=int, default=3)
    slow.add_argument("--tune-limit", type=int, default=10000)
    slow.add_argument("--epochs", type=int, default=30)
    slow.add_argument("--limit", type=int, default=None, help="final builds' training subset (default: all)")
    slow.add_argument("--final", choices=("all", "best"), default="all")
    slow.add_argument("--jobs", type=int, default=1, help="final builds at a time, each pinned to its share "
                      "of the cores")
    slow.add_argument("--out", type=Path, default=None)
    slow.add_argument("--finished-only", action="store_true", help="print what --out holds so far; train nothing "
                      "('-': a build not finished yet)")
    slow.add_argument("--no-ledger", action="store_true", help=f"neither reuse nor record tunes and final builds in {LEDGER.name}")
    last = sub.add_parser("final", help="final builds of given candidates, no tune (recorded in the ledger)")
    last.add_argument("--target", required=True)
    last.add_argument("--candidates", required=True, help="alpha,beta[,gamma] separated by ';' "
                      "(gamma solved from the constraint when left out); the first is the baseline")
    last.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    last.add_argument("--base", default="efficientnet-lite0")
    last.add_argument("--epochs", type=int, default=30)
    last.add_argument("--limit", type=int, default=None, help="training subset (default: all)")
    last.add_argument("--jobs", type=int, default=1, help="builds at a time, each pinned to its share of the cores")
    last.add_argument("--out", type=Path, default=None)
    last.add_argument("--finished-only", action="store_true", help="print what the ledger and --out hold; "
                      "train nothing")
    last.add_argument("--no-ledger", action="store_true", help=f"neither reuse nor record builds in {LEDGER.name}")
    args = parser.parse_args()
    check_arguments(args)
    root = args.out or Path(tempfile.mkdtemp(prefix=f"tune-bench-{args.mode}-"))
    root.mkdir(parents=True, exist_ok=True)
    {"speed": speed, "accuracy": accuracy, "final": finals}[args.mode](args, root)
    sys.exit(0)


if __name__ == "__main__":
    main()
