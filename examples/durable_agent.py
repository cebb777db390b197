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
from pathlib import Path
from typing import Any

from _restart import print_ledger, run_killed_then_restarted
from dbos import DBOS
from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, LLMMetadata
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from dbos_llama import durable

LEDGER = Path(os.environ.get("EXAMPLE_LEDGER", "ledger.txt"))


#: Tools this process executed (a restarted process replays the others' results).
RAN_HERE: set[str] = set()


def record(call: str) -> None:
    """The side effect of a call: one line in the ledger per execution."""
    with LEDGER.open("a") as f:
        f.write(f"pid {os.getpid()}: {call}\n")


class ScriptedLLM(FunctionCallingLLM):
    """An offline stand-in for a tool-calling chat model: answers turn by turn."""

    script: list[Any] = [
        [("get_weather", {"city": "Paris"})],
        [("book_table", {"restaurant": "Chez DBOS", "people": 2})],
        "Sunny in Paris, and your table for 2 at Chez DBOS is booked (ref T-42).",
    ]

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_function_calling_model=True, model_name="scripted")

    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        turn = sum(1 for m in messages if m.role == "assistant")
        record(f"LLM call, turn {turn}")  # imagine a paid, slow model call here
        answer = self.script[turn]
        if isinstance(answer, str):
            return ChatResponse(message=ChatMessage(role="assistant", content=answer))
        calls = [{"tool_id": f"t{turn}", "tool_name": n, "tool_kwargs": a} for n, a in answer]
        message = ChatMessage(role="assistant", content="", additional_kwargs={"calls": calls})
        return ChatResponse(message=message)

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        response = await self.achat(messages)

        async def chunks() -> Any:
            for word in (response.message.content or "").split(" "):
                yield response.model_copy(update={"delta": word + " "})

        return chunks()

    def _prepare_chat_with_tools(self, tools: Any, chat_history: Any = None, **kw: Any) -> dict:
        return {"messages": chat_history or []}

    def get_tool_calls_from_response(self, response: ChatResponse, **kw: Any) -> list:
        calls = response.message.additional_kwargs.get("calls", [])
        return [ToolSelection(**call) for call in calls]

    def chat(self, *a: Any, **kw: Any) -> Any:  # the agent only uses async calls
        raise NotImplementedError

    complete = stream_chat = stream_complete = acomplete = astream_complete = chat


def get_weather(city: str) -> str:
    """Current weather of a city."""
    record(f"tool get_weather({city!r})")  # imagine a paid weather API
    RAN_HERE.add("get_weather")
    return f"Sunny, 24 C in {city}"


def book_table(restaurant: str, people: int) -> str:
    """Book a table: a side effect that must not happen twice."""
    if os.environ.get("EXAMPLE_CRASH") == "1":
        print("  ... process dies now (os._exit), between two tool calls", flush=True)
        os._exit(1)
    record(f"tool book_table({restaurant!r}, {people})")
    RAN_HERE.add("book_table")
    return "booked, ref T-42"


# A durable subclass of LlamaIndex's FunctionAgent: its LLM and tool calls are
# checkpoints, its chat memory is journaled, and its runs resume after a crash.
ConciergeAgent = durable(FunctionAgent, name="concierge-agent")


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
