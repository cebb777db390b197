"""Recorded names and record shapes: what runs already in databases are found by.

A change here orphans every run in flight, so each value is pinned (tests/fixtures
holds databases recorded by 0.1.0, replayed by tests/test_state_crashes.py).
"""

from __future__ import annotations

import pickle

from dbos_llama import _naming
from dbos_llama._step_workflows import StepOutcome


def test_recorded_names_never_change() -> None:
    assert _naming.NAME_PREFIX == "llama:"
    assert _naming.TICK_TOPIC == "dbos_llama.tick"
    assert _naming.NEXT_STEP == "dbos_llama.next"
    assert _naming.WAKE_STEP == "dbos_llama.wake"
    assert _naming.STATE_STEP == "dbos_llama.state"
    assert _naming.INLINE_STEP == "dbos_llama.inline"
    assert _naming.STREAM_KEY == "dbos_llama.events"
    assert _naming.VERSION_ATTR == "dbos_llama.version"
    assert _naming.HELD_ATTR == "dbos_llama.held"
    assert _naming.FORK_STEP_ATTR == "dbos_llama.forked_from_step"
    assert _naming.TRACE_ATTR == "dbos_llama.trace"
    assert _naming.FORK_PARKING_QUEUE == "dbos_llama.fork-parking"
    assert _naming.NOW_STEP == "dbos_llama.now"
    assert _naming.RANDOM_STEP == "dbos_llama.random"
    assert _naming.UUID4_STEP == "dbos_llama.uuid4"
    assert _naming.llm_call_name("achat") == "dbos_llama.llm.achat"
    assert _naming.tool_call_name("search") == "dbos_llama.tool.search"
    assert _naming.run_workflow_name("app.Orders") == "llama:app.Orders"
    assert _naming.step_workflow_name("app.Orders", "draft") == "llama:app.Orders/draft"
    assert _naming.step_invocation_id("order-42", "draft", 3) == "order-42/draft/3"
    assert _naming.send_idempotency_key("order-42/draft/3", 1) == "order-42/draft/3/send/1"
    # The library's tables in the system database (fleet leases, released runs).
    assert _naming.TABLE_SCHEMA == "dbos_llama"
    assert _naming.FLEET_TABLE == "workers"
    assert _naming.RELEASED_TABLE == "released"
    # The state seeded before a run: a keyword argument of the run's DBOS workflow,
    # recorded only when there is one, read back as the run's first write.
    assert _naming.SEED_STATE_ARG == "seed_state"
    assert (_naming.SEED_KEY, _naming.SEED_SEQ) == ("seed", -1)
    # Kept by applications in saved context snapshots (ctx.to_dict()).
    assert _naming.SNAPSHOT_STORE_TYPE == "dbos_llama"


def test_the_run_body_takes_the_seed_under_its_recorded_name() -> None:
    import inspect

    from dbos_llama._bodies import make_run_body
    from tests.flows import Tally

    body = make_run_body(Tally.__dbos_llama_binding__)  # type: ignore[attr-defined]
    parameters = inspect.signature(body).parameters
    assert list(parameters) == [
        "start_event",
        "version",
        "started_at",
        "rules",
        _naming.SEED_STATE_ARG,
    ]
    assert parameters[_naming.SEED_STATE_ARG].default is None
    assert parameters["rules"].default == 1  # runs recorded before the decision rules


