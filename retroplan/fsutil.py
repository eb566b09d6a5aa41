"""Crash-safe file output: everything is written under a temporary name and renamed.

A reader therefore sees either the old file or the complete new one, never a half-written
file, whatever moment the writer is killed at.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _chmod_default(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private entries; give the result the user's usual mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


TEMP_NAME_KEEP = 200  # bytes of a name kept in its temporary's (a file name holds at most 255)


def temp_prefix(name: str) -> str:
    """`.NAME.`, the start of a temporary's name for NAME (mkstemp adds 8 characters and the
    suffix); a NAME longer than `TEMP_NAME_KEEP` bytes is cut there and a digest of the whole
    name added, so the temporary of a 255-byte name still fits and stays its name's own."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= TEMP_NAME_KEEP:
        return f".{name}."
    cut = raw[:TEMP_NAME_KEEP].decode("utf-8", "ignore")
    return f".{cut}~{hashlib.sha256(raw).hexdigest()[:8]}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries a killed writer of `path` left behind (they carry our own names)."""
    for stale in path.parent.glob(glob.escape(temp_prefix(path.name)) + "*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _temporary_name(path: Path) -> Path:
    """A fresh temporary's name for `path` (like mkstemp's: the prefix, 8 random characters)."""
    return path.parent / f"{temp_prefix(path.name)}{secrets.token_hex(4)}.tmp"


def _created(name: Path, directory: bool) -> bool:
    """Create `name` (a private file or folder); False if it exists (another writer's)."""
    try:
        if directory:
            os.mkdir(name, 0o700)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


# The writers below keep a temporary's name *before* creating it, so whatever moment an interrupt
# (our SIGTERM/SIGINT handlers raise) arrives at, their cleanup knows what to remove. mkstemp and
# mkdtemp return the name only after creating the entry, and a SIGTERM in between left it behind
# (tests/test_reliability_round3.py). Masking the signals around them does not close the gap in a
# process with other threads: the kernel hands the signal to a thread that does not mask it.


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = None
    try:
        while tmp is None or not _created(tmp, directory=False):
            tmp = _temporary_name(path)  # kept before it exists (above)
        yield tmp
        _chmod_default(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}.") from exc
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _finite(obj):
    """`obj` with every non-finite float (NaN, +-Infinity: values that are undefined, such as
    a mean of nothing) replaced by None, which JSON writes as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj, indent: int | None = 2, sort_keys: bool = True) -> str:
    """retroplan's one JSON serializer: strict JSON (non-finite floats become null, so no
    file ever holds NaN or Infinity, which strict parsers reject)."""
    return json.dumps(_finite(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def json_line(obj) -> str:
    """One line of a .jsonl file (keys in the order given), strict JSON, with its newline."""
    return json_text(obj, indent=None, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json_text(obj) + "\n")


def refuse_foreign_output(out: str | os.PathLike, run_dir: str | os.PathLike, command: str) -> None:
    """`command --out OUT` on the run `run_dir` writes only into a folder of its own: not into
    a suite (a folder with meta.json, or below one), not the run folder itself or its
    checkpoints/, and not into another run (a folder with run.json, or below one)."""
    out_path, run_path = Path(out).resolve(), Path(run_dir).resolve()
    for folder in [out_path, *out_path.parents]:
        if (folder / "meta.json").is_file():
            raise UserError(f"{command} --out {out} is inside suite {folder}; a suite holds only "
                            "what generate wrote, so choose a folder outside it.")
        if (folder / "run.json").is_file():
            if folder != run_path:
                raise UserError(f"{command} --out {out} is inside another run ({folder}); choose a "
                                f"folder of its own, or one inside {run_dir}.")
            if out_path == run_path:
                raise UserError(f"{command} --out {out} is the run folder itself; choose a new folder "
                                "(inside it, such as RUN/eval-mine, is fine).")
            if out_path == folder / "checkpoints" or (folder / "checkpoints") in out_path.parents:
                raise UserError(f"{command} --out {out} is inside the run's checkpoints folder, which "
                                "holds only step folders; choose another folder.")
            return


def refuse_symlink(path: str | os.PathLike) -> None:
    """A path retroplan is about to write inside a run or suite must not be a symbolic link
    (following one would write outside the folder)."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; retroplan writes only real files inside its "
                        "folders, so remove the link (or replace it with the file).")


