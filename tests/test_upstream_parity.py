"""A durable workflow behaves like a plain one where upstream's semantics allow it.

Each test runs the same workflow on upstream's plain runtime and `@durable` side by
side (issue #23: gaps found by running LlamaIndex Workflows' own suite on durable
classes), or checks the specific error a durable run raises where durability makes
upstream's behaviour impossible.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import weakref
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS
from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.span import BaseSpan
from llama_index_instrumentation.span_handlers import BaseSpanHandler
from pydantic import BaseModel, Field
from workflows import Context, Workflow, step
from workflows.errors import (
    ContextSerdeError,
    ContextStateError,
    WorkflowCancelledByUser,
    WorkflowRuntimeError,
)
from workflows.events import Event, HumanResponseEvent, StartEvent, StopEvent
from workflows.plugins.basic import BasicRuntime

from dbos_llama import (
    DurableClient,
    RunInputConflictError,
    SnapshotNotDurableError,
    StateWriteOutsideRunError,
    durable,
)
from tests.conftest import read_log, run_driver


class Counter(Workflow):
    """Upstream's own test workflow for state over runs (context preservation)."""

    @step
    async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        count = await ctx.store.get("count", default=0)
        await ctx.store.set("count", count + 1)
        return StopEvent(result=count + 1)


DurableCounter = durable(Counter, name="parity.counter")


class Basket(BaseModel):
    items: list[str] = []


class Fill(Workflow):
    @step
    async def add(self, ctx: Context[Basket], ev: StartEvent) -> StopEvent:
        async with ctx.store.edit_state() as basket:
            basket.items.append(ev.item)
        return StopEvent(result=(await ctx.store.get_state()).items)


DurableFill = durable(Fill, name="parity.fill")


def both(plain: type[Workflow], durable_cls: type[Workflow]) -> list[Workflow]:
    return [plain(timeout=None), durable_cls(timeout=None)]


# -- group 3: state seeded before the run -------------------------------------------


async def test_state_seeded_before_the_run_is_seen_by_its_step(dbos_app: str) -> None:
    for n, wf in enumerate(both(Counter, DurableCounter)):
        ctx: Context = Context(wf)
        await ctx.store.set("count", 10)
        assert await wf.run(ctx=ctx, run_id=f"seed-{n}") == 11


async def test_typed_state_seeded_before_the_run(dbos_app: str) -> None:
    for n, wf in enumerate(both(Fill, DurableFill)):
        ctx: Context[Basket] = Context(wf)
        await ctx.store.set_state(Basket(items=["tea"]))
        assert await wf.run(ctx=ctx, run_id=f"typed-seed-{n}", item="jam") == ["tea", "jam"]
    async with DurableClient(dbos_app) as client:
        assert await client.get_state("typed-seed-1") == Basket(items=["tea", "jam"])


async def test_the_seed_is_recorded_with_the_run_and_only_when_there_is_one(
    dbos_app: str,
) -> None:
    wf = DurableCounter(timeout=None)
    ctx: Context = Context(wf)
    await ctx.store.set("count", 41)
    assert await wf.run(ctx=ctx, run_id="seed-rec") == 42
    # Read from the records by any process: the seed and the step's write.
    async with DurableClient(dbos_app) as client:
        assert await client.get_state("seed-rec") == {"count": 42}
    seeded = await DBOS.get_workflow_status_async("seed-rec")
    assert seeded is not None and seeded.input is not None
    assert seeded.input["kwargs"]["seed_state"]["state_data"]["_data"] == {"count": 41}
    # A run without a seed (or with only the default state) keeps the input shape of
    # earlier releases: no keyword argument.
    fresh: Context = Context(wf)
    assert await fresh.store.get("count", default=None) is None
    assert await wf.run(ctx=fresh, run_id="no-seed") == 1
    plain = await DBOS.get_workflow_status_async("no-seed")
    assert plain is not None and plain.input is not None and plain.input["kwargs"] == {}


