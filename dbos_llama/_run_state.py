"""What this process holds for each run, and the watcher of cancels from elsewhere."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbos import DBOS
from workflows.context.state_store import infer_state_type
from workflows.events import Event, StopEvent

from . import _naming
from ._cancel_watch import cancel_watcher
from ._patches import Patch, recorded_edits
from ._replay_index import ReplayIndex
from ._state import DurableStateStore

if TYPE_CHECKING:
    from workflows.workflow import Workflow

from ._context import InlineSlot, invocation_var, outside_workflow
from ._lease import lease

logger = logging.getLogger("dbos_llama")


class StreamMoved(Event):
    """Told to a run's local stream subscribers when the run is released: the rest
    of its stream is to be read from the database, from ``offset``."""

    offset: int


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]


class Phase(enum.Enum):
    """Where a run's DBOS workflow body is, as this process sees it.

    A body runs ``ARRIVED`` (or ``STARTING`` when this process starts the run) →
    ``PREPARING`` (finding its code version and instance) → ``LIVE`` or ``REPLAYING``
    → ``ENDED``. A replay turns ``LIVE`` when it finds nothing recorded (a dequeued
    run). Whether this process started the run is not a phase: see
    `RunState.started_here`.
    """

    #: Known here (attached to, or one of its steps runs here); its body is not here.
    ARRIVED = "arrived"
    #: This process is starting the run's DBOS workflow; its body has not begun.
    STARTING = "starting"
    #: Its body began here and waits for its code version and workflow instance.
    PREPARING = "preparing"
    #: Its body executes here from the start: no step of the run completed before.
    LIVE = "live"
    #: Its body executes here over recorded decisions (recovered, resumed, forked).
    REPLAYING = "replaying"
    #: Its body ended here.
    ENDED = "ended"


#: The phases in which the run's body is in this process.
_BODY_HERE = frozenset({Phase.PREPARING, Phase.LIVE, Phase.REPLAYING, Phase.ENDED})


def _nothing() -> None:
    pass


@dataclass
class RunState:
    """What this process holds for one run: local stream, result, counters."""

    run_id: str
    # The lease generation this state belongs to (`_lease`).
    generation: int = field(default_factory=lambda: lease.generation)
    state_store: DurableStateStore[Any] | None = None
    state_restored: bool = False
    _restore_lock: asyncio.Lock | None = None
    # The run's clock (seconds since the epoch) as recorded at its last decision.
    clock: float = 0.0
    _clock_offset: float = 0.0
    _resume_real_time: float | None = None
    phase: Phase = Phase.ARRIVED
    # True when this process started the run's DBOS workflow itself (not recovering,
    # resuming or dequeuing it): its body needs no recorded-version lookup, and this
    # process sees every event the run publishes.
    started_here: bool = False
    cancel_requested: bool = False
    _cancel_wakeup: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
    invocations: int = 0
    inflight: set[str] = field(default_factory=set)
    # Step invocations whose code has returned in this process (DBOS may still be
    # recording their results).
    finished_bodies: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    subscribers: list[_Subscriber] = field(default_factory=list)
    # Step invocations of the run executing in this process right now.
    local_steps: int = 0
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
    # What a replay of the run's body needs from its recorded calls (`load_wakes`).
    replay: ReplayIndex = field(default_factory=ReplayIndex)
    # The worker tasks that run an invocation in the run's own workflow (`_inline`).
    inline_tasks: weakref.WeakKeyDictionary[asyncio.Task[Any], InlineSlot] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    # The step invocation each worker task calls, and the run's clock at its end.
    task_invocations: weakref.WeakKeyDictionary[asyncio.Task[Any], str] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    task_clocks: weakref.WeakKeyDictionary[asyncio.Task[Any], float | None] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    # The instance the run was started on in this process (its steps and body run
    # on it); None for a run recovered here, which runs on its class's newest one.
    instance: Workflow | None = None
    # The run's outcome as DBOS records it, awaited by every local waiter.
    outcome: asyncio.Future[StopEvent] | None = None
    start_task: asyncio.Task[Any] | None = None
    # Seconds the run may wait idle before it is released from memory (`_release`),
    # from its class's ``@durable(idle_release=...)``; None: it stays.
    idle_release: float | None = None
    # The DBOS queue of the run's class (a woken run goes back to it).
    queue_name: str | None = None
    # Set once the run's release has begun: its body ends without cancelling it.
    releasing: bool = False
    # Values the run's body has written to its DBOS stream (its next offset).
    stream_length: int = 0
    # DBOS receives of the run's mailbox that returned in this execution (replayed
    # or live): equal to the recorded receives, except for one that completed
    # while the run was being released (`_release_run.release`).
    receives: int = 0
    # Set when a receive completed during the run's release: woken at once.
    wake_after_release: bool = False
    # The run's recorded decision rules (an input of its DBOS workflow; see `_bodies`).
    rules: int = 1
    # Set when a step's code here returned the StopEvent: the stream takes no more.
    stopping: bool = False
    # Its step invocations in a durable sleep of at least ``idle_release`` here, while
    # its body executes here, with the task running their code; the event set when
    # one begins (`_asleep`).
    sleeping: dict[str, asyncio.Task[Any] | None] = field(default_factory=dict)
    sleep_began: asyncio.Event | None = None

    @property
    def executing(self) -> bool:
        """Whether the run's body executes in this process now."""
        return self.phase in (Phase.LIVE, Phase.REPLAYING)

    @property
    def body_here(self) -> bool:
        """Whether the run's body has begun in this process."""
        return self.phase in _BODY_HERE

    def mark_starting(self) -> None:
        """This process is about to start the run's DBOS workflow."""
        self.started_here = True
        self.phase = Phase.STARTING

    def begin_body(self) -> bool:
        """The run's body begins here; whether it is the first start of a run this
        process just started (so nothing of it can be recorded yet)."""
        first = self.phase is Phase.STARTING
        self.phase = Phase.PREPARING
        return first

    def end_body(self) -> None:
        self.phase = Phase.ENDED

    def sleep_hook(self, invocation_id: str) -> Callable[[float], Callable[[], None]]:
        """`Invocation.on_sleep` for the run's step invocation ``invocation_id``: a
        durable sleep of at least ``idle_release`` is noted while it lasts. It holds
        the run weakly: a timer a step leaves behind keeps the step's contextvars,
        and must not keep the run (or its workflow instance) alive."""
        ref = weakref.ref(self)

        def began(seconds: float) -> Callable[[], None]:
            run = ref()
            if run is None or run.idle_release is None or seconds < run.idle_release:
                return _nothing
            if not run.executing:
                return _nothing
            run.sleeping[invocation_id] = asyncio.current_task()
            if run.sleep_began is not None:
                run.sleep_began.set()

            def ended() -> None:
                still = ref()
                if still is not None:
                    still.sleeping.pop(invocation_id, None)

            return ended

        return began

    def store_for(self, workflow: Workflow) -> DurableStateStore[Any]:
        """The run's `ctx.store`, created on first use with the workflow's state type."""
        if self.state_store is not None:  # (inferring the type reads every step's signature)
            return self.state_store
        return self.store_of(infer_state_type(workflow))

    def store_of(self, state_type: type[Any]) -> DurableStateStore[Any]:
        """The run's `ctx.store`, created on first use with state type ``state_type``."""
        if self.state_store is None:
            self.state_store = DurableStateStore(state_type(), invocation_var.get)
        return self.state_store

    def state_store_at(self, namespace: tuple[str, ...]) -> DurableStateStore[Any] | None:
        """The run's ``ctx.store`` for upstream's ``get_state_store(namespace)``: the
        top-level store only (no namespaced stores)."""
        return None if namespace else self.state_store

    async def restore_state(self, workflow: Workflow) -> None:
        """Once per process: rebuild the state from the run's recorded writes."""
        if self.state_restored:
            return
        if self._restore_lock is None:
            self._restore_lock = asyncio.Lock()
        async with self._restore_lock:
            if not self.state_restored and self.phase is Phase.LIVE:
                # The run's clock was just started, not replayed: a brand-new run,
                # so no step of it has completed yet.
                self.state_restored = True
            if not self.state_restored:
                steps, self.replay.loaded_steps = self.replay.loaded_steps, None
                found = functools.partial(recorded_edits, DBOS, self.run_id, steps)
                edits, unfinished = await outside_workflow(found)
                self.store_for(workflow).apply_edits(edits, unfinished)
                self.state_restored = True

    async def absorb(self, workflow: Workflow, invocation_id: str, patches: list[Patch]) -> None:
        """Take in the state edits of a finished step invocation that the store does
        not hold yet (it ran in another process)."""
        if patches:
            key = _naming.invocation_key(invocation_id)
            await self.store_for(workflow).absorb(patches, key)

    def start_clock(self, started_at: float, live: bool) -> None:
        """The body starts executing: start (or, replaying, restore) the run's clock
        from its recorded start.

        ``started_at`` is an input of the run's DBOS workflow (recorded with it, so
        every replay gets the same). A run this process just started is ``live``
        (the value of `begin_body`: a second execution of the body here, a resume,
        replays). Any other execution (recovered, resumed, dequeued, forked) resumes
        the clock where the recorded decisions leave it once its replay is over, so
        time spent down or queued does not count as alive time
        (`Workflow(timeout=...)`).
        """
        self.clock = started_at
        self.phase = Phase.LIVE if live else Phase.REPLAYING
        self._resume_real_time = None if live else time.time()

    def continue_clock(self, offset: float) -> None:
        """A released run woken again: its clock goes on as if it had waited here all
        along (released time counts toward its timeouts; downtime does not)."""
        self._clock_offset = offset
        self._resume_real_time = None

    def release_offset(self) -> float:
        """The clock's offset to keep while the run is released (`continue_clock`)."""
        self.live_clock()
        return self._clock_offset

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
        """Read what a replay of the run's body needs from its recorded calls into
        `replay` (`ReplayIndex.load`); a run with nothing recorded runs live."""
        self.replay.clear()
        if self.phase is Phase.LIVE:
            return
        if not await self.replay.load(self.run_id):
            # Nothing recorded yet (e.g. a queued run, dequeued): it runs live from its
            # start, and the time it waited does not count.
            self.phase = Phase.LIVE
            if self._resume_real_time is not None:
                self._clock_offset = self._resume_real_time - self.clock
                self._resume_real_time = None

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


def run_state(run_id: str) -> RunState:
    """This process's state of ``run_id``, created on first use (and anew once the
    worker's runs were taken over: a stale execution keeps its own)."""
    state = _runs.get(run_id)
    if state is None or lease.is_stale(state.generation):
        state = _runs[run_id] = RunState(run_id)
    return state


def forget_run(run_id: str, run: RunState | None = None) -> None:
    """Drop a finished run from the process-wide table (adapters keep their own ref);
    with ``run``, only if that is still the run's entry."""
    if run is None or _runs.get(run_id) is run:
        _runs.pop(run_id, None)
