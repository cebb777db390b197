"""OpenTelemetry: one trace per durable run, recorded with it and continued by every process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from dbos import DBOS
from dbos import error as dbos_error
from llama_index_instrumentation.span import active_span_id

from . import _naming, _registry, _upstream
from ._context import outside_workflow
from ._otel import (
    ATTEMPT,
    CACHE_LIMIT,
    INVOCATION,
    INVOCATION_ID,
    OI_KIND,
    OUTCOME,
    RECOVERED_EVENT,
    REPLAYED,
    RUN_ID,
    STEP,
    WORKFLOW,
    RunTrace,
    StepTrace,
    context_of,
    current,
    emit,
    enabled,
    random_id,
    step_var,
)
from ._otel import on as _tracing_on
from ._records import step_rows

T = TypeVar("T")

_runs: dict[str, RunTrace] = {}
_NULL = contextlib.nullcontext()
#: Runs started by this process whose body has not begun yet (nothing recorded).
_fresh: set[str] = set()


def _remember(run_id: str, trace: RunTrace) -> None:
    if len(_runs) >= CACHE_LIMIT:
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
        (caller.trace_id, caller.span_id) if caller.is_valid else (random_id(128), None)
    )
    trace = RunTrace(trace_id, random_id(64), parent, time.time_ns())
    _remember(run_id, trace)
    if len(_fresh) >= CACHE_LIMIT:  # runs enqueued here, executed by other workers
        _fresh.clear()
    _fresh.add(run_id)
    return {_naming.TRACE_ATTR: trace.record()}


def propagate(run_id: str) -> contextlib.AbstractContextManager[Any]:
    """Around the start or enqueue of a run: DBOS's own spans of it (each execution,
    after recovery or dequeue too) become children of the run's span."""
    trace = _runs.get(run_id) if _tracing_on() else None
    if trace is None:
        return contextlib.nullcontext()
    from dbos import PropagateOtelContext

    return PropagateOtelContext(context_of(trace.trace_id, trace.span_id))


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


async def _emit_abandoned(trace: RunTrace, run_id: str) -> None:
    """At the run's end: the span of each step invocation the run never took the
    result of (siblings abandoned when it ended, before or after a crash), so the
    spans inside them keep their parent."""
    listing = functools.partial(
        DBOS.list_workflows, workflow_id_prefix=f"{run_id}/", load_input=False, load_output=False
    )
    taken = _received.get(run_id, set())
    depth = run_id.count("/") + 2
    for child in await outside_workflow(listing):
        invocation_id = child.workflow_id
        if invocation_id in taken or invocation_id.count("/") != depth:
            continue
        step = invocation_id.rsplit("/", 2)[-2]
        attributes = {**_step_attributes(run_id, invocation_id, step), "dbos_llama.abandoned": True}
        execution = _executed.pop(invocation_id, None)
        if execution is None:  # its body ran in another process
            attributes["dbos_llama.executed_elsewhere"] = True
            created, updated = (child.created_at or 0) * 10**6, (child.updated_at or 0) * 10**6
            execution = _Execution(max(created, trace.start_ns), 0, updated)
        _emit_invocation(trace, trace.child_id(invocation_id), step, attributes, execution)


async def _recorded_results(run_id: str) -> set[str]:
    """The step invocations whose result the run's record holds (DBOS's
    ``getResult`` of a child): a replay takes them from the record."""
    steps = await outside_workflow(functools.partial(DBOS.list_workflow_steps, run_id))
    taken = {
        str(row["child_workflow_id"])
        for row in steps
        if row["function_name"] == _upstream.GET_RESULT_STEP and row["child_workflow_id"]
    }
    inline = (row.inline() for row in step_rows(steps))
    # (A fork's copied records name the run it was forked from.)
    own = (f"{run_id}/{_naming.invocation_key(r.invocation_id)}" for r in inline if r is not None)
    return taken | set(own)


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
        attributes = {RUN_ID: run_id, WORKFLOW: workflow, OI_KIND: "CHAIN"}
        start_ns = trace.start_ns or time.time_ns()

        async def end(outcome: str, error: str | None = None) -> None:
            _runs.pop(run_id, None)
            await _emit_abandoned(trace, run_id)
            ids = (trace.trace_id, trace.span_id, trace.parent_id)
            attributes[OUTCOME] = outcome
            emit(f"run {workflow}", *ids, start_ns, time.time_ns(), attributes, events, error)

        try:
            with current(trace.trace_id, trace.span_id):
                try:
                    result = await body(*args, **kwargs)
                except BaseException as error:
                    if _ends_here(error, run_id):
                        cancelled = isinstance(error, dbos_error.DBOSWorkflowCancelledError)
                        failure = None if cancelled else repr(error)
                        await end("cancelled" if cancelled else "error", failure)
                    raise
            await end("success")
        finally:
            _received.pop(run_id, None)
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
    trace = _runs.get(run_id) if _tracing_on() else None
    if trace is None:
        return _NULL
    return _step_call(trace, run_id, invocation_id, step)


