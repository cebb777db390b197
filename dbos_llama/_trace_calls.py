"""OpenTelemetry spans of a step's durable calls (`@durable_step`, LLM, tool) and of sends."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _naming
from ._otel import (
    ATTEMPT,
    CALL,
    CALL_KIND,
    INVOCATION_ID,
    OI_KIND,
    REPLAYED,
    RUN_ID,
    RunTrace,
    StepTrace,
    current,
    emit,
    enabled,
    random_id,
    step_var,
)
from ._otel import on as _tracing_on


# -- calls inside a step ----------------------------------------------------------------
def _call_kind(name: str) -> tuple[str, str, str]:
    """(kind, span name, OpenInference kind) of the call recorded as ``name``."""
    if name.startswith("dbos_llama.llm."):
        return "llm", f"llm {name.removeprefix('dbos_llama.llm.')}", "LLM"
    if name.startswith("dbos_llama.tool."):
        return "tool", f"tool {name.removeprefix('dbos_llama.tool.')}", "TOOL"
    if name in (_naming.NOW_STEP, _naming.RANDOM_STEP, _naming.UUID4_STEP):
        return "helper", f"call {name}", "CHAIN"
    return "durable_step", f"call {name}", "CHAIN"


@dataclass
class Call:
    """One durable call (``@durable_step``, LLM, tool, helper) while it runs."""

    name: str
    step: StepTrace | None = None
    span_id: int = 0
    start_ns: int = 0
    attempts: int = 0
    _token: Any = field(default=None, repr=False)

    def ran(self) -> None:
        """The call executes (its result is not replayed from the record)."""
        if self.attempts == 0:
            self.start_ns = time.time_ns()
        self.attempts += 1


_OFF = Call("")


class _Off:
    """The scope of a hook while tracing is off: nothing to do, nothing allocated."""

    def __enter__(self) -> Call:
        return _OFF

    def __exit__(self, *exc: object) -> None:
        return None


_OFF_SCOPE = _Off()


def call(name: str) -> contextlib.AbstractContextManager[Call]:
    """Around one durable call of a step: its span, a child of the step invocation's
    (a replayed result gets one without duration, marked replayed)."""
    step = step_var.get() if _tracing_on() else None
    if step is None:
        return _OFF_SCOPE
    return _call(name, step)


@contextlib.contextmanager
def _call(name: str, step: StepTrace) -> Iterator[Call]:
    this = Call(name, step, random_id(64))
    try:
        with current(step.run.trace_id, this.span_id):
            yield this
    except BaseException as error:
        if isinstance(error, Exception):
            _end_call(this, repr(error))
        raise
    _end_call(this, None)


def _end_call(this: Call, error: str | None) -> None:
    assert this.step is not None
    kind, span_name, oi_kind = _call_kind(this.name)
    now = time.time_ns()
    replayed = this.attempts == 0
    attributes: dict[str, Any] = {
        CALL: this.name,
        CALL_KIND: kind,
        REPLAYED: replayed,
        INVOCATION_ID: this.step.invocation_id,
        OI_KIND: oi_kind,
    }
    if not replayed:
        attributes[ATTEMPT] = this.attempts
    trace = this.step.run
    start = now if replayed else this.start_ns
    emit(
        span_name,
        trace.trace_id,
        this.span_id,
        this.step.span_id,
        start,
        now,
        attributes,
        error=error,
    )


# -- events sent from outside -----------------------------------------------------------
def sent(run_ids: list[str], start_ns: int, read: Callable[[str], Any]) -> None:
    """After events were sent to runs from outside them (a human's answer): a span in
    each run's trace, linked to the sender's own span if one is this. ``read``
    gives a run's DBOS status (for its recorded trace)."""
    if not enabled():
        return
    from opentelemetry import trace as api

    sender = api.get_current_span().get_span_context()
    links = [api.Link(sender)] if sender.is_valid else []
    for run_id in run_ids:
        attributes = getattr(read(run_id), "attributes", None) or {}
        trace = RunTrace.from_record(attributes.get(_naming.TRACE_ATTR))
        if trace is not None:
            ids = (trace.trace_id, random_id(64), trace.span_id)
            emit("send event", *ids, start_ns, time.time_ns(), {RUN_ID: run_id}, links=links)
