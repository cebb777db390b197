"""The private upstream names in `dbos_llama._upstream`: each fails loudly here when a
release of llama-index-workflows or DBOS changes it (instead of silently at runtime)."""

from __future__ import annotations

import copy
import typing

from dbos import DBOS, SetWorkflowID
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent
from workflows.runtime.types.results import AddWaiter
from workflows.runtime.types.ticks import TickAddEvent, TickStepResult

from dbos_llama import JsonDataSerializer
from dbos_llama import _upstream as up
from tests.conftest import dbos_config


class Asked(Event):
    text: str


class _Plain(Workflow):
    @step
    async def first(self, ctx: Context, ev: StartEvent) -> Asked:
        return Asked(text="q")

    @step
    async def second(self, ev: Asked) -> StopEvent:
        return StopEvent(result=ev.text)


def test_class_step_names_and_accepted_events() -> None:
    assert up.class_step_names(_Plain) == ["first", "second"]
    accepted = up.class_accepted_events(_Plain)
    assert StartEvent in accepted and Asked in accepted


def test_step_source_is_the_step_code() -> None:
    assert "return Asked(text=" in up.step_source(_Plain, "first")


def test_tick_types_include_the_ticks_the_mailbox_takes() -> None:
    assert TickAddEvent in up.TICK_TYPES and TickStepResult in up.TICK_TYPES
    assert len(up.TICK_TYPES) == len(typing.get_args(typing.get_args(up.WorkflowTick)[0]))


def test_awaited_event_types_read_add_waiter() -> None:
    waiter = AddWaiter(waiter_id="w", requirements={}, timeout=None, event_type=Asked)
    assert up.awaited_event_types([waiter]) == [Asked]


def test_step_functions_of_a_class_are_copied() -> None:
    class Target(Workflow):
        pass

    up.copy_step_functions(_Plain, Target)
    assert Target._step_functions == _Plain._step_functions


