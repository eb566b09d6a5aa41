"""Where a study's pieces execute: one after another in this process, side by side in local
processes (`retroplan run --workers N`), or as tasks on a Ray cluster (`--backend ray`).

The runner knows no study. It is handed a piece function and the pieces: each piece a name and
the arguments `piece(*args, progress=...)` takes. The function must be importable by name (a
module-level function: local workers and Ray tasks get it by reference) and its arguments plain
values, so only names cross the process boundary; a study's piece (`experiment.run_stored_piece`)
reads its experiment back from --out/experiment.toml. A piece writes only inside its own folders
and is resumable, so pieces can run in any order and in parallel. What runs first, and with which
arguments, is the caller's policy (experiment.py: baselines first under a matched budget).

Numbers: torch's CPU kernels round differently with different thread counts, so a run made with
1 thread and one made with 2 differ in the last bits of their weights (and, rarely, in a
generated token). Pieces therefore get a fixed thread count: `threads_per_run` cores each
(an equal share of the cores with --workers, 1 per Ray task). With the same count, local
processes, Ray tasks and a serial run write identical records (tests/test_runner.py). A
serial run leaves torch's default (all cores) unless [train] threads says otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from .errors import UserError, require

BACKENDS = ("local", "ray")
Piece = tuple[str, tuple]  # (name, the arguments of the piece function)
# How often pieces running elsewhere (a pool, Ray) are asked where they are: a pool's workers
# print nothing of their own, and a study's runs can train for an hour between "done" lines.
WATCH_SECONDS = 600.0


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_run(workers: int) -> int:
    """Torch CPU threads for each of `workers` runs side by side on this machine's cores."""
    return max(1, cpu_cores() // workers)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_runner(workers: int, backend: str, address: str | None) -> None:
    require(backend in BACKENDS, f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}.")
    require(isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1,
            f"--workers must be a positive integer, got {workers!r}.")
    require(backend == "local" or workers == 1,
            "--workers sizes the local pool; with --backend ray the cluster decides how many run "
            "at once (leave --workers out).")
    require(address is None or backend == "ray", "--address is for --backend ray only.")
    if address is not None:
        check_ray_address(address)


RAY_CONNECT_SECONDS = 10  # how long `--address` may take to accept a connection


def check_ray_address(address: str) -> None:
    """A Ray `--address` (`HOST:PORT` or `ray://HOST:PORT`; `auto` and `local` are Ray's own)
    must accept a TCP connection within `RAY_CONNECT_SECONDS`, checked before anything is
    written: ray.init itself retries an unreachable one for many minutes."""
    import socket

    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    require(sep and host and port.isdigit() and 0 < int(port) < 65536,
            f"--address must be HOST:PORT, ray://HOST:PORT, auto or local, got {address!r}.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as exc:
        raise UserError(f"could not reach the Ray cluster at {address!r} within {RAY_CONNECT_SECONDS} "
                        f"s ({exc.strerror or exc}); start it (ray start --head) or fix --address."
                        ) from None


def run_pieces(piece: Callable[..., dict], pieces: list[Piece], workers: int = 1, backend: str = "local",
               address: str | None = None, progress: bool = True, describe: Callable[[dict], str] = str,
               counted: tuple[int, int] | None = None,
               watch: Callable[[str], str | None] | None = None) -> dict[str, dict]:
    """Run `piece(*args)` for every (name, args) of `pieces`; returns name -> its result. With
    `progress`, a line per piece: its number (`counted`: pieces done before these, and the total
    of the whole work) and name, and `describe(result)` when it is done; where pieces run
    elsewhere (a pool, Ray), every `WATCH_SECONDS` also a line for each unfinished piece that
    `watch(name)` can place (None: not started yet)."""
    check_runner(workers, backend, address)
    done, total = counted or (0, len(pieces))
    watcher = _Watcher(watch if progress else None)
    if backend == "ray":
        finished = _run_ray(piece, pieces, address, progress, watcher)
    elif workers == 1:
        finished = _run_here(piece, pieces, done, total, progress, describe)
    else:
        finished = _run_pool(piece, pieces, workers, progress, watcher)
    results: dict[str, dict] = {}
    for name, result, seconds in finished:
        results[name] = result
        done += 1
        if progress and (backend == "ray" or workers > 1):
            print(f"[{done}/{total}] {name} done [{seconds:.0f} s]: " + describe(result), flush=True)
    return results


def _run_here(piece, pieces: list[Piece], done: int, total: int, progress: bool, describe) -> Iterator:
    for n, (name, args) in enumerate(pieces, done + 1):
        if progress:
            print(f"[{n}/{total}] {name}", flush=True)
        result = piece(*args, progress=progress)
        if progress:
            print("      " + describe(result), flush=True)
        yield name, result, None


class _Watcher:
    """Prints where the unfinished pieces are, at most once every `WATCH_SECONDS`."""

    def __init__(self, watch: Callable[[str], str | None] | None):
        self.watch, self.last = watch, time.monotonic()

    def __call__(self, unfinished) -> None:
        if self.watch is None or time.monotonic() - self.last < WATCH_SECONDS:
            return
        self.last = time.monotonic()
        for name in sorted(unfinished):
            where = self.watch(name)
            if where:
                print(f"      {name}: {where}", flush=True)


def run_in_worker(piece, name: str, args: tuple, threads: int) -> tuple:
    """A piece in a fresh process (a pool worker or a Ray task), with `threads` torch threads:
    (name, its result, seconds)."""
    import torch

    from .fsutil import terminate_as_exit

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with terminate_as_exit():  # a `kill` (or the pool's terminate) removes this piece's temporaries
        result = piece(*args, progress=False)
    return name, result, time.perf_counter() - t0


def _run_in_pool_worker(piece, name: str, args: tuple, threads: int) -> tuple:
    """`run_in_worker` in a pool process that ends when its piece is interrupted. The executor's
    worker loop catches BaseException, so a SIGTERM turned into SystemExit (which has already
    removed the piece's temporaries on its way up) would otherwise leave the process alive to
    take the next piece, and a killed study's exit waited for the rest of the study."""
    try:
        return run_in_worker(piece, name, args, threads)
    except (SystemExit, KeyboardInterrupt) as stop:
        code = stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
        os._exit(code)


def _init_worker(gpus) -> None:
    # one GPU per worker when several are visible: set before this process first touches CUDA
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def _run_pool(piece, pieces: list[Piece], workers: int, progress: bool,
              watcher: _Watcher | None = None) -> Iterator:
    watcher = watcher or _Watcher(None)
    threads = threads_per_run(workers)  # the share --workers asked for, however many run now
    workers = min(workers, len(pieces))  # no process without a piece to run
    n_gpus = _visible_gpus()
    ctx = multiprocessing.get_context("spawn")  # no forked torch / Numba state
    gpus = None
    if n_gpus > 1:
        gpus = ctx.Queue()
        for i in range(workers):
            gpus.put(i % n_gpus)
    if progress:
        where = f"{min(workers, n_gpus)} GPUs" if n_gpus > 1 else f"{threads} CPU thread(s) each"
        print(f"running {len(pieces)} pieces on {workers} local workers ({where})", flush=True)
    # A ProcessPoolExecutor, not multiprocessing.Pool: when a `kill` reaches the whole process
    # group, a Pool worker can die holding the task queue's lock and Pool.terminate() then waits
    # on that lock forever; the executor notices dead workers and its processes can be stopped.
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(gpus,))
    pending: set = set()
    try:
        names = {pool.submit(_run_in_pool_worker, piece, name, args, threads): name for name, args in pieces}
        pending = set(names)
        while pending:
            ready, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in ready:
                yield future.result()  # re-raises a piece's error here (the finally stops the others)
            watcher(names[future] for future in pending)
    finally:
        if pending:  # stopped early (an error, a signal): end the pieces still running
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=True)


