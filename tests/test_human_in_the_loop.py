"""Human in the loop across processes, and cancellation, on real DBOS."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from workflows.errors import WorkflowCancelledByUser
from workflows.events import HumanResponseEvent, InputRequiredEvent

from dbos_llama import (
    DurableClient,
    EventNotAcceptedError,
    RunFinishedError,
    RunNotFoundError,
)
from tests.conftest import ROOT, read_log, run_driver, snapshot
from tests.flows import Approval, Progress, Streamer, Waiter


def send_from_bare_process(db_url: str, run_id: str, response: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sender", db_url, run_id, response],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_answer_arrives_after_the_asking_process_is_gone(tmp_path: Path, db_url: str) -> None:
    log = tmp_path / "log"
    kwargs = {"customer": "ada"}
    asking = run_driver(
        db_url, "approval", "hitl-1", kwargs, log, extra_env={"DBOS_LLAMA_EXIT_ON_INPUT": "1"}
    )
    assert asking.returncode == 0, asking.stderr
    assert 'ASKED "approve <quote> for ada?"' in asking.stdout
    assert snapshot(db_url, "hitl-1").statuses["hitl-1"] == "PENDING"

    # Later, a process without the workflow's code sends the answer by run ID ...
    out = send_from_bare_process(db_url, "hitl-1", "yes")
    assert "STATUS tests.flows.Approval PENDING" in out
    # ... and a worker with the code resumes the run, which completes.
    worker = run_driver(db_url, "approval", "hitl-1", kwargs, log)
    assert worker.result == "answer=yes"
    lines = read_log(log)
    assert lines["step:hitl-1/ask/0"] == 1  # the asking step did not run again
    assert lines["effect:quote"] == 1
    assert set(snapshot(db_url, "hitl-1").statuses.values()) == {"SUCCESS"}


async def test_answer_while_the_run_is_live(dbos_app: str) -> None:
    handler = Approval(timeout=None).run(run_id="hitl-live", customer="bob")
    async with DurableClient(dbos_app) as client:
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                await client.send_event("hitl-live", HumanResponseEvent(response="ok"))
    assert await handler == "answer=ok"


async def test_handler_send_event_reaches_the_run(dbos_app: str) -> None:
    handler = Approval(timeout=None).run(run_id="hitl-handler", customer="cy")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            await handler.send_event(HumanResponseEvent(response="sure"))
    assert await handler == "answer=sure"


async def test_bad_sends_are_refused_and_write_nothing(dbos_app: str) -> None:
    async with DurableClient(dbos_app) as client:
        with pytest.raises(RunNotFoundError, match="nope"):
            await client.send_event("nope", HumanResponseEvent(response="x"))
        handler = Approval(timeout=None).run(run_id="hitl-bad", customer="dee")
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                with pytest.raises(EventNotAcceptedError, match="Progress"):
                    await client.send_event("hitl-bad", Progress(i=1))
                await client.send_event("hitl-bad", HumanResponseEvent(response="fine"))
        assert await handler == "answer=fine"
        with pytest.raises(RunFinishedError, match="SUCCESS"):
            await client.send_event("hitl-bad", HumanResponseEvent(response="late"))
        assert (await client.get_run("hitl-bad")).status == "SUCCESS"
        assert await client.get_result("hitl-bad") == "answer=fine"


def messages_to(db_url: str, *run_ids: str, envelopes_only: bool = True) -> int:
    """Event envelopes (the JSON outside senders write; every message if not
    ``envelopes_only``) stored in DBOS's notifications table for ``run_ids``, read
    or not."""
    import sqlalchemy as sa

    from dbos_llama._upstream import notifications_table

    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as c:
            query = sa.text(
                f"SELECT COUNT(*) FROM {notifications_table(engine.dialect.name)} "
                "WHERE destination_uuid IN :ids"
                + (" AND message LIKE '%\"dbos_llama\"%'" if envelopes_only else "")
            ).bindparams(sa.bindparam("ids", expanding=True))
            return int(c.execute(query, {"ids": list(run_ids)}).scalar_one())
    finally:
        engine.dispose()


async def waiting(*handlers: object) -> None:
    async def asked(handler) -> None:
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                return

    await asyncio.gather(*(asked(h) for h in handlers))


async def test_send_events_answers_many_runs_all_or_none(dbos_app: str) -> None:
    """`send_events`: one transaction for a batch. A batch with one run that cannot
    take its event (ended, unknown, not accepting it) sends nothing at all; a good
    batch answers every run once."""
    done = Approval(timeout=None).run(run_id="batch-done", customer="x")
    await waiting(done)
    async with DurableClient(dbos_app) as client:
        await client.send_event("batch-done", HumanResponseEvent(response="early"))
        assert await done == "answer=early"
        ids = [f"batch-{i}" for i in range(5)]
        handlers = [Approval(timeout=None).run(run_id=i, customer=i) for i in ids]
        await waiting(*handlers)
        assert messages_to(dbos_app, *ids, "batch-done", "batch-nope") == 1
        answers = [(i, HumanResponseEvent(response=f"ok-{i}")) for i in ids]
        with pytest.raises(RunFinishedError, match="batch-done"):
            await client.send_events([*answers, ("batch-done", HumanResponseEvent(response="x"))])
        with pytest.raises(RunNotFoundError, match="batch-nope"):
            await client.send_events([("batch-nope", HumanResponseEvent(response="x")), *answers])
        with pytest.raises(EventNotAcceptedError, match="Progress"):
            await client.send_events([*answers, (ids[0], Progress(i=1), None)])
        assert messages_to(dbos_app, *ids, "batch-done", "batch-nope") == 1
        await client.send_events(answers)
        assert [await h for h in handlers] == [f"answer=ok-{i}" for i in ids]
        assert messages_to(dbos_app, *ids) == len(ids)
        await client.send_events([])  # nothing to send: no transaction, no error


def assert_cancelled_cleanly(db_url: str, run_id: str) -> None:
    statuses = snapshot(db_url, run_id).statuses
    assert statuses[run_id] == "CANCELLED"
    assert "PENDING" not in statuses.values(), statuses


async def test_handler_cancel_run_ends_cancelled_without_traceback(dbos_app: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    handler = Approval(timeout=None).run(run_id="cancel-1", customer="eve")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            await handler.cancel_run()
            break
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    assert_cancelled_cleanly(dbos_app, "cancel-1")
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_cancel_by_run_id_from_a_client(dbos_app: str) -> None:
    handler = Approval(timeout=None).run(run_id="cancel-2", customer="fay")
    async with DurableClient(dbos_app) as client:
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                assert await client.cancel("cancel-2") is True
                break
        with pytest.raises(WorkflowCancelledByUser):
            await asyncio.wait_for(asyncio.shield(handler), 10)
        assert_cancelled_cleanly(dbos_app, "cancel-2")
        # Cancelling a run that has ended changes nothing.
        assert await client.cancel("cancel-2") is False
        assert await Streamer(timeout=None).run(run_id="done-1") == "<s-one>"
        assert await client.cancel("done-1") is False
        assert (await client.get_run("done-1")).status == "SUCCESS"


def test_cancel_a_waiting_run_nobody_executes(tmp_path: Path, db_url: str) -> None:
    log = tmp_path / "log"
    asking = run_driver(
        db_url,
        "approval",
        "hitl-2",
        {"customer": "h"},
        log,
        extra_env={"DBOS_LLAMA_EXIT_ON_INPUT": "1"},
    )
    assert asking.returncode == 0, asking.stderr

    async def cancel() -> bool:
        async with DurableClient(db_url) as client:
            return await client.cancel("hitl-2")

    assert asyncio.run(cancel()) is True
    assert_cancelled_cleanly(db_url, "hitl-2")
    # A worker started later does not resume it.
    idle = run_driver(
        db_url,
        "approval",
        "-",
        {},
        log,
        extra_env={"DBOS_LLAMA_NO_INSTANCE": "1", "DBOS_LLAMA_LAUNCH_ONLY": "2"},
    )
    assert idle.returncode == 0, idle.stderr
    assert_cancelled_cleanly(db_url, "hitl-2")
    assert read_log(log)["step:hitl-2/decide/1"] == 0


async def test_wait_for_event_does_not_repeat_earlier_calls(
    dbos_app: str, tmp_path, monkeypatch
) -> None:
    log = tmp_path / "log"
    monkeypatch.setenv("DBOS_LLAMA_TEST_LOG", str(log))
    handler = Waiter(timeout=None).run(run_id="wait-1")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            assert event.prefix == "ok with <before-wait>?"
            await handler.send_event(HumanResponseEvent(response="yes"))
    assert await handler == "<before-wait><after-yes>"
    lines = read_log(log)
    assert lines["effect:before-wait"] == 1  # not repeated when the step resumed
    assert lines["effect:after-yes"] == 1
    assert lines["step:wait-1/only/0"] == 1 and lines["step:wait-1/only/1"] == 1


def test_wait_for_event_across_processes(tmp_path: Path, db_url: str) -> None:
    log = tmp_path / "log"
    asking = run_driver(
        db_url, "waiter", "wait-2", {}, log, extra_env={"DBOS_LLAMA_EXIT_ON_INPUT": "1"}
    )
    assert asking.returncode == 0, asking.stderr
    send_from_bare_process(db_url, "wait-2", "later")
    worker = run_driver(db_url, "waiter", "wait-2", {}, log)
    assert worker.result == "<before-wait><after-later>"
    lines = read_log(log)
    assert lines["effect:before-wait"] == 1
    assert lines["effect:after-later"] == 1
