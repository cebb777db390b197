"""Durable Context snapshots: tick log, handler store, `to_dict` handle, `run(ctx=...)`.

A durable run's snapshot does not carry the run (its queues and steps live in DBOS): its
``state`` is a handle naming the run (`_naming.SNAPSHOT_STORE_TYPE`, the run ID, and the
committed state when this process holds it). ``Context.from_dict(wf, data)`` then
``wf.run(ctx=...)`` attaches to that run if the snapshot was taken while it ran, or starts
a new run seeded with its state if it had ended (upstream's continuation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from dbos import DBOS
from workflows.context.state_store import is_durable_serialized_state
from workflows.runtime.types.ticks import WorkflowTick

from . import _naming
from ._context import outside_workflow
from ._patches import recorded_edits
from ._run_state import Phase, RunState
from ._state import DurableStateStore
from .errors import SnapshotNotDurableError, StateWriteOutsideRunError

#: The tick log of each run whose control loop ran in this process (its state's life).
_tick_logs: dict[str, tuple[weakref.ref[RunState], list[WorkflowTick]]] = {}


def tick_log(run: RunState) -> list[WorkflowTick]:
    """The ticks the run's control loop took in this process (replayed ones too), in
    order: upstream's snapshot and ``ctx.running_steps()`` are computed from them."""
    entry = _tick_logs.get(run.run_id)
    if entry is not None and entry[0]() is run:
        return entry[1]
    run_id = run.run_id

    def forget(ref: weakref.ref[RunState]) -> None:
        current = _tick_logs.get(run_id)
        if current is not None and current[0] is ref:
            del _tick_logs[run_id]

    ticks: list[WorkflowTick] = []
    _tick_logs[run_id] = (weakref.ref(run, forget), ticks)
    return ticks


def forget_ticks(run: RunState) -> None:
    """Drop the run's tick log (released: a caller's handler may hold its state long)."""
    tick_log(run).clear()


def holds_state(run: RunState) -> bool:
    """Whether this process holds the run's committed state: its body executes or
    executed here, or this process is starting it (not released meanwhile)."""
    return run.phase is not Phase.ARRIVED and not run.releasing


def handle(run: RunState, store: DurableStateStore[Any]) -> dict[str, Any]:
    """The ``state`` of a durable run's snapshot: the run, and its committed state when
    this process holds it (else a continuation reads it from the run's records)."""
    found: dict[str, Any] = {"store_type": _naming.SNAPSHOT_STORE_TYPE, "run_id": run.run_id}
    if holds_state(run):
        found["state"] = store.payload()
    return found


class HandlerStore:
    """``handler.ctx.store`` of a durable run (upstream's external store).

    Reads see the run's committed state (read from its records when the run executes
    in another process). Writes are the run's steps' alone while it runs (a write from
    outside a step would not be recorded: `StateWriteOutsideRunError`); once the run
    ended here, they change what a continuation of the context starts with.
    ``to_dict`` is the snapshot's handle (`handle`).
    """

    def __init__(
        self, run: RunState, store: DurableStateStore[Any], ended: Callable[[], bool]
    ) -> None:
        self._run = run
        self._store = store
        self._ended = ended
        self.state_type = store.state_type

    async def _reading(self) -> DurableStateStore[Any]:
        start = self._run.start_task
        if start is not None and not start.done():
            # Right after run(): whether this process starts the run or attaches.
            with contextlib.suppress(Exception):
                await asyncio.shield(start)
        if holds_state(self._run) or (start is not None and not start.done()):
            return self._store
        return await _recorded_store(self._run.run_id, self.state_type)

    def _writing(self, what: str) -> DurableStateStore[Any]:
        if self._ended() and holds_state(self._run):
            return self._store
        if self._ended():
            where = "it executed in another process, whose state this handler does not hold"
        else:
            where = "it is running: only its steps' writes are recorded"
        raise StateWriteOutsideRunError(
            f"handler.ctx.store.{what}(...) on durable run {self._run.run_id!r}: {where}, "
            "so this write would be lost in a crash and unseen by other processes. "
            "Write state from a step (send it the value in an event), or seed it "
            "before the run: ctx = Context(wf); await ctx.store.set(...); "
            "wf.run(ctx=ctx)."
        )

    async def get_state(self) -> Any:
        return await (await self._reading()).get_state()

    async def get(self, path: str, default: Any = Ellipsis) -> Any:
        return await (await self._reading()).get(path, default)

    async def set_state(self, state: Any) -> None:
        await self._writing("set_state").set_state(state)

    async def set(self, path: str, value: Any) -> None:
        await self._writing("set").set(path, value)

    async def clear(self) -> None:
        await self._writing("clear").clear()

    @asynccontextmanager
    async def edit_state(self) -> AsyncGenerator[Any, None]:
        async with self._writing("edit_state").edit_state() as state:
            yield state

    def to_dict(self, serializer: Any) -> dict[str, Any]:
        return handle(self._run, self._store)


