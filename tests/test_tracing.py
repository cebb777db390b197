"""OpenTelemetry: one trace per durable run, across crashes and processes (real SDK).

Every process is a real subprocess whose application set the OpenTelemetry SDK's
`TracerProvider` (`tests.traced_driver`), exporting each span as it ends to a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOSClient

from tests.conftest import ROOT, _driver_env, run_driver, snapshot

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install -e '.[otel]'")

TRACED = "tests.traced_driver"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    events: list[str]
    start: str
    end: str
    process: str

    @property
    def replayed(self) -> bool:
        return bool(self.attributes.get("dbos_llama.replayed"))


def read_spans(path: Path) -> list[Span]:
    spans = []
    for line in path.read_text().splitlines():
        raw = json.loads(line)
        spans.append(
            Span(
                raw["name"],
                raw["context"]["trace_id"],
                raw["context"]["span_id"],
                raw["parent_id"],
                raw["attributes"],
                [e["name"] for e in raw["events"]],
                raw["start_time"],
                raw["end_time"],
                raw["resource"]["attributes"]["service.name"],
            )
        )
    return spans


def assert_one_tree(spans: list[Span]) -> Span:
    """All spans in one trace, every parent exported, one root: the run's span."""
    assert len({s.trace_id for s in spans}) == 1, Counter(s.trace_id for s in spans)
    ids = {s.span_id for s in spans}
    dangling = [(s.name, s.parent_id) for s in spans if s.parent_id and s.parent_id not in ids]
    assert not dangling, dangling
    roots = [s for s in spans if s.parent_id is None]
    assert [r.name for r in roots] == [roots[0].name] and roots[0].name.startswith("run "), roots
    return roots[0]


def traced(db: str, flow: str, run_id: str, kwargs: dict[str, Any], tmp: Path, **env: str):
    extra = {"DBOS_LLAMA_SPANS": str(tmp / "spans.jsonl"), **env}
    return run_driver(db, flow, run_id, kwargs, tmp / "effects.log", module=TRACED, extra_env=extra)


def steps(spans: list[Span], replayed: bool = False) -> list[Span]:
    return [s for s in spans if s.name.startswith("step ") and s.replayed == replayed]


def calls(spans: list[Span]) -> list[Span]:
    return [s for s in spans if "dbos_llama.call" in s.attributes]


def test_chain_is_one_trace(tmp_path: Path, sqlite_url: str) -> None:
    run = traced(sqlite_url, "chain3", "order-1", {"x": "a"}, tmp_path)
    assert run.result == "<one:a><two-a><two-b><three>", run.stderr
    spans = read_spans(tmp_path / "spans.jsonl")
    root = assert_one_tree(spans)
    assert root.attributes["dbos_llama.run_id"] == "order-1"
    assert root.attributes["dbos_llama.outcome"] == "success"
    assert "dbos_llama.recovered" not in root.events
    by_id = {s.span_id: s for s in spans}
    live = steps(spans)
    assert [
        (s.attributes["dbos_llama.step"], s.attributes["dbos_llama.invocation"]) for s in live
    ] == [
        ("one", 0),
        ("two", 1),
        ("three", 2),
    ]
    assert all(
        s.parent_id == root.span_id and s.attributes["dbos_llama.attempt"] == 1 for s in live
    )
    assert not steps(spans, replayed=True)
    # Four @durable_step calls, each under its step, each with DBOS's step span inside.
    made = calls(spans)
    assert [by_id[c.parent_id].attributes["dbos_llama.step"] for c in made] == [
        "one",
        "two",
        "two",
        "three",
    ]
    assert all(c.attributes["dbos_llama.call.kind"] == "durable_step" for c in made)
    assert all(not c.replayed and c.end > c.start for c in made)
    made_ids = {c.span_id for c in made}
    assert sum(s.name == "tests.flows.effect" and s.parent_id in made_ids for s in spans) == 4
    # DBOS's workflow spans: the run's under the run's span, each step's under its step.
    dbos_run = [s for s in spans if s.name == "llama:tests.flows.Chain3"]
    assert [s.parent_id for s in dbos_run] == [root.span_id]
    for step_span in live:
        step = step_span.attributes["dbos_llama.step"]
        children = [s for s in spans if s.name == f"llama:tests.flows.Chain3/{step}"]
        assert children and all(c.parent_id == step_span.span_id for c in children)


