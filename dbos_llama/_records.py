"""The shapes of the records dbos_llama writes, and typed readers of DBOS's rows.

Every checkpoint output dbos_llama writes is a plain tuple or list (never a class of
ours: a class's import path would be recorded with it). The named tuples here give
those shapes names when they are written and read; `record()` turns one back into the
plain tuple that is recorded. `StepRow` reads one `dbos.StepInfo` row, and the status
sets are built from `dbos.WorkflowStatusString`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from dbos import StepInfo, WorkflowStatusString

from . import _naming

PENDING = WorkflowStatusString.PENDING.value
ENQUEUED = WorkflowStatusString.ENQUEUED.value
SUCCESS = WorkflowStatusString.SUCCESS.value
ERROR = WorkflowStatusString.ERROR.value
CANCELLED = WorkflowStatusString.CANCELLED.value
DELAYED = WorkflowStatusString.DELAYED.value

#: Statuses after which a workflow does not execute again unless resumed or forked.
TERMINAL = frozenset(
    {SUCCESS, ERROR, CANCELLED, WorkflowStatusString.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value}
)
#: Statuses of a step invocation whose result is not recorded (yet): running,
#: waiting to run, or cancelled (one cancelled while the run executes here still
#: runs until the run notices; a resume executes it again).
UNFINISHED = frozenset({PENDING, ENQUEUED, DELAYED, CANCELLED})


def dbos_statuses(list_workflows: Callable[..., Any], run_ids: list[str]) -> dict[str, str]:
    """The DBOS status of each of ``run_ids`` that exists, in one query
    (``list_workflows`` of `DBOS` or of a `DBOSClient`; no inputs or outputs read)."""
    found = list_workflows(workflow_ids=run_ids, load_input=False, load_output=False)
    return {status.workflow_id: status.status for status in found}


class Choice(NamedTuple):
    """`_naming.NEXT_STEP` output: which task finished first (None: the deadline came),
    the run's clock then, whether it was the pull holding a cancel, the keys of the
    other tasks that had finished too, in the order the run takes them next, and
    (decision rules 4) the number of the wait it decided: a wait without a record
    took the running worker started first.

    Recorded as a plain tuple; runs recorded before ``then`` existed have three items,
    before ``wait`` four at most.
    """

    first: int | None
    clock: float
    cancel: bool
    then: tuple[str, ...] = ()
    wait: int | None = None

    def record(self) -> tuple[Any, ...]:
        head = (self.first, self.clock, self.cancel)
        if self.wait is not None:
            return (*head, list(self.then), self.wait)
        if not self.then:
            return head
        return (*head, list(self.then))

    @classmethod
    def read(cls, output: Any) -> Choice:
        first, clock, cancel, *rest = output
        then = tuple(str(key) for key in rest[0]) if rest else ()
        wait = int(rest[1]) if len(rest) > 1 else None
        return cls(None if first is None else int(first), float(clock), bool(cancel), then, wait)


class Wake(NamedTuple):
    """`_naming.WAKE_STEP` output: wait number ``number`` of a run's body ended with
    ``kind`` ("pull" or "timeout") ahead of the one step running beside the mailbox."""

    number: int
    kind: str
    clock: float

    def record(self) -> tuple[int, str, float]:
        return (self.number, self.kind, self.clock)

    @classmethod
    def read(cls, output: Any) -> Wake:
        number, kind, clock = output
        return cls(int(number), str(kind), float(clock))


class StateWrite(NamedTuple):
    """`_naming.STATE_STEP` output: the ``seq``-th committed write of an invocation.

    A write recorded in the run's own workflow (by an invocation run there, `_inline`)
    also names its invocation (`_naming.invocation_key`): three items, not two.
    """

    seq: int
    patch: list[Any]
    key: str | None = None

    def record(self) -> list[Any]:
        if self.key is None:
            return [self.seq, self.patch]
        return [self.seq, self.patch, self.key]

    @classmethod
    def read(cls, output: Any) -> StateWrite:
        seq, patch, *rest = output
        return cls(int(seq), patch, str(rest[0]) if rest else None)


class InlineRecord(NamedTuple):
    """`_naming.INLINE_STEP` output: a step invocation that ran in the run's own
    workflow (`_inline`), recorded when it returned: its ID, step, the function ID it
    reserved when it started (its durable calls and state writes took the IDs after
    it), when it started (epoch ms), its `StepOutcome`, and the keys of the run's
    other workers that had finished by then, which the run takes next without a
    decision of their own (as a `Choice`'s ``then``)."""

    invocation_id: str
    step: str
    begin: int
    started_ms: int
    outcome: Any
    then: tuple[str, ...] = ()

    def record(self) -> list[Any]:
        head = [self.invocation_id, self.step, self.begin, self.started_ms]
        return [*head, self.outcome, list(self.then)]

    @classmethod
    def read(cls, output: Any) -> InlineRecord:
        invocation_id, step, begin, started_ms, outcome, then = output
        keys = tuple(str(key) for key in then)
        return cls(str(invocation_id), str(step), int(begin), int(started_ms), outcome, keys)


#: DBOS's name for a completed ``recv`` in a workflow's recorded operations.
RECV_STEP = "DBOS.recv"


@dataclass(frozen=True)
class StepRow:
    """One recorded operation of a DBOS workflow (a `dbos.StepInfo` row)."""

    function_id: int
    name: str
    output: Any
    error: Exception | None
    child_id: str | None
    started_ms: int | None
    completed_ms: int | None

    @classmethod
    def of(cls, info: StepInfo) -> StepRow:
        return cls(
            function_id=info["function_id"],
            name=info["function_name"],
            output=info.get("output"),
            error=info.get("error"),
            child_id=info.get("child_workflow_id"),
            started_ms=info.get("started_at_epoch_ms"),
            completed_ms=info.get("completed_at_epoch_ms"),
        )

    @property
    def ok(self) -> bool:
        return self.error is None

    def wake(self) -> Wake | None:
        """The recorded `Wake`, if this row is one."""
        if self.name != _naming.WAKE_STEP or self.output is None:
            return None
        return Wake.read(self.output)

    def choice(self) -> Choice | None:
        """The recorded `Choice`, if this row is one."""
        if self.name != _naming.NEXT_STEP or self.error is not None or self.output is None:
            return None
        return Choice.read(self.output)

    def inline(self) -> InlineRecord | None:
        """The recorded `InlineRecord`, if this row is one."""
        if self.name != _naming.INLINE_STEP or self.error is not None or self.output is None:
            return None
        return InlineRecord.read(self.output)

    def state_write(self) -> StateWrite | None:
        """The recorded non-empty `StateWrite`, if this row is one."""
        if self.name != _naming.STATE_STEP or self.error is not None:
            return None
        write = StateWrite.read(self.output)
        return write if write.patch else None

    @property
    def is_receive(self) -> bool:
        """A completed DBOS ``recv`` (the run's mailbox)."""
        return self.name == RECV_STEP

    def is_replayable_call(self) -> bool:
        """A completed durable call inside step code (`@durable_step`, ``now()``, an
        LLM call...) that a re-run of the step takes from the record. State writes are
        not: a re-run makes them again, as upstream re-runs the step's code."""
        return (
            self.error is None
            and self.child_id is None
            and not self.name.startswith("DBOS.")
            and self.name != _naming.STATE_STEP
        )


def step_rows(infos: Iterable[StepInfo]) -> list[StepRow]:
    """The rows of one workflow's recorded operations, in function-ID order."""
    return sorted((StepRow.of(i) for i in infos), key=lambda r: r.function_id)
