"""`tests.driver` with OpenTelemetry on: ``python -m tests.traced_driver DB FLOW RUN_ID JSON``
(``... send DB RUN_ID RESPONSE``: `tests.sender`).

The application's own `TracerProvider` (the real SDK) exports every span as it ends,
one JSON object a line, to the file named by DBOS_LLAMA_SPANS (so the spans of a
process killed by ``os._exit`` are there up to the kill); DBOS's spans are on
(``enable_otlp``, no endpoint: the application's provider).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


def install_provider(path: str) -> None:
    provider = TracerProvider(resource=Resource({"service.name": f"worker-{os.getpid()}"}))
    out = open(path, "a")  # noqa: SIM115 - open for the process's lifetime
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=_one_line))
    )
    trace.set_tracer_provider(provider)
    if os.environ.get("DBOS_LLAMA_OPENINFERENCE"):
        # LlamaIndex's instrumentation as OpenTelemetry spans (Arize's instrumentor).
        from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

        LlamaIndexInstrumentor().instrument(tracer_provider=provider)


if __name__ == "__main__":
    install_provider(os.environ["DBOS_LLAMA_SPANS"])
    os.environ["DBOS_LLAMA_OTLP"] = "1"
    if sys.argv[1] == "send":  # the answer of a human, from a process without the code
        from tests.sender import main as send

        asyncio.run(send(*sys.argv[2:5]))
    else:
        from tests.driver import main

        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
