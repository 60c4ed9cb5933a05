"""Calling a function in worker processes, each call bounded in time.

A user's reward function or a verifier may hang, catch every exception (the timeout's too), call ``sys.exit`` or
crash the interpreter. Here each call runs in one of ``workers`` processes started afresh (``spawn``: nothing of
the caller's threads or models is inherited); a call still running after ``timeout`` seconds has its process
killed and replaced, and so has a process that exits. The caller gets, per call, either the returned value or a
one-line reason, and is never stopped or hung. Calls run in parallel, so a slow verifier also scores faster.

The function is named ``module:function`` and imported in each worker; the current directory is on the import path
(as ``python -m`` puts it there), so a module next to the user's data imports without ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait


def import_function(target: str) -> Callable:
    """The function named ``module:function`` (the current directory first on the import path). Raises
    ``ImportError`` or ``AttributeError`` naming what is missing."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, name, None)
    if function is None:
        raise AttributeError(f"module '{module_name}' has no function '{name}'")
    if not callable(function):
        raise TypeError(f"'{target}' is a {type(function).__name__}, not a function")
    return function


def _serve(target: str, conn: Connection) -> None:
    """A worker: call ``target`` on every (index, args) received, send back (index, value, error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the caller's to handle
    function = import_function(target)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, args = message
        try:
            conn.send((index, function(*args), None))
        except BaseException as exc:  # noqa: BLE001 (SystemExit and KeyboardInterrupt included: a reason, not an exit)
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            conn.send((index, None, f"raised {type(exc).__name__}" + (f": {detail}" if detail else "")))


@dataclass(frozen=True)
class Outcome:
    """What one call gave: its value, or why it has none."""

    value: object = None
    error: str | None = None


class _Worker:
    def __init__(self, context, target: str):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(target, child), daemon=True)
        self.process.start()
        child.close()
        self.task: tuple[int, float] | None = None  #: (index, start time) of the call it runs

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class Pool:
    """``workers`` processes calling ``target``; :meth:`map` calls it once per argument tuple."""

    def __init__(self, target: str, workers: int, timeout: float):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds (got {timeout})")
        self.target, self.size, self.timeout = target, max(1, workers), timeout
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []

    def map(self, calls: list[tuple]) -> list[Outcome]:
        """One :class:`Outcome` per argument tuple, in order."""
        while len(self.workers) < min(self.size, len(calls)):
            self.workers.append(_Worker(self.context, self.target))
        outcomes: list[Outcome | None] = [None] * len(calls)
        queue = deque(range(len(calls)))
        while queue or any(w.task for w in self.workers):
            for worker in self.workers:
                if worker.task is None and queue:
                    index = queue.popleft()
                    worker.conn.send((index, calls[index]))
                    worker.task = (index, time.monotonic())
            busy = [w for w in self.workers if w.task]
            deadline = min(w.task[1] for w in busy) + self.timeout
            ready = wait([w.conn for w in busy], timeout=max(0.0, deadline - time.monotonic()))
            for worker in busy:
                index, started = worker.task
                if worker.conn in ready:
                    try:
                        got, value, error = worker.conn.recv()
                        outcomes[got] = Outcome(value, error)
                        worker.task = None
                        continue
                    except (EOFError, OSError):
                        worker.process.join(timeout=5)
                        outcomes[index] = Outcome(error=f"exited (code {worker.process.exitcode})")
                elif time.monotonic() - started >= self.timeout:
                    outcomes[index] = Outcome(error=f"ran over {self.timeout:g}s")
                else:
                    continue
                self._replace(worker, kill=True)
        return outcomes

    def _replace(self, worker: _Worker, kill: bool) -> None:
        worker.stop(kill=kill)
        self.workers[self.workers.index(worker)] = _Worker(self.context, self.target)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter shutdown the workers may be gone already
            self.close()
