"""JSON Patches of `ctx.store` writes: computing and applying them, numbering them, and
reading them back from a run's records (completed results, unfinished checkpoints)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dbos import StepInfo
from workflows.context.serializers import JsonSerializer
from workflows.context.state_store import apply_state_patch

from . import _naming
from ._lookup import imported_class
from ._records import SUCCESS, StepRow, step_rows

#: One journaled edit: (run-wide sequence number, JSON Patch).
Patch = tuple[int, list[dict[str, Any]]]
#: A journaled edit with the step invocation that made it: (invocation key, seq, patch).
#: The key is `_naming.invocation_key` of the invocation's ID (the same in a fork).
SourcedPatch = tuple[str, int, list[dict[str, Any]]]


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
            found = imported_class(".".join(parts[:cut]), ".".join(parts[cut:]))
            if found is not None:
                return found
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
    """Numbers the edits of one run, and adds each to the patches of the step
    invocation making it."""

    def __init__(self) -> None:
        self._next_seq = 0

    def take(self) -> int:
        """The next sequence number."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def record(self, patch: list[dict[str, Any]], patches: list[Patch] | None) -> int:
        """Number ``patch`` and add it to ``patches`` (the making invocation's, if
        any); its number."""
        seq = self.take()
        if patches is not None:
            patches.append((seq, patch))
        return seq

    def advance_past(self, seq: int) -> None:
        self._next_seq = max(self._next_seq, seq + 1)


def recorded_edits(
    api: Any, run_id: str, run_steps: list[StepInfo] | None = None
) -> tuple[list[SourcedPatch], set[str]]:
    """Every committed write recorded for ``run_id``, with the invocation that made it,
    and the invocation keys of the unfinished invocations among them.

    ``api`` is `DBOS` or a `DBOSClient`; ``run_steps``, the run's recorded operations
    if the caller has them. A completed step invocation's result carries its
    patches; an unfinished one (running, crashed, cancelled) has them as its
    `_naming.STATE_STEP` checkpoints. An invocation run in the run's own workflow
    (`_inline`) has both there: its `InlineRecord` once completed, its checkpoints
    (naming it) until then. A fork's reused invocations belong to the run it was
    forked from: they are found through the fork's copied call records. The state
    seeded before the run (recorded with its input) comes first (`seed_edit`).
    """
    children = list(api.list_workflows(parent_workflow_id=run_id, load_input=False))
    found = api.list_workflows(workflow_ids=[run_id], load_output=False)
    forked = bool(found) and found[0].forked_from is not None
    if run_steps is None:
        run_steps = list(api.list_workflow_steps(run_id))
    if forked:
        reused = reused_invocation_ids(run_steps, run_id)
        if reused:
            children += api.list_workflows(workflow_ids=reused, status=SUCCESS, load_input=False)
    seed = recorded_seed(found[0].input) if found else None
    edits: list[SourcedPatch] = [] if seed is None else [seed_edit(seed)]
    unfinished: set[str] = set()
    for child in children:
        key = _naming.invocation_key(child.workflow_id)
        if child.status == SUCCESS:
            patches: Any = getattr(child.output, "state", ())
        else:
            patches = checkpointed_patches(api.list_workflow_steps(child.workflow_id))
            unfinished.add(key)
        edits.extend((key, int(seq), patch) for seq, patch in patches)
    edits.extend(_inline_edits(step_rows(run_steps), unfinished))
    return edits, unfinished


def _inline_edits(rows: list[StepRow], unfinished: set[str]) -> list[SourcedPatch]:
    """The writes of the invocations run in the run's own workflow (`_inline`)."""
    edits: list[SourcedPatch] = []
    completed: set[str] = set()
    for row in rows:
        record = row.inline()
        if record is not None:
            key = _naming.invocation_key(record.invocation_id)
            completed.add(key)
            state = getattr(record.outcome, "state", ())
            edits.extend((key, int(seq), patch) for seq, patch in state)
    for row in rows:
        write = row.state_write()
        if write is not None and write.key is not None and write.key not in completed:
            edits.append((write.key, write.seq, write.patch))
            unfinished.add(write.key)
    return edits


def seed_edit(payload: dict[str, Any]) -> SourcedPatch:
    """The state seeded before a run (a state payload) as the first of its writes."""
    return (_naming.SEED_KEY, _naming.SEED_SEQ, [{"op": "replace", "path": "", "value": payload}])


def recorded_seed(run_input: Any) -> dict[str, Any] | None:
    """The seed state recorded with a run's DBOS input (``{"args", "kwargs"}``), if
    any (runs recorded without one, or before seeds existed, have none)."""
    kwargs = run_input.get("kwargs") if isinstance(run_input, dict) else None
    seed = kwargs.get(_naming.SEED_STATE_ARG) if isinstance(kwargs, dict) else None
    return seed if isinstance(seed, dict) else None


def checkpointed_patches(invocation_steps: Iterable[StepInfo]) -> list[Patch]:
    """The writes an invocation recorded as checkpoints (empty ones left out)."""
    writes = (row.state_write() for row in step_rows(invocation_steps))
    return [(write.seq, write.patch) for write in writes if write is not None]


def reused_invocation_ids(run_steps: Iterable[StepInfo], run_id: str) -> list[str]:
    """Step invocations a fork's copied records call that belong to another run."""
    own = f"{run_id}/"
    ids: list[str] = []
    for row in step_rows(run_steps):
        child = row.child_id
        if child is not None and not child.startswith(own) and child not in ids:
            ids.append(child)
    return ids
