"""Durable `ctx.store`: an in-memory store whose every committed write is a checkpoint.

Each committed write (``set``, ``set_state``, ``clear``, an ``edit_state`` block)
is a JSON Patch with a run-wide sequence number. Inside a step invocation it is
recorded as a checkpoint of the invocation's DBOS workflow (`_naming.STATE_STEP`)
*before* any other step can read it, and the invocation's recorded result carries
its patches again. After a crash the state is rebuilt, in sequence order, from the
patches of the completed invocations and the checkpoints of the unfinished ones; an
invocation that re-runs replays its recorded writes instead of making them again.
No step can read an edit that a crash may take back, so every committed edit is
applied exactly once (see the README, "State").
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import types
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar

from dbos import DBOS
from pydantic import BaseModel
from workflows.context.serializers import JsonSerializer
from workflows.context.state_store import (
    InMemoryStateStore,
    apply_state_patch,
    copy_state_for_edit,
    create_cleared_state,
    merge_state,
    set_by_path_copy,
)

from . import _naming

#: One journaled edit: (run-wide sequence number, JSON Patch).
Patch = tuple[int, list[dict[str, Any]]]
#: A journaled edit with the step invocation that made it: (invocation key, seq, patch).
#: The key is `_naming.invocation_key` of the invocation's ID (the same in a fork).
SourcedPatch = tuple[str, int, list[dict[str, Any]]]

M = TypeVar("M", bound=BaseModel)


class EditSource(Protocol):
    """The step invocation whose code makes a write (`_runtime.Invocation`)."""

    invocation_id: str
    #: Whether its writes are checkpoints (False only for an invocation recorded by
    #: a version of dbos_llama that did not checkpoint them, replayed as it was).
    checkpoint_edits: bool
    #: The patches it committed, carried by its recorded result.
    state: list[Patch]


class DurableStateStore(Generic[M]):
    """The `StateStore` a durable run's steps see as ``ctx.store``.

    Reads are lockless and see committed state only. A write builds the new state
    aside (upstream's own copy-on-write helpers), records it, and only then makes it
    the committed state: a step never reads another step's write before it is
    durable. Writers serialize on one lock per run.
    """

    def __init__(
        self,
        initial_state: M,
        journal: StateJournal,
        source: Callable[[], EditSource | None] | None = None,
    ) -> None:
        self._inner: InMemoryStateStore[M] = InMemoryStateStore(initial_state)
        self._journal = journal
        self._source = source
        # The committed state as last journaled, encoded: a value changed in place
        # (``lst = await store.get("k"); lst.append(x); await store.set("k", lst)``)
        # is still seen as changed, which a diff of live objects would miss.
        self._last = self.payload()
        self._write_lock = asyncio.Lock()
        # Clear while a write is being recorded: reads wait for it, so a read after
        # a write has started committing sees it (as with upstream's store, where a
        # commit never yields), and never before it is durable.
        self._settled = asyncio.Event()
        self._settled.set()
        # The edits this store holds, as (invocation key, seq): none is applied twice.
        self._applied: set[tuple[str, int]] = set()

    @property
    def state_type(self) -> type[M]:
        return self._inner.state_type

    async def get_state(self) -> M:
        await self._settled.wait()
        return await self._inner.get_state()

    async def get(self, path: str, default: Any = Ellipsis) -> Any:
        await self._settled.wait()
        return await self._inner.get(path, default)

    async def set_state(self, state: M) -> None:
        async with self._write_lock:
            await self._commit(merge_state(await self._committed(), state))

    async def set(self, path: str, value: Any) -> None:
        async with self._write_lock:
            await self._commit(set_by_path_copy(await self._committed(), path, value))

    async def clear(self) -> None:
        async with self._write_lock:
            await self._commit(create_cleared_state(type(await self._committed())))

    @asynccontextmanager
    async def edit_state(self) -> AsyncGenerator[M, None]:
        async with self._write_lock:
            # An isolated copy: readers see the committed state until the commit.
            state = copy_state_for_edit(await self._committed())
            yield state
            await self._commit(state)

    def to_dict(self, serializer: Any) -> dict[str, Any]:
        return self._inner.to_dict(serializer)

    def payload(self) -> dict[str, Any]:
        """The committed state as a JSON-compatible payload."""
        return self._inner.checkpoint().to_dict()

    async def _committed(self) -> M:
        return await self._inner.get_state()

    async def _commit(self, state: M) -> None:
        """Make ``state`` the committed state, recorded first (under the write lock)."""
        staged = InMemoryStateStore(state)
        now = staged.checkpoint().to_dict()
        patch = json_patch(self._last, now)
        source = self._source() if self._source is not None else None
        if source is None or not source.checkpoint_edits:
            # Outside a step (nothing to record it with), or a step recorded before
            # writes were checkpoints: journaled with the step's result only.
            self._install(staged, now)
            if patch:
                seq = self._journal.record(patch)
                if source is not None:
                    self._applied.add((_naming.invocation_key(source.invocation_id), seq))
            return
        executed = False

        def record() -> list[Any]:
            nonlocal executed
            executed = True
            return [self._journal.take(), patch]

        # Every write inside a step is one checkpoint, even one that changes nothing:
        # a re-run's writes then meet their records in the same order.
        self._settled.clear()
        try:
            seq_text, recorded = await DBOS.run_step_async({"name": _naming.STATE_STEP}, record)
            seq = int(seq_text)
            if recorded:
                source.state.append((seq, recorded))
            key = (_naming.invocation_key(source.invocation_id), seq)
            if executed:
                self._install(staged, now)
                self._applied.add(key)
            else:
                # A re-run: the recorded write stands (the state holds it already, as
                # it was rebuilt from the checkpoints); what the code did now is dropped.
                self.apply_edits([(key[0], seq, recorded)])
        finally:
            self._settled.set()

    def _install(self, staged: InMemoryStateStore[M], payload: dict[str, Any]) -> None:
        self._inner = staged
        self._last = payload

    def restore(self, patches: list[Patch], source: str = "") -> None:
        """Apply the journaled patches of one step invocation (``source``, its
        `_naming.invocation_key`) that this store does not hold yet: to take in the
        edits of an invocation that ran in another process."""
        self.apply_edits([(source, seq, patch) for seq, patch in patches])

    def apply_edits(self, edits: list[SourcedPatch]) -> None:
        """Apply, in sequence order, the edits this store does not hold yet."""
        new = [e for e in edits if (e[0], int(e[1])) not in self._applied]
        if not new:
            return
        payload = rebuild_payload(self.payload(), [(int(seq), patch) for _, seq, patch in new])
        self._inner = InMemoryStateStore.from_dict(payload, ImportedClassesSerializer())
        self._last = self.payload()
        self._applied.update((key, int(seq)) for key, seq, _ in new)
        self._journal.advance_past(max(int(seq) for _, seq, _ in new))


def json_patch(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """JSON Patch ops (``add``/``remove``/``replace``) turning JSON value ``old`` into ``new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_pointer(key)}"})
        for key, value in new.items():
            where = f"{path}/{_pointer(key)}"
            if key not in old:
                ops.append({"op": "add", "path": where, "value": value})
            elif old[key] != value:
                ops.extend(json_patch(old[key], value, where))
        return ops
    if old == new:
        return []
    return [{"op": "replace", "path": path, "value": new}]


