"""Durable `ctx.store`: an in-memory store whose every committed write is a checkpoint.

Each committed write (``set``, ``set_state``, ``clear``, an ``edit_state`` block)
is a JSON Patch with a run-wide sequence number. Inside a step invocation it is
recorded as a checkpoint of the invocation's DBOS workflow (`_naming.STATE_STEP`,
at a step ID drawn when the write is called) *before* any other step can read it,
and the invocation's recorded result carries its patches again. After a crash the
state is rebuilt, in sequence order, from the patches of the completed invocations
and the checkpoints of the unfinished ones; an invocation that re-runs replays its
recorded writes instead of making them again, and until it has replayed them it
reads the state without them (as it read it the first time). No step can read an
edit that a crash may take back, so every committed edit is applied exactly once
(see the README, "State").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from dbos import DBOS, StepReservation
from pydantic import BaseModel
from workflows.context.serializers import BaseSerializer
from workflows.context.state_store import (
    InMemoryStateStore,
    apply_state_patch,
    copy_state_for_edit,
    create_cleared_state,
    merge_state,
    set_by_path_copy,
)

from . import _naming
from ._patches import (
    ImportedClassesSerializer,
    Patch,
    SourcedPatch,
    StateJournal,
    json_patch,
    rebuild_payload,
)
from ._records import StateWrite
from .errors import StateNotSerializableError

M = TypeVar("M", bound=BaseModel)

_JSON_STATE = (
    "A durable run's state is recorded as JSON, so that a recovered run reads it "
    "back: keep state values to JSON data (str, numbers, bools, None, lists, dicts) "
    "and pydantic models of them; keep functions, clients and other live objects on "
    "the workflow instance (self) or create them in the step."
)
T = TypeVar("T")


class EditSource(Protocol):
    """The step invocation whose code makes a write (`_context.Invocation`)."""

    invocation_id: str
    #: Whether its writes are checkpoints (False only for an invocation recorded by
    #: a version of dbos_llama that did not checkpoint them, replayed as it was).
    checkpoint_edits: bool
    #: The patches it committed, carried by its recorded result.
    state: list[Patch]


@dataclass
class _Snapshot(Generic[M]):
    """A state as a store and its encoded payload (what patches are computed against)."""

    store: InMemoryStateStore[M]
    payload: dict[str, Any]

    @classmethod
    def of(cls, store: InMemoryStateStore[M]) -> _Snapshot[M]:
        return cls(store, store.checkpoint().to_dict())

    @classmethod
    def decode(cls, payload: dict[str, Any]) -> _Snapshot[Any]:
        return cls(InMemoryStateStore.from_dict(payload, ImportedClassesSerializer()), payload)


@dataclass
class _Replay(Generic[M]):
    """What an invocation re-running after a crash reads until it has replayed its
    recorded writes: the state without them."""

    view: _Snapshot[M]
    pending: set[int]


class DurableStateStore(Generic[M]):
    """The `StateStore` a durable run's steps see as ``ctx.store``.

    Reads are lockless and see committed state only. A write builds the new state
    aside (upstream's own copy-on-write helpers), records it, and only then makes it
    the committed state: a step never reads another step's write before it is
    durable. Writers serialize on one lock per run; a writer inside ``edit_state``
    raises, as upstream's store does.
    """

    def __init__(
        self,
        initial_state: M,
        source: Callable[[], EditSource | None] | None = None,
    ) -> None:
        # The committed state. Its payload is what the next write is diffed against:
        # a value changed in place (``lst = await store.get("k"); lst.append(x);
        # await store.set("k", lst)``) is still seen as changed.
        self._shared: _Snapshot[M] = _Snapshot.of(InMemoryStateStore(initial_state))
        self.state_type: type[M] = self._shared.store.state_type
        self._journal = StateJournal()
        self._source = source
        self._write_lock = asyncio.Lock()
        self._writer: asyncio.Task[Any] | None = None
        # Clear while a write is being recorded: reads wait for it, so a read after
        # a write has started committing sees it (as with upstream's store, where a
        # commit never yields), and never before it is durable.
        self._settled = asyncio.Event()
        self._settled.set()
        # The edits this store holds, as (invocation key, seq): none is applied twice.
        self._applied: set[tuple[str, int]] = set()
        # Re-running invocations with recorded writes still to replay, by key.
        self._replays: dict[str, _Replay[M]] = {}

    # -- reads ------------------------------------------------------------------------
    async def get_state(self) -> M:
        await self._settled.wait()
        return await self._seen().store.get_state()

    async def get(self, path: str, default: Any = Ellipsis) -> Any:
        await self._settled.wait()
        return await self._seen().store.get(path, default)

    def to_dict(self, serializer: Any) -> dict[str, Any]:
        return self._shared.store.to_dict(serializer)

    def payload(self) -> dict[str, Any]:
        """The committed state as a JSON-compatible payload."""
        return self._shared.payload

    # -- writes ------------------------------------------------------------------------
    async def set_state(self, state: M) -> None:
        step = self._reserve()
        async with self._writing() as base:
            await self._commit(merge_state(await base.store.get_state(), state), base, step)

    async def set(self, path: str, value: Any) -> None:
        step = self._reserve()
        async with self._writing() as base:
            new = set_by_path_copy(await base.store.get_state(), path, value)
            await self._commit(new, base, step)

    async def clear(self) -> None:
        step = self._reserve()
        async with self._writing() as base:
            cleared = create_cleared_state(type(await base.store.get_state()))
            await self._commit(cleared, base, step)

    @asynccontextmanager
    async def edit_state(self) -> AsyncGenerator[M, None]:
        step = self._reserve()
        async with self._writing() as base:
            # An isolated copy: readers see the committed state until the commit.
            state = copy_state_for_edit(await base.store.get_state())
            yield state
            await self._commit(state, base, step)

    # -- taking in recorded writes -------------------------------------------------------
    def apply_edits(self, edits: list[SourcedPatch], unfinished: Collection[str] = ()) -> None:
        """Apply, in sequence order, the recorded edits this store does not hold yet
        (to rebuild the state, before any step writes). The invocations ``unfinished``
        will re-run: each reads the state without its own edits until it replays them."""
        new = self._new(edits)
        if not new:
            return
        base = self._shared.payload
        self._apply(new)
        for key in unfinished:
            own = {seq for k, seq, _ in new if k == key}
            if own:
                others = [(seq, patch) for k, seq, patch in new if k != key]
                view = _Snapshot.decode(rebuild_payload(base, others))
                self._replays[key] = _Replay(view, own)

    async def absorb(self, patches: list[Patch], source: str) -> None:
        """Take in the patches of a step invocation (`_naming.invocation_key`
        ``source``) that ran in another process, unless this store holds them."""
        sourced = [(source, seq, patch) for seq, patch in patches]
        if self._new(sourced):  # the lock only when there is something to take in
            async with self._write_lock:  # not while another write is being made
                self._apply(self._new(sourced))

    # -- internals ---------------------------------------------------------------------
    def _key(self) -> tuple[EditSource | None, str | None]:
        source = self._source() if self._source is not None else None
        return source, None if source is None else _naming.invocation_key(source.invocation_id)

    def _seen(self) -> _Snapshot[M]:
        """The state the executing code reads: its replay view while it re-runs."""
        _, key = self._key()
        replay = self._replays.get(key) if key is not None else None
        return replay.view if replay is not None else self._shared

    def _reserve(self) -> StepReservation | None:
        """The step ID of a write about to be made in step code, drawn now (in the
        order the code calls its writes, before waiting for the lock); None when
        the write is not a checkpoint: outside a step invocation, inside a DBOS step
        (a `@durable_step` body, which is recorded as a whole), or in an invocation
        recorded before writes were checkpoints."""
        source, _ = self._key()
        if source is None or not source.checkpoint_edits:
            return None
        if DBOS.workflow_id is None or DBOS.step_status is not None:
            return None
        return DBOS.reserve_step()

    @asynccontextmanager
    async def _writing(self) -> AsyncGenerator[_Snapshot[M], None]:
        """Hold the write lock; the state this writer starts from."""
        current = asyncio.current_task()
        if self._writer is not None and self._writer is current:
            raise RuntimeError("writer called inside edit_state: mutate the yielded state instead")
        async with self._write_lock:
            self._writer = current
            try:
                yield self._seen()
            finally:
                self._writer = None

    async def _commit(self, state: M, base: _Snapshot[M], step: StepReservation | None) -> None:
        """Make ``state`` (a change of ``base``) committed, recorded first."""
        try:
            staged = _Snapshot.of(InMemoryStateStore(state))
        except ValueError as error:  # upstream's serializer: a value that is no JSON
            raise StateNotSerializableError(
                f"ctx.store cannot keep this write: {error}. {_JSON_STATE}"
            ) from error
        patch = json_patch(base.payload, staged.payload)
        source, key = self._key()
        if step is None or source is None or key is None:
            # Not a checkpoint: journaled with the step's result only.
            self._land(staged, patch, base)
            if patch:
                seq = self._journal.record(patch, None if source is None else source.state)
                if key is not None:
                    self._applied.add((key, seq))
            return
        executed = False
        # A write of an invocation run in the run's own workflow (`_inline`) names it.
        owner = None if DBOS.workflow_id == source.invocation_id else key

        def record() -> list[Any]:
            nonlocal executed
            executed = True
            return StateWrite(self._journal.take(), patch, owner).record()

        # Every write inside a step is one checkpoint, even one that changes nothing:
        # a re-run's writes then meet their records in the same order. The record
        # and what follows it finish even if the step is cancelled meanwhile.
        self._settled.clear()
        try:
            recorded, cancelled = await _finish(
                step.run_async({"name": _naming.STATE_STEP}, record)
            )
            seq, recorded_patch, _ = StateWrite.read(recorded)
            if recorded_patch:
                source.state.append((seq, recorded_patch))
            if executed:
                self._replays.pop(key, None)  # live from here (a re-run's new path)
                self._land(staged, patch, base)
                self._applied.add((key, seq))
            else:
                # A re-run: the recorded write stands (the state holds it already, as
                # it was rebuilt from the checkpoints); what the code did now is dropped.
                self._replayed(key, seq, recorded_patch)
        finally:
            self._settled.set()
        if cancelled:
            raise asyncio.CancelledError()

    def _land(self, staged: _Snapshot[M], patch: list[dict[str, Any]], base: _Snapshot[M]) -> None:
        """Make a write made on ``base`` the committed state."""
        if base is self._shared:
            self._shared = staged
        elif patch:  # made on a replay view: applied to the committed state
            self._shared = _Snapshot.decode(apply_state_patch(self._shared.payload, patch))

    def _replayed(self, key: str, seq: int, patch: list[dict[str, Any]]) -> None:
        replay = self._replays.get(key)
        if replay is not None and seq in replay.pending:
            if patch:
                replay.view = _Snapshot.decode(apply_state_patch(replay.view.payload, patch))
            replay.pending.discard(seq)
            if not replay.pending:
                del self._replays[key]  # reads the committed state from now on
        self._apply(self._new([(key, seq, patch)]))

    def _new(self, edits: list[SourcedPatch]) -> list[SourcedPatch]:
        return [(k, int(seq), p) for k, seq, p in edits if (k, int(seq)) not in self._applied]

    def _apply(self, edits: list[SourcedPatch]) -> None:
        if not edits:
            return
        patches = [(seq, patch) for _, seq, patch in edits]
        self._shared = _Snapshot.decode(rebuild_payload(self._shared.payload, patches))
        self._applied.update((key, seq) for key, seq, _ in edits)
        self._journal.advance_past(max(seq for _, seq, _ in edits))


def seed_payload(
    serialized_state: dict[str, Any] | None, serializer: BaseSerializer, state_type: type[Any]
) -> dict[str, Any] | None:
    """The state a run is seeded with (upstream's ``serialized_state``: what
    ``Context(wf).store`` holds before ``run(ctx=ctx)``) as a state payload to record
    with the run; None when it is the state type's default (nothing to record)."""
    if not serialized_state:
        return None
    store = InMemoryStateStore.from_dict(serialized_state, serializer)
    try:
        payload = _Snapshot.of(store).payload
    except ValueError as error:
        raise StateNotSerializableError(
            f"The state given to the run (ctx.store before run(ctx=ctx)) cannot be "
            f"recorded: {error}. {_JSON_STATE}"
        ) from error
    if payload == _Snapshot.of(InMemoryStateStore(state_type())).payload:
        return None
    return payload


async def _finish(work: Awaitable[T]) -> tuple[T, bool]:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; its
    result, and whether the caller was cancelled."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
