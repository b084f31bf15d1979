"""Where the partition workers run: local worker processes, or Ray actors. One interface for both.

A pool holds W ``PartitionWorker`` objects (``_partition_worker``), each built with the same arguments, and
``call(method, per_worker_args)`` runs ``method`` on every worker at once and returns their results in
worker order (the driver sums partial gains in that fixed order). Nothing but row numbers, candidate
positions and gains crosses a pool: the workers read their features from the shared ``.npy`` themselves.

- ``LocalPool``: persistent worker interpreters (no fork of a driver holding threads or large arrays, and
  no re-import of the caller's main module), one local socket each; a worker's exception comes back and is
  raised in the driver (an ``InputError`` as itself). Each worker gets ``threads`` OpenMP threads, so W
  workers share the cores.
- ``RayPool``: one actor per worker (``num_cpus`` = its threads); the same calls through ``ray.get``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import List, Optional, Sequence

from mads_fast.errors import InputError

from ._partition_worker import PartitionWorker


def _serve(conn, init_kwargs: dict) -> None:
    """A local worker's loop: build the worker, then answer (method, args) until told to stop (None)."""
    try:
        worker = PartitionWorker(**init_kwargs)
        conn.send(("ok", None))
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        conn.send(("error", _portable(exc)))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        method, args = message
        try:
            conn.send(("ok", getattr(worker, method)(*args)))
        except BaseException as exc:  # noqa: BLE001 - reported to the driver
            conn.send(("error", _portable(exc)))


def _die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this worker when the driver that started it dies (a driver killed
    mid-run must not leave workers computing for nobody); elsewhere the closed socket ends them at their next
    reply."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the socket rule still holds
        return
    if os.getppid() == 1:  # the driver died before the request took effect
        os._exit(1)


def worker_main() -> None:
    """Entry point of a local worker process: read (address, key, slot) from stdin, connect, serve. Ctrl-C
    reaches the whole process group: the driver handles it (and closes its workers), the workers ignore it.
    A worker dies with its driver (``_die_with_parent``)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    address, key, slot = sys.stdin.readline().split()
    conn = Client(address, authkey=bytes.fromhex(key))
    conn.send(int(slot))
    _serve(conn, conn.recv())


def _portable(exc: BaseException):
    """The exception itself when it is ours (pickles whole), else a RuntimeError carrying its traceback."""
    if isinstance(exc, InputError):
        return exc
    return RuntimeError(f"partition worker failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")


class LocalPool:
    """``workers`` persistent local processes, each a ``PartitionWorker(**init_kwargs, threads=...)``.

    Workers are fresh interpreters (``python -c``, connected back over a local socket with a random key),
    not ``multiprocessing`` children: those re-import the caller's main module, which breaks any script
    without an ``if __name__ == "__main__"`` guard. The package's own folder goes first on their path."""

    kind = "local"
    START_TIMEOUT = 300.0  # seconds for every worker to start and connect (imports on a loaded machine)

    def __init__(self, workers: int, init_kwargs: dict, threads: Optional[int] = None) -> None:
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.threads = threads
        self._procs, self._conns = [], []
        key = os.urandom(16)
        listener = Listener(family="AF_UNIX", authkey=key)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        code = "from mads_fast.solver._placement import worker_main; worker_main()"
        try:
            for slot in range(workers):
                proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env, text=True)
                proc.stdin.write(f"{listener.address} {key.hex()} {slot}\n")
                proc.stdin.close()
                self._procs.append(proc)
            self._conns = self._accept(listener, workers)
            for conn in self._conns:
                conn.send(dict(init_kwargs, threads=threads))
            for conn in self._conns:
                self._receive(conn)
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()

    def _accept(self, listener, workers: int) -> list:
        """The workers' connections in slot order; fails when a worker exits before connecting."""
        got, errors = {}, []

        def accept():
            try:
                for _ in range(workers):
                    conn = listener.accept()
                    got[conn.recv()] = conn
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        deadline = time.monotonic() + self.START_TIMEOUT
        while thread.is_alive():
            thread.join(0.05)
            dead = [p.returncode for p in self._procs if p.poll() is not None]
            if dead and thread.is_alive():
                raise RuntimeError(f"a partition worker exited with code {dead[0]} before it started")
            if time.monotonic() > deadline:
                raise RuntimeError(f"partition workers did not start within {self.START_TIMEOUT:.0f} s")
        if errors:
            raise errors[0]
        return [got[slot] for slot in range(workers)]

    def __len__(self) -> int:
        return len(self._conns)

    @staticmethod
    def _receive(conn):
        try:
            status, value = conn.recv()
        except EOFError:
            raise RuntimeError("a partition worker process died (out of memory?)") from None
        if status == "error":
            raise value
        return value

    def call(self, method: str, per_worker_args: Sequence[tuple]) -> List:
        """``method(*args)`` on every worker at once (args per worker); results in worker order."""
        for conn, args in zip(self._conns, per_worker_args):
            conn.send((method, tuple(args)))
        results, error = [], None
        for conn in self._conns:  # drain every answer even after a failure, so the connections stay in step
            try:
                results.append(self._receive(conn))
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
                conn.close()
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs, self._conns = [], []


class RayPool:
    """``workers`` Ray actors, each a ``PartitionWorker(**init_kwargs, threads=...)``, on a connected Ray."""

    kind = "ray"

    def __init__(self, ray, workers: int, init_kwargs: dict, threads: Optional[int] = None) -> None:
        self._ray = ray
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = threads or max(1, cpus // workers)
        self.threads = threads
        # an actor asks at most its share of the cluster, so W actors always fit (W > CPUs gets fractions)
        share = min(float(threads), cpus / workers)
        actor = ray.remote(PartitionWorker).options(num_cpus=share, max_restarts=0)
        self._actors = [actor.remote(**dict(init_kwargs, threads=threads)) for _ in range(workers)]

    def __len__(self) -> int:
        return len(self._actors)

    def call(self, method: str, per_worker_args: Sequence[tuple]) -> List:
        from ray.exceptions import RayTaskError

        refs = [getattr(a, method).remote(*args) for a, args in zip(self._actors, per_worker_args)]
        try:
            return self._ray.get(refs)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, InputError):
                raise cause from None
            raise

    def close(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