def _pointer(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


class ImportedClassesSerializer(JsonSerializer):
    """Upstream's JSON serializer, resolving the classes a stored state names only
    among modules this process has already imported: stored data never makes it
    import a module."""

    def resolve_class(self, qualified_name: str) -> type[Any]:
        parts = qualified_name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            obj: Any = sys.modules.get(".".join(parts[:cut]))
            if obj is None:
                continue
            for part in parts[cut:]:
                if not isinstance(obj, (type, types.ModuleType)) or part.startswith("__"):
                    obj = None
                    break
                obj = inspect.getattr_static(obj, part, None)
            if isinstance(obj, type):
                return obj
        raise ValueError(
            f"Stored state names class {qualified_name}, which is not imported in this "
            "process: import the module that defines it before the run resumes."
        )


def rebuild_payload(base: dict[str, Any], patches: list[Patch]) -> dict[str, Any]:
    """``base`` with ``patches`` applied in sequence order."""
    payload = base
    for _, patch in sorted(patches, key=lambda item: item[0]):
        payload = apply_state_patch(payload, patch)
    return payload


class StateJournal:
    """Numbers the edits of one run and hands each to the step invocation making it."""

    def __init__(self, current_patches: Any) -> None:
        # A callable returning the running invocation's patch list (or None).
        self._current_patches = current_patches
        self._next_seq = 0

    def take(self) -> int:
        """The next sequence number."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def record(self, patch: list[dict[str, Any]]) -> int:
        """Number ``patch`` and add it to the running invocation's patches; its number."""
        patches = self._current_patches()
        seq = self.take()
        if patches is not None:
            patches.append((seq, patch))
        return seq

    def advance_past(self, seq: int) -> None:
        self._next_seq = max(self._next_seq, seq + 1)


def recorded_edits(api: Any, run_id: str) -> list[SourcedPatch]:
    """Every committed write recorded for ``run_id``, with the invocation that made it.

    ``api`` is `DBOS` or a `DBOSClient`. A completed step invocation's result carries
    its patches; an unfinished one (running, crashed, cancelled) has them as its
    `_naming.STATE_STEP` checkpoints. A fork's reused invocations belong to the run it
    was forked from: they are found through the fork's copied call records.
    """
    children = list(api.list_workflows(parent_workflow_id=run_id, load_input=False))
    found = api.list_workflows(workflow_ids=[run_id], load_input=False, load_output=False)
    if found and found[0].forked_from is not None:
        reused = reused_invocation_ids(api.list_workflow_steps(run_id, load_output=False), run_id)
        if reused:
            children += api.list_workflows(workflow_ids=reused, status="SUCCESS", load_input=False)
    edits: list[SourcedPatch] = []
    for child in children:
        key = _naming.invocation_key(child.workflow_id)
        if child.status == "SUCCESS":
            patches: Any = getattr(child.output, "state", ())
        else:
            patches = checkpointed_patches(api.list_workflow_steps(child.workflow_id))
        edits.extend((key, int(seq), patch) for seq, patch in patches)
    return edits


def checkpointed_patches(invocation_steps: list[Any]) -> list[Patch]:
    """The writes an invocation recorded as checkpoints (empty ones left out)."""
    patches: list[Patch] = []
    for row in invocation_steps:
        if row["function_name"] == _naming.STATE_STEP and row["error"] is None:
            seq, patch = row["output"]
            if patch:
                patches.append((int(seq), patch))
    return patches


def reused_invocation_ids(run_steps: list[Any], run_id: str) -> list[str]:
    """Step invocations a fork's copied records call that belong to another run."""
    own = f"{run_id}/"
    ids: list[str] = []
    for row in run_steps:
        child = row["child_workflow_id"]
        if child is not None and not child.startswith(own) and child not in ids:
            ids.append(child)
    return ids
