"""LlamaIndex agents for the tests: a scripted tool-calling LLM, tools, durable agent classes.

The LLM answers from a script, by turn (how many times it has answered in the
conversation it is given), so a recovered run gets the same answers as an
uninterrupted one. Every LLM and tool call appends a line to the side-effect log
(``mark``) and passes a crash point (``maybe_crash``).
"""

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.tools import FunctionTool
from workflows import Context
from workflows.events import HumanResponseEvent, InputRequiredEvent

from dbos_llama import durable, durable_tool
from tests.flows import mark, maybe_crash

#: A turn: the final text, or the tool calls to make as (tool name, arguments).
Turn = str | list[tuple[str, dict[str, Any]]]


class ScriptedLLM(FunctionCallingLLM):
    """A deterministic tool-calling LLM: turn ``n`` of ``label`` answers ``script[n]``."""

    label: str
    script: list[Any]

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_function_calling_model=True, model_name=f"scripted-{self.label}")

    def _respond(self, messages: Sequence[ChatMessage]) -> ChatResponse:
        turn = sum(
            1
            for m in messages
            if m.role == MessageRole.ASSISTANT and m.additional_kwargs.get("llm") == self.label
        )
        mark(f"llm:{self.label}:{turn}")
        maybe_crash(f"llm:{self.label}:{turn}")
        entry = self.script[turn]
        kwargs: dict[str, Any] = {"llm": self.label, "turn": turn}
        if isinstance(entry, str):
            return ChatResponse(
                message=ChatMessage(role="assistant", content=entry, additional_kwargs=kwargs)
            )
        kwargs["tool_calls"] = [
            {"tool_id": f"{self.label}-{turn}-{i}", "tool_name": name, "tool_kwargs": args}
            for i, (name, args) in enumerate(entry)
        ]
        message = ChatMessage(role="assistant", content="", additional_kwargs=kwargs)
        return ChatResponse(message=message)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._respond(messages)

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> AsyncGenerator[ChatResponse, None]:
        response = self._respond(messages)

        async def words() -> AsyncGenerator[ChatResponse, None]:
            text = response.message.content or ""
            sofar = ""
            for i, word in enumerate(text.split(" ")):
                delta = word if i == 0 else " " + word
                sofar += delta
                message = ChatMessage(
                    role="assistant",
                    content=sofar,
                    additional_kwargs=response.message.additional_kwargs,
                )
                yield ChatResponse(message=message, delta=delta)

        return words()

    def _prepare_chat_with_tools(
        self, tools: Any, user_msg: Any = None, chat_history: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role="user", content=str(user_msg)))
        return {"messages": messages}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        # Called by the agent after the LLM call returned (outside its checkpoint).
        extra = response.message.additional_kwargs
        maybe_crash(f"after-llm:{self.label}:{extra.get('turn')}")
        calls = extra.get("tool_calls", [])
        return [ToolSelection(**call) for call in calls]

    # The agents use the async methods only.
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        raise NotImplementedError

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError

    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


class ScriptedReActLLM(CustomLLM):
    """A deterministic text LLM for ReActAgent: turn ``n`` (observations seen) answers
    ``script[n]`` in ReAct's Thought/Action/Answer format."""

    script: list[str]

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted-react")

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        turn = sum((m.content or "").count("Observation:") for m in messages if m.role != "system")
        mark(f"llm:react:{turn}")
        maybe_crash(f"llm:react:{turn}")
        return ChatResponse(message=ChatMessage(role="assistant", content=self.script[turn]))

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Any:
        response = await self.achat(messages)

        async def whole() -> AsyncGenerator[ChatResponse, None]:
            yield response.model_copy(update={"delta": response.message.content})

        return whole()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


# -- tools ---------------------------------------------------------------------------------
def add(a: int, b: int) -> int:
    """Add two numbers."""
    mark(f"tool:add:{a}+{b}")
    maybe_crash(f"tool:add:{a}+{b}")
    return a + b


