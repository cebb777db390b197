"""Durable ctx.store: edits of completed steps survive a crash exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from workflows import Context, Workflow, step
from workflows.events import StartEvent, StopEvent

from dbos_llama import DurableClient, StateNotSerializableError, durable
from tests.conftest import kill_then_finish
from tests.flows import Tally

EXPECTED = {"customer": "ada", "count": 11, "last": "<tally-two>"}


@pytest.mark.parametrize("crash_at", [None, "tally:one", "tally:two-between", "tally:two-end"])
def test_state_after_recovery_equals_uninterrupted(
    tmp_path: Path, db_url: str, crash_at: str | None
) -> None:
    log = tmp_path / "log"
    kwargs = {"customer": "ada"}
    done = kill_then_finish(db_url, "tally", "t-1", kwargs, log, crash_at)
    # count is 1 + 10: no edit was applied twice, none was lost.
    assert done.result == EXPECTED


@pytest.mark.parametrize("crash_at", [None, "rw:after-set", "rw:after-call", "rw:after-edit"])
def test_a_rerun_step_reads_what_it_read_before_its_writes(
    tmp_path: Path, db_url: str, crash_at: str | None
) -> None:
    """A step killed after its write re-runs reading the state without that write
    (as the first time), replays the write instead of making it again, and takes the
    same path: the same result and records as an uninterrupted run."""
    log = tmp_path / "log"
    done = kill_then_finish(db_url, "read-then-write", "rw-1", {}, log, crash_at)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DBOSUnexpectedStepError" not in done.stderr
    assert done.result == {"read": 0, "n": 1, "seen": 0}


async def test_a_writer_inside_edit_state_raises() -> None:
    """As with upstream's store: a nested writer is an error, not a deadlock."""
    from workflows.context.state_store import DictState

    from dbos_llama._state import DurableStateStore

    store = DurableStateStore(DictState())
    with pytest.raises(RuntimeError, match="inside edit_state"):
        async with store.edit_state():
            await store.set("x", 1)
    await store.set("x", 2)  # the lock was released
    assert await store.get("x") == 2


async def test_state_readable_by_run_id(dbos_app: str) -> None:
    assert await Tally(timeout=None).run(run_id="t-live", customer="bo") == {
        "customer": "bo",
        "count": 11,
        "last": "<tally-two>",
    }
    async with DurableClient(dbos_app) as client:
        state = await client.get_state("t-live")
    assert state == {"customer": "bo", "count": 11, "last": "<tally-two>"}


class Cart(BaseModel):
    items: list[str] = []
    total: int = 0


@durable
class Shop(Workflow):
    @step
    async def add(self, ctx: Context[Cart], ev: StartEvent) -> StopEvent:
        async with ctx.store.edit_state() as cart:
            cart.items.append(ev.item)
            cart.total += ev.price
        return StopEvent(result=(await ctx.store.get_state()).total)


async def test_typed_state_is_durable_and_readable(dbos_app: str) -> None:
    assert await Shop(timeout=None).run(run_id="shop-1", item="tea", price=3) == 3
    async with DurableClient(dbos_app) as client:
        cart = await client.get_state("shop-1")
    assert isinstance(cart, Cart) and cart == Cart(items=["tea"], total=3)


async def test_a_value_changed_in_place_then_set_is_journaled() -> None:
    """``items = await store.get("k"); items.append(x); await store.set("k", items)``:
    the patch carries the change, so a state rebuilt after a crash has it."""
    from workflows.context.state_store import DictState

    from dbos_llama._context import Invocation
    from dbos_llama._state import DurableStateStore, rebuild_payload

    # A step invocation recorded before writes were checkpoints: journaled only.
    invocation = Invocation("run/step/0", checkpoint_edits=False)
    patches = invocation.state
    store = DurableStateStore(DictState(), lambda: invocation)
    await store.set("items", ["a"])
    items = await store.get("items")
    items.append("b")
    await store.set("items", items)
    rebuilt = DurableStateStore(DictState())
    rebuilt.apply_edits([("", seq, patch) for seq, patch in patches])
    assert await rebuilt.get("items") == ["a", "b"]
    assert rebuild_payload(DurableStateStore(DictState()).payload(), patches) == store.payload()


@durable
class KeepsAFunction(Workflow):
    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("n", 1)
        try:
            await ctx.store.set("f", lambda: 1)
        except StateNotSerializableError as error:
            refused = (str(error), isinstance(error, ValueError))
        return StopEvent(result=(refused, await ctx.store.get("f", default=None)))


async def test_a_value_that_is_not_json_is_refused_at_the_write(dbos_app: str) -> None:
    """Upstream's store keeps any object; a durable run's state is recorded as JSON,
    so ``set`` of a function raises a clear error at the call (a ValueError, as
    upstream's serializer raises) and writes nothing: the run goes on."""
    (message, is_value_error), kept = await KeepsAFunction(timeout=None).run(run_id="fn-1")
    assert "key f" in message and "recorded as JSON" in message and "self" in message
    assert is_value_error and kept is None
    async with DurableClient(dbos_app) as client:
        assert await client.get_state("fn-1") == {"n": 1}
