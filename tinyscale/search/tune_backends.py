"""Where tune's trials run: a local process pool, or Ray (a local instance or an existing cluster).

Both call :func:`tinyscale.search.tune_trial.run_trial` with the same job and data, and
each trial sizes TensorFlow's threads to the cores it owns, so the same seeds
give the same table on either backend. Results come back in completion order
through `on_result`, which stores each finished trial at once: a ^C keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator

from tinyscale.errors import TinyscaleError, UsageError, one_line
from tinyscale.search.tune import TrialJob, failed_trial

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
ResultHandler = Callable[[dict[str, Any]], None]
# ray.init retries an unreachable cluster for ~20 s and offers no timeout option:
# tune's probe of the cluster waits this long, then reports one line.
RAY_CONNECT_TIMEOUT_SECONDS = 10.0
RAY_EXTRA_HINT = "pip install 'tinyscale[ray]' (in a clone: pip install '.[ray]')"


def default_jobs() -> int:
    return os.cpu_count() or 1


def threads_per_trial(jobs: int) -> int:
    """Cores each of `jobs` concurrent trials may use: all of them shared out, at least one."""
    return max(1, default_jobs() // jobs)


def run(backend: str, jobs: list[TrialJob], data: Any, workers: int, on_result: ResultHandler,
        ray_address: str | None = None) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"--backend is one of {', '.join(BACKENDS)} (got {backend!r})")
    if ray_address is not None and backend != "ray":
        raise UsageError("--ray-address needs --backend ray")
    if not jobs:
        return
    if backend == "ray":
        run_ray(jobs, data, on_result, ray_address)
    else:
        run_local(jobs, data, workers, on_result)


# ---------------------------------------------------------------------------
# Local process pool

_worker_data: Any = None


def _init_worker(data: Any) -> None:
    # ^C goes to the whole process group: the parent decides, workers are terminated by it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _worker_data
    _worker_data = data  # received once per worker process, not once per trial


def _pool_trial(job: TrialJob) -> dict[str, Any]:
    from tinyscale.search.tune_trial import run_trial  # noqa: PLC0415

    return run_trial(job, _worker_data)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop running trials now (ProcessPoolExecutor only waits for them; Python 3.14 adds terminate_workers)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()


def run_local(jobs: list[TrialJob], data: Any, workers: int, on_result: ResultHandler) -> None:
    """Trials in `workers` processes (spawned: TensorFlow must not be forked), longest first."""
    if workers < 1:
        raise UsageError(f"--jobs must be at least 1, got {workers}")
    workers = min(workers, len(jobs))
    previous = _sigterm_interrupts()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(data,))
    try:
        pending = {pool.submit(_pool_trial, job): job for job in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    result = failed_trial(job.key, exc)
                on_result(result)
    except BaseException:
        _terminate(pool)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    pool.shutdown(wait=True)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _sigterm_interrupts():
    """SIGTERM (a scheduler's stop, `kill`) ends the run like ^C: running workers are terminated too.

    Returns the previous handler (None off the main thread, where Python cannot set one).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


# ---------------------------------------------------------------------------
# Ray


def import_ray():
    try:
        import ray  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise UsageError(f"--backend ray needs Ray, which is not installed: {RAY_EXTRA_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Refused connections fail at once, before ray.init's retries."""
    if address == "auto" or address.startswith("ray://") or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_SECONDS).close()
    except (OSError, ValueError) as exc:
        raise TinyscaleError(f"cannot reach a Ray cluster at {address}: {getattr(exc, 'strerror', None) or exc}") from None


_PROBE = "import logging, sys, ray; ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)"


def _probe_cluster(address: str) -> None:
    """ray.init against `address` in a child process with a deadline: an unreachable cluster is one line, fast.

    ray.init itself retries for ~20 s and must run on the main thread (from
    another thread its GCS connection dies later), so the deadline is kept here.
    """
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True, text=True,
                               timeout=RAY_CONNECT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as timeout:
        said = timeout.stderr.decode(errors="replace") if isinstance(timeout.stderr, bytes) else timeout.stderr or ""
        if "InvalidAuthToken" in said or "Missing authorization" in said:
            raise TinyscaleError(f"the Ray cluster at {address} wants token authentication: set RAY_AUTH_MODE=token "
                                 "and give its token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
        raise TinyscaleError(f"cannot reach a Ray cluster at {address}: no answer within "
                             f"{RAY_CONNECT_TIMEOUT_SECONDS:.0f} s (is `ray start --head` running there?)") from None
    if probe.returncode != 0:
        lines = [line for line in probe.stderr.splitlines() if "Error" in line] or probe.stderr.splitlines() or [""]
        raise TinyscaleError(f"cannot reach a Ray cluster at {address}: {one_line(lines[-1], 200)}")


def connect_ray(address: str | None, num_cpus: int | None = None):
    """ray.init: join `address`, else start Ray locally; a cluster that does not answer is one error line."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if address is None:
        # "local": a new instance, even when /tmp/ray names a cluster started (and maybe gone) earlier.
        options.update(address="local", num_cpus=num_cpus or default_jobs())
    else:
        _check_reachable(address)
        _probe_cluster(address)
        options["address"] = address
    where = f"a Ray cluster at {address}" if address is not None else "a local Ray instance"
    try:
        ray.init(**options)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: one line whatever Ray raises
        reason = one_line(str(exc), 200)
        raise TinyscaleError(f"cannot start or join {where}: {reason}") from None
    return ray


def _ray_trial(job: TrialJob, data: Any) -> dict[str, Any]:
    from tinyscale.search.tune_trial import run_trial  # noqa: PLC0415

    return run_trial(job, data)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray connected for the block (joined, or started locally and stopped after it)."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    connect_ray(address)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def run_ray(jobs: list[TrialJob], data: Any, on_result: ResultHandler, address: str | None) -> None:
    """Each trial a Ray task with num_cpus = its threads; the data goes into the object store once."""
    with ray_session(address):
        _run_ray_tasks(import_ray(), jobs, data, on_result)


def _run_ray_tasks(ray, jobs: list[TrialJob], data: Any, on_result: ResultHandler) -> None:
    threads = jobs[0].settings.threads
    data_ref = ray.put(data)  # one copy in the object store, shared by every task
    remote = ray.remote(num_cpus=threads, max_retries=0)(_ray_trial)
    started = time.perf_counter()
    pending = {remote.remote(job, data_ref): job for job in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # the task's worker died; the others go on
                result = failed_trial(job.key, exc)
            on_result(result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    log.info("ray ran %d trials in %.1f s", len(jobs), time.perf_counter() - started)
