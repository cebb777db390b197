"""Durable LlamaIndex agents: LLM calls, tool calls and chat memory of agent workflows."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

try:
    from llama_index.core.agent.workflow import AgentWorkflow, BaseWorkflowAgent
    from llama_index.core.base.llms.types import LLMMetadata
    from llama_index.core.llms.function_calling import FunctionCallingLLM
    from llama_index.core.llms.llm import LLM
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.core.storage.chat_store import SimpleChatStore
    from llama_index.core.tools import FunctionTool, ToolOutput
    from pydantic import Field, PrivateAttr
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Durable LlamaIndex agents need llama-index-core: pip install 'dbos-llama[agents]'"
    ) from missing

from . import _naming
from ._binding import AUTO_INSTANCE_ATTR
from ._context import run_id_var
from ._durable_step import _checkpoint, _in_durable_step_code, checkpoint_checked
from ._run_state import run_state
from ._serialization import ensure_serializable, with_storable_exception

logger = logging.getLogger("dbos_llama")

T = TypeVar("T")

#: Attribute marking a tool (or its function) as checkpointed or not.
CHECKPOINT_ATTR = "__dbos_llama_checkpoint__"
#: Where LlamaIndex agents keep their chat memory in ``ctx.store``.
MEMORY_KEY = "memory"
#: Private methods of the agent classes that dbos_llama extends in the durable
#: subclass (``tests/test_agents.py`` checks that upstream still has them).
TOOL_CALL_METHOD = "_call_tool"  # (ctx, tool, tool_input) -> ToolOutput
INIT_CONTEXT_METHOD = "_init_context"  # (ctx, start_event) -> None


def durable_tool(tool: T | None = None, *, checkpoint: bool = True) -> Any:
    """Choose whether an agent's tool call is a checkpoint (the default) or always runs.

    A checkpointed tool call of a durable agent runs once: after a crash its
    recorded output is replayed. Mark a tool ``checkpoint=False`` when it must
    run every time the agent's step runs (e.g. it reads a live value). Works on
    functions (before they are given to the agent) and on `FunctionTool` objects.

    Example:
        ```python
        @durable_tool(checkpoint=False)
        def current_time() -> str: ...

        agent = DurableAgent(tools=[current_time, search], llm=llm)
        ```
    """
    if tool is None:
        return functools.partial(durable_tool, checkpoint=checkpoint)
    setattr(tool, CHECKPOINT_ATTR, checkpoint)
    return tool


def _checkpoints(tool: Any) -> bool:
    """Whether calls of ``tool`` are recorded: not for tools that take the Context
    (their context operations are durable by themselves), nor for opted-out ones."""
    if isinstance(tool, FunctionTool) and tool.requires_context:
        return False
    parts = [tool, getattr(tool, "base_tool", None)]
    parts += [getattr(tool, "fn", None), getattr(tool, "async_fn", None)]
    for part in parts:
        marker = getattr(part, CHECKPOINT_ATTR, None)
        if marker is not None:
            return bool(marker)
    return True


def _storable_tool_output(tool_name: str, output: Any) -> Any:
    """The tool's output made safe to record, or `NotSerializableError` naming the tool."""
    if isinstance(output, ToolOutput) and output.exception is not None:
        output = with_storable_exception(output, "exception")
    ensure_serializable(output, f"The result of tool {tool_name!r}")
    return output


