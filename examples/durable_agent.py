"""A durable LlamaIndex FunctionAgent, killed between two tool calls, finished by a restart.

Run it:  pip install -e ".[agents]" && python examples/durable_agent.py

It runs offline: the "LLM" is a scripted tool-calling model defined below (a real
application passes e.g. OpenAI(...) instead). The example starts itself twice as a
child process on one SQLite file:
1. the first child runs the agent; the LLM asks for the weather (tool call 1), then
   for a table booking (tool call 2), and the process dies before the booking;
2. the second child is the restarted application: DBOS.launch() resumes the run; the
   LLM calls and the weather lookup that completed are replayed from their
   checkpoints, and the agent continues the same conversation with the booking.
Then it prints which LLM and tool calls each process executed.
"""

from __future__ import annotations

import asyncio
import os

import _path  # noqa: F401  # makes examples.flows importable
from _restart import print_ledger, run_killed_then_restarted
from dbos import DBOS
from llama_index.core.agent.workflow import AgentStream, ToolCallResult

from examples.flows.concierge import (
    RAN_HERE,
    ConciergeAgent,
    ScriptedLLM,
    book_table,
    get_weather,
)


async def app(db_url: str) -> None:
    """The application: create the agent (LLM, tools), launch DBOS, run trip-7."""
    agent = ConciergeAgent(tools=[get_weather, book_table], llm=ScriptedLLM(), timeout=None)
    DBOS(config={"name": "concierge", "system_database_url": db_url, "log_level": "WARNING"})
    DBOS.launch()  # resumes every run a crash left behind, on this agent instance
    try:
        ask = "Weather in Paris? Then book Chez DBOS for 2."
        handler = agent.run(user_msg=ask, run_id="trip-7")
        streamed = ""
        async for event in handler.stream_events():  # the run's durable event stream
            if isinstance(event, ToolCallResult):
                # A restarted process streams the run's events from the start: the
                # ones recorded before the crash come back, their tools not run again.
                seen = "" if event.tool_name in RAN_HERE else " (recorded earlier, not run again)"
                line = f"  event: tool {event.tool_name} -> {event.tool_output.content}{seen}"
                print(line, flush=True)
            elif isinstance(event, AgentStream):
                streamed += event.delta
        print(f"  streamed: {streamed.strip()}", flush=True)
        print(f"  answer: {await handler}", flush=True)
    finally:
        DBOS.destroy()


def main() -> None:
    ledger = run_killed_then_restarted(
        __file__,
        "agent.sqlite",
        first="runs the agent and is killed between two tool calls",
        second="DBOS.launch() resumes run trip-7",
    )
    print_ledger(ledger, "LLM and tool calls executed")


if __name__ == "__main__":
    if "EXAMPLE_APP" in os.environ:
        asyncio.run(app(os.environ["EXAMPLE_APP"]))
    else:
        main()
