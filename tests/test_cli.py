"""The real ``dbos-llama`` console script, in subprocesses, against real runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbos_llama import DurableClient, RunInfo
from tests.conftest import ROOT, read_log, run_driver, snapshot
from tests.test_crash_recovery import CHAIN_KWARGS, CHAIN_RESULT

SCRIPT = Path(sys.executable).parent / "dbos-llama"
ANSWER = '{"type": "workflows.events.HumanResponseEvent", "data": {"response": "yes"}}'


def cli(
    db: str, *args: str, check: bool = True, cwd: Path = ROOT, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """Run ``dbos-llama`` (the installed console script) with the database in
    $DBOS_LLAMA_DB; the application's classes are importable only from ``ROOT``."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "dbos_llama._cli"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("DBOS_")}
    env.update({"COLUMNS": str(columns)})
    if db:
        env["DBOS_LLAMA_DB"] = db
    proc = subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_json(db: str, *args: str) -> Any:
    return json.loads(cli(db, *args, "--json").stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One SQLite database with real runs: a finished chain, a finished streamer, and
    two approvals waiting for a human (their processes gone)."""
    tmp = tmp_path_factory.mktemp("cli")
    db, log = f"sqlite:///{tmp / 'db.sqlite'}", tmp / "log"
    assert run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log).result == CHAIN_RESULT
    assert run_driver(db, "streamer", "s-1", {}, log).result == "<s-one>"
    asking = {"DBOS_LLAMA_EXIT_ON_INPUT": "1"}
    for run_id in ("hitl-1", "hitl-2"):
        proc = run_driver(db, "approval", run_id, {"customer": "ada"}, log, extra_env=asking)
        assert proc.returncode == 0, proc.stderr
    return db, log


def test_list_shows_runs_newest_first_with_filters(runs: tuple[str, Path]) -> None:
    db, _ = runs
    table = cli(db, "runs", "list").stdout
    for run_id in ("order-1", "s-1", "hitl-1", "hitl-2"):
        assert run_id in table
    assert "tests.flows.Chain3" in table and "SUCCESS" in table and "PENDING" in table

    listed = cli_json(db, "runs", "list")
    created = [r["created_at"] for r in listed]
    assert created == sorted(created, reverse=True)
    # (hitl-1 is ENQUEUED: the process that made hitl-2 queued it for recovery, then exited)
    waiting = cli_json(
        db,
        "runs",
        "list",
        "-s",
        "pending",
        "-s",
        "enqueued",
        "-w",
        "tests.flows.Approval",
        "--since",
        "1h",
    )
    assert {r["run_id"] for r in waiting} == {"hitl-1", "hitl-2"}
    assert all(r["version"] and r["waiting_for_version"] is None for r in waiting)


def test_show_gives_the_step_timeline_with_durable_calls(runs: tuple[str, Path]) -> None:
    db, _ = runs
    shown = cli_json(db, "runs", "show", "order-1")
    assert shown["status"] == "SUCCESS" and shown["workflow"] == "tests.flows.Chain3"
    steps = shown["steps"]
    assert [s["step"] for s in steps] == ["one", "two", "three"]
    assert [s["invocation_id"] for s in steps] == [
        f"order-1/{n}" for n in ("one/0", "two/1", "three/2")
    ]
    assert all(s["status"] == "SUCCESS" and s["duration"] is not None for s in steps)
    assert steps[1]["outputs"] == [
        {"type": "tests.flows.TwoDone", "data": {"acc": "<one:a><two-a><two-b>"}}
    ]
    assert [(c["name"], c["output"]) for c in steps[1]["calls"]] == [
        ("tests.flows.effect", "<two-a>"),
        ("tests.flows.effect", "<two-b>"),
    ]
    assert all(s["attempts"] == 1 and not s["reexecuted"] for s in steps)
    table = cli(db, "runs", "show", "order-1").stdout
    assert "└ tests.flows.effect" in table and "three" in table


def test_events_lists_the_stored_stream(runs: tuple[str, Path]) -> None:
    db, _ = runs
    events = cli_json(db, "runs", "events", "s-1")
    assert [e["offset"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["data"].get("i") for e in events[:4]] == [0, 1, 2, 3]
    assert events[-1]["type"] == "workflows.events.StopEvent"
    # Without the application's code (tests.flows not importable), values of its
    # classes are reported as unreadable, and the others still shown.
    elsewhere = Path(db[len("sqlite:///") :]).parent
    lines = cli(db, "runs", "events", "s-1", "--offset", "3", cwd=elsewhere).stdout.splitlines()
    assert lines == [
        "   3  ? not readable here (ModuleNotFoundError: No module named 'tests')",
        '   4  workflows.events.StopEvent {"result": "<s-one>"}',
    ]


def test_send_answers_a_waiting_run_while_events_follow(runs: tuple[str, Path]) -> None:
    db, log = runs
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "dbos_llama._cli"]
    env = {**os.environ, "DBOS_LLAMA_DB": db, "PYTHONPATH": str(ROOT)}
    follower = subprocess.Popen(
        [*command, "runs", "events", "hitl-1", "--follow", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        bad = cli(db, "runs", "send", "hitl-1", '{"type": "nowhere.Nothing"}', check=False)
        assert bad.returncode == 1 and "Cannot import module 'nowhere'" in bad.stderr
        sent = cli(db, "runs", "send", "hitl-1", ANSWER).stdout
        assert "Sent workflows.events.HumanResponseEvent to run hitl-1" in sent
        # A worker with the code resumes the run with the answer.
        worker = run_driver(db, "approval", "hitl-1", {"customer": "ada"}, log)
        assert worker.result == "answer=yes"
        followed, errors = follower.communicate(timeout=30)
    finally:
        follower.kill()
    streamed = [json.loads(line) for line in followed.splitlines()]
    assert [e["type"] for e in streamed] == [
        "workflows.events.InputRequiredEvent",
        "workflows.events.StopEvent",
    ], errors
    assert streamed[-1]["data"] == {"result": "answer=yes"}
    assert read_log(log)["step:hitl-1/ask/0"] == 1


def test_cancel_then_resume(runs: tuple[str, Path]) -> None:
    db, _ = runs
    assert cli_json(db, "runs", "cancel", "hitl-2") == {
        "run_id": "hitl-2",
        "cancelled": True,
        "status": "CANCELLED",
    }
    again = cli(db, "runs", "cancel", "hitl-2").stdout
    assert "had already ended (CANCELLED): nothing changed" in again
    resumed = cli_json(db, "runs", "resume", "hitl-2")
    assert resumed["status"] in ("ENQUEUED", "PENDING")


def test_fork_reexecutes_from_the_step_and_leaves_the_original(runs: tuple[str, Path]) -> None:
    db, log = runs
    before = snapshot(db, "order-1").statuses
    executed = read_log(log)
    forked = cli_json(db, "runs", "fork", "order-1", "--from-step", "two", "--run-id", "o1-fork")
    assert forked["run_id"] == "o1-fork" and forked["from_step"] == "two"
    # A worker with the code runs the fork (this process attaches to it by ID).
    assert run_driver(db, "chain3", "o1-fork", CHAIN_KWARGS, log).result == CHAIN_RESULT
    now = read_log(log)
    assert now["effect:one:a"] == executed["effect:one:a"] == 1  # step one was reused
    assert now["effect:two-a"] - executed["effect:two-a"] == 1  # steps two and three ran
    assert now["effect:two-b"] - executed["effect:two-b"] == 1
    assert now["effect:three"] - executed["effect:three"] == 1
    assert now["step:o1-fork/two/1"] == now["step:o1-fork/three/2"] == 1
    assert now["step:o1-fork/one/0"] == 0

    shown = cli_json(db, "runs", "show", "o1-fork")
    assert shown["forked_from"] == "order-1" and shown["forked_from_step"] == "two"
    assert [(s["invocation_id"], s["reused"]) for s in shown["steps"]] == [
        ("order-1/one/0", True),
        ("o1-fork/two/1", False),
        ("o1-fork/three/2", False),
    ]
    # The original is untouched: same workflows, same statuses.
    after = {k: v for k, v in snapshot(db, "order-1").statuses.items() if "fork" not in k}
    assert after == before

    unknown = cli(db, "runs", "fork", "order-1", "--from-step", "nine", check=False)
    assert unknown.returncode == 1
    assert "has no recorded invocation of step 'nine'" in unknown.stderr
    assert "one, three, two" in unknown.stderr and "Traceback" not in unknown.stderr


def test_changed_step_code_is_not_replayed_then_fork_or_old_worker(tmp_path: Path) -> None:
    db, log = f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "log"
    v2 = {"DBOS_LLAMA_EVOLVING": "tests.evolving_v2"}
    crashed = run_driver(db, "evolving", "ev-1", {}, log, crash_at="evolving:two")
    assert crashed.returncode == 137
    # A deploy with step two edited: the run is recovered, but not replayed.
    held = run_driver(db, "evolving", "-", {}, log, extra_env={**v2, "DBOS_LLAMA_LAUNCH_ONLY": "3"})
    assert held.returncode == 0, held.stderr
    assert "'ev-1' of durable workflow 'tests.evolving' was recorded by code version" in (
        held.stderr
    )
    assert read_log(log)["effect:ev-two-v2"] == 0
    assert snapshot(db, "ev-1").statuses["ev-1"] == "PENDING"

    (run,) = cli_json(db, "runs", "list", "--workflow", "tests.evolving")
    old, new = run["version"], run["held_by_version"]
    assert run["status"] == "PENDING" and run["waiting_for_version"] == old and new != old
    (listed,) = [line for line in cli(db, "runs", "list").stdout.splitlines() if "ev-1" in line]
    assert "PENDING (waiting for its version)" in listed and old in listed

    # Way on 1: fork onto the new code; the new worker finishes the fork.
    cli(db, "runs", "fork", "ev-1", "--from-step", "two", "--version", new, "--run-id", "ev-2")
    done = run_driver(db, "evolving", "ev-2", {}, log, extra_env=v2)
    assert done.result == "<ev-one><ev-two-v2><ev-three>"
    # Way on 2: a worker still running the old code finishes the original.
    old_worker = run_driver(db, "evolving", "ev-1", {}, log)
    assert old_worker.result == "<ev-one><ev-two-v1><ev-three>"
    lines = read_log(log)
    assert lines["effect:ev-one"] == 1  # step one ran once; the fork reused it
    assert lines["effect:ev-two-v2"] == 1

    async def original() -> RunInfo:
        async with DurableClient(db) as client:
            return await client.get_run("ev-1")

    finished = asyncio.run(original())
    assert finished.status == "SUCCESS" and finished.held_by_version is None


def test_fork_and_show_on_postgres(pg_database, tmp_path: Path) -> None:
    db, log = pg_database(), tmp_path / "log"
    assert run_driver(db, "chain3", "pg-1", CHAIN_KWARGS, log).result == CHAIN_RESULT
    cli(db, "runs", "fork", "pg-1", "--from-step", "three", "--run-id", "pg-2")
    assert run_driver(db, "chain3", "pg-2", CHAIN_KWARGS, log).result == CHAIN_RESULT
    shown = cli_json(db, "runs", "show", "pg-2")
    assert [(s["step"], s["reused"]) for s in shown["steps"]] == [
        ("one", True),
        ("two", True),
        ("three", False),
    ]
    lines = read_log(log)
    assert lines["effect:two-a"] == 1 and lines["effect:three"] == 2