@contextlib.contextmanager
def _step_call(trace: RunTrace, run_id: str, invocation_id: str, step: str) -> Iterator[None]:
    from dbos import PropagateOtelContext

    span_id = trace.child_id(invocation_id)
    attributes = _step_attributes(run_id, invocation_id, step)
    try:
        with (
            current(trace.trace_id, span_id),
            PropagateOtelContext(context_of(trace.trace_id, span_id)),
        ):
            yield
    except BaseException as error:
        execution = _executed.get(invocation_id)
        if execution is not None and _ends_here(error, run_id):
            del _executed[invocation_id]
            execution.error = execution.error or repr(error)
            _emit_invocation(trace, span_id, step, attributes, execution)
            _received.setdefault(run_id, set()).add(invocation_id)
        raise  # (cancelled: an abandoned sibling, its span emitted at the run's end)
    execution = _executed.pop(invocation_id, None)
    now = time.time_ns()
    if invocation_id in _received.get(run_id, ()):
        attributes[REPLAYED] = True
        emit(f"step {step}", trace.trace_id, random_id(64), trace.span_id, now, now, attributes)
        return
    if execution is None:  # its body ran in another process
        attributes["dbos_llama.executed_elsewhere"] = True
        execution = _Execution(now, 0, now)
    _emit_invocation(trace, span_id, step, attributes, execution)
    _received.setdefault(run_id, set()).add(invocation_id)


def _emit_invocation(
    trace: RunTrace, span_id: int, step: str, attributes: dict[str, Any], execution: _Execution
) -> None:
    if execution.attempt:
        attributes[ATTEMPT] = execution.attempt
    events = [_recovered_event(execution.attempt, execution.start_ns)]
    end_ns = execution.end_ns or time.time_ns()
    emit(
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
        OI_KIND: "CHAIN",
    }


async def traced_inline(run_id: str, invocation_id: str, code: Awaitable[T]) -> T:
    """A step invocation run in the run's own workflow (`_inline`), traced as
    `traced_step_body` traces one in its own workflow."""
    trace = _runs.get(run_id) if _tracing_on() else None
    if trace is None:
        return await code
    return await _executing(trace, invocation_id, time.time_ns(), 1, code)


async def _executing(
    trace: RunTrace, invocation_id: str, start_ns: int, attempt: int, code: Awaitable[T]
) -> T:
    """Await a step invocation's code with its span current (exported by `step_call`)."""
    if len(_executed) >= CACHE_LIMIT:
        _executed.clear()
    execution = _executed[invocation_id] = _Execution(start_ns, attempt)
    span_id = trace.child_id(invocation_id)
    token = step_var.set(StepTrace(trace, span_id, invocation_id))
    # LlamaIndex's span of the step: under the invocation's span, not under its
    # span of the run in this process (which a crash would lose, leaving the
    # exported step spans of the dead process without their parent).
    llama_token = active_span_id.set(None)
    try:
        with current(trace.trace_id, span_id):
            result = await code
    except BaseException as error:
        execution.error = repr(error)
        raise
    finally:
        execution.end_ns = time.time_ns()
        active_span_id.reset(llama_token)
        step_var.reset(token)
    execution.error = _step_failure(result)
    return result


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
        return await _executing(trace, invocation_id, start_ns, attempt, body(*args, **kwargs))

    return traced


def _step_failure(outcome: Any) -> str | None:
    """The failure a step invocation's outcome carries, if any."""
    for output in getattr(outcome, "outputs", None) or []:
        exception = getattr(output, "exception", None)
        if isinstance(exception, BaseException):
            return repr(exception)
    return None