def open_append(path: str | os.PathLike):
    """Open `path` for appending text without following a symbolic link (refused)."""
    refuse_symlink(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_symlink(path)  # it became a link in between
        raise
    return os.fdopen(fd, "a")


@contextlib.contextmanager
def _handled(signum: int, handler) -> Iterator[None]:
    """`handler` for `signum` while inside, the previous one restored after; outside the main
    thread, where Python cannot set signal handlers, nothing is changed."""
    try:
        previous = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signum, previous)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """While inside, SIGTERM (what `kill` and job schedulers send) ends the process through
    SystemExit, so the temporaries of an unfinished write are removed on the way out (only
    SIGKILL leaves them, for the next run to delete)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    with _handled(signal.SIGTERM, handler):
        yield


@contextlib.contextmanager
def interrupt_noted() -> Iterator[None]:
    """While inside, Ctrl-C (SIGINT) raises KeyboardInterrupt as usual and is also noted: if
    some callback (compiled code, a progress bar) catches and drops that exception, leaving
    the block raises it again, so the command still stops with exit code 130."""
    noted = []

    def handler(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt
    with _handled(signal.SIGINT, handler):
        yield
    if noted:
        raise KeyboardInterrupt


LOCK_NAME = ".lock"  # inside a folder a command writes: held (fcntl.flock) while it works


@contextlib.contextmanager
def hold_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the advisory lock of `folder` (created if missing) while inside, so two retroplan
    commands never write the same folder at once; a second one is refused in one sentence that
    names the first (`command` and pid, which the holder writes into FOLDER/.lock). The kernel
    releases the lock when the holder exits, however it exits; the file stays (empty of
    meaning once unlocked)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
            raise UserError(f"another retroplan {holder} is working in {folder}; wait for it to "
                            "finish, or choose another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def path_for(folder: str | os.PathLike, target: str | os.PathLike) -> str:
    """`target` as a file inside `folder` stores it: relative to `folder`, so a folder of runs
    and suites copied or moved together still finds its suites (read back with `path_from`)."""
    return os.path.relpath(Path(target).resolve(), Path(folder).resolve())


def path_from(folder: str | os.PathLike, stored: str) -> Path:
    """A path stored by a file in `folder`: relative to `folder`. Files written before paths
    were stored so hold absolute paths, or paths relative to where the command ran: those are
    read as they are when nothing lies at the folder-relative place."""
    if os.path.isabs(stored):
        return Path(stored)
    inside = Path(folder) / stored
    return inside if inside.exists() or not Path(stored).exists() else Path(stored)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, onto_empty: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it onto `path` only when complete.

    `path` must not exist yet (we never delete what the user has), or, with `onto_empty`, may
    be an empty folder, which the rename replaces in one step (until then it stays as it was,
    and a kill leaves it there).
    """
    path = Path(path)
    empty = onto_empty and path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    if path.exists() and not empty:
        raise UserError(f"{path} already exists; choose another output path or remove it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = None
    try:
        while tmp is None or not _created(tmp, directory=True):
            tmp = _temporary_name(path)  # kept before it exists (as in atomic_path)
        yield tmp
        _chmod_default(tmp, directory=True)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}.") from exc
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


class NpyAppender:
    """Write a 1-D .npy file chunk by chunk without holding it in memory.

    Chunks go to a temporary raw file; `finish()` writes the header (whose shape is only
    known at the end) and the data to `path` under a temporary name, then renames.
    """

    def __init__(self, path: str | os.PathLike, dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0
        for stale in self.path.parent.glob(glob.escape(temp_prefix(self.path.name)) + "*.part"):
            stale.unlink(missing_ok=True)
        fd, raw = tempfile.mkstemp(prefix=temp_prefix(self.path.name), suffix=".part",
                                   dir=self.path.parent)
        self._raw_path = Path(raw)
        self._raw = os.fdopen(fd, "wb")

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        self._raw.write(chunk.tobytes())
        self.count += chunk.shape[0]

    def finish(self) -> None:
        self._raw.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count,)}
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
                np.lib.format.write_array_header_1_0(out, header)
                with open(self._raw_path, "rb") as raw:
                    shutil.copyfileobj(raw, out, 1 << 22)
                out.flush()
                os.fsync(out.fileno())
        finally:
            self._raw_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._raw.close()
        self._raw_path.unlink(missing_ok=True)