def test_release_rows_keep_their_columns(tmp_path) -> None:
    """A released run's row, as an older worker wrote it, is read by this one."""
    from dbos_llama._release import ReleaseTable

    table = ReleaseTable(f"sqlite:///{tmp_path / 'db.sqlite'}").ensure()
    try:
        table.write(
            f"INSERT INTO {table.name} (run_id, state, released_ms, wake_ms, claimed_ms, "
            "clock_offset, executor_id, queue_name) "
            "VALUES ('r', 'released', 1, NULL, NULL, 0.5, 'w1', 'q')"
        )
        assert table.states(["r", "other"]) == {"r": "released"}
        assert table.queue_of("r") == "q"
        assert table.claim("r") is True and table.claim("r") is False
        assert table.take("r") == {"state": "waking", "clock_offset": 0.5}
        # A row with a wake time is settled (its released steps resumed) before it goes.
        table.write(
            f"INSERT INTO {table.name} (run_id, state, released_ms, wake_ms, claimed_ms, "
            "clock_offset, executor_id, queue_name) "
            "VALUES ('s', 'released', 1, 9, NULL, 0.25, 'w1', NULL)"
        )
        settled: list[tuple[str, dict[str, object]]] = []
        assert table.take("s", lambda *a: settled.append(a)) == {
            "state": "released",
            "clock_offset": 0.25,
        }
        assert settled == [("s", {"state": "released", "clock_offset": 0.25})]
        assert table.take("s") is None
    finally:
        table.dispose()


def test_step_outcome_keeps_its_recorded_path_and_fields() -> None:
    """Every step invocation's result is a pickled (or named) `StepOutcome`."""
    assert StepOutcome.__module__ == "dbos_llama._step_workflows"
    assert StepOutcome.__qualname__ == "StepOutcome"
    outcome = StepOutcome([], [], [(0, [{"op": "add", "path": "/x", "value": 1}])], 1.5)
    assert b"dbos_llama._step_workflows" in pickle.dumps(outcome)
    assert [f for f in StepOutcome.__dataclass_fields__] == ["outputs", "stream", "state", "clock"]


def test_checkpoint_outputs_are_plain_tuples_of_the_recorded_shape() -> None:
    """`dbos_llama.next`, `.wake` and `.state` outputs are recorded as plain tuples and
    lists (no class of ours in the pickle), and read back as they were recorded."""
    from dbos_llama._records import Choice, StateWrite, Wake

    choice, wake, write = (
        Choice(1, 12.5, False).record(),
        Wake(3, "pull", 12.5).record(),
        StateWrite(4, [{"op": "add", "path": "/x", "value": 1}]).record(),
    )
    assert (type(choice), type(wake), type(write)) == (tuple, tuple, list)
    assert choice == (1, 12.5, False) and wake == (3, "pull", 12.5)
    assert write == [4, [{"op": "add", "path": "/x", "value": 1}]]
    for record in (choice, wake, write):
        assert b"dbos_llama" not in pickle.dumps(record)
    assert Choice.read((None, 1.0, True)) == Choice(None, 1.0, True)
    # Tasks that finished together: the others' keys ride along; a choice without
    # them keeps the three-item shape of runs recorded before they existed.
    together = Choice(0, 2.0, False, ("work:1", "__pull__:3")).record()
    assert together == (0, 2.0, False, ["work:1", "__pull__:3"])
    assert b"dbos_llama" not in pickle.dumps(together)
    assert Choice.read(together) == Choice(0, 2.0, False, ("work:1", "__pull__:3"))
    assert Choice.read(choice).then == ()
    assert Wake.read(wake) == Wake(3, "pull", 12.5)
    assert StateWrite.read(write) == StateWrite(4, [{"op": "add", "path": "/x", "value": 1}])
    # A write of an invocation run in the run's own workflow names it (a third item);
    # the two-item shape of every other write is unchanged.
    named = StateWrite(5, [], "collect/3").record()
    assert named == [5, [], "collect/3"] and StateWrite.read(named).key == "collect/3"
    assert StateWrite.read(write).key is None


def test_inline_records_are_plain_lists_around_the_step_outcome() -> None:
    """`dbos_llama.inline` (decision rules 4): a plain list whose only class of ours is
    `StepOutcome`, at its recorded path."""
    from dbos_llama._records import InlineRecord

    outcome = StepOutcome([], [], [], 2.0)
    inline = InlineRecord("run/collect/3", "collect", 17, 1_700_000_000_000, outcome, ("work:4",))
    record = inline.record()
    assert type(record) is list
    assert record[:4] == ["run/collect/3", "collect", 17, 1_700_000_000_000]
    assert record[5] == ["work:4"]
    assert pickle.dumps(record).count(b"dbos_llama") == 1  # the outcome's class path
    assert InlineRecord.read(record) == inline
