"""Atomic files and directories: every file the package writes goes through here.

One policy for every writer (store shards and manifests, core sets, pick lists, reports): the content is
written under a temporary name in the target's own directory, the file is fsync'ed, renamed over the target,
and the directory is fsync'ed. After a crash a name holds either its whole new content or what it held
before, never a torn mix, and once a call returns the rename survives a power cut too.

Temporary names are ``.tmp~<host>~<pid>~<nonce>~<final name>``. Host and pid let a resuming writer remove
only the leftovers of processes that are gone (``remove_stale_temps``): several extraction workers may write
one feature store at the same time, and deleting a live worker's temp file would make its rename fail.
"""
from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

TMP_PREFIX = ".tmp~"
HOST = socket.gethostname().replace("~", "-")
PathLike = Union[str, "os.PathLike[str]"]


def _fsync_file(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: PathLike) -> None:
    """Make the renames and unlinks inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: PathLike) -> Path:
    """A fresh temporary name beside ``path`` that names this host, this process and ``path``."""
    path = Path(path)
    return path.parent / f"{TMP_PREFIX}{HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}~{path.name}"


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a binary file under a temporary name, fsync it, rename it over ``path``, fsync
    the directory. On any error (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    untouched. The directory must exist."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            _fsync_file(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_dir(path: PathLike, fill: Callable[[Path], object], *, replace: bool = False) -> None:
    """Build a directory with ``fill(staging)`` under a temporary name beside ``path``, fsync what it holds,
    and rename it to ``path``.

    replace=False: ``path`` must not exist or be an empty directory; otherwise the rename raises OSError
    (a concurrent writer made it first) and ``path`` is left as it is. replace=True: an existing ``path`` is
    moved aside first and removed once the new one is in place (put back if the rename fails).
    """
    path = Path(path)
    staging = tmp_path(path)
    staging.mkdir()
    old = None
    try:
        fill(staging)
        for folder, _, files in os.walk(staging):
            for name in files:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    _fsync_file(fd)
                finally:
                    os.close(fd)
            fsync_dir(folder)
        if replace and os.path.lexists(path):
            old = tmp_path(path)
            os.replace(path, old)
        try:
            os.rename(staging, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
                old = None
            raise
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def writer_is_gone(tmp_name: str) -> bool:
    """True when a temp file's writer is known dead (this host, pid not running) or the name is not ours."""
    parts = tmp_name[len(TMP_PREFIX):].split("~", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return True
    host, pid = parts[0], int(parts[1])
    if host != HOST:
        return False  # another machine's worker: we cannot tell whether it still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_temps(directory: PathLike, only_for: Optional[str] = None) -> list:
    """Remove the temporary files and folders in ``directory`` whose writers are gone (only those for the
    final name ``only_for``, when given); return their names."""
    removed = []
    for entry in os.scandir(directory):
        if only_for is not None and not entry.name.endswith("~" + only_for):
            continue
        if entry.name.startswith(TMP_PREFIX) and writer_is_gone(entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
            removed.append(entry.name)
    return removed
