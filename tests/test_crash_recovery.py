"""Guarantees 1-3 and 7: kill a real process at chosen points, recover in a new one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import read_log, run_driver, snapshot

CHAIN_KWARGS = {"x": "a"}
CHAIN_RESULT = "<one:a><two-a><two-b><three>"

CHAIN_CRASH_POINTS = [
    "one:start",  # before any work
    "two:start",  # boundary 1|2
    "effect:two-a",  # inside step 2's first external call, after its side effect
    "two:between",  # between the two @durable_step calls of step 2
    "two:end",  # step 2 done with its calls, not yet returned
    "three:start",  # boundary 2|3
    "three:end",  # last step's work done, run not finished
]


def assert_recovered(db_url: str, run_id: str, log: Path, before, call: str, key) -> None:
    """Completed calls and completed steps recorded before the crash ran exactly once."""
    after = snapshot(db_url, run_id)
    lines = read_log(log)
    assert after.statuses[run_id] == "SUCCESS"
    assert "PENDING" not in after.statuses.values(), after.statuses
    for invocation in before.succeeded_invocations():
        assert lines[f"step:{invocation}"] == 1, f"completed step {invocation} re-ran"
    for name, outputs in before.completed_calls.items():
        if name != call:
            continue
        for output in outputs:
            line = key(output)
            assert lines[line] == 1, f"completed call {line} executed {lines[line]} times"


@pytest.mark.parametrize("crash_at", CHAIN_CRASH_POINTS)
def test_chain_survives_kill(tmp_path: Path, db_url: str, crash_at: str) -> None:
    db = db_url
    log = tmp_path / "effects.log"
    first = run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log, crash_at=crash_at)
    assert first.returncode == 137, first.stderr
    assert read_log(log)[f"crash:{crash_at}"] == 1
    before = snapshot(db, "order-1")
    assert before.statuses["order-1"] == "PENDING"

    second = run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log)
    assert second.returncode == 0, second.stderr
    assert second.result == CHAIN_RESULT
    assert "Traceback" not in second.stderr
    assert_recovered(
        db, "order-1", log, before, "tests.flows.effect", lambda out: f"effect:{out.strip('<>')}"
    )
    lines = read_log(log)
    # Every external call ran at least once; only the one in flight may repeat.
    for tag in ["one:a", "two-a", "two-b", "three"]:
        assert 1 <= lines[f"effect:{tag}"] <= (2 if crash_at == f"effect:{tag}" else 1)


def test_uninterrupted_chain_runs_each_step_once(tmp_path: Path, db_url: str) -> None:
    db = db_url
    log = tmp_path / "effects.log"
    run = run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log)
    assert run.result == CHAIN_RESULT
    assert "Traceback" not in run.stderr
    lines = read_log(log)
    assert [lines[f"effect:{t}"] for t in ["one:a", "two-a", "two-b", "three"]] == [1, 1, 1, 1]
    assert sum(v for k, v in lines.items() if k.startswith("step:")) == 3
    statuses = snapshot(db, "order-1").statuses
    assert statuses == {
        "order-1": "SUCCESS",
        "order-1/one/0": "SUCCESS",
        "order-1/two/1": "SUCCESS",
        "order-1/three/2": "SUCCESS",
    }


FAN_N = 8
FAN_RESULT = sum(i * i for i in range(FAN_N))


@pytest.mark.parametrize(
    "flow, crash_at, repeat",
    [
        *[
            ("fanout", crash_at, repeat)
            for crash_at in ("fan:sent", "work:2", "work:5", "collect:all")
            # (fan:sent: the sends held by the fan step, not yet carried)
            for repeat in range(2)
        ],
        ("trickle", "trickle:sent-3", 0),  # 3 events sent as messages, the 4th held
        ("trickle", "work:5", 0),  # a worker killed while the fan step still sends
    ],
)
def test_fan_out_survives_kill(
    tmp_path: Path, db_url: str, flow: str, crash_at: str, repeat: int
) -> None:
    db = db_url
    log = tmp_path / "effects.log"
    first = run_driver(db, flow, "fan-1", {"n": FAN_N}, log, crash_at=crash_at)
    assert first.returncode == 137, first.stderr
    before = snapshot(db, "fan-1")

    second = run_driver(db, flow, "fan-1", {"n": FAN_N}, log)
    assert second.returncode == 0, second.stderr
    assert second.result == FAN_RESULT
    assert "DBOSUnexpectedStepError" not in second.stderr
    assert "Traceback" not in second.stderr
    assert_recovered(
        db, "fan-1", log, before, "tests.flows.square", lambda out: f"square:{math.isqrt(out)}"
    )
    lines = read_log(log)
    # Every item squared at least once; at most the four in flight ran twice.
    counts = [lines[f"square:{i}"] for i in range(FAN_N)]
    assert all(c >= 1 for c in counts)
    assert sum(c - 1 for c in counts) <= 4
    # The collector is invoked once per collected event, as in an uninterrupted plain
    # run; only an invocation in flight at the kill executes again.
    collects = sorted(w for w in snapshot(db, "fan-1").statuses if w.startswith("fan-1/collect/"))
    assert len(collects) == FAN_N, collects
    executions = [lines[f"step:{w}"] for w in collects]
    assert sum(executions) <= FAN_N + 1, executions