async def _recorded_store(run_id: str, state_type: type[Any]) -> DurableStateStore[Any]:
    """A store holding the committed state recorded by run ``run_id`` (its seed, then
    every write committed so far)."""
    edits, _ = await outside_workflow(functools.partial(recorded_edits, DBOS, run_id))
    recorded: DurableStateStore[Any] = DurableStateStore(state_type())
    recorded.apply_edits(edits)
    return recorded


async def recorded_state(run_id: str, state_type: type[Any]) -> dict[str, Any] | None:
    """The committed state recorded by run ``run_id``, as a state payload; None when it
    is the state type's default."""
    payload = (await _recorded_store(run_id, state_type)).payload()
    return None if payload == DurableStateStore(state_type()).payload() else payload


@dataclass
class Attach:
    """``run(ctx=...)`` of a snapshot taken while its run ran: attach to that run."""

    run_id: str


@dataclass
class Continue:
    """``run(ctx=...)`` of a snapshot of an ended durable run: a new run seeded with
    its state (``seed``, or, when the snapshot's process did not hold it, the state
    recorded by run ``from_run``)."""

    seed: dict[str, Any] | None
    from_run: str | None


def plan(
    serialized_state: dict[str, Any] | None, resuming: bool, workflow: str
) -> Attach | Continue | None:
    """What ``run(ctx=...)`` does with the context's snapshot state: None for a plain
    (in-memory) state, which only seeds a new run. ``resuming``: the snapshot was taken
    while its run ran (upstream passes no start event then).

    Raises `SnapshotNotDurableError` for a snapshot a durable run cannot continue."""
    own = (serialized_state or {}).get("store_type") == _naming.SNAPSHOT_STORE_TYPE
    if own and serialized_state is not None:
        run_id = serialized_state.get("run_id")
        if not isinstance(run_id, str):
            raise SnapshotNotDurableError(
                f"The context snapshot given to a run of {workflow!r} names no run "
                "(its state was edited?): take a new one with ctx.to_dict()."
            )
        if resuming:
            return Attach(run_id)
        state = serialized_state.get("state")
        if isinstance(state, dict):
            return Continue(state, None)
        return Continue(None, run_id)
    if is_durable_serialized_state(serialized_state):
        store_type = (serialized_state or {}).get("store_type")
        raise SnapshotNotDurableError(
            f"The context snapshot given to a run of durable workflow {workflow!r} holds "
            f"the state of another durable runtime (store type {store_type!r}): a "
            "durable run continues only snapshots of durable runs. Finish that run on "
            "its runtime, or seed a new run: ctx = Context(wf); await ctx.store.set(...)."
        )
    if resuming:
        what = (
            "a run on the plain (in-memory) runtime, taken while it ran"
            if serialized_state
            else "a running run, taken without its state (include_state=False)"
        )
        raise SnapshotNotDurableError(
            f"The context snapshot given to a run of durable workflow {workflow!r} is of "
            f"{what}: a durable run cannot continue it (its queues and steps in progress "
            "are in that process's memory, not in DBOS). Finish that run where it runs; "
            "or start a new durable run from its state: Context.from_dict(wf, data) of a "
            "snapshot taken after it ended, or data with 'is_running': False. A durable "
            "run's own snapshot (ctx.to_dict(), with its state) names the run, and "
            "run(ctx=Context.from_dict(wf, data)) attaches to it."
        )
    return None
