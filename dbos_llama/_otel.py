"""OpenTelemetry plumbing: whether tracing is on, a run's recorded trace, spans with known IDs."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from . import _naming

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
OI_KIND = "openinference.span.kind"
#: At most this many runs' trace contexts are kept per process.
CACHE_LIMIT = 4096


def random_id(bits: int) -> int:
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


def on() -> bool:
    """Whether tracing was found on (`enabled`) before: the hooks' first check."""
    return _on


@dataclass
class StepTrace:
    """The step invocation whose code runs: its run's trace and its span."""

    run: RunTrace
    span_id: int
    invocation_id: str


step_var: ContextVar[StepTrace | None] = ContextVar("dbos_llama_step_trace", default=None)


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


class FixedIds:
    """An OpenTelemetry SDK id generator handing out one known span (and trace) ID."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id, self.span_id = trace_id, span_id

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def is_trace_id_random(self) -> bool:
        return True


def span_context(trace_id: int, span_id: int, remote: bool = False) -> Any:
    from opentelemetry import trace as api

    sampled = api.TraceFlags(api.TraceFlags.SAMPLED)
    return api.SpanContext(trace_id, span_id, is_remote=remote, trace_flags=sampled)


def context_of(trace_id: int, span_id: int) -> Any:
    """An OpenTelemetry context whose current span is (trace_id, span_id)."""
    from opentelemetry import trace as api

    return api.set_span_in_context(api.NonRecordingSpan(span_context(trace_id, span_id)))


@contextlib.contextmanager
def current(trace_id: int, span_id: int) -> Iterator[None]:
    """Make the span (trace_id, span_id) current: spans begun meanwhile (DBOS's,
    LlamaIndex instrumentation's, the application's) are its children."""
    from opentelemetry import context as otel_context

    token = otel_context.attach(context_of(trace_id, span_id))
    try:
        yield
    finally:
        otel_context.detach(token)


def emit(
    name: str,
    trace_id: int,
    span_id: int,
    parent_id: int | None,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any],
    events: list[tuple[str, dict[str, Any], int]] | None = None,
    error: str | None = None,
    links: list[Any] | None = None,
) -> None:
    """Export one finished span with a known ID (any process can emit a run's span
    or a step invocation's, whose ID its children already carry)."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace as api

    tracer = copy.copy(_tracer)
    tracer.id_generator = FixedIds(trace_id, span_id)
    parent = (
        otel_context.Context()
        if parent_id is None
        else api.set_span_in_context(api.NonRecordingSpan(span_context(trace_id, parent_id, True)))
    )
    span = tracer.start_span(
        name, context=parent, start_time=start_ns, attributes=attributes, links=links or ()
    )
    for event, event_attributes, at in events or []:
        span.add_event(event, event_attributes, timestamp=at)
    if error is None:
        span.set_status(api.Status(api.StatusCode.OK))
    else:
        span.set_status(api.Status(api.StatusCode.ERROR, error))
    span.end(end_time=max(end_ns, start_ns))


def forked_trace(attributes: dict[str, Any] | None) -> dict[str, Any]:
    """The trace attribute of a fork of a run recorded with ``attributes`` (DBOS
    copies them): the original's trace, with the fork's own run span under the
    original's; {} for a run recorded without one (the fork gets one when executed)."""
    original = RunTrace.from_record((attributes or {}).get(_naming.TRACE_ATTR))
    if original is None:
        return {}
    fork = RunTrace(original.trace_id, random_id(64), original.span_id, time.time_ns())
    return {_naming.TRACE_ATTR: fork.record()}
