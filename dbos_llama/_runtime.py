"""The DBOS runtime of llama-index workflows: the Runtime, its run adapters, per-run state."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbos import DBOS, WorkflowSerializationFormat
from dbos import error as dbos_error
from workflows.context.serializers import BaseSerializer
from workflows.context.state_store import StateStore, infer_state_type
from workflows.errors import WorkflowCancelledByUser
from workflows.events import Event, InternalDispatchEvent, StartEvent, StopEvent
from workflows.runtime.types.named_task import NamedTask, PendingStart, PullTask
from workflows.runtime.types.plugin import (
    ExternalRunAdapter,
    InternalRunAdapter,
    RegisteredWorkflow,
    Runtime,
    WaitForNextTaskResult,
    WaitResult,
    WaitResultTick,
    WaitResultTimeout,
    WeakIdentityKeyDictionary,
)
from workflows.runtime.types.step_function import (
    StepWorkerFunction,
    as_step_worker_functions,
    create_workflow_run_function,
)
from workflows.runtime.types.ticks import TickAddEvent, TickCancelRun, TickStepResult, WorkflowTick

from . import _envelope as envelope
from . import _naming
from ._registry import binding_of
from ._serialization import ensure_serializable
from ._state import DurableStateStore, Patch, StateJournal, recorded_edits
from ._upstream import TICK_TYPES, awaited_event_types, class_accepted_events
from .errors import RejectedEventError

if TYPE_CHECKING:
    from workflows.runtime.types.internal_state import BrokerState
    from workflows.workflow import Workflow

logger = logging.getLogger("dbos_llama")

#: How long the run's mailbox receive waits before it is re-armed (ten years).
RECV_FOREVER_SECONDS = 10 * 365 * 24 * 3600.0
#: How often a waiting run checks whether another process cancelled it.
CANCEL_POLL_SECONDS = 2.0
#: How often a process that did not start a run polls the database for its result.
ATTACH_POLLING_INTERVAL_SEC = 0.1

# The run whose code is executing (the run's DBOS workflow and its step invocations).
_current_run_id: ContextVar[str | None] = ContextVar("dbos_llama_run_id", default=None)
# The step invocation whose code is executing, if any.
_current_invocation: ContextVar[Invocation | None] = ContextVar(
    "dbos_llama_invocation", default=None
)


@dataclass
class Invocation:
    """One step invocation (a child DBOS workflow) while its code runs in this process."""

    invocation_id: str
    sends: int = 0
    # Events the step wrote to the stream, appended to the run's durable stream
    # (exactly once) when the invocation's result is processed by the run.
    stream: list[Event] = field(default_factory=list)
    # State edits the step committed: (run-wide sequence number, JSON Patch).
    state: list[Patch] = field(default_factory=list)
    # Whether its state writes are checkpoints (not for an invocation recorded by a
    # version of dbos_llama that did not checkpoint them: it replays as recorded).
    checkpoint_edits: bool = True
    # Calls (durable steps, helpers) recorded by the earlier invocation of the same
    # work item that this one re-runs after ``ctx.wait_for_event``: (name, output).
    recorded: list[tuple[str, Any]] = field(default_factory=list)
    calls: int = 0

    def next_send_key(self) -> str:
        key = _naming.send_idempotency_key(self.invocation_id, self.sends)
        self.sends += 1
        return key

    def recorded_result(self, name: str) -> tuple[bool, Any]:
        """The next call's result as the earlier invocation recorded it, if any."""
        index = self.calls
        self.calls += 1
        if index < len(self.recorded) and self.recorded[index][0] == name:
            return True, self.recorded[index][1]
        self.recorded = []  # the code took another path: stop replaying
        return False, None


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]


