"""This process's lease in a fleet: when new work may start, and which executions are stale."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from contextvars import ContextVar

#: How often a call waiting for the lease to be renewed looks again.
ADMIT_POLL_SECONDS = 0.05

#: The lease generation of the run body whose code is executing (inherited by the
#: step invocations it calls in this process).
generation_var: ContextVar[int | None] = ContextVar("dbos_llama_lease_generation", default=None)


class Fenced(BaseException):
    """The execution belongs to a lease generation this worker lost: its runs were
    taken over by another worker. A BaseException, so step code that catches
    ``Exception`` cannot swallow it; the bodies turn it into DBOS's own
    "no longer owned by this execution" error, which parks the execution."""


class LocalLease:
    """The worker's view of its own lease, set by `_fleet` and read by every call.

    ``deadline`` (``time.monotonic()``) is the moment until which the lease is
    certainly held: a renewal sent at ``t`` holds until ``t`` plus a safe part of the
    lease, which ends before any other worker can see it expire in database time.
    None outside a fleet: work always starts. ``generation`` grows each time the
    worker finds its runs were taken over; executions of an older generation are
    stale and stop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        self.deadline: float | None = None
        # Executions of runs and step invocations in this process: task -> (generation,
        # DBOS workflow ID).
        self._tasks: weakref.WeakKeyDictionary[asyncio.Task[object], tuple[int, str]] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> int:
        """The generation an execution starting now belongs to."""
        inherited = generation_var.get()
        return self.generation if inherited is None else inherited

    def held(self) -> bool:
        return self.deadline is None or time.monotonic() < self.deadline

    async def admit(self, generation: int) -> None:
        """Return when an execution of ``generation`` may start external work: at once
        while the lease is held; after its renewal when it is not sure (the worker
        was paused or cut off from the database). Raises `Fenced` if the runs of
        that generation were taken over."""
        while True:
            if generation != self.generation:
                raise Fenced(generation)
            if self.held():
                return
            await asyncio.sleep(ADMIT_POLL_SECONDS)

    def admit_blocking(self, generation: int) -> None:
        """`admit` for a sync call (in its own thread)."""
        while True:
            if generation != self.generation:
                raise Fenced(generation)
            if self.held():
                return
            time.sleep(ADMIT_POLL_SECONDS)

    def is_stale(self, generation: int) -> bool:
        return generation != self.generation

    def track(self, generation: int, workflow_id: str) -> asyncio.Task[object] | None:
        """Record the running task as an execution of ``workflow_id``."""
        task = asyncio.current_task()
        if task is not None:
            with self._lock:
                self._tasks[task] = (generation, workflow_id)
        return task

    def untrack(self, task: asyncio.Task[object] | None) -> None:
        if task is not None:
            with self._lock:
                self._tasks.pop(task, None)

    def fence(self) -> int:
        """Make every execution so far stale and cancel their tasks (thread-safe).
        Returns how many executions were stopped."""
        with self._lock:
            self.generation += 1
            stale = [t for t, (gen, _) in self._tasks.items() if gen < self.generation]
        for task in stale:
            if not task.done():
                try:
                    task.get_loop().call_soon_threadsafe(task.cancel)
                except RuntimeError:  # its loop has closed
                    pass
        return len(stale)

    def stale_count(self) -> int:
        with self._lock:
            return sum(1 for gen, _ in self._tasks.values() if gen < self.generation)

    def executing(self) -> set[str]:
        """IDs of the workflows executing here in the current generation."""
        with self._lock:
            return {wf for gen, wf in self._tasks.values() if gen == self.generation}


#: The process's lease.
lease = LocalLease()
