"""A durable workflow behaves like a plain one where upstream's semantics allow it.

Each test runs the same workflow on upstream's plain runtime and `@durable` side by
side (issue #23: gaps found by running LlamaIndex Workflows' own suite on durable
classes), or checks the specific error a durable run raises where durability makes
upstream's behaviour impossible.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dbos import DBOS
from pydantic import BaseModel
from workflows import Context, Workflow, step
from workflows.events import StartEvent, StopEvent

from dbos_llama import DurableClient, RunInputConflictError, durable
from tests.conftest import run_driver


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