async def test_the_handlers_store_is_there_right_after_run(dbos_app: str) -> None:
    for n, wf in enumerate(both(Counter, DurableCounter)):
        ctx: Context = Context(wf)
        await ctx.store.set("count", 5)
        handler = wf.run(ctx=ctx, run_id=f"store-now-{n}")
        assert await handler.ctx.store.get("count") == 5  # before the step ran
        assert await handler == 6
        assert await handler.ctx.store.get("count") == 6


async def test_same_run_id_with_other_seeded_state_is_a_conflict(dbos_app: str) -> None:
    first = DurableCounter(timeout=None)
    ctx: Context = Context(first)
    await ctx.store.set("count", 1)
    assert await first.run(ctx=ctx, run_id="seed-conflict") == 2
    # The same run ID with other state: refused, nothing runs.
    other: Context = Context(first)
    await other.store.set("count", 7)
    with pytest.raises(RunInputConflictError, match="other state"):
        await first.run(ctx=other, run_id="seed-conflict")
    # The same state attaches to the run (its result, not a second execution).
    same: Context = Context(first)
    await same.store.set("count", 1)
    assert await first.run(ctx=same, run_id="seed-conflict") == 2


@pytest.mark.parametrize("crash_at", [None, "tally:one", "tally:two-between", "tally:two-end"])
def test_seeded_state_survives_a_crash(tmp_path: Path, db_url: str, crash_at: str | None) -> None:
    """The seed is part of the run's record: the process that finishes the run after
    the crash is not given it (it only attaches), and the state is still seeded."""
    log = tmp_path / "log"
    seed = {"extra": 100, "count": 100}
    kwargs = {"customer": "ada"}
    first = run_driver(
        db_url,
        "tally",
        "seeded-1",
        kwargs,
        log,
        crash_at=crash_at,
        extra_env={"DBOS_LLAMA_SEED": json.dumps(seed)},
    )
    if crash_at is None:
        done = first
    else:
        assert first.returncode == 137, first.stderr
        done = run_driver(db_url, "tally", "seeded-1", kwargs, log)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.result == {"customer": "ada", "count": 111, "last": "<tally-two>"}


# -- group 6: smaller gaps ----------------------------------------------------------


class Middle(Event):
    pass


class Grows(Workflow):
    @step
    async def entry(self, ctx: Context, ev: StartEvent) -> StopEvent | None:
        if ev.get("more"):
            ctx.send_event(Middle())
            return None
        return StopEvent(result="entry")


class PlainGrows(Grows):
    pass


DurableGrows = durable(Grows, name="parity.grows")


async def test_a_step_added_after_a_run_is_used_by_the_next_run(dbos_app: str) -> None:
    """Upstream's test_validation_cache_invalidated_on_add_step, on both runtimes: an
    instance that already ran uses a step added to its class afterwards."""
    for n, cls in enumerate([PlainGrows, DurableGrows]):
        # (Middle is sent, not returned: upstream's graph check cannot see it.)
        wf = cls(timeout=None, disable_validation=True)
        assert await wf.run(run_id=f"grows-{n}-a") == "entry"

        async def extra(ev: Middle) -> StopEvent:
            return StopEvent(result="extra")

        # A name of its own per test (the classes outlive it: both backends run).
        extra.__name__ = f"extra_{dbos_app.split(':')[0]}"
        step(workflow=cls)(extra)
        assert await wf.run(run_id=f"grows-{n}-b", more=True) == "extra"


# -- group 4: finished workflows are not kept in memory -----------------------------


