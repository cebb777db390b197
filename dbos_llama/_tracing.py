"""OpenTelemetry: one trace per durable run, recorded with it and continued by every process."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import inspect
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dbos import DBOS
from dbos import error as dbos_error
from llama_index_instrumentation.span import active_span_id

from . import _naming, _registry, _upstream
from ._context import outside_workflow

T = TypeVar("T")

#: The instrumentation scope of dbos_llama's spans.
TRACER_NAME = "dbos_llama"
#: Span attributes (also read by tests and the README).
RUN_ID = "dbos_llama.run_id"
WORKFLOW = "dbos_llama.workflow"
STEP = "dbos_llama.step"
INVOCATION = "dbos_llama.invocation"
INVOCATION_ID = "dbos_llama.invocation_id"
ATTEMPT = "dbos_llama.attempt"
REPLAYED = "dbos_llama.replayed"
CALL = "dbos_llama.call"
CALL_KIND = "dbos_llama.call.kind"
OUTCOME = "dbos_llama.outcome"
#: The span event of an execution that resumed a run (or a step invocation).
RECOVERED_EVENT = "dbos_llama.recovered"
#: OpenInference's span kind, which Arize Phoenix shows.
_OI_KIND = "openinference.span.kind"
#: At most this many runs' trace contexts are kept per process.
_CACHE_LIMIT = 4096


def _random_id(bits: int) -> int:
    """A random nonzero ID (not `random`: applications seed it)."""
    return int.from_bytes(os.urandom(bits // 8), "big") or 1


@dataclass(frozen=True)
class RunTrace:
    """A run's trace: its ID, the run's own span, and the caller's span it joined."""

    trace_id: int
    span_id: int
    parent_id: int | None = None
    #: Wall-clock start of the run (ns); 0 when not known.
    start_ns: int = 0
    #: The execution number of the run in this process (DBOS's recovery attempts).
    attempt: int = 1

    def child_id(self, key: str) -> int:
        """The span ID of the run's step invocation ``key``: the same in every process."""
        digest = hashlib.sha256(f"{self.trace_id:032x}/{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") or 1

    def record(self) -> dict[str, str]:
        """The recorded form (W3C trace context, no baggage)."""
        parent = f"{self.parent_id:016x}" if self.parent_id else ""
        traceparent = f"00-{self.trace_id:032x}-{self.span_id:016x}-01"
        return {"traceparent": traceparent, "parent": parent, "start": str(self.start_ns)}

    @classmethod
    def from_record(cls, value: Any) -> RunTrace | None:
        """The trace of a recorded attribute; None for anything unreadable."""
        try:
            _version, trace, span, _flags = str(value["traceparent"]).split("-")
            parent = str(value.get("parent") or "")
            trace_id, span_id = int(trace, 16), int(span, 16)
            parent_id = int(parent, 16) if parent else None
            start_ns = int(value.get("start") or 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if not trace_id or not span_id or len(trace) != 32 or len(span) != 16:
            return None
        return cls(trace_id, span_id, parent_id, start_ns)


_on = False
_tracer: Any = None
_runs: dict[str, RunTrace] = {}
#: Runs started by this process whose body has not begun yet (nothing recorded).
_fresh: set[str] = set()


@dataclass
class _StepTrace:
    run: RunTrace
    span_id: int
    invocation_id: str


_step_var: ContextVar[_StepTrace | None] = ContextVar("dbos_llama_step_trace", default=None)


def enabled() -> bool:
    """Whether the application set an OpenTelemetry SDK `TracerProvider` (checked
    without importing OpenTelemetry: off costs a dictionary look-up)."""
    global _on, _tracer
    if _on:
        return True
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return False
    provider = api.get_tracer_provider()
    # The SDK's provider (DBOS's enable_otlp sets one); its tracers take a
    # public id_generator, which lets every process emit the run's own spans.
    if getattr(provider, "id_generator", None) is None:
        return False
    tracer = provider.get_tracer(TRACER_NAME)
    if getattr(tracer, "id_generator", None) is None:
        return False
    _tracer, _on = tracer, True
    return True


class _FixedIds:
    """An OpenTelemetry SDK id generator handing out one known span (and trace) ID."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id, self.span_id = trace_id, span_id

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def is_trace_id_random(self) -> bool:
        return True


def _span_context(trace_id: int, span_id: int, remote: bool = False) -> Any:
    from opentelemetry import trace as api

    sampled = api.TraceFlags(api.TraceFlags.SAMPLED)
    return api.SpanContext(trace_id, span_id, is_remote=remote, trace_flags=sampled)


def _otel_context(trace_id: int, span_id: int) -> Any:
    """An OpenTelemetry context whose current span is (trace_id, span_id)."""
    from opentelemetry import trace as api

    return api.set_span_in_context(api.NonRecordingSpan(_span_context(trace_id, span_id)))


@contextlib.contextmanager
def _current(trace_id: int, span_id: int) -> Iterator[None]:
    """Make the span (trace_id, span_id) current: spans begun meanwhile (DBOS's,
    LlamaIndex instrumentation's, the application's) are its children."""
    from opentelemetry import context as otel_context

    token = otel_context.attach(_otel_context(trace_id, span_id))
    try:
        yield
    finally:
        otel_context.detach(token)


def _emit(
    name: str,
    trace_id: int,
    span_id: int,
    parent_id: int | None,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any],
    events: list[tuple[str, dict[str, Any], int]] | None = None,
    error: str | None = None,
) -> None:
    """Export one finished span with a known ID (any process can emit a run's span
    or a step invocation's, whose ID its children already carry)."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace as api

    tracer = copy.copy(_tracer)
    tracer.id_generator = _FixedIds(trace_id, span_id)
    parent = (
        otel_context.Context()
        if parent_id is None
        else api.set_span_in_context(api.NonRecordingSpan(_span_context(trace_id, parent_id, True)))
    )
    span = tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    for event, event_attributes, at in events or []:
        span.add_event(event, event_attributes, timestamp=at)
    if error is None:
        span.set_status(api.Status(api.StatusCode.OK))
    else:
        span.set_status(api.Status(api.StatusCode.ERROR, error))
    span.end(end_time=max(end_ns, start_ns))


def _remember(run_id: str, trace: RunTrace) -> None:
    if len(_runs) >= _CACHE_LIMIT:
        _runs.pop(next(iter(_runs)))
    _runs[run_id] = trace


# -- starting a run ---------------------------------------------------------------------
def start_attributes(run_id: str) -> dict[str, Any]:
    """The workflow attributes recording a run's trace as it is started ({} when
    tracing is off). The run joins the caller's trace if a span is current."""
    if not enabled():
        return {}
    from opentelemetry import trace as api

    caller = api.get_current_span().get_span_context()
    trace_id, parent = (
        (caller.trace_id, caller.span_id) if caller.is_valid else (_random_id(128), None)
    )
    trace = RunTrace(trace_id, _random_id(64), parent, time.time_ns())
    _remember(run_id, trace)
    _fresh.add(run_id)
    return {_naming.TRACE_ATTR: trace.record()}


def propagate(run_id: str) -> contextlib.AbstractContextManager[Any]:
    """Around the start or enqueue of a run: DBOS's own spans of it (each execution,
    after recovery or dequeue too) become children of the run's span."""
    trace = _runs.get(run_id) if _on else None
    if trace is None:
        return contextlib.nullcontext()
    from dbos import PropagateOtelContext

    return PropagateOtelContext(_otel_context(trace.trace_id, trace.span_id))


async def _load(run_id: str) -> RunTrace | None:
    """The run's trace: this process's, else the recorded one; a run recorded without
    one (older releases, tracing off then) gets one now, recorded for the others."""
    trace = _runs.get(run_id)
    if trace is not None:
        return trace
    status = await outside_workflow(functools.partial(DBOS.get_workflow_status, run_id))
    if status is None:
        return None
    created_ns = (status.created_at or 0) * 1_000_000
    trace = RunTrace.from_record((status.attributes or {}).get(_naming.TRACE_ATTR))
    if trace is None:
        # Derived from the run, so that processes (and a step recovered beside its
        # run) that take it up at once agree without a lock.
        digest = hashlib.sha256(f"dbos_llama/{run_id}/{status.created_at}".encode()).digest()
        ids = int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1
        trace = RunTrace(*ids, None, created_ns)
        update = functools.partial(
            DBOS.update_workflow_attributes,
            run_id,
            {_naming.TRACE_ATTR: trace.record()},
            merge=True,
        )
        await outside_workflow(update)
    attempt = status.recovery_attempts or 1
    start_ns = trace.start_ns or created_ns
    trace = RunTrace(trace.trace_id, trace.span_id, trace.parent_id, start_ns, attempt)
    _remember(run_id, trace)
    return trace


def _ends_here(error: BaseException, run_id: str) -> bool:
    """Whether an execution of run ``run_id`` (or of one of its step invocations)
    that raised ``error`` ended it: not when the run was released, taken over, or
    stopped with its process."""
    if isinstance(error, (asyncio.CancelledError, dbos_error.DBOSWorkflowConflictIDError)):
        return False
    if isinstance(error, dbos_error.DBOSWorkflowCancelledError):
        return run_id in _registry.cancelled_runs  # else released
    return isinstance(error, Exception)


async def _recorded_results(run_id: str) -> set[str]:
    """The step invocations whose result the run's record holds (DBOS's
    ``getResult`` of a child): a replay takes them from the record."""
    steps = await outside_workflow(functools.partial(DBOS.list_workflow_steps, run_id))
    return {
        str(row["child_workflow_id"])
        for row in steps
        if row["function_name"] == _upstream.GET_RESULT_STEP and row["child_workflow_id"]
    }


def _recovered_event(attempt: int, at: int = 0) -> tuple[str, dict[str, Any], int]:
    attributes = {
        ATTEMPT: attempt,
        "dbos_llama.executor_id": DBOS.executor_id,
        "process.pid": os.getpid(),
    }
    return (RECOVERED_EVENT, attributes, at or time.time_ns())


def traced_run_body(
    body: Callable[..., Awaitable[T]], workflow: str
) -> Callable[..., Awaitable[T]]:
    """The run's DBOS workflow body, tracing it when tracing is on: the run's span
    (exported by the process that ends the run) is current while it executes."""

    @functools.wraps(body)
    async def traced(*args: Any, **kwargs: Any) -> T:
        if not enabled():
            return await body(*args, **kwargs)
        run_id = DBOS.workflow_id
        trace = await _load(run_id) if run_id is not None else None
        if trace is None or run_id is None:
            return await body(*args, **kwargs)
        if run_id in _fresh:  # its first execution, in the process that started it
            _fresh.discard(run_id)
            _received[run_id] = set()
        else:
            _received[run_id] = await _recorded_results(run_id)
        events = []
        if trace.attempt > 1:
            event = _recovered_event(trace.attempt)
            events.append(event)
            from opentelemetry import trace as api

            api.get_current_span().add_event(*event[:2])  # DBOS's span of this execution
        attributes = {RUN_ID: run_id, WORKFLOW: workflow, _OI_KIND: "CHAIN"}
        start_ns = trace.start_ns or time.time_ns()

        def end(outcome: str, error: str | None = None) -> None:
            _runs.pop(run_id, None)
            ids = (trace.trace_id, trace.span_id, trace.parent_id)
            _emit(
                f"run {workflow}",
                *ids,
                start_ns,
                time.time_ns(),
                {**attributes, OUTCOME: outcome},
                events,
                error,
            )

        with _current(trace.trace_id, trace.span_id):
            try:
                result = await body(*args, **kwargs)
            except BaseException as error:
                if _ends_here(error, run_id):
                    cancelled = isinstance(error, dbos_error.DBOSWorkflowCancelledError)
                    end("cancelled" if cancelled else "error", None if cancelled else repr(error))
                raise
            finally:
                _received.pop(run_id, None)
        end("success")
        return result

    return traced


# -- step invocations ---------------------------------------------------------------------
@dataclass
class _Execution:
    """What a step invocation's body did in this process, for its span."""

    start_ns: int
    attempt: int
    end_ns: int = 0
    error: str | None = None


#: Step invocations whose body ran in this process, until the run takes their result.
_executed: dict[str, _Execution] = {}
#: Per run executing here: the step invocations whose result its record holds
#: (DBOS's ``getResult`` rows): taken from the record, not live.
_received: dict[str, set[str]] = {}


def step_call(run_id: str, invocation_id: str, step: str) -> contextlib.AbstractContextManager[Any]:
    """Around the run's call of a step invocation (its child DBOS workflow): DBOS's
    span of the child (now and on its recovery) is a child of the invocation's span.

    The invocation's span is exported here, when the run takes its result live:
    exactly once across processes (a result the run's record already holds was
    taken before a crash: a marker span without duration instead)."""
    trace = _runs.get(run_id) if _on else None
    if trace is None:
        return _OFF_SCOPE
    return _step_call(trace, run_id, invocation_id, step)


@contextlib.contextmanager
def _step_call(trace: RunTrace, run_id: str, invocation_id: str, step: str) -> Iterator[None]:
    from dbos import PropagateOtelContext

    span_id = trace.child_id(invocation_id)
    attributes = _step_attributes(run_id, invocation_id, step)
    try:
        with (
            _current(trace.trace_id, span_id),
            PropagateOtelContext(_otel_context(trace.trace_id, span_id)),
        ):
            yield
    except BaseException as error:
        execution = _executed.pop(invocation_id, None)
        if execution is not None and _ends_here(error, run_id):
            execution.error = execution.error or repr(error)
            _emit_invocation(trace, span_id, step, attributes, execution)
        raise
    execution = _executed.pop(invocation_id, None)
    now = time.time_ns()
    if invocation_id in _received.get(run_id, ()):
        attributes[REPLAYED] = True
        _emit(f"step {step}", trace.trace_id, _random_id(64), trace.span_id, now, now, attributes)
        return
    if execution is None:  # its body ran in another process
        attributes["dbos_llama.executed_elsewhere"] = True
        execution = _Execution(now, 0, now)
    _emit_invocation(trace, span_id, step, attributes, execution)


def _emit_invocation(
    trace: RunTrace, span_id: int, step: str, attributes: dict[str, Any], execution: _Execution
) -> None:
    if execution.attempt:
        attributes[ATTEMPT] = execution.attempt
    events = [_recovered_event(execution.attempt, execution.start_ns)]
    end_ns = execution.end_ns or time.time_ns()
    _emit(
        f"step {step}",
        trace.trace_id,
        span_id,
        trace.span_id,
        execution.start_ns,
        end_ns,
        attributes,
        events if execution.attempt > 1 else None,
        execution.error,
    )


def _step_attributes(run_id: str, invocation_id: str, step: str) -> dict[str, Any]:
    number = invocation_id.rsplit("/", 1)[-1]
    return {
        RUN_ID: run_id,
        STEP: step,
        INVOCATION: int(number) if number.isdigit() else -1,
        INVOCATION_ID: invocation_id,
        REPLAYED: False,
        _OI_KIND: "CHAIN",
    }


def traced_step_body(body: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A step invocation's DBOS workflow body, tracing it when tracing is on: the
    invocation's span (its ID the same in every process) is current while it runs;
    the run's side exports it (`step_call`)."""
    signature = inspect.signature(body)

    @functools.wraps(body)
    async def traced(*args: Any, **kwargs: Any) -> T:
        invocation_id = DBOS.workflow_id
        if not enabled() or invocation_id is None:
            return await body(*args, **kwargs)
        run_id = str(signature.bind(*args, **kwargs).arguments["run_id"])
        start_ns = time.time_ns()
        trace = await _load(run_id)
        status = await outside_workflow(functools.partial(DBOS.get_workflow_status, invocation_id))
        if trace is None:
            return await body(*args, **kwargs)
        attempt = (status.recovery_attempts if status is not None else None) or 1
        if attempt > 1 and status is not None and status.created_at:
            # From the invocation's creation (the database's resolution may be
            # seconds: not before the run's start).
            start_ns = max(status.created_at * 1_000_000, trace.start_ns)
        if len(_executed) >= _CACHE_LIMIT:
            _executed.clear()
        execution = _executed[invocation_id] = _Execution(start_ns, attempt)
        span_id = trace.child_id(invocation_id)
        token = _step_var.set(_StepTrace(trace, span_id, invocation_id))
        # LlamaIndex's span of the step: under the invocation's span, not under its
        # span of the run in this process (which a crash would lose, leaving the
        # exported step spans of the dead process without their parent).
        llama_token = active_span_id.set(None)
        try:
            with _current(trace.trace_id, span_id):
                result = await body(*args, **kwargs)
        except BaseException as error:
            execution.error = repr(error)
            raise
        finally:
            execution.end_ns = time.time_ns()
            active_span_id.reset(llama_token)
            _step_var.reset(token)
        execution.error = _step_failure(result)
        return result

    return traced


def _step_failure(outcome: Any) -> str | None:
    """The failure a step invocation's outcome carries, if any."""
    for output in getattr(outcome, "outputs", None) or []:
        exception = getattr(output, "exception", None)
        if isinstance(exception, BaseException):
            return repr(exception)
    return None


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
    step: _StepTrace | None = None
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
    step = _step_var.get() if _on else None
    if step is None:
        return _OFF_SCOPE
    return _call(name, step)


@contextlib.contextmanager
def _call(name: str, step: _StepTrace) -> Iterator[Call]:
    current = Call(name, step, _random_id(64))
    trace_id = step.run.trace_id
    try:
        with _current(trace_id, current.span_id):
            yield current
    except BaseException as error:
        if isinstance(error, Exception):
            _end_call(current, repr(error))
        raise
    _end_call(current, None)


def _end_call(current: Call, error: str | None) -> None:
    assert current.step is not None
    kind, span_name, oi_kind = _call_kind(current.name)
    now = time.time_ns()
    replayed = current.attempts == 0
    attributes: dict[str, Any] = {
        CALL: current.name,
        CALL_KIND: kind,
        REPLAYED: replayed,
        INVOCATION_ID: current.step.invocation_id,
        _OI_KIND: oi_kind,
    }
    if not replayed:
        attributes[ATTEMPT] = current.attempts
    trace = current.step.run
    start = now if replayed else current.start_ns
    _emit(
        span_name,
        trace.trace_id,
        current.span_id,
        current.step.span_id,
        start,
        now,
        attributes,
        error=error,
    )


# -- events sent from outside -----------------------------------------------------------
def sent(run_ids: list[str], start_ns: int, read: Callable[[str], Any]) -> None:
    """After events were sent to runs from outside them (a human's answer): a span in
    each run's trace, linked to the sender's own span if one is current. ``read``
    gives a run's DBOS status (for its recorded trace)."""
    if not enabled():
        return
    from opentelemetry import trace as api

    sender = api.get_current_span().get_span_context()
    links = [api.Link(sender)] if sender.is_valid else []
    for run_id in run_ids:
        trace = _runs.get(run_id)
        if trace is None:
            status = read(run_id)
            attributes = getattr(status, "attributes", None) or {}
            trace = RunTrace.from_record(attributes.get(_naming.TRACE_ATTR))
        if trace is None:
            continue
        tracer = copy.copy(_tracer)
        tracer.id_generator = _FixedIds(trace.trace_id, _random_id(64))
        parent = api.set_span_in_context(
            api.NonRecordingSpan(_span_context(trace.trace_id, trace.span_id, True))
        )
        span = tracer.start_span(
            "send event",
            context=parent,
            start_time=start_ns,
            links=links,
            attributes={RUN_ID: run_id},
        )
        span.end()
