"""Processes that must stay up, kept up: ``vdc serve`` runs its workers under a ``Supervisor``.

A worker that exits or dies (the kernel's OOM killer, a crash in native code) is started again, so a job it was
running resumes from its checkpoint on the next one once the job's lease runs out, and the jobs queued after it
still run. One that keeps dying soon after it starts is started again after a wait that doubles each time, up
to a minute, so a worker that cannot start does not spin; one that ran a while starts again at once.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

FIRST_WAIT_S = 1.0
LONGEST_WAIT_S = 60.0
STABLE_AFTER_S = 60.0  # a process that ran this long counts as having started well
POLL_S = 0.5


@dataclass
class _Child:
    name: str
    command: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    wait_s: float = 0.0  # before the next start, after a death
    start_at: float = 0.0


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``: Popen gives a signal as a negative code."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Supervisor:
    """Starts each named command as a process and starts it again whenever it ends, until ``stop()``."""

    def __init__(self, commands: Mapping[str, Sequence[str]], *, env: Mapping[str, str] | None = None) -> None:
        self._children = [_Child(name, command) for name, command in commands.items()]
        self._env = dict(env) if env is not None else None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        with self._lock:
            for child in self._children:
                self._spawn(child)
        self._thread.start()

    def pids(self) -> dict[str, int]:
        """The running processes by name (one being waited on to start again is left out)."""
        with self._lock:
            return {child.name: child.process.pid for child in self._children if child.process is not None}

    def _spawn(self, child: _Child) -> None:
        child.process = subprocess.Popen(list(child.command), env=self._env)
        child.started_at = time.monotonic()

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_S):
            with self._lock:
                if self._stopping.is_set():  # stop() began while this pass waited for the lock
                    return
                for child in self._children:
                    self._tend(child, time.monotonic())

    def _tend(self, child: _Child, now: float) -> None:
        if child.process is None:
            if now >= child.start_at:
                self._spawn(child)
            return
        returncode = child.process.poll()
        if returncode is None:
            return
        lived = now - child.started_at
        child.wait_s = 0.0 if lived >= STABLE_AFTER_S else min(max(2 * child.wait_s, FIRST_WAIT_S), LONGEST_WAIT_S)
        child.process, child.start_at = None, now + child.wait_s
        again = f"in {child.wait_s:.0f} s" if child.wait_s else "now"
        if child.wait_s > FIRST_WAIT_S:
            again += f" (it keeps stopping within {STABLE_AFTER_S:.0f} s of starting)"
        logger.warning("%s %s after %.0f s; starting it again %s", child.name, describe_exit(returncode), lived, again)

    def stop(self, timeout_s: float) -> None:
        """Ask every process to stop (SIGTERM: a worker finishes its current epoch's bookkeeping and leaves its
        job to be resumed), kill those still running after ``timeout_s``, and start none again."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            running = [child.process for child in self._children if child.process is not None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                logger.warning("process %d did not stop within %.0f s; killing it", process.pid, timeout_s)
                process.kill()
                process.wait()
