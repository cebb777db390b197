"""The durable-agent example's agent: a FunctionAgent with an offline scripted LLM and
two tools, each call writing a ledger line per execution (the process dies before
the booking when ``EXAMPLE_CRASH=1``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent
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
