"""Durable LlamaIndex agents: real processes killed between and inside LLM and tool calls.

The agents run a scripted tool-calling LLM (tests/agent_flows.py), so every answer is
deterministic and every LLM and tool call leaves a line in the side-effect log.
"""

import asyncio
import inspect
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core", reason="the 'agents' extra is not installed")

from dbos import DBOS  # noqa: E402
from llama_index.core.agent.workflow import AgentWorkflow, BaseWorkflowAgent  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from workflows.context.serializers import JsonSerializer  # noqa: E402
from workflows.events import HumanResponseEvent  # noqa: E402

from dbos_llama import (  # noqa: E402
    DurableClient,
    DurableLLM,
    DurableMemory,
    NotSerializableError,
    _agents,
)
from tests import agent_flows  # noqa: E402
from tests.agent_flows import CALC_ANSWER, ScriptedLLM  # noqa: E402
from tests.conftest import dbos_config, read_log, run_driver, snapshot  # noqa: E402

ASK = {"user_msg": "What is (1 + 2) * 4 + 3?"}

#: Kills: after an LLM call returned but before its step ended (the streamed response is
#: replayed from its checkpoint), on SQLite; inside an LLM call (it runs again), on
#: PostgreSQL. Between two tool calls: the ReActAgent test below and the example
#: (tests/test_examples.py::test_durable_agent, a FunctionAgent).


def read_stream(db_url: str, run_id: str) -> list[Any]:
    async def read() -> list[Any]:
        async with DurableClient(db_url) as client:
            return [e async for e in client.read_stream(run_id, follow=False)]

    return asyncio.run(read())


async def read_state(db_url: str, run_id: str) -> dict[str, Any]:
    async with DurableClient(db_url) as client:
        return await client.get_state(run_id)


def assert_each_call_ran_once(lines: Counter[str], in_flight: str | None) -> None:
    """Every LLM and tool call ran exactly once, except the one a crash interrupted."""
    for line, count in lines.items():
        if line.startswith(("llm:", "tool:")):
            allowed = 2 if line == in_flight else 1
            assert 1 <= count <= allowed, f"{line} ran {count} times"


def assert_calculator_run(db_url: str, run_id: str, second: Any, log: Path, crash: str) -> None:
    assert second.returncode == 0, second.stderr
    assert second.result == CALC_ANSWER  # what an uninterrupted run answers
    assert "Traceback" not in second.stderr
    lines = read_log(log)
    assert lines[f"crash:{crash}"] == 1
    assert_each_call_ran_once(
        lines, in_flight=crash if crash.startswith(("llm:", "tool:")) else None
    )
    expected = {"llm:calc:0", "llm:calc:1", "llm:calc:2", "llm:calc:3", "tool:ticket"}
    expected |= {"tool:add:1+2", "tool:multiply:3*4", "tool:add:3+12"}
    assert {line for line in lines if not line.startswith("crash:")} == expected
    after = snapshot(db_url, run_id)
    assert set(after.statuses.values()) == {"SUCCESS"}, after.statuses
    calls = {name: len(outputs) for name, outputs in after.completed_calls.items()}
    assert calls["dbos_llama.tool.add"] == 2
    assert calls["dbos_llama.tool.multiply"] == 1
    assert "dbos_llama.tool.ticket" not in calls  # opted out: always runs
    assert sum(n for name, n in calls.items() if name.startswith("dbos_llama.llm.")) == 4