@dataclass
class RunState:
    """What this process holds for one run: local stream, result, counters."""

    run_id: str
    state_store: DurableStateStore[Any] | None = None
    state_restored: bool = False
    _restore_lock: asyncio.Lock | None = None
    # The run's clock (seconds since the epoch) as recorded at its last decision.
    clock: float = 0.0
    _clock_offset: float = 0.0
    _resume_real_time: float | None = None
    # True when this process just started the run (not a replay, not dequeued): no
    # step of the run can have completed before.
    brand_new: bool = False
    cancel_requested: bool = False
    _cancel_wakeup: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
    invocations: int = 0
    inflight: set[str] = field(default_factory=set)
    # Step invocations whose code has returned in this process (DBOS may still be
    # recording their results).
    finished_bodies: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    subscribers: list[_Subscriber] = field(default_factory=list)
    executing: bool = False
    # Step invocations of the run executing in this process right now.
    local_steps: int = 0
    # True once the run's own DBOS workflow body started in this process.
    body_present: bool = False
    # True when this process is starting the run's DBOS workflow itself (not
    # recovering, resuming or dequeuing it): its body needs no recorded-version
    # lookup, and this process sees every event the run publishes.
    fresh: bool = False
    # Stream events of finished step invocations, by upstream invocation ID, until
    # the run appends them to its durable stream.
    pending_stream: dict[str, list[Event]] = field(default_factory=dict)
    # Event types steps of the run waited for with ``ctx.wait_for_event``: outside
    # senders may deliver them (besides the events the workflow's steps accept).
    awaited_types: list[type[Any]] = field(default_factory=list)
    # Event types the workflow's steps accept (computed once per run).
    accepted: list[type[Any]] | None = None
    # Step invocation IDs of each upstream work item, in call order.
    work_items: dict[str, list[str]] = field(default_factory=dict)
    # Recorded `WAKE_STEP` decisions of the executing body, by wait number: what a
    # replay takes instead of the step it waited for.
    wakes: dict[int, str] = field(default_factory=dict)
    # Recorded step invocation IDs by `invocation_key` (see `load_wakes`).
    recorded_children: dict[str, str] = field(default_factory=dict)
    # The step invocation each worker task calls, and the run's clock at its end.
    task_invocations: weakref.WeakKeyDictionary[asyncio.Task[Any], str] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    task_clocks: weakref.WeakKeyDictionary[asyncio.Task[Any], float | None] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    # The run's outcome as DBOS records it, awaited by every local waiter.
    outcome: asyncio.Future[StopEvent] | None = None
    start_task: asyncio.Task[Any] | None = None

    def store_for(self, workflow: Workflow) -> DurableStateStore[Any]:
        """The run's `ctx.store`, created on first use with the workflow's state type."""
        if self.state_store is None:
            journal = StateJournal(_current_invocation_patches)
            self.state_store = DurableStateStore(
                infer_state_type(workflow)(), journal, _current_invocation.get
            )
        return self.state_store

    async def restore_state(self, workflow: Workflow) -> None:
        """Once per process: rebuild the state from the run's recorded writes."""
        if self.state_restored:
            return
        if self._restore_lock is None:
            self._restore_lock = asyncio.Lock()
        async with self._restore_lock:
            if not self.state_restored and self.brand_new:
                # The run's clock was just started, not replayed: a brand-new run,
                # so no step of it has completed yet.
                self.state_restored = True
            if not self.state_restored:
                edits = await outside_workflow(functools.partial(recorded_edits, DBOS, self.run_id))
                self.store_for(workflow).apply_edits(edits)
                self.state_restored = True

    def absorb(self, workflow: Workflow, invocation_id: str, patches: list[Patch]) -> None:
        """Take in the state edits of a finished step invocation that the store does
        not hold yet (it ran in another process)."""
        if patches:
            self.store_for(workflow).restore(patches, _naming.invocation_key(invocation_id))

    def start_clock(self, started_at: float, first_here: bool) -> None:
        """Start (or, replaying, restore) the run's clock from its recorded start.

        ``started_at`` is an input of the run's DBOS workflow (recorded with it, so
        every replay gets the same). A run this process just started is brand new
        (``first_here``: a second execution of the body here, a resume, replays).
        Any other execution (recovered, resumed, dequeued, forked) resumes the clock
        where the recorded decisions leave it once its replay is over, so time
        spent down or queued does not count as alive time (`Workflow(timeout=...)`).
        """
        self.clock = started_at
        self.brand_new = self.fresh and first_here
        self._resume_real_time = None if self.brand_new else time.time()

    def live_offset(self) -> float | None:
        """How far the run's clock lags the wall clock (its downtime), if the run
        executes here past its replay; else None."""
        if not self.executing or self._resume_real_time is not None:
            return None
        return self._clock_offset

    def clock_if_live(self) -> float | None:
        """The clock now if the run executes here past its replay, else None."""
        offset = self.live_offset()
        return None if offset is None else time.time() - offset

    def elapsed_since_clock(self) -> float:
        """Seconds of live time since the last recorded clock (0 while replaying)."""
        live = self.clock_if_live()
        return 0.0 if live is None else max(0.0, live - self.clock)

    async def load_wakes(self) -> None:
        """Read what a replay of the run's body needs from its recorded calls: the
        `WAKE_STEP` decisions, and the step invocations it calls (a fork's reused
        ones keep the IDs of the run they come from)."""
        self.wakes = {}
        self.recorded_children = {}
        if self.brand_new:
            return
        steps = await outside_workflow(functools.partial(DBOS.list_workflow_steps, self.run_id))
        if not steps:
            # Nothing recorded yet (e.g. a queued run, dequeued): it runs live from its
            # start, and the time it waited does not count.
            self.brand_new = True
            if self._resume_real_time is not None:
                self._clock_offset = self._resume_real_time - self.clock
                self._resume_real_time = None
            return
        for row in steps:
            if row["function_name"] == _naming.WAKE_STEP and row["output"] is not None:
                number, kind, _clock = row["output"]
                self.wakes[int(number)] = str(kind)
            child = row.get("child_workflow_id")
            if child and child.count("/") >= 2:
                self.recorded_children[_naming.invocation_key(child)] = child

    def invocation_in_db(self, invocation_id: str) -> str:
        """The ID DBOS records for this run's step invocation ``invocation_id``."""
        return self.recorded_children.get(_naming.invocation_key(invocation_id), invocation_id)

    def live_clock(self) -> float:
        """The clock at a decision made now (not replayed)."""
        if self._resume_real_time is not None:
            self._clock_offset = self._resume_real_time - self.clock
            self._resume_real_time = None
        return time.time() - self._clock_offset

    def request_cancel(self) -> None:
        """Ask the run, executing in this process, to end as cancelled."""
        self.cancel_requested = True
        if self._cancel_wakeup is not None:
            loop, wakeup = self._cancel_wakeup
            loop.call_soon_threadsafe(wakeup.set)

    async def wait_cancelled(self) -> None:
        """Return once the run is to be cancelled: asked here, or CANCELLED in the
        database by another process (`cancel_watcher` looks every
        `CANCEL_POLL_SECONDS`, for all the runs waiting in this process at once)."""
        wakeup = asyncio.Event()
        self._cancel_wakeup = (asyncio.get_running_loop(), wakeup)
        cancel_watcher.watch(self)
        try:
            while not self.cancel_requested:
                await wakeup.wait()
                wakeup.clear()
        finally:
            cancel_watcher.unwatch(self)

    def next_invocation_id(self, step_name: str) -> str:
        number = self.invocations
        self.invocations += 1
        return _naming.step_invocation_id(self.run_id, step_name, number)

    def publish(self, event: Event) -> None:
        self.events.append(event)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for sub in list(self.subscribers):
            if sub.loop is running:
                sub.queue.put_nowait(event)
            elif not sub.loop.is_closed():
                sub.loop.call_soon_threadsafe(sub.queue.put_nowait, event)

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        for event in self.events:
            queue.put_nowait(event)
        self.subscribers.append(_Subscriber(asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self.subscribers = [s for s in self.subscribers if s.queue is not queue]


_runs: dict[str, RunState] = {}


class CancelWatcher:
    """Finds the runs waiting in this process that another process cancelled: one
    thread, one database query every `CANCEL_POLL_SECONDS` for all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunState] = {}
        self._thread: threading.Thread | None = None

    def watch(self, run: RunState) -> None:
        with self._lock:
            self._runs[run.run_id] = run
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._poll, name="dbos-llama-cancel-watcher", daemon=True
                )
                self._thread.start()

    def unwatch(self, run: RunState) -> None:
        with self._lock:
            if self._runs.get(run.run_id) is run:
                del self._runs[run.run_id]

    def _poll(self) -> None:
        while True:
            time.sleep(CANCEL_POLL_SECONDS)
            with self._lock:
                if not self._runs:
                    self._thread = None  # a later watch() starts a new one
                    return
                run_ids = list(self._runs)
            try:
                cancelled = DBOS.list_workflows(
                    workflow_ids=run_ids, status="CANCELLED", load_input=False, load_output=False
                )
            except Exception:  # DBOS shut down or the database unreachable: try later
                continue
            for status in cancelled:
                with self._lock:
                    run = self._runs.get(status.workflow_id)
                if run is not None:
                    try:
                        run.request_cancel()
                    except RuntimeError:  # its event loop has closed
                        self.unwatch(run)


#: The process's `CancelWatcher`.
cancel_watcher = CancelWatcher()


async def read_run_stream(run_id: str, offset: int = 0) -> AsyncGenerator[Event, None]:
    """The stored stream of a run from ``offset``, live until the run ends (its
    StopEvent is not in it: it is the run's result)."""
    async for event in DBOS.read_stream_async(
        run_id, _naming.STREAM_KEY, offset=offset, polling_interval_sec=ATTACH_POLLING_INTERVAL_SEC
    ):
        yield event
        if isinstance(event, StopEvent):
            return  # stored by an earlier version of dbos_llama


def run_state(run_id: str) -> RunState:
    """This process's state of ``run_id``, created on first use."""
    state = _runs.get(run_id)
    if state is None:
        state = _runs[run_id] = RunState(run_id)
    return state


def forget_run(run_id: str) -> None:
    """Drop a finished run from the process-wide table (adapters keep their own ref)."""
    _runs.pop(run_id, None)


def _current_invocation_patches() -> list[Patch] | None:
    invocation = _current_invocation.get()
    return None if invocation is None else invocation.state


def current_run_id() -> str | None:
    """The ID of the durable run whose code is executing, or None outside one."""
    return _current_run_id.get()


def _observe(outcome: asyncio.Future[Any]) -> None:
    # Mark the outcome's exception as read: waiters may all have given up.
    if not outcome.cancelled():
        outcome.exception()


def _task_order(named: NamedTask) -> tuple[int, str]:
    # Workers before the mailbox pull (upstream's priority), each in a stable order.
    return (1, named.key) if isinstance(named, PullTask) else (0, named.key)


class DBOSInternalAdapter(InternalRunAdapter):
    """The control loop's and the steps' side of a durable run.

    Events sent by steps travel as DBOS messages to the run; the mailbox is a DBOS
    ``recv``; which of several concurrent tasks finished first is checkpointed with
    ``DBOS.asyncio_wait``, so a replay after a crash makes the same decisions.
    """

    def __init__(self, run: RunState, accepted: list[type[Any]] | None = None) -> None:
        self._run = run
        # Event types the run takes from outside senders (JSON envelopes).
        self._accepted = accepted or []
        # An outside event the mailbox pull received, waiting for its decision.
        self._arrival: tuple[dict[str, Any], asyncio.Future[WaitResult]] | None = None
        self._arrived = asyncio.Event()
        # Calls of `wait_for_next_task` so far: the same sequence in every replay.
        self._waits = 0

    @property
    def run_id(self) -> str:
        return self._run.run_id

    # Not ``async`` either: events are checked and ordered at the call site.
    def write_to_event_stream(self, event: Event) -> Coroutine[Any, Any, None]:  # type: ignore[override]
        if not isinstance(event, InternalDispatchEvent):
            ensure_serializable(event, f"Event {type(event).__name__} written to the stream")
        self._run.publish(event)
        if isinstance(event, InternalDispatchEvent):
            # Step state changes are for live observers only: not worth a row each.
            return _done()
        invocation = _current_invocation.get()
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
        return DBOS.write_stream_async(_naming.STREAM_KEY, event)

    async def on_tick(self, tick: WorkflowTick) -> None:
        if not isinstance(tick, TickStepResult):
            return
        for awaited in awaited_event_types(tick.result):
            if awaited not in self._run.awaited_types:
                self._run.awaited_types.append(awaited)
        if tick.invocation_id is not None:
            for event in self._run.pending_stream.pop(tick.invocation_id, ()):
                await DBOS.write_stream_async(_naming.STREAM_KEY, event)

    async def get_now(self) -> float:
        # The run's recorded clock: it advances only at recorded decisions, so a
        # replay schedules timeouts and retry delays exactly as the first run did.
        return self._run.clock

    # Deliberately not ``async``: the synchronous part runs at the call site, in the
    # order the step's code makes its calls, so every send gets a deterministic
    # idempotency key; the returned coroutine does the I/O later.
    def send_event(self, tick: WorkflowTick) -> Coroutine[Any, Any, None]:  # type: ignore[override]
        if isinstance(tick, TickAddEvent):
            ensure_serializable(
                tick.event, f"Event {type(tick.event).__name__} sent with ctx.send_event"
            )
        invocation = _current_invocation.get()
        key = invocation.next_send_key() if invocation is not None else None
        return _send_outside_workflow(self._run.run_id, tick, key)

    async def wait_receive(self, timeout_seconds: float | None = None) -> WaitResult:
        # The mailbox receive races the run's cancellation. A cancel is never
        # recorded in the run's history, so a cancelled run that is resumed waits
        # for its events again.
        result = await self._receive_one(timeout_seconds)
        if not isinstance(result, WaitResultTick) or not envelope.is_envelope(result.tick):
            return result
        # An event from outside the run, as JSON. It is decoded when the control loop
        # takes this pull's result (`_settle_pull`), not when it arrives: that point
        # comes in the same order in every replay, so the run accepts the same events
        # (a replay receives its messages at once, while its steps still replay).
        decided: asyncio.Future[WaitResult] = asyncio.get_running_loop().create_future()
        self._arrival = (result.tick, decided)
        self._arrived.set()
        return await decided

    async def _settle_pull(self, pull: asyncio.Task[Any]) -> None:
        """Let the mailbox pull finish, deciding on an outside event it holds."""
        arrived = asyncio.ensure_future(self._arrived.wait())
        try:
            await asyncio.wait([pull, arrived], return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
        if self._arrival is not None:
            message, decided = self._arrival
            self._arrival = None
            self._arrived.clear()
            if not decided.done():
                decided.set_result(self._decode(message))
        await asyncio.wait([pull])

    def _decode(self, message: dict[str, Any]) -> WaitResult:
        # Delivered only if it is an event the workflow declares, or one its steps
        # wait for (as far as the control loop has processed their results).
        try:
            accepted = [*self._accepted, *self._run.awaited_types]
            return WaitResultTick(tick=envelope.decode(message, accepted, self.run_id))
        except RejectedEventError as rejected:
            logger.error("%s The run keeps waiting for its events.", rejected)
            # The pull ends empty; the control loop starts the next one.
            return WaitResultTimeout()

    async def _receive_one(self, timeout_seconds: float | None) -> WaitResult:
        receiving = asyncio.current_task()
        watcher = asyncio.ensure_future(self._run.wait_cancelled())

        def interrupt(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and receiving is not None:
                receiving.cancel()

        watcher.add_done_callback(interrupt)
        try:
            # Awaited directly: the receive takes its function ID synchronously.
            message = await DBOS.recv_async(
                _naming.TICK_TOPIC,
                timeout_seconds=RECV_FOREVER_SECONDS
                if timeout_seconds is None
                else timeout_seconds,
            )
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():
                return WaitResultTick(tick=TickCancelRun())
            raise
        finally:
            watcher.remove_done_callback(interrupt)
            watcher.cancel()
        if message is None:
            return WaitResultTimeout()
        if not isinstance(message, TICK_TYPES) and not envelope.is_envelope(message):
            # Not a tick of this run's steps nor an envelope: rejected on decoding.
            message = {envelope.ENVELOPE_KEY: None, "type": type(message).__name__}
        return WaitResultTick(tick=message)

    def get_state_store(self, namespace: tuple[str, ...] = ()) -> StateStore[Any] | None:
        if namespace:
            return None
        return self._run.state_store

    async def wait_for_next_task(
        self,
        running: list[NamedTask],
        pending: list[PendingStart],
        timeout: float | None = None,
    ) -> WaitForNextTaskResult:
        # Start in the given (deterministic) order: each task takes its DBOS function
        # IDs synchronously when it first runs, and first runs happen in FIFO order.
        started = [p.start(asyncio.create_task(p.coro)) for p in pending]
        if started:
            # Let each new task run to its first DBOS call, which takes its function
            # IDs: before any checkpoint below, live and replaying alike.
            await asyncio.sleep(0)
        named = sorted([*running, *started], key=_task_order)
        tasks = [n.task for n in named]
        if not tasks:
            return WaitForNextTaskResult(None, started)
        pull = next((i for i, n in enumerate(named) if isinstance(n, PullTask)), None)
        number = self._waits
        self._waits += 1
        if len(tasks) == 1 and timeout is None:
            # Nothing to choose between and no deadline: no checkpoint needed.
            if pull is None:
                await asyncio.wait(tasks)
            else:
                await self._settle_pull(tasks[0])
            return WaitForNextTaskResult(tasks[0], started)
        if len(tasks) == 2 and pull == 1:
            return await self._one_step(number, tasks[0], tasks[1], timeout, started)

        async def choose() -> tuple[int | None, float]:
            # The pull counts as finished once an outside event reached it.
            arrived = asyncio.ensure_future(self._arrived.wait())
            try:
                done, _ = await asyncio.wait(
                    [*tasks, arrived], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                arrived.cancel()
            first = next(
                (
                    i
                    for i, task in enumerate(tasks)
                    if task in done or (i == pull and arrived in done)
                ),
                None,
            )
            cancel = first == pull and _holds_cancel(tasks[first])
            return first, self._run.live_clock(), cancel

        # One checkpoint records which task finished first (or that the deadline
        # came) and when; a replay returns the same choice and the same time.
        index, self._run.clock, cancel = await DBOS.run_step_async(
            {"name": _naming.NEXT_STEP}, choose
        )
        if index is None:
            return WaitForNextTaskResult(None, started)
        completed = tasks[index]
        if cancel and not _holds_cancel(completed):
            # A cancel is never replayed: this resumed run waits again from here.
            return WaitForNextTaskResult(None, started)
        if index == pull:
            await self._settle_pull(completed)
        else:
            if not completed.done():  # replaying: the recorded task finishes now
                await asyncio.wait([completed])
            await self._let_siblings_finish_recording(completed, tasks)
        return WaitForNextTaskResult(completed, started)

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
        kind = run.wakes.get(number) or await self._race(worker, pull, timeout)
        if kind == "step":
            return await self._step_won(worker, started)
        if kind == "cancel":  # never recorded: a resumed run waits again
            return WaitForNextTaskResult(pull, started)

        def wake() -> tuple[int, str, float]:
            return number, kind, run.live_clock()

        _number, kind, run.clock = await DBOS.run_step_async({"name": _naming.WAKE_STEP}, wake)
        if kind == "pull":
            await self._settle_pull(pull)
            return WaitForNextTaskResult(pull, started)
        return WaitForNextTaskResult(None, started)  # the deadline came

    async def _race(
        self, worker: asyncio.Task[Any], pull: asyncio.Task[Any], timeout: float | None
    ) -> str:
        """What comes first, live: "step", "pull", "cancel" or "timeout"."""
        arrived = asyncio.ensure_future(self._arrived.wait())
        remaining = None if timeout is None else max(0.0, timeout - self._run.elapsed_since_clock())
        try:
            done, _ = await asyncio.wait(
                [worker, pull, arrived], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            arrived.cancel()
        if worker in done:
            return "step"
        if pull in done and _holds_cancel(pull):
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
            functools.partial(DBOS.get_workflow_status, self._run.invocation_in_db(invocation_id))
        )
        return status is not None and status.status not in _UNFINISHED

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
                return 0, self._run.live_clock(), False

            _index, self._run.clock, _cancel = await DBOS.run_step_async(
                {"name": _naming.NEXT_STEP}, when
            )
        return WaitForNextTaskResult(worker, started)


def _result_of(task: asyncio.Task[Any]) -> Any:
    """A task's result if it returned one, else None (running, cancelled, raised)."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _stops(task: asyncio.Task[Any]) -> bool:
    """Whether a finished worker task's step returned a StopEvent."""
    tick = _result_of(task)
    return isinstance(tick, TickStepResult) and any(
        isinstance(getattr(r, "result", None), StopEvent) for r in tick.result
    )


def _holds_cancel(task: asyncio.Task[Any]) -> bool:
    """Whether a mailbox pull ended with the run's cancellation (never recorded)."""
    return isinstance(_result_of(task), TickCancelRun)


#: DBOS statuses of a step invocation that has not finished (one cancelled while the
#: run executes here still runs until the run notices).
_UNFINISHED = frozenset({"PENDING", "ENQUEUED", "DELAYED", "CANCELLED"})


async def _done() -> None:
    return None


async def outside_workflow(call: Callable[[], Any]) -> Any:
    """Run a DBOS call in an executor thread: it carries no DBOS context, so the
    call is not a checkpoint of the calling workflow and takes none of its IDs."""
    return await asyncio.get_running_loop().run_in_executor(None, call)


async def cancel_run_by_id(run_id: str) -> None:
    """Mark a run and its unfinished steps CANCELLED in the database; a process
    executing it notices within `CANCEL_POLL_SECONDS` and stops."""
    await outside_workflow(functools.partial(DBOS.cancel_workflow, run_id, cancel_children=True))


async def _send_outside_workflow(run_id: str, tick: WorkflowTick, key: str | None) -> None:
    # Not a checkpoint of the sending step: the idempotency key makes a send that a
    # re-executed step repeats a no-op.
    await outside_workflow(
        functools.partial(DBOS.send, run_id, tick, _naming.TICK_TOPIC, idempotency_key=key)
    )


async def send_envelope(run_id: str, message: dict[str, Any]) -> None:
    """Write an outside event's JSON envelope to the run's mailbox (portable JSON)."""
    await DBOS.send_async(
        run_id, message, _naming.TICK_TOPIC, serialization_type=WorkflowSerializationFormat.PORTABLE
    )


class DBOSExternalAdapter(ExternalRunAdapter):
    """The caller's side of a durable run: send events, stream, await the result."""

    def __init__(self, run: RunState) -> None:
        self._run = run

    @property
    def run_id(self) -> str:
        return self._run.run_id

    async def send_event(self, tick: WorkflowTick) -> None:
        if isinstance(tick, TickAddEvent):
            # From outside the run: carried as JSON, never as a pickle.
            step = str(tick.step_id) if tick.step_id is not None else None
            await send_envelope(self._run.run_id, envelope.encode(tick.event, step))
            return
        await DBOS.send_async(self._run.run_id, tick, _naming.TICK_TOPIC)

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
        if run.fresh:
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
                    yield getter.result()
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
            if not run.executing and _runs.get(run.run_id) is run and run.outcome.done():
                forget_run(run.run_id)

    async def _outcome(self) -> StopEvent:
        run = self._run
        if run.start_task is not None:
            handle = await run.start_task
        else:
            handle = await DBOS.retrieve_workflow_async(run.run_id)
        try:
            # A run started here is awaited directly; any other is polled.
            return await handle.get_result(polling_interval_sec=ATTACH_POLLING_INTERVAL_SEC)
        except dbos_error.DBOSAwaitedWorkflowCancelledError as cancelled:
            raise WorkflowCancelledByUser() from cancelled

    def get_state_store(self, namespace: tuple[str, ...] = ()) -> StateStore[Any] | None:
        if namespace:
            return None
        return self._run.state_store


class DBOSRuntime(Runtime):
    """Runs workflows of `@durable` classes as DBOS workflows.

    You rarely build one: instances of a `@durable` class use `dbos_runtime` by
    default. Each run is one DBOS workflow whose ID is the run ID, and each step
    invocation is one child DBOS workflow of the step's registered name.
    """

    def __init__(self) -> None:
        super().__init__()
        self._registered: WeakIdentityKeyDictionary[Workflow, RegisteredWorkflow] = (
            WeakIdentityKeyDictionary()
        )
        self._inner_steps: WeakIdentityKeyDictionary[Workflow, dict[str, StepWorkerFunction]] = (
            WeakIdentityKeyDictionary()
        )

    @property
    def is_launched(self) -> bool:
        return True

    def register(self, workflow: Workflow) -> RegisteredWorkflow:
        registered = self._registered.get(workflow)
        if registered is not None:
            return registered
        binding = binding_of(workflow)
        inner = as_step_worker_functions(workflow)
        self._inner_steps[workflow] = inner
        registered = RegisteredWorkflow(
            workflow=workflow,
            workflow_run_fn=create_workflow_run_function(workflow),
            steps={name: binding.step_caller(name) for name in inner},
        )
        self._registered[workflow] = registered
        return registered

    def get_registered(self, workflow: Workflow) -> RegisteredWorkflow | None:
        return self._registered.get(workflow)

    def inner_step(self, workflow: Workflow, step_name: str) -> StepWorkerFunction:
        """The plain (in-process) step worker that a step invocation executes."""
        self.get_or_register(workflow)
        inner = self._inner_steps.get(workflow)
        assert inner is not None
        return inner[step_name]

    def run_workflow(
        self,
        run_id: str,
        workflow: Workflow,
        init_state: BrokerState,
        start_event: StartEvent | None = None,
        serialized_state: dict[str, Any] | None = None,
        serializer: BaseSerializer | None = None,
    ) -> ExternalRunAdapter:
        binding = binding_of(workflow)
        existing = _runs.get(run_id)
        if existing is not None and existing.start_task is not None:
            # Same run ID again in this process: attach, never a second execution.
            return DBOSExternalAdapter(existing)
        if start_event is None:
            raise binding.error_no_start_event()
        ensure_serializable(start_event, f"The start event of {binding.name} (run {run_id!r})")
        run = run_state(run_id)

        run.start_task = asyncio.get_running_loop().create_task(
            binding.start_run(run_id, start_event)
        )
        return DBOSExternalAdapter(run)

    def get_internal_adapter(self, workflow: Workflow) -> InternalRunAdapter:
        run_id = _current_run_id.get()
        if run_id is None:
            raise RuntimeError(
                "No durable run is executing here: the internal adapter of "
                f"{type(workflow).__name__} is only available inside a run."
            )
        run = run_state(run_id)
        run.store_for(workflow)
        if run.accepted is None:  # once per run: every step invocation asks again
            run.accepted = class_accepted_events(type(workflow))
        return DBOSInternalAdapter(run, run.accepted)

    def get_external_adapter(self, run_id: str) -> ExternalRunAdapter:
        return DBOSExternalAdapter(run_state(run_id))


#: The runtime every `@durable` class uses unless given ``runtime=``.
dbos_runtime = DBOSRuntime()