def _run_ray(piece, pieces: list[Piece], address: str | None, progress: bool,
             watcher: _Watcher | None = None) -> Iterator:
    watcher = watcher or _Watcher(None)
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs the optional extra: pip install 'retroplan[ray]'.") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {k: os.environ[k] for k in ("NUMBA_CACHE_DIR",)
                                               if k in os.environ}})
        except ConnectionError as exc:
            raise UserError(f"could not reach the Ray cluster at {address!r}: {exc}") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        # one GPU per task where the cluster has GPUs; otherwise one CPU core (1 torch thread),
        # so Ray packs as many runs per node as it has cores
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=0)(run_in_worker)
        if progress:
            print(f"running {len(pieces)} pieces as Ray tasks ({'1 GPU' if gpus else '1 CPU core'} "
                  f"each; cluster: {ray.cluster_resources()})", flush=True)
        names = {task.remote(piece, name, args, 1): name for name, args in pieces}
        refs = list(names)
        while refs:
            ready, refs = ray.wait(refs, num_returns=1, timeout=1.0)
            watcher(names[ref] for ref in refs)
            if not ready:
                continue
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:  # a piece's own error, as a serial run gives it
                if isinstance(getattr(exc, "cause", None), UserError):
                    raise exc.cause from None
                raise
    finally:
        if started_here:
            ray.shutdown()