def kill_and_recover_calculator(db_url: str, tmp_path: Path, flow: str, crash: str) -> None:
    log = tmp_path / "effects.log"
    first = run_driver(db_url, flow, "calc-1", ASK, log, crash_at=crash)
    assert first.returncode == 137, first.stderr
    before = snapshot(db_url, "calc-1")
    second = run_driver(db_url, flow, "calc-1", ASK, log)
    assert_calculator_run(db_url, "calc-1", second, log, crash)
    for name, outputs in before.completed_calls.items():
        if name.startswith("dbos_llama.llm."):
            # LLM calls completed before the crash were replayed, not made again.
            assert read_log(log)[f"llm:calc:{len(outputs) - 1}"] == 1
    if flow == "agent-calc-stream":
        kinds = Counter(type(e).__name__ for e in read_stream(db_url, "calc-1"))
        # Exactly the events of an uninterrupted run: one chunk per tool-calling turn
        # and five for the final answer, replayed from the LLM call's checkpoint.
        assert kinds["AgentStream"] == 3 + 5
        assert kinds["ToolCallResult"] == 4
        assert kinds["AgentOutput"] == 4
        assert kinds["StopEvent"] == 1


def test_agent_survives_kill_after_an_llm_call(tmp_path: Path, sqlite_url: str) -> None:
    kill_and_recover_calculator(sqlite_url, tmp_path, "agent-calc-stream", "after-llm:calc:2")


def test_agent_survives_kill_inside_an_llm_call_on_postgres(tmp_path: Path, pg_database) -> None:
    kill_and_recover_calculator(pg_database(), tmp_path, "agent-calc", "llm:calc:2")


def test_react_agent_survives_kill_between_tool_calls(tmp_path: Path, sqlite_url: str) -> None:
    log = tmp_path / "effects.log"
    crash = "tool:multiply:3*4"
    first = run_driver(sqlite_url, "agent-react", "react-1", ASK, log, crash_at=crash)
    assert first.returncode == 137, first.stderr
    second = run_driver(sqlite_url, "agent-react", "react-1", ASK, log)
    assert second.result == "12", second.stderr
    lines = read_log(log)
    assert_each_call_ran_once(lines, in_flight=crash)
    assert {"llm:react:0", "llm:react:1", "llm:react:2", "tool:add:1+2"} <= set(lines)
    calls = snapshot(sqlite_url, "react-1").completed_calls
    assert len(calls["dbos_llama.llm.astream_chat"]) == 3


def test_handoff_and_approval_across_restarts(tmp_path: Path, sqlite_url: str) -> None:
    """AgentWorkflow: triage hands off to refunds; killed right after the handoff; the
    refunds agent's approval tool waits for a human while no process runs."""
    log = tmp_path / "effects.log"
    ask = {"user_msg": "I want my 42 back"}
    crashed = run_driver(sqlite_url, "agent-team", "team-1", ask, log, crash_at="llm:refunds:0")
    assert crashed.returncode == 137, crashed.stderr
    asking = run_driver(
        sqlite_url, "agent-team", "team-1", ask, log, extra_env={"DBOS_LLAMA_EXIT_ON_INPUT": "1"}
    )
    assert 'ASKED "refund 42?"' in asking.stdout, asking.stderr

    async def answer() -> None:
        async with DurableClient(sqlite_url) as client:
            await client.send_event("team-1", HumanResponseEvent(response="yes"))

    asyncio.run(answer())
    done = run_driver(sqlite_url, "agent-team", "team-1", ask, log)
    assert done.result == "Refund of 42 done", done.stderr
    assert "Traceback" not in done.stderr
    lines = read_log(log)
    # The approval tool takes the Context: it runs again when the answer arrives
    # (upstream re-runs a step after ctx.wait_for_event); every other call ran once.
    assert lines.pop("tool:approve:42") == 2
    assert_each_call_ran_once(lines, in_flight="llm:refunds:0")
    assert lines["llm:triage:1"] == 1 and lines["llm:refunds:2"] == 1
    events = read_stream(sqlite_url, "team-1")
    results = {e.tool_name: e.tool_output.content for e in events if hasattr(e, "tool_output")}
    assert results["approve_refund"] == "refund 42: yes"
    assert results["handoff"].startswith("Agent refunds is now handling")
    assert events[-1].result.current_agent_name == "refunds"
    assert set(snapshot(sqlite_url, "team-1").statuses.values()) == {"SUCCESS"}
    # The journaled conversation: the question once, each LLM turn once, in order.
    state = asyncio.run(read_state(sqlite_url, "team-1"))
    messages = state["memory"]["value"]["messages"]
    assert [m["role"] for m in messages].count("user") == 1
    turns = [
        f"{m['additional_kwargs']['llm']}:{m['additional_kwargs']['turn']}"
        for m in messages
        if "llm" in m["additional_kwargs"]
    ]
    assert turns == ["triage:0", "triage:1", "refunds:0", "refunds:1", "refunds:2"]


