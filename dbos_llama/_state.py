"""Durable `ctx.store`: an in-memory store whose committed edits are journaled per step.

Each committed write (``set``, ``set_state``, ``clear``, an ``edit_state`` block)
is recorded as a JSON Patch with a run-wide sequence number, inside the step
invocation that made it; the patches are part of the invocation's recorded result.
After a crash the state is rebuilt from the patches of the invocations that
completed, in sequence order: an edit of a completed step is applied exactly once,
and the edits of a step that was still running are not kept (it runs again).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import types
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from dbos import DBOS
from pydantic import BaseModel
from workflows.context.serializers import JsonSerializer
from workflows.context.state_store import InMemoryStateStore, apply_state_patch

#: One journaled edit: (run-wide sequence number, JSON Patch).
Patch = tuple[int, list[dict[str, Any]]]

M = TypeVar("M", bound=BaseModel)


class DurableStateStore(Generic[M]):
    """The `StateStore` a durable run's steps see as ``ctx.store``."""

    def __init__(self, initial_state: M, journal: StateJournal) -> None:
        self._inner: InMemoryStateStore[M] = InMemoryStateStore(initial_state)
        self._journal = journal
        # The committed state as last journaled, encoded: a value changed in place
        # (``lst = await store.get("k"); lst.append(x); await store.set("k", lst)``)
        # is still seen as changed, which a diff of live objects would miss.
        self._last = self.payload()
        self._write_lock = asyncio.Lock()

    @property
    def state_type(self) -> type[M]:
        return self._inner.state_type

    async def get_state(self) -> M:
        return await self._inner.get_state()

    async def get(self, path: str, default: Any = Ellipsis) -> Any:
        return await self._inner.get(path, default)

    async def set_state(self, state: M) -> None:
        async with self._write_lock:
            await self._inner.set_state(state)
            self._record()

    async def set(self, path: str, value: Any) -> None:
        async with self._write_lock:
            await self._inner.set(path, value)
            self._record()

    async def clear(self) -> None:
        async with self._write_lock:
            await self._inner.clear()
            self._record()

    @asynccontextmanager
    async def edit_state(self) -> AsyncGenerator[M, None]:
        async with self._write_lock:
            async with self._inner.edit_state() as state:
                yield state
            self._record()

    def to_dict(self, serializer: Any) -> dict[str, Any]:
        return self._inner.to_dict(serializer)

    def payload(self) -> dict[str, Any]:
        """The committed state as a JSON-compatible payload."""
        return self._inner.checkpoint().to_dict()

    def _record(self) -> None:
        # Under the write lock: the patch holds exactly this write's changes.
        now = self.payload()
        patch = json_patch(self._last, now)
        self._last = now
        if patch:
            self._journal.record(patch)

    def restore(self, patches: list[Patch]) -> None:
        """Apply journaled patches (any order) to the committed state: to rebuild it,
        or to take in the edits of a step invocation that ran in another process."""
        if not patches:
            return
        payload = rebuild_payload(self.payload(), patches)
        self._inner = InMemoryStateStore.from_dict(payload, ImportedClassesSerializer())
        self._last = self.payload()
        self._journal.advance_past(max(seq for seq, _ in patches))


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

    def record(self, patch: list[dict[str, Any]]) -> None:
        patches = self._current_patches()
        seq = self._next_seq
        self._next_seq += 1
        if patches is not None:
            patches.append((seq, patch))

    def advance_past(self, seq: int) -> None:
        self._next_seq = max(self._next_seq, seq + 1)


async def completed_steps(run_id: str) -> list[Any]:
    """The DBOS statuses (with outputs) of a run's completed step invocations."""
    from ._runtime import outside_workflow

    return await outside_workflow(functools.partial(successful_invocations, DBOS, run_id))


def successful_invocations(api: Any, run_id: str, load_output: bool = True) -> list[Any]:
    """DBOS statuses of the step invocations of ``run_id`` that completed.

    ``api`` is `DBOS` or a `DBOSClient`. A fork's reused invocations belong to the
    run it was forked from: they are found through the fork's copied call records.
    """
    children = list(
        api.list_workflows(
            parent_workflow_id=run_id,
            status="SUCCESS",
            load_input=False,
            load_output=load_output,
        )
    )
    found = api.list_workflows(workflow_ids=[run_id], load_input=False, load_output=False)
    if found and found[0].forked_from is not None:
        reused = reused_invocation_ids(api.list_workflow_steps(run_id, load_output=False), run_id)
        if reused:
            children += api.list_workflows(
                workflow_ids=reused, status="SUCCESS", load_input=False, load_output=load_output
            )
    return children


def reused_invocation_ids(run_steps: list[Any], run_id: str) -> list[str]:
    """Step invocations a fork's copied records call that belong to another run."""
    own = f"{run_id}/"
    ids: list[str] = []
    for row in run_steps:
        child = row["child_workflow_id"]
        if child is not None and not child.startswith(own) and child not in ids:
            ids.append(child)
    return ids


def patches_of(children: list[Any]) -> list[Patch]:
    """The state patches in the recorded outcomes of step invocations."""
    patches: list[Patch] = []
    for child in children:
        patches.extend(getattr(child.output, "state", ()))
    return patches
