"""A run's recorded history as people read it: step timeline, value summaries, fork points."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from dbos import StepInfo, WorkflowStatus
from pydantic import BaseModel

from . import _naming
from ._records import StepRow, step_rows
from .errors import StepNotFoundError

#: Longest summary of a value shown in a timeline or stream listing.
SUMMARY_WIDTH = 80


def when(epoch_ms: int | None) -> datetime | None:
    """A UTC datetime for a DBOS epoch-milliseconds timestamp."""
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)


def unreadable(value: Any) -> bool:
    """Whether DBOS handed back a recorded value it could not deserialize here (it
    returns the serialized text: a pickle whose classes are not importable)."""
    if not isinstance(value, str) or len(value) < 8:
        return False
    try:
        return base64.b64decode(value, validate=True)[:1] == b"\x80"
    except (binascii.Error, ValueError):
        return False


UNREADABLE = "(not readable here: its classes cannot be imported in this process)"


def summarize(value: Any, width: int = SUMMARY_WIDTH) -> str:
    """One line saying what a recorded value is: ``TypeName {json fields}`` or a repr."""
    if unreadable(value):
        return UNREADABLE
    if isinstance(value, BaseModel):
        try:
            data = json.dumps(_fields_of(value), default=str)
        except Exception:  # a model with fields JSON cannot show
            data = repr(value)
        text = f"{type(value).__name__} {data}"
    elif isinstance(value, BaseException):
        text = f"{type(value).__name__}: {value}"
    else:
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _fields_of(model: BaseModel) -> Any:
    """A model's fields as JSON data; an event's free-form fields (kept by
    llama-index events under ``_data``) appear as ordinary fields."""
    data = model.model_dump(mode="json")
    extra = data.pop("_data", None) if isinstance(data, dict) else None
    return {**data, **extra} if isinstance(extra, dict) else data


def jsonable(value: Any) -> Any:
    """A JSON-compatible rendering of a recorded value (for ``--json`` output)."""
    if unreadable(value):
        return {"unreadable": UNREADABLE}
    if isinstance(value, BaseModel):
        try:
            data = _fields_of(value)
        except Exception:
            data = repr(value)
        cls = type(value)
        return {"type": f"{cls.__module__}.{cls.__qualname__}", "data": data}
    if isinstance(value, BaseException):
        return {"error": f"{type(value).__name__}: {value}"}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def outcome_summary(outcome: Any) -> str:
    """What a step invocation returned (its recorded `StepOutcome`), in one line."""
    if outcome is None:
        return ""
    if unreadable(outcome):
        return UNREADABLE
    parts: list[str] = []
    for output in getattr(outcome, "outputs", ()):
        exception = getattr(output, "exception", None)
        if exception is not None:
            parts.append("failed: " + summarize(exception))
        elif getattr(output, "result", None) is not None:
            parts.append(summarize(output.result))
    return "; ".join(parts) if parts else "(no event)"


@dataclass(frozen=True)
class CallInfo:
    """One recorded operation inside a step invocation (a `@durable_step` call,
    ``dbos_llama.now``, a durable sleep, a nested run, ...)."""

    function_id: int
    name: str
    started_at: datetime | None
    duration: float | None
    ok: bool
    output: str


@dataclass(frozen=True)
class StepInvocationInfo:
    """One invocation of a step in a run's timeline."""

    invocation_id: str
    step: str
    number: int | None
    #: DBOS status of the invocation: PENDING, SUCCESS, ERROR, CANCELLED, ...
    status: str
    started_at: datetime | None
    #: Seconds from the call to its result, None while it runs.
    duration: float | None
    #: What it returned, in one line.
    output: str
    #: The invocation belongs to the run this one was forked from: its recorded
    #: result was reused, not executed again.
    reused: bool = False
    calls: list[CallInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = _iso(self.started_at)
        for call in data["calls"]:
            call["started_at"] = _iso(call["started_at"])
        return data


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _duration(start_ms: int | None, end_ms: int | None) -> float | None:
    if start_ms is None or end_ms is None:
        return None
    return max(0.0, (end_ms - start_ms) / 1000)


@dataclass
class _Call:
    invocation_id: str
    step: str
    function_id: int
    started_ms: int | None = None
    ended_ms: int | None = None
    output: Any = None


def step_calls(run_steps: Iterable[StepInfo]) -> list[_Call]:
    """The step invocations a run called, in call order, from its recorded operations
    (each is a child-workflow call row, then a ``DBOS.getResult`` row)."""
    calls: dict[str, _Call] = {}
    for row in step_rows(run_steps):
        child = row.child_id
        if child is None:
            continue
        parsed = _naming.parse_step_workflow_name(row.name)
        if parsed is not None and child not in calls:
            calls[child] = _Call(child, parsed[1], row.function_id, row.started_ms)
        elif child in calls and row.completed_ms is not None:
            calls[child].ended_ms = row.completed_ms
            calls[child].output = row.output
    return list(calls.values())


def fork_point(run_steps: Iterable[StepInfo], run_id: str, from_step: str) -> int:
    """The DBOS function ID to fork ``run_id`` at so that ``from_step`` (a step name,
    or ``step/N`` for its invocation number N) and everything after it run again.

    It is the call of that step's invocation: the fork waits for the re-executed step
    itself instead of replaying which task finished first.
    """
    step, _, number = from_step.partition("/")
    calls = step_calls(run_steps)
    target = next(
        (
            c
            for c in calls
            if c.step == step
            and (
                not number
                or (number.isdigit() and _naming.invocation_number(c.invocation_id) == int(number))
            )
        ),
        None,
    )
    if target is None:
        recorded = sorted({c.step for c in calls})
        raise StepNotFoundError(
            f"Run {run_id!r} has no recorded invocation of step {from_step!r}; its "
            f"recorded steps are: {', '.join(recorded) or 'none yet'}. Fork from one of "
            "them (as STEP, or STEP/N for its N-th invocation as shown by `runs show`)."
        )
    # Everything before the call is kept; the decisions of the wait that started it
    # come after it (its tasks take their function IDs first), so they are made again.
    return target.function_id


def timeline(
    run_id: str,
    run_steps: Iterable[StepInfo],
    statuses: Mapping[str, WorkflowStatus],
    inner_steps: Mapping[str, Iterable[StepInfo]],
) -> list[StepInvocationInfo]:
    """A run's step invocations with their status, timing, output and inner calls."""
    rows: list[StepInvocationInfo] = []
    for call in step_calls(run_steps):
        status = statuses.get(call.invocation_id)
        output = call.output if call.output is not None or status is None else status.output
        rows.append(
            StepInvocationInfo(
                invocation_id=call.invocation_id,
                step=call.step,
                number=_naming.invocation_number(call.invocation_id),
                status=status.status if status is not None else "UNKNOWN",
                started_at=when(call.started_ms),
                duration=_duration(call.started_ms, call.ended_ms),
                output=outcome_summary(output),
                reused=not call.invocation_id.startswith(f"{run_id}/"),
                calls=[_call_info(r) for r in step_rows(inner_steps.get(call.invocation_id, []))],
            )
        )
    return rows


def _call_info(row: StepRow) -> CallInfo:
    return CallInfo(
        function_id=row.function_id,
        name=row.name,
        started_at=when(row.started_ms),
        duration=_duration(row.started_ms, row.completed_ms),
        ok=row.ok,
        output=summarize(row.error if row.error is not None else row.output),
    )