async def multiply(a: int, b: int) -> int:
    """Multiply two numbers."""
    mark(f"tool:multiply:{a}*{b}")
    maybe_crash(f"tool:multiply:{a}*{b}")
    return a * b


@durable_tool(checkpoint=False)
def ticket() -> str:
    """A tool that must always run (not checkpointed)."""
    mark("tool:ticket")
    return "ticket-7"


async def approve_refund(ctx: Context, amount: int) -> str:
    """Ask a human to approve a refund (human in the loop from a tool)."""
    mark(f"tool:approve:{amount}")
    answer = await ctx.wait_for_event(
        HumanResponseEvent,
        waiter_id=f"refund-{amount}",
        waiter_event=InputRequiredEvent(prefix=f"refund {amount}?"),
        timeout=None,
    )
    return f"refund {amount}: {answer.response}"


class Connection:
    """A live handle a tool should not return (it cannot be stored)."""

    def __init__(self) -> None:
        self.lock = __import__("threading").Lock()


def open_connection() -> Connection:
    """Return a live connection (bad: not serializable)."""
    mark("tool:open_connection")
    return Connection()


# -- durable agent classes -----------------------------------------------------------------
DurableFunctionAgent = durable(FunctionAgent, name="tests.calculator-agent")
DurableReActAgent = durable(ReActAgent, name="tests.react-agent")
DurableAgentWorkflow = durable(AgentWorkflow, name="tests.agent-team")

CALC_SCRIPT: list[Turn] = [
    [("add", {"a": 1, "b": 2})],
    [("multiply", {"a": 3, "b": 4})],
    [("add", {"a": 3, "b": 12}), ("ticket", {})],
    "The answer is 15 (ticket-7)",
]
CALC_ANSWER = "The answer is 15 (ticket-7)"


def calculator(streaming: bool = False) -> Any:
    llm = ScriptedLLM(label="calc", script=CALC_SCRIPT)
    return DurableFunctionAgent(
        name="calculator",
        tools=[add, FunctionTool.from_defaults(async_fn=multiply), ticket],
        llm=llm,
        streaming=streaming,
        timeout=None,
    )


def react() -> Any:
    llm = ScriptedReActLLM(
        script=[
            'Thought: I need to add first.\nAction: add\nAction Input: {"a": 1, "b": 2}',
            'Thought: Now multiply.\nAction: multiply\nAction Input: {"a": 3, "b": 4}',
            "Thought: I can answer without using any more tools.\nAnswer: 12",
        ]
    )
    return DurableReActAgent(tools=[add, multiply], llm=llm, timeout=None)


def team() -> Any:
    """Two agents: the triage agent hands off to the refunds agent, which asks a human."""
    triage = FunctionAgent(
        name="triage",
        description="Routes requests",
        tools=[add],
        can_handoff_to=["refunds"],
        llm=ScriptedLLM(
            label="triage",
            script=[
                [("add", {"a": 40, "b": 2})],
                [("handoff", {"to_agent": "refunds", "reason": "a refund of 42"})],
            ],
        ),
        streaming=False,
    )
    refunds = FunctionAgent(
        name="refunds",
        description="Handles refunds",
        tools=[approve_refund, multiply],
        llm=ScriptedLLM(
            label="refunds",
            script=[
                [("multiply", {"a": 6, "b": 7})],
                [("approve_refund", {"amount": 42})],
                "Refund of 42 done",
            ],
        ),
        streaming=True,
    )
    return DurableAgentWorkflow(agents=[triage, refunds], root_agent="triage", timeout=None)


def bad_tool_agent() -> Any:
    llm = ScriptedLLM(label="bad", script=[[("open_connection", {})], "unreachable"])
    return DurableFunctionAgent(tools=[open_connection], llm=llm, streaming=False, timeout=None)


#: Factories the driver uses for ``python -m tests.driver DB FLOW ...``.
AGENT_FLOWS = {
    "agent-calc": calculator,
    "agent-calc-stream": lambda: calculator(streaming=True),
    "agent-react": react,
    "agent-team": team,
    "agent-bad-tool": bad_tool_agent,
}