@pytest.mark.parametrize("crash_at", ["two:between", "three:start"])
def test_run_killed_mid_step_continues_its_trace(
    tmp_path: Path, db_url: str, crash_at: str
) -> None:
    first = traced(db_url, "chain3", "order-1", {"x": "a"}, tmp_path, DBOS_LLAMA_CRASH_AT=crash_at)
    assert first.returncode == 137, first.stderr
    before = read_spans(tmp_path / "spans.jsonl")
    assert not [s for s in before if s.name.startswith("run ")]  # the run has not ended
    second = traced(db_url, "chain3", "order-1", {"x": "a"}, tmp_path)
    assert second.result == "<one:a><two-a><two-b><three>", second.stderr
    spans = read_spans(tmp_path / "spans.jsonl")
    root = assert_one_tree(spans)  # the first process's spans in the same trace
    first_process, second_process = before[0].process, root.process
    assert first_process != second_process
    assert "dbos_llama.recovered" in root.events
    recovered_dbos = [s for s in spans if s.name == "llama:tests.flows.Chain3"]
    assert recovered_dbos and all(s.parent_id == root.span_id for s in recovered_dbos)
    assert any("dbos_llama.recovered" in s.events for s in recovered_dbos)
    # Each step invocation has exactly one span, exported by the process that completed it.
    live = steps(spans)
    assert sorted(s.attributes["dbos_llama.invocation_id"] for s in live) == [
        "order-1/one/0",
        "order-1/three/2",
        "order-1/two/1",
    ]
    one = next(s for s in live if s.attributes["dbos_llama.step"] == "one")
    assert one.process == first_process
    # The first process's completed steps appear again in the second as replayed
    # markers without duration.
    markers = steps(spans, replayed=True)
    assert markers and all(m.process == second_process and m.start == m.end for m in markers)
    assert "one" in {m.attributes["dbos_llama.step"] for m in markers}
    if crash_at == "two:between":
        two = next(s for s in live if s.attributes["dbos_llama.step"] == "two")
        assert two.process == second_process
        assert two.attributes["dbos_llama.attempt"] == 2
        assert "dbos_llama.recovered" in two.events
        under_two = [c for c in calls(spans) if c.parent_id == two.span_id]
        # two-a: executed by the first process, replayed (no duration) by the second;
        # two-b: executed by the second.
        assert [(c.process, c.replayed) for c in under_two] == [
            (first_process, False),
            (second_process, True),
            (second_process, False),
        ]
        assert under_two[1].start == under_two[1].end
    else:
        three = next(s for s in live if s.attributes["dbos_llama.step"] == "three")
        assert three.process == second_process
        assert {m.attributes["dbos_llama.step"] for m in markers} == {"one", "two"}


