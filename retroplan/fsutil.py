"""Crash-safe file output: everything is written under a temporary name and renamed.

A reader therefore sees either the old file or the complete new one, never a half-written
file, whatever moment the writer is killed at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries a killed writer of `path` left behind (they carry our own names)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _chmod_default(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}.") from exc
    except BaseException:
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


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it onto `path` only when complete.

    `path` must not exist yet (we never delete what the user has).
    """
    path = Path(path)
    if path.exists():
        raise UserError(f"{path} already exists; choose another output path or remove it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _chmod_default(tmp, directory=True)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}.") from exc
    except BaseException:
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
        for stale in self.path.parent.glob(f".{self.path.name}.*.part"):
            stale.unlink(missing_ok=True)
        fd, raw = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part",
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
