"""The run adapters: the run's own side (steps, control loop) and the caller's side."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Coroutine
from typing import TYPE_CHECKING, Any

from dbos import DBOS
from dbos import error as dbos_error
from workflows.context.state_store import StateStore
from workflows.errors import WorkflowCancelledByUser, WorkflowRuntimeError
from workflows.events import Event, InternalDispatchEvent, StopEvent
from workflows.runtime.types.internal_state import BrokerState
from workflows.runtime.types.named_task import NamedTask, PendingStart
from workflows.runtime.types.plugin import (
    ExternalRunAdapter,
    InternalRunAdapter,
    SnapshottableAdapter,
    V2RuntimeCompatibilityShim,
    WaitForNextTaskResult,
    WaitResult,
)
from workflows.runtime.types.ticks import TickAddEvent, TickStepResult, WorkflowTick

from . import _envelope as envelope
from . import _naming, _release
from ._carry import hold, send_outside_workflow, wake_mailbox
from ._context import invocation_var, outside_workflow
from ._decisions import Decisions
from ._mailbox import Mailbox
from ._release_run import local, local_outbox
from ._run_state import RunState, StreamMoved, _runs, forget_run
from ._serialization import ensure_serializable
from ._snapshots import HandlerStore, tick_log
from ._upstream import awaited_event_types

if TYPE_CHECKING:
    from workflows.workflow import Workflow

logger = logging.getLogger("dbos_llama")

#: How often a process that did not start a run polls the database for its result.
ATTACH_POLLING_INTERVAL_SEC = 0.1


async def read_run_stream(run_id: str, offset: int = 0) -> AsyncGenerator[Event, None]:
    """The stored stream of a run from ``offset``, live until the run ends (its
    StopEvent is not in it: it is the run's result)."""
    while True:
        async for event in DBOS.read_stream_async(
            run_id,
            _naming.STREAM_KEY,
            offset=offset,
            polling_interval_sec=ATTACH_POLLING_INTERVAL_SEC,
        ):
            offset += 1
            yield event
        # DBOS ended the reader: the run ended, or was released (read on once it
        # wakes up).
        if not await _release.keep_following(local(), run_id):
            return


def _observe(outcome: asyncio.Future[Any]) -> None:
    # Mark the outcome's exception as read: waiters may all have given up.
    if not outcome.cancelled():
        outcome.exception()


class DBOSInternalAdapter(InternalRunAdapter):
    """The control loop's and the steps' side of a durable run.

    Events sent by steps travel as DBOS messages to the run; the mailbox is a DBOS
    ``recv``; which of several concurrent tasks finished first is checkpointed with
    ``DBOS.asyncio_wait``, so a replay after a crash makes the same decisions.
    """

    def __init__(self, run: RunState, accepted: list[type[Any]] | None = None) -> None:
        self._run = run
        self._mailbox = Mailbox(run, accepted or [])
        self._decisions = Decisions(run, self._mailbox)

    @property
    def run_id(self) -> str:
        return self._run.run_id

    # Not ``async`` either: events are checked and ordered at the call site.
    def write_to_event_stream(self, event: Event) -> Coroutine[Any, Any, None]:
        if not isinstance(event, InternalDispatchEvent):
            ensure_serializable(event, f"Event {type(event).__name__} written to the stream")
        if self._run.stopping and not isinstance(event, StopEvent):
            # A step returned the run's result: a sibling step still running writes
            # nothing more (upstream cancels it as soon as it takes that result).
            return _done()
        self._run.publish(event)
        if isinstance(event, InternalDispatchEvent):
            # Step state changes are for live observers only: not worth a row each.
            return _done()
        invocation = invocation_var.get()
        if invocation is not None:
            # A step: stored with the invocation's result, so a step that re-runs
            # after a crash never stores its events twice.
            invocation.stream.append(event)
            return _done()
        if isinstance(event, StopEvent):
            # Recorded as the run's result: readers of the stored stream end it with
            # that (not worth two rows of the stream).
            return _done()
        # The control loop itself (e.g. a waiter's event): a checkpointed write.
        self._run.stream_length += 1
        return DBOS.write_stream_async(_naming.STREAM_KEY, event)

    async def on_tick(self, tick: WorkflowTick) -> None:
        tick_log(self._run).append(tick)  # (for the run's snapshot)
        if not isinstance(tick, TickStepResult):
            return
        self._decisions.collectors.note(tick, self._run.instance)
        for awaited in awaited_event_types(tick.result):
            if awaited not in self._run.awaited_types:
                self._run.awaited_types.append(awaited)
        if tick.sends and tick.invocation_id is not None and self._run.rules >= 2:
            # The events the step sent, carried by its result: the next pulls take
            # them (upstream drops any that also came as messages, by emission key).
            if self._mailbox.carry(tick.invocation_id, tick.sends):
                await wake_mailbox(self._run.run_id, tick.invocation_id)
        if tick.invocation_id is not None:
            for event in self._run.pending_stream.pop(tick.invocation_id, ()):
                self._run.stream_length += 1
                await DBOS.write_stream_async(_naming.STREAM_KEY, event)

    async def get_now(self) -> float:
        # The run's recorded clock: it advances only at recorded decisions, so a
        # replay schedules timeouts and retry delays exactly as the first run did.
        return self._run.clock

    # Deliberately not ``async``: the synchronous part runs at the call site, in the
    # order the step's code makes its calls, so every send gets a deterministic
    # idempotency key; the returned coroutine does the I/O later.
    def send_event(self, tick: WorkflowTick) -> Coroutine[Any, Any, None]:
        if isinstance(tick, TickAddEvent):
            ensure_serializable(
                tick.event, f"Event {type(tick.event).__name__} sent with ctx.send_event"
            )
        invocation = invocation_var.get()
        if invocation is None:
            return send_outside_workflow(self._run.run_id, tick, None)
        key = invocation.next_send_key()
        if (
            self._run.rules >= 2
            and isinstance(tick, TickAddEvent)
            and tick.emission is not None
            and not invocation.returned
        ):
            # Upstream records the send in the step's result: it travels with it,
            # unless the step is still running a moment later.
            hold(self._run.run_id, invocation, tick, key)
            return _done()
        return send_outside_workflow(self._run.run_id, tick, key)

    async def wait_receive(self, timeout_seconds: float | None = None) -> WaitResult:
        return await self._mailbox.receive(timeout_seconds)

    def get_state_store(self, namespace: tuple[str, ...] = ()) -> StateStore[Any] | None:
        return self._run.state_store_at(namespace)

    async def wait_for_next_task(
        self,
        running: list[NamedTask],
        pending: list[PendingStart],
        timeout: float | None = None,
    ) -> WaitForNextTaskResult:
        return await self._decisions.next_task(running, pending, timeout)


async def _done() -> None:
    return None


#: Cancels started by `DBOSExternalAdapter.abort`, until they are done.
_aborts: set[asyncio.Task[None]] = set()


async def cancel_run_by_id(run_id: str) -> None:
    """Mark a run and its unfinished steps CANCELLED in the database; a process
    executing it notices within `_cancel_watch.CANCEL_POLL_SECONDS` and stops. A released run
    stops reading as waiting."""
    cancel = functools.partial(DBOS.cancel_workflow, cancel_children=True)
    releases = local()
    if releases is None:
        await outside_workflow(functools.partial(cancel, run_id))
    else:
        await outside_workflow(functools.partial(releases.cancel, run_id, cancel))


class DBOSExternalAdapter(ExternalRunAdapter, SnapshottableAdapter, V2RuntimeCompatibilityShim):
    """The caller's side of a durable run: send events, stream, await the result.

    Snapshottable (``ctx.to_dict()``, ``ctx.running_steps()``): the broker state is
    rebuilt from the ticks the run's control loop took in this process, and the
    snapshot's state is a handle naming the run (`_snapshots`). Also upstream's
    deprecated v2 surface (`V2RuntimeCompatibilityShim`): ``ctx.is_running``,
    ``ctx.get_result()``, ``handler.cancel()``.
    """

    def __init__(self, run: RunState, workflow: Workflow | None = None) -> None:
        self._run = run
        self._workflow = workflow

    @property
    def init_state(self) -> BrokerState:
        workflow = self._workflow or self._run.instance
        if workflow is None:
            raise WorkflowRuntimeError(
                f"Durable run {self._run.run_id!r} cannot be snapshotted here: this "
                "process has no instance of its workflow (pass the workflow's instance "
                "to run(), or read the run with DurableClient)."
            )
        state = BrokerState.from_workflow(workflow)
        # (Its ticks, when its control loop ran here, say it again.)
        state.is_running = self.is_running
        return state

    def replay(self) -> list[WorkflowTick]:
        return list(tick_log(self._run))

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def is_running(self) -> bool:
        """False once this process knows the run ended (its outcome was awaited here,
        as every handler does) or could not start."""
        return not self._ended()

    def get_result_or_none(self) -> StopEvent | None:
        """The run's StopEvent once it ended successfully (raises its error if it
        failed or was cancelled); None while it runs."""
        outcome = self._run.outcome
        if outcome is not None and outcome.done():
            return outcome.result()
        start = self._run.start_task
        if start is not None and start.done() and not start.cancelled():
            error = start.exception()
            if error is not None:
                raise error
        return None

    def abort(self) -> None:
        """Upstream's hard cancel (``handler.cancel()``): for a durable run, a cancel
        (status CANCELLED, steps included), so that no restart resumes it."""
        run = self._run
        if self._ended():
            return
        if run.executing:
            run.request_cancel()
        else:
            task = asyncio.get_running_loop().create_task(cancel_run_by_id(run.run_id))
            _aborts.add(task)
            task.add_done_callback(_aborts.discard)

    def _ended(self) -> bool:
        outcome = self._run.outcome
        if outcome is not None and outcome.done():
            return True
        start = self._run.start_task
        return start is not None and start.done() and (start.cancelled() or bool(start.exception()))

    async def send_event(self, tick: WorkflowTick) -> None:
        run_id = self._run.run_id
        if self._run.start_task is not None:
            # Sent right after run(): the run's DBOS workflow exists once started.
            await asyncio.shield(self._run.start_task)
        outbox = local_outbox()
        if isinstance(tick, TickAddEvent) and outbox is not None:
            # From outside the run: carried as JSON, never as a pickle; the send and
            # the wake-up of a released run are one transaction.
            step = str(tick.step_id) if tick.step_id is not None else None
            message = envelope.encode(tick.event, step)
            await outside_workflow(functools.partial(outbox.deliver, [(run_id, message)]))
        else:
            await DBOS.send_async(run_id, tick, _naming.TICK_TOPIC)
            releases = local()
            if releases is not None:  # a released run wakes up for it
                await outside_workflow(functools.partial(releases.wake, run_id))

    async def cancel(self) -> None:
        run = self._run
        if run.executing:
            run.request_cancel()  # the run ends itself, promptly and cleanly
        else:
            await cancel_run_by_id(run.run_id)

    async def stream_published_events(self) -> AsyncGenerator[Event, None]:
        run = self._run
        if run.start_task is not None:
            await asyncio.shield(run.start_task)
        if run.started_here:
            source = self._local_events()
        else:
            # The run executes (or executed) elsewhere or before this process
            # started: read its durable stream from the beginning.
            source = read_run_stream(run.run_id)
        async for event in source:
            yield event
            if isinstance(event, StopEvent):
                return
        # The stream ended without a StopEvent: the run failed or was cancelled.
        yield await self.get_result()

    async def _local_events(self) -> AsyncGenerator[Event, None]:
        queue = self._run.subscribe()
        result = asyncio.ensure_future(self.get_result())
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, result}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    event = getter.result()
                    if isinstance(event, StreamMoved):
                        # The run was released: what it streams from now on is read
                        # from the database, from where the local events stopped.
                        async for stored in read_run_stream(self._run.run_id, event.offset):
                            yield stored
                        return
                    yield event
                    continue
                getter.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                return
        finally:
            self._run.unsubscribe(queue)
            if not result.done():
                result.cancel()

    async def get_result(self) -> StopEvent:
        run = self._run
        try:
            if run.outcome is None:
                run.outcome = asyncio.ensure_future(self._outcome())
                run.outcome.add_done_callback(_observe)
            # Shielded: a waiter that gives up (e.g. a stream reader) must not
            # cancel the shared wait, let alone the run.
            return await asyncio.shield(run.outcome)
        finally:
            # A run this process only attached to is forgotten once it has ended
            # (a run executing here is forgotten by its own DBOS workflow).
            outcome = run.outcome
            if not run.executing and _runs.get(run.run_id) is run and outcome and outcome.done():
                forget_run(run.run_id)

    async def _outcome(self) -> StopEvent:
        run = self._run
        if run.start_task is not None:
            handle = await run.start_task
        else:
            handle = await DBOS.retrieve_workflow_async(run.run_id)
        while True:
            try:
                # A run started here is awaited directly; any other is polled.
                stop: StopEvent = await handle.get_result(
                    polling_interval_sec=ATTACH_POLLING_INTERVAL_SEC
                )
                return stop
            except dbos_error.DBOSAwaitedWorkflowCancelledError as cancelled:
                ended = cancelled
            releases = local()
            if releases is None or not await outside_workflow(
                functools.partial(releases.is_released, run.run_id)
            ):
                raise WorkflowCancelledByUser() from ended
            # Released. Its wait (maybe days) keeps nothing of the execution that
            # ended: not its error, its frames or its task.
            del ended, handle
            run.start_task = None
            await releases.watch.until_woken(run.run_id)
            # Woken: await the execution that continues it.
            handle = await DBOS.retrieve_workflow_async(run.run_id)

    def get_state_store(self, namespace: tuple[str, ...] = ()) -> StateStore[Any] | None:
        store = self._run.state_store_at(namespace)
        if store is None:
            workflow = self._workflow or self._run.instance
            if namespace or workflow is None:
                return None
            store = self._run.store_for(workflow)
        return HandlerStore(self._run, store, self._ended)
