"""Collecting steps (``ctx.collect_events``) in the decision engine's waits: which steps
collect, and the waits that let a running collector go first.

Upstream re-runs a collecting invocation whose buffer grew while it ran (another
invocation of the step added an event), so a collector dispatched while another one
is in flight runs twice for one event. A plain run's collector rarely overlaps (it
returns within one turn of the event loop); a durable one takes a child workflow's
time. While a collecting step runs, the decision engine takes only collecting steps
and the mailbox, so each collector is dispatched with an up-to-date buffer and runs
once per collected event.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Any

from workflows.runtime.types.named_task import NamedTask, WorkerTask
from workflows.runtime.types.results import AddCollectedEvent, DeleteCollectedEvent
from workflows.runtime.types.ticks import TickCancelRun, TickStepResult

#: Collecting steps seen in this process, per workflow class: a hint for the first
#: collector of a later run (only recorded choices use hints).
_learned: weakref.WeakKeyDictionary[type, set[str]] = weakref.WeakKeyDictionary()
_sources: dict[tuple[type, str], str] = {}


def _source_of(cls: type, step: str) -> str:
    """The step's source ("" when unknown)."""
    key = (cls, step)
    if key not in _sources:
        function = getattr(cls, step, None)
        try:
            _sources[key] = inspect.getsource(function) if callable(function) else ""
        except (OSError, TypeError):
            _sources[key] = ""
    return _sources[key]


def _calls_collect_events(cls: type, step: str) -> bool:
    """Whether the step's source calls ``collect_events`` (False when unknown)."""
    return "collect_events" in _source_of(cls, step)


class Collectors:
    """The collecting steps of one run's execution.

    ``seen`` comes from the step results the control loop has processed, in the same
    order in every replay; with the step's source it makes ``known``, which unrecorded
    decisions use. Recorded decisions also use what earlier runs of the class in this
    process showed (``likely``).
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._cls: type | None = None

    def note(self, tick: TickStepResult, workflow: Any) -> None:
        """Learn from a step result the control loop processed."""
        if any(isinstance(r, (AddCollectedEvent, DeleteCollectedEvent)) for r in tick.result):
            step = str(tick.step_id)
            self.seen.add(step)
            self._cls = type(workflow)
            _learned.setdefault(self._cls, set()).add(step)

    def known(self, named: NamedTask, workflow: Any) -> bool:
        """Whether ``named`` is a worker of a step seen collecting in this run, or
        whose source calls ``collect_events``: the same answer in every replay (a
        replay runs the same code version)."""
        if not isinstance(named, WorkerTask):
            return False
        step = str(named.step_id)
        return step in self.seen or (
            not named.step_id.namespace and _calls_collect_events(type(workflow), step)
        )

    def inlinable(self, named: NamedTask, workflow: Any) -> bool:
        """Whether a worker of a ``known`` collecting step may run in the run's own
        workflow (`_inline`): not one whose source waits for an event (a re-run after
        ``ctx.wait_for_event`` replays the calls of its earlier invocation's child),
        nor one whose source is unknown."""
        if not isinstance(named, WorkerTask) or named.step_id.namespace:
            return False
        source = _source_of(type(workflow), str(named.step_id))
        return bool(source) and "wait_for_event" not in source

    def likely(self, named: NamedTask, workflow: Any) -> bool:
        """``known``, or the step collected in an earlier run of the class here."""
        return self.known(named, workflow) or (
            isinstance(named, WorkerTask) and str(named.step_id) in _learned.get(type(workflow), ())
        )


def result_of(task: asyncio.Task[Any]) -> Any:
    """A task's result if it returned one, else None (running, cancelled, raised)."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def holds_cancel(task: asyncio.Task[Any]) -> bool:
    """Whether a mailbox pull ended with the run's cancellation (never recorded)."""
    return isinstance(result_of(task), TickCancelRun)


async def first_finished(
    named: list[NamedTask],
    pull: int | None,
    timeout: float | None,
    arrived: asyncio.Event,
    collects: list[bool],
) -> list[int]:
    """The indexes of the tasks that have finished, in priority order, once one has
    (none: the deadline came). The pull counts as finished once an outside event
    reached it (``arrived``). While a task in ``collects`` runs or waits to be taken,
    only those count, and the pull only with a cancel."""
    loop = asyncio.get_running_loop()
    end = None if timeout is None else loop.time() + timeout
    holding = any(collects)
    while True:
        ready = [
            i
            for i, n in enumerate(named)
            if (not holding or collects[i]) and (n.task.done() or (i == pull and arrived.is_set()))
        ]
        if holding and pull is not None and holds_cancel(named[pull].task):
            ready.append(pull)
        left = None if end is None else end - loop.time()
        if ready or (left is not None and left <= 0):
            return ready
        waiting = [
            n.task
            for i, n in enumerate(named)
            if (not holding or collects[i] or i == pull) and not n.task.done()
        ]
        woken = asyncio.ensure_future(arrived.wait())
        try:
            await asyncio.wait(
                waiting if holding else [*waiting, woken],
                timeout=left,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            woken.cancel()


async def collector_race(
    collector: asyncio.Task[Any], pull: asyncio.Task[Any], left: float | None
) -> str:
    """Wait for a collecting step's worker: "step" when it finished, "cancel" when the
    pull brought the run's cancellation first, "timeout" when ``left`` seconds passed."""
    loop = asyncio.get_running_loop()
    end = None if left is None else loop.time() + left
    while True:
        if collector.done():
            return "step"
        if holds_cancel(pull):
            return "cancel"
        remaining = None if end is None else end - loop.time()
        if remaining is not None and remaining <= 0:
            return "timeout"
        await asyncio.wait(
            [collector] if pull.done() else [collector, pull],
            timeout=remaining,
            return_when=asyncio.FIRST_COMPLETED,
        )