def test_add_step_bumps_the_step_functions_version() -> None:
    class Growing(Workflow):
        @step
        async def entry(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    before = up.step_functions_version(Growing)

    @step(workflow=Growing)
    async def more(ev: StartEvent) -> StopEvent:
        return StopEvent()

    assert up.step_functions_version(Growing) == before + 1


def test_a_start_event_placeholder_is_of_the_workflows_start_event_class() -> None:
    class Needs(StartEvent):
        topic: str

    class Asks(Workflow):
        @step
        async def entry(self, ev: Needs) -> StopEvent:
            return StopEvent()

    placeholder = up.start_event_placeholder(Asks())
    assert type(placeholder) is Needs  # built without its required field


def test_dbos_serializer_is_found(tmp_path) -> None:
    serializer = JsonDataSerializer()
    DBOS(config=dbos_config(f"sqlite:///{tmp_path / 'db.sqlite'}", serializer=serializer))
    try:
        assert up.dbos_serializer() is serializer
    finally:
        DBOS.destroy()


def test_system_database_url_is_found(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    DBOS(config=dbos_config(url))
    try:
        assert up.system_database_url() == url
    finally:
        DBOS.destroy()
    assert up.system_database_url() is None


def test_dbos_launched_follows_launch_and_destroy(tmp_path) -> None:
    DBOS(config=dbos_config(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    try:
        assert up.dbos_launched() is False
        DBOS.launch()
        assert up.dbos_launched() is True
    finally:
        DBOS.destroy()
    assert up.dbos_launched() is False


async def test_current_function_id_counts_a_workflows_operations(tmp_path) -> None:
    seen: list[int | None] = []

    @DBOS.step(name="seam-fid-step")
    async def one() -> int:
        return 1

    @DBOS.workflow(name="seam-fid")
    async def counted() -> None:
        seen.append(up.current_function_id())
        await one()
        seen.append(up.current_function_id())
        await one()
        seen.append(up.current_function_id())

    DBOS(config=dbos_config(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    DBOS.launch()
    try:
        assert up.current_function_id() is None  # outside any workflow
        await counted()
    finally:
        DBOS.destroy()
    first, second, third = seen
    assert first is not None and second == first + 1 and third == first + 2


async def test_a_pending_message_is_seen_in_dbos_notifications(db_url: str) -> None:
    """`has_pending_message` reads DBOS's ``notifications`` table (no public peek):
    a message sent and not received yet is seen; once received, it is not."""
    import sqlalchemy as sa

    url = db_url
    backend = "sqlite" if url.startswith("sqlite") else "postgres"

    @DBOS.workflow(name=f"seam-recv-{backend}")
    async def receiver() -> object:
        return await DBOS.recv_async("topic", timeout_seconds=30)

    DBOS(config=dbos_config(url))
    DBOS.launch()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with SetWorkflowID("seam-recv"):
            handle = await DBOS.start_workflow_async(receiver)
        assert up.has_pending_message(engine, "seam-recv", "topic") is False
        await DBOS.send_async("seam-recv", "hello", "topic")
        # Received at once by the live receiver: wait for its result, then it is consumed.
        assert await handle.get_result() == "hello"
        assert up.has_pending_message(engine, "seam-recv", "topic") is False
        with SetWorkflowID("seam-quiet"):
            await DBOS.start_workflow_async(receiver)
        await DBOS.cancel_workflow_async("seam-quiet")
        await DBOS.send_async("seam-quiet", "unread", "topic")
        assert up.has_pending_message(engine, "seam-quiet", "topic") is True
        assert up.has_pending_message(engine, "seam-quiet", "other") is False
    finally:
        engine.dispose()
        DBOS.destroy()


async def test_a_workflow_reads_in_dbos_workflow_status(db_url: str) -> None:
    """`workflow_status_table` names DBOS's table of workflows, with the columns a
    send reads in its transaction (``workflow_uuid``, ``status``, ``name``)."""
    import sqlalchemy as sa

    url = db_url
    backend = "sqlite" if url.startswith("sqlite") else "postgres"

    @DBOS.workflow(name=f"seam-status-{backend}")
    async def finished() -> str:
        return "done"

    DBOS(config=dbos_config(url))
    DBOS.launch()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with SetWorkflowID("seam-status"):
            await (await DBOS.start_workflow_async(finished)).get_result()
        table = up.workflow_status_table(engine.dialect.name)
        with engine.connect() as c:
            row = c.execute(
                sa.text(f"SELECT status, name FROM {table} WHERE workflow_uuid = :id"),
                {"id": "seam-status"},
            ).one()
        assert tuple(row) == ("SUCCESS", f"seam-status-{backend}")
    finally:
        engine.dispose()
        DBOS.destroy()


# -- llama-agents-server (the `server` extra) ---------------------------------------------
def test_the_server_tags_a_start_with_its_handler_id() -> None:
    """`WorkflowServer` starts a run inside ``instrument_tags({"llamaindex.handler_id":
    ...})``; `server_handler_id` reads that tag."""
    import inspect

    from llama_agents.server._service import _WorkflowService
    from llama_index_instrumentation.dispatcher import instrument_tags

    assert '"llamaindex.handler_id": handler_id' in inspect.getsource(
        _WorkflowService.start_workflow
    )
    assert up.server_handler_id() is None
    with instrument_tags({"llamaindex.handler_id": "h-7"}):
        assert up.server_handler_id() == "h-7"


def test_runtime_chain_walks_upstream_decorators() -> None:
    from llama_agents.server import MemoryWorkflowStore
    from llama_agents.server._runtime.server_runtime import ServerRuntimeDecorator
    from workflows.plugins.basic import BasicRuntime

    inner = BasicRuntime()
    outer = ServerRuntimeDecorator(inner, store=MemoryWorkflowStore())
    assert up.runtime_chain(outer) == [outer, inner]


def test_workflow_switch_runtime_is_what_add_workflow_calls() -> None:
    import inspect

    from llama_agents.server._service import _WorkflowService

    assert callable(getattr(Workflow, up.SWITCH_RUNTIME))
    assert f"workflow.{up.SWITCH_RUNTIME}(" in inspect.getsource(_WorkflowService.add_workflow)


def test_server_store_classes_are_where_we_import_them() -> None:
    from llama_agents.server import AbstractWorkflowStore

    assert issubclass(up.postgres_workflow_store_class(), AbstractWorkflowStore)
    fields = up.stored_event_class().model_fields
    assert list(fields) == ["run_id", "sequence", "timestamp", "event"]


def test_the_debugger_page_loads_the_package_we_serve_locally() -> None:
    from dbos_llama.server import DEBUGGER_CDN_PREFIX, _debugger_page

    assert DEBUGGER_CDN_PREFIX + "app.js" in _debugger_page()


def test_an_sdk_tracer_copy_takes_its_span_ids_from_its_id_generator() -> None:
    """`_otel.emit`'s seam (public attributes of the OpenTelemetry SDK): a copy of
    an SDK tracer with another ``id_generator`` emits the IDs it hands out, into the
    provider's processors; the provider itself is not changed."""
    import pytest

    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import context as otel_context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dbos_llama import _otel

    provider = TracerProvider()
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("seam")
    copied = copy.copy(tracer)
    copied.id_generator = _otel.FixedIds(0xABC, 0xDEF)
    copied.start_span("known", context=otel_context.Context()).end()
    tracer.start_span("random", context=otel_context.Context()).end()
    known, other = exported.get_finished_spans()
    assert (known.context.trace_id, known.context.span_id) == (0xABC, 0xDEF)
    assert other.context.span_id != 0xDEF and provider.id_generator is tracer.id_generator


def test_llama_instrumentation_parent_is_a_context_variable() -> None:
    """`_tracing.traced_step_body` clears LlamaIndex's current span ID so a step's
    span is not parented to the run's span of one process: the context variable that
    upstream's step function reads."""
    from llama_index_instrumentation.span import active_span_id
    from workflows.runtime.types import step_function

    assert step_function.active_span_id is active_span_id


async def test_a_child_workflows_result_is_recorded_as_get_result(tmp_path) -> None:
    """`_tracing` tells a step result taken before a crash by the parent's
    ``GET_RESULT_STEP`` row for the child."""

    @DBOS.workflow(name="seam-child")
    async def child() -> int:
        return 7

    @DBOS.workflow(name="seam-parent")
    async def parent() -> int:
        with SetWorkflowID("seam-parent/child"):
            return await child()

    DBOS(config=dbos_config(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    DBOS.launch()
    try:
        with SetWorkflowID("seam-parent"):
            assert await parent() == 7
        steps = await DBOS.list_workflow_steps_async("seam-parent")
    finally:
        DBOS.destroy()
    rows = [(s["function_name"], s["child_workflow_id"]) for s in steps]
    assert (up.GET_RESULT_STEP, "seam-parent/child") in rows


def test_a_class_state_type_is_what_upstream_infers_from_an_instance() -> None:
    """`class_state_type` hands upstream's `infer_state_type` the class's steps through
    ``_get_steps`` (the name it reads): the same answer as for an instance, without one."""
    from workflows.context.state_store import DictState, infer_state_type

    from dbos_llama._upstream import class_state_type
    from tests.test_state import Shop

    assert class_state_type(Shop) is infer_state_type(Shop()) is not DictState
    assert class_state_type(Workflow) is DictState
