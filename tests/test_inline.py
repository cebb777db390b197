"""A collecting step's invocations recorded in the run's own workflow (decision rules 4):
one record each instead of a child workflow, with every guarantee of a step invocation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dbos import DBOS, SetWorkflowID
from workflows.events import StartEvent

from dbos_llama import DurableClient
from dbos_llama._registry import binding_of
from tests.conftest import read_log, run_driver, snapshot
from tests.test_crash_recovery import assert_recovered
from tests.test_fanout import ITEMS, RESULT, DurablePipeline, collector_calls


def _names(steps: list) -> list[str]:
    return [s["function_name"] for s in steps]


async def test_a_collecting_step_is_recorded_in_the_run_without_child_workflows(
    dbos_app: str,
) -> None:
    """Five collected events: five `dbos_llama.inline` records in the run, no child
    workflow of the collector; `DurableClient.steps` shows each invocation with its
    output, and a fork from one re-runs it and those after it, not those before."""
    flow = DurablePipeline(timeout=30)
    assert await flow.run(run_id="inline") == RESULT
    assert sorted(collector_calls.pop(id(flow))) == RESULT
    children = await DBOS.list_workflows_async(workflow_id_prefix="inline/collect/")
    assert children == []
    steps = await DBOS.list_workflow_steps_async("inline")
    assert _names(steps).count("dbos_llama.inline") == ITEMS

    client = DurableClient(dbos_app)
    try:
        timeline = await client.steps("inline")
        collects = [s for s in timeline if s.step == "collect"]
        assert [s.status for s in collects] == ["SUCCESS"] * ITEMS
        assert [s.invocation_id for s in collects] == sorted(
            (s.invocation_id for s in collects), key=lambda i: int(i.rsplit("/", 1)[1])
        )
        assert collects[-1].outputs is not None and "StopEvent" in collects[-1].output
        # Fork from the third collector invocation: it and the later ones run again.
        third = collects[2]
        fork = await client.fork("inline", f"collect/{third.number}", new_run_id="inline-fork")
        assert await client.get_result(fork) == RESULT
        again = collector_calls.pop(id(flow))
        assert len(again) == ITEMS - 2, again
    finally:
        client.close()


async def test_a_run_recorded_under_rules_3_keeps_child_workflows(dbos_app: str) -> None:
    """A run recorded by the previous version (decision rules 3) replays as it was
    recorded: its collector invocations are child workflows."""
    binding = binding_of(DurablePipeline)
    earlier = DurablePipeline(timeout=30)  # the instance its run uses
    with SetWorkflowID("rules-3"):
        handle = await DBOS.start_workflow_async(
            binding.run_function, StartEvent(), binding.version, time.time(), 3
        )
    assert (await handle.get_result()).result == RESULT
    assert sorted(collector_calls.pop(id(earlier))) == RESULT
    children = await DBOS.list_workflows_async(workflow_id_prefix="rules-3/collect/")
    assert len(children) == ITEMS
    steps = await DBOS.list_workflow_steps_async("rules-3")
    assert "dbos_llama.inline" not in _names(steps)


PARTS = 6
TOTAL = sum(i * i for i in range(PARTS))


@pytest.mark.parametrize(
    "flow, crash_at",
    [
        ("summarize", "gather:3"),  # killed after its state write, before it returned
        ("summarize", "effect:summary"),  # inside the last invocation's durable call
        ("summarize", "gather:summarized"),  # after that call, before it returned
        # Results sent by the workers: each collector invocation starts beside a new
        # mailbox pull, which takes its IDs before the invocation takes its own.
        ("summarize-sent", "gather:3"),
        ("summarize-sent", "gather:summarized"),
    ],
)
def test_a_collector_killed_mid_invocation_recovers_exactly(
    tmp_path: Path, db_url: str, flow: str, crash_at: str
) -> None:
    """Killed while a collecting step's invocation runs in the run's workflow: the
    completed invocations are taken from their records (never run again), the one in
    flight runs again, its completed `@durable_step` call is replayed (not called
    again) and every state write counts once."""
    log = tmp_path / "effects.log"
    run_id = "gather-1"
    first = run_driver(db_url, flow, run_id, {"n": PARTS}, log, crash_at=crash_at)
    assert first.returncode == 137, first.stderr
    before = snapshot(db_url, run_id)
    second = run_driver(db_url, flow, run_id, {"n": PARTS}, log)
    assert second.returncode == 0, second.stderr
    assert "DBOSUnexpectedStepError" not in second.stderr
    assert "Traceback" not in second.stderr
    # Every state write counted once: the collector saw each part once.
    assert second.result == f"{TOTAL}|{PARTS}|<summary>"
    assert_recovered(
        db_url, run_id, log, before, "tests.flows.effect", lambda out: f"effect:{out.strip('<>')}"
    )
    lines = read_log(log)
    assert lines["effect:summary"] == (2 if crash_at == "effect:summary" else 1)
    after = snapshot(db_url, run_id)
    gathers = sorted(w for w in after.statuses if w.startswith(f"{run_id}/gather/"))
    assert len(gathers) == PARTS, gathers
    executions = [lines[f"step:{w}"] for w in gathers]
    assert sum(executions) == PARTS + 1, executions  # only the one in flight, again


async def test_a_fork_replays_collectors_fed_through_the_mailbox(dbos_app: str) -> None:
    """A fork from the last collector invocation replays every earlier one from its
    record, each started beside a mailbox pull (the workers send their results)."""
    from tests.flows import SummarizeSent

    flow = SummarizeSent(timeout=30)
    expected = f"{TOTAL}|{PARTS}|<summary>"
    assert await flow.run(run_id="sent", n=PARTS) == expected
    client = DurableClient(dbos_app)
    try:
        gathers = [s for s in await client.steps("sent") if s.step == "gather"]
        assert len(gathers) == PARTS
        fork = await client.fork("sent", f"gather/{gathers[-1].number}", new_run_id="sent-fork")
        assert await client.get_result(fork) == expected
    finally:
        client.close()
