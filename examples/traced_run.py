"""One OpenTelemetry trace for a durable run that is killed and finished by a restart.

Run a trace backend that takes OTLP over HTTP (Arize Phoenix: ``pip install
arize-phoenix && phoenix serve``; Jaeger; Langfuse; an OpenTelemetry Collector), then:

    pip install -e ".[otel]"
    python examples/traced_run.py    # OTLP_TRACES_URL, default http://127.0.0.1:6006/v1/traces

As examples/crash_and_recover.py: the first child process runs order-42 and dies in
the middle of step ``review``; the second (the restarted application) finishes it.
Both export their spans to the backend, where order-42 is one trace: the run's span,
a span per step invocation (``review`` once, attempt 2, marked recovered), a span per
external call (the one the restart replayed from the record marked replayed, without
duration), DBOS's workflow and step spans inside them.
"""

from __future__ import annotations

import asyncio
import os

import _path  # noqa: F401  # makes examples.flows importable
from _restart import print_ledger, run_killed_then_restarted
from dbos import DBOS
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from examples.flows.orders import Orders

ENDPOINT = os.environ.get("OTLP_TRACES_URL", "http://127.0.0.1:6006/v1/traces")


async def app(db_url: str) -> None:
    """The application: its TracerProvider, then DBOS, the workflow, launch, run."""
    provider = TracerProvider(resource=Resource({"service.name": "orders-app"}))
    # Each span is sent as it ends, so a process that dies has sent its spans up to
    # then (a BatchSpanProcessor, for throughput, loses those it had not sent yet).
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=ENDPOINT)))
    trace.set_tracer_provider(provider)

    orders = Orders(timeout=None)
    DBOS(
        config={
            "name": "orders-app",
            "system_database_url": db_url,
            "log_level": "ERROR",  # (enable_otlp warns that no OTel logger is set)
            "enable_otlp": True,  # DBOS's own spans, to the provider above
        }
    )
    DBOS.launch()  # resumes order-42 after the crash: its spans join the run's trace
    try:
        result = await orders.run(run_id="order-42", order="order-42")
        print(f"  result: {result}", flush=True)
    finally:
        DBOS.destroy()
        provider.shutdown()


def main() -> None:
    ledger = run_killed_then_restarted(
        __file__,
        "traced.sqlite",
        first="runs order-42 and is killed mid-run",
        second="DBOS.launch() resumes order-42, in the same trace",
    )
    print_ledger(ledger, "External calls executed")
    print(f"The trace of order-42 is at the backend behind {ENDPOINT}.")


if __name__ == "__main__":
    if "EXAMPLE_APP" in os.environ:
        asyncio.run(app(os.environ["EXAMPLE_APP"]))
    else:
        main()
