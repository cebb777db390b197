"""A run's recorded history as people read it: step timeline, value summaries, fork points."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from dbos import StepInfo, WorkflowStatus
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from . import _naming
from ._records import SUCCESS, StepRow, step_rows
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
    """A recorded value as JSON data, in full (for ``--json`` output): a pydantic
    model (an event) as ``{"type": "module.QualName", "data": {...}}``, an exception
    as ``{"error": "Type: message"}``, other values as JSON (tuples and sets as
    arrays, datetimes as ISO 8601); an object JSON cannot show as ``{"type": ...,
    "text": str(value)}``."""
    if unreadable(value):
        return {"unreadable": UNREADABLE}
    if isinstance(value, BaseModel):
        cls = type(value)
        try:
            data = _fields_of(value)
        except Exception:  # a field JSON cannot show: dump in Python mode, then convert
            data = to_jsonable_python(value.model_dump(), fallback=_object_json)
        return {"type": f"{cls.__module__}.{cls.__qualname__}", "data": data}
    if isinstance(value, BaseException):
        return {"error": f"{type(value).__name__}: {value}"}
    return to_jsonable_python(value, fallback=_object_json)


def _object_json(value: Any) -> Any:
    if isinstance(value, (BaseModel, BaseException)):
        return jsonable(value)
    cls = type(value)
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "text": str(value)}


def outcome_json(outcome: Any) -> list[Any] | None:
    """What a step invocation returned (its recorded `StepOutcome`), in full, as
    JSON: one entry per event it returned (``{"type", "data"}``) or ``{"error"}``."""
    if outcome is None:
        return None
    if unreadable(outcome):
        return [{"unreadable": UNREADABLE}]
    values: list[Any] = []
    for output in getattr(outcome, "outputs", ()):
        exception = getattr(output, "exception", None)
        if exception is not None:
            values.append(jsonable(exception))
        elif getattr(output, "result", None) is not None:
            values.append(jsonable(output.result))
    return values


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
    #: What it returned (or raised), in one line.
    output: str
    #: The same, in full, as JSON (`jsonable`).
    value: Any = None
    #: The first call recorded after the invocation was re-executed: it may have been
    #: in flight when the execution stopped (then it ran again; a completed one never does).
    after_restart: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "function_id": self.function_id,
            "name": self.name,
            "started_at": _iso(self.started_at),
            "duration": self.duration,
            "ok": self.ok,
            "output": self.value,
            "after_restart": self.after_restart,
        }


@dataclass(frozen=True)
class StepInvocationInfo:
    """One invocation of a step in a run's timeline."""

    invocation_id: str
    step: str
    number: int | None
    #: DBOS status of the invocation: PENDING, SUCCESS, ERROR, CANCELLED, ...
    status: str
    started_at: datetime | None
    #: Seconds from the call to its result, None while it runs (downtime included).
    duration: float | None
    #: What it returned, in one line.
    output: str
    #: The invocation belongs to the run this one was forked from: its recorded
    #: result was reused, not executed again.
    reused: bool = False
    calls: list[CallInfo] = field(default_factory=list)
    #: What it returned, in full, as JSON (`outcome_json`): one entry per event.
    outputs: list[Any] | None = None
    #: How many times DBOS started executing it (its ``recovery_attempts``): more
    #: than 1 when its execution stopped (a crash; a cancel) and another resumed it.
    attempts: int | None = None
    #: Of a re-executed invocation: the longest span in which nothing of it was
    #: recorded (the process down, then restarting), in seconds.
    gap: float | None = None

    @property
    def reexecuted(self) -> bool:
        """Whether its execution stopped while it ran and it was executed again."""
        return self.attempts is not None and self.attempts > 1

    @property
    def own_duration(self) -> float | None:
        """Its duration without the downtime gap."""
        if self.duration is None:
            return None
        return round(max(0.0, self.duration - (self.gap or 0.0)), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "invocation_id": self.invocation_id,
            "step": self.step,
            "number": self.number,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "duration": self.duration,
            "own_duration": self.own_duration,
            "attempts": self.attempts,
            "reexecuted": self.reexecuted,
            "gap": self.gap,
            "reused": self.reused,
            "outputs": self.outputs,
            "calls": [c.to_dict() for c in self.calls],
        }


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
    #: Of an invocation run in the run's own workflow (`_inline`): the operations its
    #: code recorded there.
    inline_rows: list[StepRow] | None = None


