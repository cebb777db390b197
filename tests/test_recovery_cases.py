"""Recovery edge cases in real processes: durable sleep, other code versions,
unregistered workflows, and run-ID idempotency across processes."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import read_log, run_driver, snapshot
from tests.test_crash_recovery import CHAIN_KWARGS, CHAIN_RESULT


def test_durable_sleep_resumes_with_remaining_time(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    log = tmp_path / "log"
    first = run_driver(
        db,
        "sleeper",
        "nap-1",
        {"seconds": 4.0},
        log,
        extra_env={"DBOS_LLAMA_CRASH_AFTER": "1.0"},
    )
    assert first.returncode == 137
    second = run_driver(db, "sleeper", "nap-1", {"seconds": 4.0}, log)
    result = second.result
    resumed_at = max(float(line.split(":", 1)[1]) for line in read_log(log))
    # The whole sleep lasted its 4 s from the recorded start (now() was replayed) ...
    assert result["finished"] - result["started"] >= 4.0
    # ... and after the restart the step slept only what remained, not 4 s again.
    assert result["finished"] - resumed_at < 3.5


def test_run_of_other_code_version_is_not_replayed(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    log = tmp_path / "log"
    pinned = {"DBOS_LLAMA_APP_VERSION": "app-1"}
    first = run_driver(
        db, "versioned", "v-1", {}, log, crash_at="versioned:second", extra_env=pinned
    )
    assert first.returncode == 137
    steps_before = sum(v for k, v in read_log(log).items() if k.startswith("step:"))

    other = run_driver(
        db,
        "versioned",
        "v-1",
        {},
        log,
        extra_env={**pinned, "DBOS_LLAMA_FLOW_VERSION": "v2", "DBOS_LLAMA_LAUNCH_ONLY": "3"},
    )
    assert other.returncode == 0, other.stderr
    assert "VersionMismatchError" not in other.stderr  # logged as a message, not raised
    assert "recorded by code version 'v1'" in other.stderr
    assert "this process runs version 'v2'" in other.stderr
    # Nothing of the run was replayed against the new code; it is still PENDING.
    assert sum(v for k, v in read_log(log).items() if k.startswith("step:")) == steps_before
    assert snapshot(db, "v-1").statuses["v-1"] == "PENDING"

    # A worker with the recorded version finishes it.
    same = run_driver(db, "versioned", "v-1", {}, log, extra_env=pinned)
    assert same.result == "<v-first><v-second>"
    assert read_log(log)["effect:v-first"] == 1


def test_run_of_unregistered_workflow_stays_pending_with_a_clear_log(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    log = tmp_path / "log"
    pinned = {"DBOS_LLAMA_APP_VERSION": "app-1"}
    first = run_driver(
        db, "chain3", "order-1", CHAIN_KWARGS, log, crash_at="two:between", extra_env=pinned
    )
    assert first.returncode == 137
    bare = run_driver(db, "-", "-", {}, log, module="tests.driver_bare", extra_env=pinned)
    assert bare.returncode == 0, bare.stderr
    assert "durable workflow 'tests.flows.Chain3' is not registered in this process" in (
        bare.stderr
    )
    assert "Import the module that defines its @durable class" in bare.stderr
    assert snapshot(db, "order-1").statuses["order-1"] == "PENDING"

    # A process that registers the class then finishes the run.
    again = run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log, extra_env=pinned)
    assert again.result == CHAIN_RESULT


def test_same_run_id_in_another_process_does_not_run_again(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    log = tmp_path / "log"
    assert run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log).result == CHAIN_RESULT
    executed = read_log(log)
    again = run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log)
    assert again.result == CHAIN_RESULT
    assert read_log(log) == executed  # nothing executed the second time


def test_recovered_run_waits_for_an_instance_then_resumes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    log = tmp_path / "log"
    first = run_driver(db, "needsargs", "na-1", {}, log, crash_at="needsargs:two")
    assert first.returncode == 137
    second = run_driver(
        db, "needsargs", "na-1", {}, log, extra_env={"DBOS_LLAMA_LATE_INSTANCE": "2.5"}
    )
    assert second.result == "p:<na-one>"
    assert "Run 'na-1' of durable workflow 'tests.flows.NeedsArgs' is waiting" in second.stderr
    assert "create an instance of class tests.flows.NeedsArgs" in second.stderr
    assert read_log(log)["effect:na-one"] == 1


def test_recovery_instantiates_a_class_without_constructor_arguments(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    log = tmp_path / "log"
    first = run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log, crash_at="three:start")
    assert first.returncode == 137
    # This process never builds a Chain3 itself: recovery does, and finishes the run.
    launch_only = {"DBOS_LLAMA_NO_INSTANCE": "1", "DBOS_LLAMA_LAUNCH_ONLY": "4"}
    second = run_driver(db, "chain3", "order-1", CHAIN_KWARGS, log, extra_env=launch_only)
    assert second.returncode == 0, second.stderr
    assert snapshot(db, "order-1").statuses["order-1"] == "SUCCESS"
    assert read_log(log)["effect:three"] == 1