class DurableLLM(FunctionCallingLLM):
    """An LLM whose async calls are checkpoints of the durable run that makes them.

    Inside a step of a durable run, ``achat``, ``acomplete``, ``achat_with_tools``
    and their streaming forms run once: the response (every chunk of a stream) is
    recorded as a DBOS step named ``dbos_llama.llm.<method>``, and a step that runs
    again after a crash gets the recorded response. A stream is consumed inside the
    checkpoint and handed back as a stream of the recorded chunks. Anywhere else
    (and for the sync methods) it is the wrapped LLM. Durable agent classes wrap
    their LLMs in it by themselves.
    """

    llm: LLM = Field(description="The wrapped LLM.")

    def __init__(self, llm: LLM, **kwargs: Any) -> None:
        shared: dict[str, Any] = {
            k: getattr(llm, k)
            for k in ("system_prompt", "messages_to_prompt", "completion_to_prompt")
            if k in type(llm).model_fields
        }
        super().__init__(llm=llm, **{**shared, **kwargs})

    @classmethod
    def class_name(cls) -> str:
        return "DurableLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    # -- checkpointed async calls ----------------------------------------------------
    async def _recorded(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self.llm, method)
        if not _in_durable_step_code():
            return await call(*args, **kwargs)
        name = _naming.llm_call_name(method)
        what = f"The response of LLM call {name!r}"
        return await checkpoint_checked({"name": name}, lambda: call(*args, **kwargs), what)

    async def _recorded_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self.llm, method)
        if not _in_durable_step_code():
            return await call(*args, **kwargs)
        name = _naming.llm_call_name(method)

        async def consume() -> list[Any]:
            return [chunk async for chunk in await call(*args, **kwargs)]

        what = f"The streamed response of LLM call {name!r}"
        return _replay(await checkpoint_checked({"name": name}, consume, what))

    async def achat(self, messages: Any, **kwargs: Any) -> Any:
        return await self._recorded("achat", messages, **kwargs)

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return await self._recorded("acomplete", prompt, formatted=formatted, **kwargs)

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        return await self._recorded_stream("astream_chat", messages, **kwargs)

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        kwargs["formatted"] = formatted
        return await self._recorded_stream("astream_complete", prompt, **kwargs)

    async def achat_with_tools(self, tools: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._recorded("achat_with_tools", tools, *args, **kwargs)

    async def astream_chat_with_tools(self, tools: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._recorded_stream("astream_chat_with_tools", tools, *args, **kwargs)

    # -- plain delegation ------------------------------------------------------------
    def chat(self, messages: Any, **kwargs: Any) -> Any:
        return self.llm.chat(messages, **kwargs)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return self.llm.complete(prompt, formatted=formatted, **kwargs)

    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        return self.llm.stream_chat(messages, **kwargs)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return self.llm.stream_complete(prompt, formatted=formatted, **kwargs)

    def chat_with_tools(self, tools: Any, *args: Any, **kwargs: Any) -> Any:
        return self.llm.chat_with_tools(tools, *args, **kwargs)  # type: ignore[attr-defined]  # FunctionCallingLLM API; self.llm is typed LLM

    def stream_chat_with_tools(self, tools: Any, *args: Any, **kwargs: Any) -> Any:
        return self.llm.stream_chat_with_tools(tools, *args, **kwargs)  # type: ignore[attr-defined]  # FunctionCallingLLM API; self.llm is typed LLM

    def _prepare_chat_with_tools(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        prepared: dict[str, Any] = self.llm._prepare_chat_with_tools(*args, **kwargs)  # type: ignore[attr-defined]  # FunctionCallingLLM API; self.llm is typed LLM
        return prepared

    def _validate_chat_with_tools_response(self, *args: Any, **kwargs: Any) -> Any:
        return self.llm._validate_chat_with_tools_response(*args, **kwargs)  # type: ignore[attr-defined]  # FunctionCallingLLM API; self.llm is typed LLM

    def get_tool_calls_from_response(self, *args: Any, **kwargs: Any) -> Any:
        return self.llm.get_tool_calls_from_response(*args, **kwargs)  # type: ignore[attr-defined]  # FunctionCallingLLM API; self.llm is typed LLM


async def _replay(chunks: list[Any]) -> AsyncGenerator[Any, None]:
    for chunk in chunks:
        yield chunk


def durable_llm(llm: Any) -> Any:
    """``llm`` wrapped in a `DurableLLM` (once); anything else unchanged."""
    if isinstance(llm, LLM) and not isinstance(llm, DurableLLM):
        return DurableLLM(llm)
    return llm


class DurableMemory(ChatMemoryBuffer):
    """The chat memory of a durable agent run: a `ChatMemoryBuffer` whose changes
    are journaled in the run's durable ``ctx.store``, so a recovered run continues
    the same conversation. Durable agent classes convert their memory to it."""

    _store_path: str | None = PrivateAttr(default=None)
    # The memory it was made from (e.g. given with ``run(memory=...)``): it gets the
    # same changes, in the process that runs the step, as it would without dbos_llama.
    _origin: ChatMemoryBuffer | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "DurableMemory"

    @classmethod
    def of(
        cls, memory: ChatMemoryBuffer, store_path: str, origin: ChatMemoryBuffer | None = None
    ) -> DurableMemory:
        """A durable copy of ``memory`` that journals itself under ``store_path``."""
        copy = cls(
            token_limit=memory.token_limit,
            tokenizer_fn=memory.tokenizer_fn,
            chat_store=SimpleChatStore(store={memory.chat_store_key: memory.get_all()}),
            chat_store_key=memory.chat_store_key,
        )
        copy._store_path = store_path
        copy._origin = origin
        return copy

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        return {
            "token_limit": self.token_limit,
            "chat_store_key": self.chat_store_key,
            "messages": [m.model_dump(mode="json") for m in self.get_all()],
            "store_path": self._store_path,
            "class_name": self.class_name(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> DurableMemory:
        from llama_index.core.base.llms.types import ChatMessage

        key = data["chat_store_key"]
        messages = [ChatMessage.model_validate(m) for m in data.get("messages", [])]
        memory = cls(
            token_limit=data["token_limit"],
            chat_store=SimpleChatStore(store={key: messages}),
            chat_store_key=key,
        )
        memory._store_path = data.get("store_path")
        return memory

    async def _journal(self, change: Callable[[ChatMemoryBuffer], None]) -> None:
        """Store a changed copy in the run's state before changing this object in
        place: the state's journal only sees values replaced, not mutated."""
        run_id = run_id_var.get()
        if self._store_path is None or run_id is None:
            return
        store = run_state(run_id).state_store
        if store is None:
            return
        changed = DurableMemory.of(self, self._store_path, self._origin)
        change(changed)
        await store.set(self._store_path, changed)

    async def _change(self, change: Callable[[ChatMemoryBuffer], None]) -> None:
        await self._journal(change)
        change(self)
        if self._origin is not None:
            change(self._origin)

    async def aput(self, message: Any) -> None:
        await self._change(lambda m: m.put(message))

    async def aput_messages(self, messages: list[Any]) -> None:
        await self._change(lambda m: m.put_messages(messages))

    async def aset(self, messages: list[Any]) -> None:
        await self._change(lambda m: m.set(messages))

    async def areset(self) -> None:
        await self._change(lambda m: m.reset())


async def _make_memory_durable(ctx: Any) -> None:
    memory = await ctx.store.get(MEMORY_KEY, default=None)
    if isinstance(memory, DurableMemory) or run_id_var.get() is None:
        return
    if isinstance(memory, ChatMemoryBuffer) and type(memory.chat_store) is SimpleChatStore:
        await ctx.store.set(MEMORY_KEY, DurableMemory.of(memory, MEMORY_KEY, origin=memory))
    elif memory is not None:
        logger.warning(
            "The agent's memory (%s) is not an in-memory ChatMemoryBuffer: dbos_llama does "
            "not journal it, so a recovered run sees it as its store has it then.",
            type(memory).__name__,
        )


def is_agent_class(cls: type) -> bool:
    return issubclass(cls, (BaseWorkflowAgent, AgentWorkflow))


def extend_durable_class(cls: type, namespace: dict[str, Any]) -> None:
    """Add to the namespace of ``cls``'s durable subclass what makes its agents
    durable: checkpointed tool calls, LLMs wrapped in `DurableLLM`, a journaled
    memory, and no automatic instance at recovery (it needs the app's LLM and tools)."""
    if not is_agent_class(cls):
        return
    call_tool = getattr(cls, TOOL_CALL_METHOD)
    init_context = getattr(cls, INIT_CONTEXT_METHOD)
    plain_init = namespace["__init__"]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        plain_init(self, *args, **kwargs)
        if isinstance(self, BaseWorkflowAgent):
            self.llm = durable_llm(self.llm)
        for agent in getattr(self, "agents", {}).values():
            agent.llm = durable_llm(agent.llm)

    functools.update_wrapper(__init__, plain_init)

    async def _call_tool(self: Any, ctx: Any, tool: Any, tool_input: dict[str, Any]) -> Any:
        if not (_in_durable_step_code() and _checkpoints(tool)):
            return await call_tool(self, ctx, tool, tool_input)
        tool_name = tool.metadata.get_name()

        async def call() -> Any:
            output = await call_tool(self, ctx, tool, tool_input)
            return _storable_tool_output(tool_name, output)

        return await _checkpoint({"name": _naming.tool_call_name(tool_name)}, call)

    async def _init_context(self: Any, ctx: Any, ev: Any) -> None:
        await init_context(self, ctx, ev)
        await _make_memory_durable(ctx)

    namespace.update(
        {
            "__init__": __init__,
            TOOL_CALL_METHOD: _call_tool,
            INIT_CONTEXT_METHOD: _init_context,
            AUTO_INSTANCE_ATTR: False,
        }
    )
