"""The decision engine's choices made without a record (decision rules 4)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from workflows.runtime.types.named_task import NamedTask, PullTask, WorkerTask

from ._collecting import Collectors
from ._context import InlineSlot
from ._run_state import RunState
from ._upstream import current_function_id


def task_order(named: NamedTask) -> tuple[int, str]:
    # Workers before the mailbox pull (upstream's priority), each in a stable order.
    return (1, named.key) if isinstance(named, PullTask) else (0, named.key)


class Unrecorded:
    """For one run's `Decisions`: the order its tasks started in, and what follows
    from it without a record under rules 4 (a collector run inline, the worker a
    wait takes unrecorded)."""

    def __init__(self, run: RunState, collectors: Collectors) -> None:
        self._run = run
        self._collectors = collectors
        # The order the run started its tasks in (the same in every replay).
        self._starts: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary()
        )
        self._started = 0

    def number(self, started: list[NamedTask]) -> None:
        """Note the tasks a wait just started, in the order it started them."""
        for named_task in started:
            self._starts[named_task.task] = self._started
            self._started += 1

    def mark_inline(self, running: list[NamedTask], started: list[NamedTask]) -> InlineSlot | None:
        """Before the new tasks first run: a new worker of the one collecting step
        beside the mailbox runs in the run's own workflow (`_inline`) under rules 4.
        While it runs, the engine waits for it alone (`Decisions._collector_first`),
        so no other task takes a DBOS function ID until it returns."""
        if self._run.rules < 4:
            return None
        named = [*running, *started]
        if not any(isinstance(n, PullTask) for n in named):
            return None
        workflow = self._run.instance
        collecting = [n for n in named if self._collectors.known(n, workflow)]
        if len(collecting) != 1 or collecting[0] not in started:
            return None
        collector = collecting[0]
        if not self._collectors.inlinable(collector, workflow):
            return None
        others = sorted(
            (n for n in named if isinstance(n, WorkerTask) and n is not collector),
            key=task_order,
        )

        def finished_others() -> tuple[str, ...]:
            return tuple(n.key for n in others if n.task.done())

        slot = self._run.inline_tasks[collector.task] = InlineSlot(finished_others)
        return slot

    def canonical(self, number: int, named: list[NamedTask]) -> int | None:
        """Under rules 4, the index of the worker a wait takes without a checkpoint
        if it is the one to go (the running worker started first: the same in every
        replay), unless this wait's choice is recorded or a collecting step is about."""
        if self._run.rules < 4 or number in self._run.replay.choices:
            return None
        workflow = self._run.instance
        if any(self._collectors.known(n, workflow) for n in named):
            return None  # (not ``likely``: whether a record is made must not depend
            # on what this process learned from earlier runs)
        workers = [i for i, n in enumerate(named) if isinstance(n, WorkerTask)]
        if not workers:
            return None
        return min(workers, key=lambda i: self._starts.get(named[i].task, -1))

    async def canonical_goes(
        self,
        canonical: int,
        ready: list[int],
        worker: asyncio.Task[Any],
        step_finished: Callable[[asyncio.Task[Any]], Awaitable[bool]],
    ) -> bool:
        """Whether the worker started first (``worker``, at index ``canonical``) goes,
        unrecorded: it finished first, or, in a wait an earlier execution passed
        (operations recorded after it), it has finished in the database
        (``step_finished``): a replay, whose recorded steps all finish at once, never
        takes another ahead of it unless a record says so."""
        if ready and ready[0] == canonical:
            return True
        function_id = current_function_id()
        if function_id is None or function_id < self._run.replay.last_recorded_id:
            # An earlier execution passed this wait (a cancel asked meanwhile is
            # seen at a later one): the worker goes if it had finished.
            return await step_finished(worker)
        return False  # nothing recorded beyond this wait: a new decision (or a cancel)