@pytest.mark.parametrize("crash_at", ["work:5", "collect:all"])
def test_fan_out_killed_is_one_trace(tmp_path: Path, sqlite_url: str, crash_at: str) -> None:
    """Every step invocation has one span, taken or abandoned (siblings still running
    when the run ended), exported by whichever process: none lost, none twice."""
    n = 8
    first = traced(sqlite_url, "fanout", "fan-1", {"n": n}, tmp_path, DBOS_LLAMA_CRASH_AT=crash_at)
    assert first.returncode == 137, first.stderr
    second = traced(sqlite_url, "fanout", "fan-1", {"n": n}, tmp_path)
    assert second.result == sum(i * i for i in range(n)), second.stderr
    spans = read_spans(tmp_path / "spans.jsonl")
    root = assert_one_tree(spans)
    live = steps(spans)
    per_invocation = Counter(s.attributes["dbos_llama.invocation_id"] for s in live)
    assert set(per_invocation.values()) == {1}, per_invocation  # one span each
    statuses = snapshot(sqlite_url, "fan-1").statuses
    assert set(per_invocation) == {i for i in statuses if i != "fan-1"}
    assert Counter(s.attributes["dbos_llama.step"] for s in live)["work"] == n
    assert all(s.parent_id == root.span_id for s in live)
    squares = [c for c in calls(spans) if c.attributes["dbos_llama.call"] == "tests.flows.square"]
    assert {c.parent_id for c in squares} <= {s.span_id for s in live}


def test_agent_llm_and_tool_calls_are_spans(tmp_path: Path, sqlite_url: str) -> None:
    pytest.importorskip("llama_index.core")
    run = traced(sqlite_url, "agent-calc", "agent-1", {"user_msg": "3*4+3?"}, tmp_path)
    assert run.returncode == 0, run.stderr
    spans = read_spans(tmp_path / "spans.jsonl")
    assert_one_tree(spans)
    step_ids = {s.span_id for s in steps(spans)}
    kinds = Counter(c.attributes["dbos_llama.call.kind"] for c in calls(spans))
    # Four LLM turns; add, multiply, add (ticket is not a checkpoint: no call span).
    assert kinds["llm"] == 4 and kinds["tool"] == 3, kinds
    for c in calls(spans):
        assert c.parent_id in step_ids
        assert c.attributes["openinference.span.kind"] in {"LLM", "TOOL", "CHAIN"}
    names = {c.name for c in calls(spans)}
    assert {"tool add", "tool multiply"} <= names and "tool ticket" not in names