async def test_tool_result_that_cannot_be_stored_names_the_tool(sqlite_url: str) -> None:
    DBOS(config=dbos_config(sqlite_url))
    DBOS.launch()
    try:
        agent = agent_flows.bad_tool_agent()
        with pytest.raises(NotSerializableError) as failed:
            await agent.run(user_msg="connect", run_id="bad-1")
        message = str(failed.value)
        assert "The result of tool 'open_connection' cannot be stored durably" in message
        assert "ToolOutput.raw_output.lock" in message
        status = await DBOS.get_workflow_status_async("bad-1")
        assert status is not None and status.status == "ERROR"
    finally:
        DBOS.destroy()


def test_upstream_agent_seams_are_still_there() -> None:
    """dbos_llama extends these private methods of the agent classes: fail loudly when
    an upstream release renames them or changes their parameters."""
    for cls in (BaseWorkflowAgent, AgentWorkflow):
        params = list(inspect.signature(getattr(cls, _agents.TOOL_CALL_METHOD)).parameters)
        assert params == ["self", "ctx", "tool", "tool_input"], cls
        params = list(inspect.signature(getattr(cls, _agents.INIT_CONTEXT_METHOD)).parameters)
        assert params == ["self", "ctx", "ev"], cls


def test_durable_agent_classes_wrap_llms_and_build_no_default_instance() -> None:
    agent = agent_flows.calculator()
    assert isinstance(agent.llm, DurableLLM) and isinstance(agent.llm.llm, ScriptedLLM)
    assert agent.llm.metadata.model_name == "scripted-calc"
    assert getattr(type(agent), _agents.AUTO_INSTANCE_ATTR) is False
    team = agent_flows.team()
    assert all(isinstance(a.llm, DurableLLM) for a in team.agents.values())
    # Outside a durable run the wrapper is the plain LLM.
    response = asyncio.run(agent.llm.achat([]))
    assert response.message.additional_kwargs["tool_calls"][0]["tool_name"] == "add"


def test_durable_tool_opt_out_and_memory_round_trip() -> None:
    tool = FunctionTool.from_defaults(fn=agent_flows.ticket)
    assert not _agents._checkpoints(tool)
    assert _agents._checkpoints(FunctionTool.from_defaults(fn=agent_flows.add))
    assert not _agents._checkpoints(FunctionTool.from_defaults(async_fn=agent_flows.approve_refund))
    marked = _agents.durable_tool(FunctionTool.from_defaults(fn=agent_flows.add), checkpoint=False)
    assert not _agents._checkpoints(marked)

    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.memory import ChatMemoryBuffer

    memory = ChatMemoryBuffer.from_defaults(token_limit=500)
    memory.put(ChatMessage(role="user", content="hi", additional_kwargs={"k": [1]}))
    durable_memory = DurableMemory.of(memory, "memory")
    serializer = JsonSerializer()
    again = serializer.deserialize(serializer.serialize(durable_memory))
    assert isinstance(again, DurableMemory)
    assert again.get_all() == memory.get_all()
    assert again.token_limit == 500
    # A memory given to the run gets the conversation too, as without dbos_llama.
    mirrored = DurableMemory.of(memory, "memory", origin=memory)
    asyncio.run(mirrored.aput(ChatMessage(role="assistant", content="hello")))
    assert [m.content for m in memory.get_all()] == ["hi", "hello"]
    assert mirrored.get_all() == memory.get_all()
