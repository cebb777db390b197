"""The decision engine: what finished first while a run waits, recorded and replayed."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from dbos import DBOS
from workflows.events import StopEvent
from workflows.runtime.types.named_task import NamedTask, PendingStart, PullTask
from workflows.runtime.types.plugin import (
    WaitForNextTaskResult,
)
from workflows.runtime.types.ticks import TickStepResult

from . import _naming
from ._asleep import wait_first
from ._collecting import Collectors, collector_race, first_finished, holds_cancel, result_of
from ._context import outside_workflow
from ._mailbox import Mailbox
from ._records import UNFINISHED, Choice, Wake
from ._release_run import release
from ._run_state import RunState
from ._unrecorded import Unrecorded, task_order
from ._upstream import current_function_id


def _stops(task: asyncio.Task[Any]) -> bool:
    """Whether a finished worker task's step returned a StopEvent."""
    tick = result_of(task)
    return isinstance(tick, TickStepResult) and any(
        isinstance(getattr(r, "result", None), StopEvent) for r in tick.result
    )


class Decisions:
    """Which of the running tasks the control loop takes next, recorded so that a
    replay after a crash takes the same (`wait_for_next_task` of the adapter)."""

    def __init__(self, run: RunState, mailbox: Mailbox) -> None:
        self._run = run
        self._mailbox = mailbox
        # Calls of `next_task` so far: the same sequence in every replay.
        self._waits = 0
        # Keys of tasks the last recorded choice saw finished besides the one it took:
        # the next waits take them in this order without a checkpoint of their own.
        self._then: list[str] = []
        #: The run's collecting steps (fed by the adapter's `on_tick`).
        self.collectors = Collectors()
        # The start order of its tasks, and the choices rules 4 makes unrecorded.
        self._unrecorded = Unrecorded(run, self.collectors)

    async def next_task(
        self,
        running: list[NamedTask],
        pending: list[PendingStart],
        timeout: float | None = None,
    ) -> WaitForNextTaskResult:
        # Start in the given (deterministic) order: each task takes its DBOS function
        # IDs synchronously when it first runs, and first runs happen in FIFO order.
        started = [p.start(asyncio.create_task(p.coro)) for p in pending]
        self._unrecorded.number(started)
        if started:
            inline = self._unrecorded.mark_inline(running, started)
            # Let each new task run to its first DBOS call, which takes its function
            # IDs: before any checkpoint below, live and replaying alike.
            await asyncio.sleep(0)
            if inline is not None:
                inline.gate.set()  # then the collector run inline takes its own
        named = sorted([*running, *started], key=task_order)
        tasks = [n.task for n in named]
        if not tasks:
            return WaitForNextTaskResult(None, started)
        pull = next((i for i, n in enumerate(named) if isinstance(n, PullTask)), None)
        # Workers of steps known to collect: while one is there, it goes first.
        collecting = [
            i for i, n in enumerate(named) if self.collectors.known(n, self._run.instance)
        ]
        if pull is not None and self._mailbox.holds_carried(tasks[pull]) and not collecting:
            # An event a step's result carried, taken at the pull's start: first.
            self._waits += 1
            return WaitForNextTaskResult(tasks[pull], started)
        collector_first = len(collecting) == 1 and pull is not None and self._run.rules >= 2
        if self._keeps_then(collector_first):
            # The collector goes first (below): the rest of the choice waits, without
            # the collector's own key if the choice saw it finished too.
            self._then = [key for key in self._then if key != named[collecting[0]].key]
        elif self._then:
            index = self._recorded_next(named, collecting)
            if index is not None:
                self._waits += 1
                return await self._take(index, tasks, pull, started)
        if pull is not None and len(tasks) == 1 and self._idle_here():
            # Only the mailbox is awaited, live: the run is idle, and may be released.
            assert self._run.idle_release is not None
            timeout = await self._idle(tasks[0], timeout, self._run.idle_release)
        number = self._waits
        self._waits += 1
        if len(tasks) == 1 and timeout is None:
            # Nothing to choose between and no deadline: no checkpoint needed.
            if pull is None:
                await asyncio.wait(tasks)
            else:
                await self._mailbox.settle(tasks[0])
            return WaitForNextTaskResult(tasks[0], started)
        if collector_first and pull is not None:
            # A collecting step runs: the others' results and the mailbox's events
            # wait for it (`_collecting`); only a cancel or the deadline comes first.
            collector = tasks[collecting[0]]
            taken = await self._collector_first(number, collector, tasks[pull], timeout)
            if taken is collector:
                await self._let_siblings_finish_recording(taken, tasks)
            return WaitForNextTaskResult(taken, started)
        if len(tasks) == 2 and pull == 1:
            return await self._one_step(number, tasks[0], tasks[1], timeout, started)
        collects = [self.collectors.likely(n, self._run.instance) for n in named]
        canonical = self._unrecorded.canonical(number, named)
        ready: list[int] | None = None
        if canonical is not None:
            # Rules 4: taking the worker started first needs no checkpoint; a replay
            # without this wait's record takes it too.
            ready = await first_finished(named, pull, timeout, self._mailbox.arrived, collects)
            if await self._unrecorded.canonical_goes(
                canonical, ready, tasks[canonical], self._step_finished
            ):
                won = await self._step_won(tasks[canonical], started)
                await self._let_siblings_finish_recording(tasks[canonical], tasks)
                return won
        arrived = self._mailbox.arrived

        async def choose() -> tuple[Any, ...]:
            found = ready
            if found is None:
                found = await first_finished(named, pull, timeout, arrived, collects)
            first = found[0] if found else None
            cancel = first is not None and first == pull and holds_cancel(tasks[first])
            # The others that had finished too are taken next, in priority order:
            # one checkpoint for tasks that finish together. (A pull holding a
            # cancel is never recorded.)
            then = tuple(
                named[i].key
                for i in found[1:]
                if not cancel and not (i == pull and holds_cancel(tasks[i]))
            )
            wait = number if self._run.rules >= 4 else None
            return Choice(first, self._run.live_clock(), cancel, then, wait).record()

        # One checkpoint records which task finished first (or that the deadline
        # came), when, and which others had finished; a replay returns the same.
        choice = Choice.read(await DBOS.run_step_async({"name": _naming.NEXT_STEP}, choose))
        index, self._run.clock, self._then = choice.first, choice.clock, list(choice.then)
        if index is None:
            return WaitForNextTaskResult(None, started)
        completed = tasks[index]
        if choice.cancel and not holds_cancel(completed):
            # A cancel is never replayed: this resumed run waits again from here.
            return WaitForNextTaskResult(None, started)
        return await self._take(index, tasks, pull, started)

    async def _collector_first(
        self,
        number: int,
        collector: asyncio.Task[Any],
        pull: asyncio.Task[Any],
        timeout: float | None,
    ) -> asyncio.Task[Any] | None:
        """The collector once it has finished, the pull if it holds a cancel (never
        recorded), or None if the deadline came first (recorded as a `Wake`, as in
        `_one_step`: a replay, whose collector finishes at once, reads it)."""
        run = self._run
        kind = run.replay.wakes.get(number)
        if kind is None:
            left = None if timeout is None else max(0.0, timeout - run.elapsed_since_clock())
            if collector in run.inline_tasks:
                # Its code takes the run's function IDs: no record while it runs (a
                # deadline that passes meanwhile is seen once it returns).
                left = None
            kind = await collector_race(collector, pull, left)
            if kind == "timeout" and await self._step_finished(collector):
                kind = "step"
        if kind == "cancel":
            return pull
        if kind == "step":
            taken = (await self._step_won(collector, [])).completed
            slot = run.inline_tasks.get(collector)
            if slot is not None:
                # The workers its record saw finished: taken next, unrecorded.
                self._then = list(slot.then)
            return taken

        def wake() -> tuple[int, str, float]:
            return Wake(number, "timeout", run.live_clock()).record()

        recorded = Wake.read(await DBOS.run_step_async({"name": _naming.WAKE_STEP}, wake))
        run.clock = recorded.clock
        return None

    def _keeps_then(self, collector_first: bool) -> bool:
        """Whether the rest of a recorded choice waits while a collecting step goes
        first (rules 3: one checkpoint for the workers that finished together, though
        each result starts the collector), rather than being dropped (rules 2)."""
        return collector_first and self._run.rules >= 3

    def _recorded_next(self, named: list[NamedTask], collecting: list[int]) -> int | None:
        """The index of the next task a recorded choice saw finished, if it is still
        running and may be taken now (else the rest of that choice no longer applies:
        the run records its next choice)."""
        key = self._then.pop(0)
        index = next((i for i, n in enumerate(named) if n.key == key), None)
        if index is not None and collecting and index not in collecting:
            index = None  # a collecting step is running: it goes first
        if index is None:
            self._then.clear()
        return index

    async def _take(
        self,
        index: int,
        tasks: list[asyncio.Task[Any]],
        pull: int | None,
        started: list[NamedTask],
    ) -> WaitForNextTaskResult:
        """Take the chosen task once it has finished (a replayed one finishes now)."""
        completed = tasks[index]
        if index == pull:
            await self._mailbox.settle(completed)
        else:
            if not completed.done():  # replaying: the recorded task finishes now
                await asyncio.wait([completed])
            await self._let_siblings_finish_recording(completed, tasks)
        return WaitForNextTaskResult(completed, started)

    def _idle_here(self) -> bool:
        """Whether this wait may release the run: its class has ``idle_release`` and
        the wait is past the run's recorded decisions (a replayed wait is not idle)."""
        if self._run.idle_release is None:
            return False
        function_id = current_function_id()
        return function_id is None or function_id > self._run.replay.last_recorded_decision

    async def _idle(
        self, pull: asyncio.Task[Any], timeout: float | None, idle_release: float
    ) -> float | None:
        """Wait up to ``idle_release`` for the mailbox; if nothing comes and the run's
        deadline is further, release the run (`_release`): this raises `Released`.
        Otherwise the rest of the deadline, for the usual wait. Takes no DBOS IDs."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        remaining = None if timeout is None else max(0.0, timeout - self._run.elapsed_since_clock())
        while True:
            left = None if remaining is None else remaining - (loop.time() - began)
            window = idle_release if left is None else max(0.0, min(idle_release, left))
            arrived = asyncio.ensure_future(self._mailbox.arrived.wait())
            try:
                done, _ = await asyncio.wait(
                    [pull, arrived], timeout=window, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                arrived.cancel()
            if done or pull.done() or self._mailbox.arrived.is_set():
                break  # its event came (perhaps in the turn the window ended)
            if left is not None and left <= idle_release:
                break  # its deadline comes first
            wake_in = None if left is None else left - idle_release
            # Raises Released; returns if the release could not be recorded (the
            # database briefly away), and is tried again after another idle spell.
            await release(self._run, wake_in)
        if remaining is None:
            return None
        return max(0.0, remaining - (loop.time() - began))

    async def _let_siblings_finish_recording(
        self, completed: asyncio.Task[Any], tasks: list[asyncio.Task[Any]]
    ) -> None:
        """Before a StopEvent ends the run (and upstream cancels the other steps),
        wait for the steps whose code has returned here while DBOS records their
        results, so none is cut off mid-record (and then cancelled as unfinished)."""
        if not _stops(completed):
            return
        recording = [
            task
            for task in tasks
            if task is not completed
            and not task.done()
            and self._run.task_invocations.get(task) in self._run.finished_bodies
        ]
        if recording:
            await asyncio.wait(recording)

    async def _one_step(
        self,
        number: int,
        worker: asyncio.Task[Any],
        pull: asyncio.Task[Any],
        timeout: float | None,
        started: list[NamedTask],
    ) -> WaitForNextTaskResult:
        """One step runs beside the mailbox: the common case, checkpointed only when
        the step does not finish first.

        The step finishing first needs no record: a replay waits for it, and takes
        the run's clock from its recorded result. The mailbox or the deadline coming
        first is recorded (`WAKE_STEP`), by wait number; a replay reads those records
        when its body starts. Either one counts as first only while the step's DBOS
        workflow is still unfinished in the database, so a replay, which receives
        recorded messages at once, never takes them ahead of a step that finished.
        """
        run = self._run
        kind = run.replay.wakes.get(number) or await self._race(worker, pull, timeout)
        if kind == "step":
            return await self._step_won(worker, started)
        if kind == "cancel":  # never recorded: a resumed run waits again
            return WaitForNextTaskResult(pull, started)

        def wake() -> tuple[int, str, float]:
            return Wake(number, kind, run.live_clock()).record()

        recorded = Wake.read(await DBOS.run_step_async({"name": _naming.WAKE_STEP}, wake))
        kind, run.clock = recorded.kind, recorded.clock
        if kind == "pull":
            await self._mailbox.settle(pull)
            return WaitForNextTaskResult(pull, started)
        return WaitForNextTaskResult(None, started)  # the deadline came

    async def _race(
        self, worker: asyncio.Task[Any], pull: asyncio.Task[Any], timeout: float | None
    ) -> str:
        """What comes first, live: "step", "pull", "cancel" or "timeout". A step in a
        long durable sleep meanwhile may release the run (`_asleep`)."""
        arrived = asyncio.ensure_future(self._mailbox.arrived.wait())
        remaining = None if timeout is None else max(0.0, timeout - self._run.elapsed_since_clock())
        try:
            done = await wait_first(
                self._run, worker, [worker, pull, arrived], remaining, self._idle_here()
            )
        finally:
            arrived.cancel()
        if worker in done:
            return "step"
        if pull in done and holds_cancel(pull):
            return "cancel"
        if await self._step_finished(worker):
            return "step"
        return "pull" if done else "timeout"

    async def _step_finished(self, worker: asyncio.Task[Any]) -> bool:
        """Whether the worker's step invocation has finished in the database (one
        not created yet has not)."""
        invocation_id = self._run.task_invocations.get(worker)
        if invocation_id is None:
            return False
        status = await outside_workflow(
            functools.partial(
                DBOS.get_workflow_status, self._run.replay.invocation_in_db(invocation_id)
            )
        )
        return status is not None and status.status not in UNFINISHED

    async def _step_won(
        self, worker: asyncio.Task[Any], started: list[NamedTask]
    ) -> WaitForNextTaskResult:
        if not worker.done():
            await asyncio.wait([worker])
        clock = self._run.task_clocks.pop(worker, None)
        if clock is not None:
            # The run's clock as the step's recorded result says it ended.
            self._run.clock = max(self._run.clock, clock)
        else:
            # A step that ended while the run replayed, or elsewhere: its time is
            # recorded here, for what its result schedules (a retry, a timeout).
            def when() -> tuple[int | None, float, bool]:
                return Choice(0, self._run.live_clock(), False).record()

            recorded = await DBOS.run_step_async({"name": _naming.NEXT_STEP}, when)
            self._run.clock = Choice.read(recorded).clock
        return WaitForNextTaskResult(worker, started)