def test_answer_from_another_process_joins_the_trace(tmp_path: Path, sqlite_url: str) -> None:
    kwargs = {"customer": "ada"}
    asking = traced(
        sqlite_url, "approval", "hitl-1", kwargs, tmp_path, DBOS_LLAMA_EXIT_ON_INPUT="1"
    )
    assert asking.returncode == 0, asking.stderr
    env = _driver_env(tmp_path / "log", {"DBOS_LLAMA_SPANS": str(tmp_path / "spans.jsonl")})
    sender = subprocess.run(
        [sys.executable, "-m", TRACED, "send", sqlite_url, "hitl-1", "yes"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sender.returncode == 0, sender.stderr
    worker = traced(sqlite_url, "approval", "hitl-1", kwargs, tmp_path)
    assert worker.result == "answer=yes", worker.stderr
    spans = read_spans(tmp_path / "spans.jsonl")
    root = assert_one_tree(spans)
    assert len({s.process for s in spans}) == 3  # asker, sender, worker
    sends = [s for s in spans if s.name == "send event"]
    assert len(sends) == 1 and sends[0].parent_id == root.span_id
    assert sends[0].process not in {root.process, spans[0].process}
    decide = [s for s in steps(spans) if s.attributes["dbos_llama.step"] == "decide"]
    assert len(decide) == 1 and decide[0].process == root.process


def test_run_recorded_without_a_trace_recovers_traced(tmp_path: Path, sqlite_url: str) -> None:
    log = tmp_path / "effects.log"
    first = run_driver(sqlite_url, "chain3", "old-1", {"x": "a"}, log, crash_at="two:between")
    assert first.returncode == 137, first.stderr
    second = traced(sqlite_url, "chain3", "old-1", {"x": "a"}, tmp_path)
    assert second.result == "<one:a><two-a><two-b><three>", second.stderr
    # The run gets a trace when a traced process first executes it: dbos_llama's
    # spans form it (DBOS's spans of that execution began before it was known).
    spans = read_spans(tmp_path / "spans.jsonl")
    ours = [s for s in spans if any(k.startswith("dbos_llama.") for k in s.attributes)]
    root = assert_one_tree(ours)
    assert root.attributes["dbos_llama.run_id"] == "old-1"
    assert {s.attributes["dbos_llama.step"] for s in steps(ours)} == {"two", "three"}
    assert {s.attributes["dbos_llama.step"] for s in steps(ours, replayed=True)} == {"one"}
    client = DBOSClient(system_database_url=sqlite_url)
    try:
        attributes = client.retrieve_workflow("old-1").get_status().attributes or {}
    finally:
        client.destroy()
    recorded = attributes["dbos_llama.trace"]["traceparent"]
    assert recorded == f"00-{root.trace_id[2:]}-{root.span_id[2:]}-01"


def test_untraced_runs_need_no_opentelemetry(tmp_path: Path, sqlite_url: str) -> None:
    """The library imports and runs with the opentelemetry package hidden."""
    code = (
        "import sys, json, asyncio\n"
        "sys.modules['opentelemetry'] = None\n"
        "import dbos_llama, dbos_llama._tracing as t\n"
        "from tests.driver import main\n"
        "asyncio.run(main(sys.argv[1], 'chain3', 'plain-1', {'x': 'a'}))\n"
        "assert not t.enabled() and 'opentelemetry.trace' not in sys.modules\n"
        "print('NO-OTEL-OK')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, sqlite_url],
        cwd=ROOT,
        env=_driver_env(tmp_path / "log", {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'RESULT "<one:a><two-a><two-b><three>"' in proc.stdout
    assert "NO-OTEL-OK" in proc.stdout


def test_llama_index_instrumentation_spans_join_the_tree(tmp_path: Path, sqlite_url: str) -> None:
    """LlamaIndex's own spans (as OpenTelemetry spans by Arize's OpenInference
    instrumentor) are in the run's trace, each step's under its invocation's span,
    across a kill: no exported span lost its parent with the dead process."""
    pytest.importorskip("openinference.instrumentation.llama_index")
    oi = {"DBOS_LLAMA_OPENINFERENCE": "1"}
    first = traced(
        sqlite_url,
        "chain3",
        "order-1",
        {"x": "a"},
        tmp_path,
        DBOS_LLAMA_CRASH_AT="two:between",
        **oi,
    )
    assert first.returncode == 137, first.stderr
    second = traced(sqlite_url, "chain3", "order-1", {"x": "a"}, tmp_path, **oi)
    assert second.result == "<one:a><two-a><two-b><three>", second.stderr
    spans = read_spans(tmp_path / "spans.jsonl")
    assert_one_tree(spans)
    by_id = {s.span_id: s for s in spans}
    llama_steps = [s for s in spans if s.name in {"Chain3.one", "Chain3.two", "Chain3.three"}]
    assert sorted(s.name for s in llama_steps) == ["Chain3.one", "Chain3.three", "Chain3.two"]
    for span in llama_steps:
        parent = by_id[span.parent_id]
        assert parent.name == f"step {span.name.split('.')[1]}" and not parent.replayed
    assert {s.process for s in llama_steps} == {s.process for s in spans}  # both processes


def test_a_fork_gets_its_own_run_span_in_the_original_trace() -> None:
    """DBOS copies a run's attributes to its fork: the fork's recorded trace keeps the
    original's trace ID under a run span of its own (never the original's span ID)."""
    from dbos_llama._otel import RunTrace, forked_trace

    original = RunTrace(0xA1, 0xB2, None, 5)
    forked = forked_trace({"dbos_llama.trace": original.record(), "other": 1})
    fork = RunTrace.from_record(forked["dbos_llama.trace"])
    assert fork is not None
    assert fork.trace_id == 0xA1 and fork.parent_id == 0xB2 and fork.span_id != 0xB2
    assert forked_trace({"other": 1}) == {} and forked_trace(None) == {}