class Tiny(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        if ev.get("timer"):
            # A long-lived handle snapshots the step's contextvars (as aiohttp's
            # connector cleanup does): it must not pin the workflow.
            HANDLES.append(asyncio.get_running_loop().call_later(3600, lambda: None))
            Context.get_step_context()
        return StopEvent(result="done")


HANDLES: list[asyncio.TimerHandle] = []
DurableTiny = durable(Tiny, name="parity.tiny")


async def _collected(refs: list[weakref.ReferenceType[Workflow]]) -> int:
    """How many of the referenced workflows are still alive after a full collection."""
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    return sum(r() is not None for r in refs)


@pytest.mark.parametrize("timer", [False, True])
async def test_finished_workflows_are_collectable(dbos_app: str, timer: bool) -> None:
    """Upstream's test_workflow_instances_garbage_collected_after_completion and
    test_workflow_not_pinned_by_timer_handle_context, on both runtimes."""
    try:
        for n, cls in enumerate([Tiny, DurableTiny]):
            refs: list[weakref.ReferenceType[Workflow]] = []
            for i in range(5):
                wf = cls(timeout=None)
                refs.append(weakref.ref(wf))
                handler = wf.run(run_id=f"tiny-{timer}-{n}-{i}", timer=timer)
                assert await handler == "done"
                del wf, handler
            assert await _collected(refs) == 0, cls
    finally:
        for handle in HANDLES:
            handle.cancel()
        HANDLES.clear()


async def test_an_instance_on_another_runtime_is_not_kept(dbos_app: str) -> None:
    """An instance of a durable class created with ``runtime=BasicRuntime()`` runs as a
    plain workflow, and is never taken for the class's durable runs."""
    binding = DurableTiny.__dbos_llama_binding__  # type: ignore[attr-defined]
    kept = DurableTiny(timeout=None)
    plain = DurableTiny(timeout=None, runtime=BasicRuntime())
    assert binding.instance is kept
    ref = weakref.ref(plain)
    assert await plain.run(run_id="on-basic") == "done"
    assert await DBOS.get_workflow_status_async("on-basic") is None  # not a DBOS run
    del plain
    assert await _collected([ref]) == 0
    del kept
    gc.collect()
    assert binding.instance is None


class Gate(HumanResponseEvent):
    pass


class Gated(Workflow):
    @step
    async def wait(self, ev: StartEvent | Gate) -> StopEvent | None:
        if isinstance(ev, Gate):
            return StopEvent(result="opened")
        return None


DurableGated = durable(Gated, name="parity.gated")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_deprecated_get_result_and_is_running(dbos_app: str) -> None:
    """``ctx.get_result()`` (deprecated) raises upstream's "is not complete" while the
    run goes on and returns the result after it; ``ctx.is_running`` turns False once
    the handler is awaited."""
    for n, cls in enumerate([Gated, DurableGated]):
        handler = cls(timeout=None).run(run_id=f"gated-{n}")
        await asyncio.sleep(0.2)
        assert handler.ctx.is_running
        with pytest.raises(WorkflowRuntimeError, match="is not complete"):
            handler.ctx.get_result()
        handler.ctx.send_event(Gate(response="open"))
        assert await handler == "opened"
        assert not handler.ctx.is_running, cls
        assert handler.ctx.get_result() == "opened"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_deprecated_hard_cancel_ends_the_run(dbos_app: str) -> None:
    """``handler.cancel()`` (deprecated, upstream's hard cancel) ends a durable run
    CANCELLED: no restart resumes it."""
    handler = DurableGated(timeout=None).run(run_id="gated-abort")
    await asyncio.sleep(0.3)
    handler.cancel()
    for _ in range(100):
        status = await DBOS.get_workflow_status_async("gated-abort")
        if status is not None and status.status == "CANCELLED":
            break
        await asyncio.sleep(0.1)
    assert status is not None and status.status == "CANCELLED"


class SpanTracker(BaseSpanHandler[BaseSpan]):
    """Upstream's test_spans.py tracker: which spans exit, which are dropped."""

    exited: list[str] = Field(default_factory=list)
    dropped: list[tuple[str, str]] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "SpanTracker"

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        return BaseSpan(id_=id_, parent_id=parent_span_id, tags=tags or {})

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        self.exited.append(id_)
        return self.open_spans.get(id_)

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        self.dropped.append((id_, repr(err)))
        return self.open_spans.get(id_)


class Answer(Event):
    value: str


class Asks(Workflow):
    @step
    async def wait_step(self, ctx: Context, ev: StartEvent) -> StopEvent:
        answer = await ctx.wait_for_event(Answer)
        return StopEvent(result=answer.value)


DurableAsks = durable(Asks, name="parity.asks")


async def test_wait_for_event_exits_its_spans_without_dropping(dbos_app: str) -> None:
    """Upstream's test_wait_for_event_does_not_produce_dropped_spans: the waiting step's
    span exits (once for the wait, once for the re-run), none is dropped."""
    for n, cls in enumerate([Asks, DurableAsks]):
        tracker = SpanTracker()
        get_dispatcher().span_handlers.append(tracker)
        try:
            handler = cls(timeout=None).run(run_id=f"asks-{n}")
            await asyncio.sleep(0.3)  # (an event sent before the run waits: group 5)
            handler.ctx.send_event(Answer(value="hello"))
            assert await handler == "hello"
        finally:
            get_dispatcher().span_handlers.remove(tracker)
        assert tracker.dropped == [], cls
        assert len([s for s in tracker.exited if "wait_step" in s]) >= 2
        assert len([s for s in tracker.exited if ".run-" in s]) == 1


# -- groups 1 and 2: context snapshots, and one context over several runs ------------


async def test_sequential_runs_on_one_context_accumulate_state(dbos_app: str) -> None:
    """Upstream's test_sequential_runs_accumulate_state and
    test_store_continuation_with_pre_run_seeding: each run on a finished run's context
    starts from that run's state (a durable one as a new run, seeded with it)."""
    for cls in (Counter, DurableCounter):
        wf = cls(timeout=None)
        ctx: Context = Context(wf)
        assert [await wf.run(ctx=ctx) for _ in range(3)] == [1, 2, 3]
        assert not ctx.is_running
        assert "state" in ctx.to_dict()
        seeded: Context = Context(wf)
        await seeded.store.set("count", 10)
        assert [await wf.run(ctx=seeded) for _ in range(2)] == [11, 12]


async def test_a_context_runs_one_run_at_a_time(dbos_app: str) -> None:
    """Upstream's test_concurrent_runs_same_context_raises."""
    for n, cls in enumerate([Gated, DurableGated]):
        wf = cls(timeout=None)
        ctx: Context = Context(wf)
        handler = wf.run(ctx=ctx, run_id=f"one-at-a-time-{n}")
        await asyncio.sleep(0.2)
        with pytest.raises(ContextStateError, match="already running"):
            wf.run(ctx=ctx)
        handler.ctx.send_event(Gate(response="open"))
        assert await handler == "opened"


async def test_a_saved_snapshot_of_an_ended_run_continues_its_state(dbos_app: str) -> None:
    """Upstream's test_from_dict_then_sequential_runs, with the snapshot saved as JSON:
    a durable snapshot names its run and carries its state; the continuation is a new
    durable run whose input records that state."""
    for n, cls in enumerate([Counter, DurableCounter]):
        wf = cls(timeout=None)
        ctx: Context = Context(wf)
        assert await wf.run(ctx=ctx, run_id=f"snap-end-{n}") == 1
        data = json.loads(json.dumps(ctx.to_dict()))
        assert data["is_running"] is False
        restored: Context = Context.from_dict(cls(timeout=None), data)
        assert await wf.run(ctx=restored, run_id=f"snap-next-{n}") == 2
    state = (await DBOS.get_workflow_status_async("snap-next-1")).input["kwargs"]  # type: ignore[union-attr]
    assert state["seed_state"]["state_data"]["_data"] == {"count": 1}
    assert data["state"]["store_type"] == "dbos_llama" and data["state"]["run_id"] == "snap-end-1"


async def test_a_snapshot_taken_while_the_run_waits_attaches_to_it(dbos_app: str) -> None:
    """Human in the loop, upstream's way: save ``ctx.to_dict()`` while the run waits,
    later ``Context.from_dict`` + ``run(ctx=...)``, send the answer. The durable
    snapshot names the run: the new handler is that run's (no second execution)."""
    wf = DurableGated(timeout=None)
    handler = wf.run(run_id="snap-wait")
    await asyncio.sleep(0.3)
    data = json.loads(json.dumps(handler.ctx.to_dict()))
    assert data["is_running"] is True
    assert data["state"]["run_id"] == "snap-wait"
    restored: Context = Context.from_dict(DurableGated(timeout=None), data)
    resumed = wf.run(ctx=restored)
    assert resumed.run_id == "snap-wait"
    resumed.ctx.send_event(Gate(response="open"))
    assert await resumed == "opened"
    assert await handler == "opened"
    # A snapshot's state is the run's: it is read through the run, not before it.
    with pytest.raises(ContextSerdeError, match="durable state store 'dbos_llama'"):
        Context.from_dict(wf, data).store  # noqa: B018


class Slow(Workflow):
    @step
    async def work(self, ev: StartEvent) -> StopEvent:
        await RELEASES[-1].wait()
        return StopEvent(result="worked")


RELEASES: list[asyncio.Event] = []
DurableSlow = durable(Slow, name="parity.slow")


async def test_running_steps_of_a_durable_run(dbos_app: str) -> None:
    """``ctx.running_steps()`` (upstream's, from the run's ticks) lists the step that
    runs, and none once the run ended."""
    for n, cls in enumerate([Slow, DurableSlow]):
        RELEASES.append(asyncio.Event())  # (one per event loop)
        handler = cls(timeout=None).run(run_id=f"running-steps-{n}")
        await asyncio.sleep(0.3)
        assert await handler.ctx.running_steps() == ["work"], cls
        RELEASES[-1].set()
        assert await handler == "worked"
        assert await handler.ctx.running_steps() == []


async def test_snapshots_a_durable_run_cannot_continue_are_refused(dbos_app: str) -> None:
    """A snapshot of a plain run taken while it ran cannot become a durable run: a
    specific error saying what to do. Its state (a snapshot taken after it ended)
    seeds a new durable run; a durable snapshot on the plain runtime is refused by
    upstream itself."""
    plain = Gated(timeout=None)
    handler = plain.run(run_id="plain-mid")
    await asyncio.sleep(0.2)
    mid = handler.ctx.to_dict()
    handler.ctx.send_event(Gate(response="open"))
    assert await handler == "opened"
    durable_wf = DurableGated(timeout=None)
    with pytest.raises(SnapshotNotDurableError, match="plain .in-memory. runtime"):
        durable_wf.run(ctx=Context.from_dict(durable_wf, mid))
    with pytest.raises(SnapshotNotDurableError, match="without its state"):
        durable_wf.run(ctx=Context.from_dict(durable_wf, {**mid, "state": {}}))
    # A plain run's ended snapshot: its state seeds a new durable run.
    counter = Counter(timeout=None)
    ctx: Context = Context(counter)
    assert await counter.run(ctx=ctx) == 1
    durable_counter = DurableCounter(timeout=None)
    assert await durable_counter.run(ctx=Context.from_dict(durable_counter, ctx.to_dict())) == 2
    # And the other way round.
    dctx: Context = Context(durable_counter)
    assert await durable_counter.run(ctx=dctx) == 1
    with pytest.raises(WorkflowRuntimeError, match="cannot restore durable state store"):
        await counter.run(ctx=Context.from_dict(counter, dctx.to_dict()))


async def test_the_handlers_store_takes_writes_once_the_run_ended(dbos_app: str) -> None:
    """While a durable run runs, only its steps' writes are recorded: a write through
    ``handler.ctx.store`` raises instead of being lost in a crash. Once the run ended
    (in this process), writes change what a continuation of the context starts with."""
    wf = DurableGated(timeout=None)
    ctx: Context = Context(wf)
    handler = wf.run(ctx=ctx, run_id="handler-writes")
    await asyncio.sleep(0.2)
    assert await handler.ctx.store.get("k", default=None) is None  # reads work
    with pytest.raises(StateWriteOutsideRunError, match="only its steps' writes"):
        await handler.ctx.store.set("k", 1)
    handler.ctx.send_event(Gate(response="open"))
    assert await handler == "opened"
    await handler.ctx.store.set("count", 40)
    counter = DurableCounter(timeout=None)
    assert await counter.run(ctx=Context.from_dict(counter, ctx.to_dict())) == 41


def test_a_snapshot_saved_by_a_process_that_is_gone_attaches_to_its_run(
    tmp_path: Path, db_url: str
) -> None:
    """The asking process saves its context snapshot and exits; another process
    restores it (``Context.from_dict`` + ``run(ctx=...)``), answers, and gets the
    result: the run continues from its records, the asking step is not run again."""
    log = tmp_path / "log"
    asked = run_driver(
        db_url,
        "approval",
        "snap-proc",
        {"customer": "ada"},
        log,
        # (One application version for both processes: DBOS recovers only its own.)
        extra_env={"DBOS_LLAMA_EXIT_ON_INPUT": "snapshot", "DBOS_LLAMA_APP_VERSION": "snap"},
    )
    assert asked.returncode == 0, asked.stderr[-3000:]
    line = next(x for x in asked.stdout.splitlines() if x.startswith("SNAPSHOT "))
    data = json.loads(line[len("SNAPSHOT ") :])

    async def answer() -> Any:
        from workflows.events import HumanResponseEvent as Answer

        from tests.conftest import dbos_config
        from tests.flows import Approval

        DBOS(config=dbos_config(db_url, application_version="snap"))
        DBOS.launch()
        try:
            wf = Approval(timeout=None)
            handler = wf.run(ctx=Context.from_dict(wf, data))
            assert handler.run_id == "snap-proc"
            handler.ctx.send_event(Answer(response="yes"))
            return await handler
        finally:
            DBOS.destroy()

    assert asyncio.run(answer()) == "answer=yes"
    assert read_log(log)["step:snap-proc/ask/0"] == 1


async def test_the_handlers_store_of_a_run_executing_elsewhere_reads_its_records(
    tmp_path: Path, dbos_app: str
) -> None:
    """A handler attached to a run this process does not execute reads the run's
    recorded state (its seed here), and refuses writes."""
    from tests.flows import Approval

    asked = await asyncio.to_thread(
        run_driver,
        dbos_app,
        "approval",
        "elsewhere",
        {"customer": "ada"},
        tmp_path / "log",
        extra_env={
            "DBOS_LLAMA_EXIT_ON_INPUT": "1",
            "DBOS_LLAMA_SEED": json.dumps({"note": "seeded"}),
            # (Not this process's version: it does not take the run over.)
            "DBOS_LLAMA_APP_VERSION": "elsewhere",
        },
    )
    assert asked.returncode == 0, asked.stderr[-3000:]
    handler = Approval(timeout=None).run(run_id="elsewhere")
    assert await handler.ctx.store.get("note") == "seeded"
    with pytest.raises(StateWriteOutsideRunError, match="it is running"):
        await handler.ctx.store.set("note", "changed")
    async with DurableClient(dbos_app) as client:
        assert await client.cancel("elsewhere")
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    # Its snapshot names the run without state this process does not hold; a
    # continuation is seeded with the state the run recorded.
    data = json.loads(json.dumps(handler.ctx.to_dict()))
    assert data["state"] == {"store_type": "dbos_llama", "run_id": "elsewhere"}
    counter = DurableCounter(timeout=None)
    restored: Context = Context.from_dict(counter, {**data, "workers": {}})
    assert await counter.run(ctx=restored, run_id="after-elsewhere") == 1
    async with DurableClient(dbos_app) as client:
        assert await client.get_state("after-elsewhere") == {"note": "seeded", "count": 1}