def step_calls(run_steps: Iterable[StepInfo]) -> list[_Call]:
    """The step invocations a run called, in call order, from its recorded operations
    (each is a child-workflow call row, then a ``DBOS.getResult`` row; or one
    `_naming.INLINE_STEP` record after the operations of its code)."""
    calls: dict[str, _Call] = {}
    rows = step_rows(run_steps)
    for row in rows:
        inline = row.inline()
        if inline is not None:
            inner = [r for r in rows if inline.begin < r.function_id < row.function_id]
            call = _Call(inline.invocation_id, inline.step, inline.begin, inline.started_ms)
            call.ended_ms, call.output, call.inline_rows = row.completed_ms, inline.outcome, inner
            calls[inline.invocation_id] = call
        child = row.child_id
        if child is None:
            continue
        parsed = _naming.parse_step_workflow_name(row.name)
        if parsed is not None and child not in calls:
            calls[child] = _Call(child, parsed[1], row.function_id, row.started_ms)
        elif child in calls and row.completed_ms is not None:
            calls[child].ended_ms = row.completed_ms
            calls[child].output = row.output
    return sorted(calls.values(), key=lambda call: call.function_id)


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
    """A run's step invocations with their status, timing, output and inner calls;
    a re-executed invocation with its downtime gap and its first call after it."""
    rows: list[StepInvocationInfo] = []
    for call in step_calls(run_steps):
        status = statuses.get(call.invocation_id)
        output = call.output if call.output is not None or status is None else status.output
        inner = step_rows(inner_steps.get(call.invocation_id, []))
        attempts = status.recovery_attempts if status is not None else None
        state: str = status.status if status is not None else "UNKNOWN"
        if call.inline_rows is not None:  # recorded in the run's workflow: it returned
            inner, state = call.inline_rows, SUCCESS
        gap, resumed_ms = (None, None)
        if attempts is not None and attempts > 1:
            gap, resumed_ms = _downtime(call, inner)
        calls = [_call_info(r) for r in inner]
        if resumed_ms is not None:
            first = next((i for i, r in enumerate(inner) if r.started_ms == resumed_ms), None)
            if first is not None:
                calls[first] = replace(calls[first], after_restart=True)
        rows.append(
            StepInvocationInfo(
                invocation_id=call.invocation_id,
                step=call.step,
                number=_naming.invocation_number(call.invocation_id),
                status=state,
                started_at=when(call.started_ms),
                duration=_duration(call.started_ms, call.ended_ms),
                output=outcome_summary(output),
                reused=not call.invocation_id.startswith(f"{run_id}/"),
                calls=calls,
                outputs=outcome_json(output),
                attempts=attempts,
                gap=gap,
            )
        )
    return rows


def _downtime(call: _Call, inner: list[StepRow]) -> tuple[float | None, int | None]:
    """The longest span with nothing of a re-executed invocation recorded (from its
    call, through its calls' starts and ends, to its result), in seconds, and the
    moment (epoch ms) recording resumed after it."""
    moments = [call.started_ms, call.ended_ms]
    for row in inner:
        moments += [row.started_ms, row.completed_ms]
    points = sorted(m for m in moments if m is not None)
    if len(points) < 2:
        return None, None
    start, end = max(zip(points, points[1:], strict=False), key=lambda pair: pair[1] - pair[0])
    return (end - start) / 1000, end


def _call_info(row: StepRow) -> CallInfo:
    value = row.error if row.error is not None else row.output
    return CallInfo(
        function_id=row.function_id,
        name=row.name,
        started_at=when(row.started_ms),
        duration=_duration(row.started_ms, row.completed_ms),
        ok=row.ok,
        output=summarize(value),
        value=jsonable(value),
    )
