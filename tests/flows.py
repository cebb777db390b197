"""Ordinary workflows a user would write, instrumented for crash tests.

Each side effect appends a line to the file named by DBOS_LLAMA_TEST_LOG; a crash
point ``maybe_crash(label)`` kills the process with ``os._exit`` when
DBOS_LLAMA_CRASH_AT equals ``label``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time

from dbos import DBOS
from workflows import Context, Workflow, catch_error, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StepFailedEvent,
    StopEvent,
)
from workflows.retry_policy import (
    ConstantDelayRetryPolicy,
    retry_policy,
    stop_after_attempt,
    wait_fixed,
)

from dbos_llama import durable, durable_step, now, sleep


def mark(line: str) -> None:
    path = os.environ.get("DBOS_LLAMA_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def maybe_crash(label: str) -> None:
    if os.environ.get("DBOS_LLAMA_CRASH_AT") == label:
        mark(f"crash:{label}")
        os._exit(137)


def step_started() -> None:
    """Record that a step body started, under its invocation's ID (its DBOS workflow's,
    or, for a collecting step's invocation run in the run's workflow, its own)."""
    from dbos_llama._context import invocation_var

    invocation = invocation_var.get()
    mark(f"step:{DBOS.workflow_id if invocation is None else invocation.invocation_id}")


@durable_step
async def effect(tag: str) -> str:
    mark(f"effect:{tag}")
    maybe_crash(f"effect:{tag}")
    return f"<{tag}>"


class OneDone(Event):
    acc: str


class TwoDone(Event):
    acc: str


@durable
class Chain3(Workflow):
    """Three steps in a row; step two makes two external calls."""

    @step
    async def one(self, ev: StartEvent) -> OneDone:
        step_started()
        maybe_crash("one:start")
        first = await effect(f"one:{ev.x}")
        return OneDone(acc=first)

    @step
    async def two(self, ev: OneDone) -> TwoDone:
        step_started()
        maybe_crash("two:start")
        a = await effect("two-a")
        maybe_crash("two:between")
        b = await effect("two-b")
        maybe_crash("two:end")
        return TwoDone(acc=ev.acc + a + b)

    @step
    async def three(self, ev: TwoDone) -> StopEvent:
        step_started()
        maybe_crash("three:start")
        c = await effect("three")
        maybe_crash("three:end")
        return StopEvent(result=ev.acc + c)


class Item(Event):
    i: int
    n: int


class ItemDone(Event):
    i: int
    n: int
    value: int


@durable_step
async def square(i: int) -> int:
    mark(f"square:{i}")
    return i * i


@durable
class FanOut(Workflow):
    """One step sends N items; four workers square them; a collector sums them."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        step_started()
        for i in range(ev.n):
            ctx.send_event(Item(i=i, n=ev.n))
        maybe_crash("fan:sent")
        return None

    @step(num_workers=4)
    async def work(self, ev: Item) -> ItemDone:
        step_started()
        maybe_crash(f"work:{ev.i}")
        value = await square(ev.i)
        return ItemDone(i=ev.i, n=ev.n, value=value)

    @step
    async def collect(self, ctx: Context, ev: ItemDone) -> StopEvent | None:
        step_started()
        done = ctx.collect_events(ev, [ItemDone] * ev.n)
        if done is None:
            return None
        maybe_crash("collect:all")
        return StopEvent(result=sum(e.value for e in done))


@durable
class Trickle(FanOut):
    """FanOut whose fan step goes on running after each send, so the events it holds
    go out as messages while it runs (and its result carries them too)."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        step_started()
        for i in range(ev.n):
            ctx.send_event(Item(i=i, n=ev.n))
            await asyncio.sleep(0.15)  # longer than the hold (CARRY_SECONDS)
            maybe_crash(f"trickle:sent-{i}")
        return None


@durable
class Sleeper(Workflow):
    """One step that sleeps durably."""

    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        started = await now()
        mark(f"resume:{time.time()}")
        await sleep(ev.seconds)
        return StopEvent(result={"started": started, "finished": time.time()})


class _Versioned(Workflow):
    @step
    async def first(self, ev: StartEvent) -> OneDone:
        step_started()
        return OneDone(acc=await effect("v-first"))

    @step
    async def second(self, ev: OneDone) -> StopEvent:
        step_started()
        maybe_crash("versioned:second")
        return StopEvent(result=ev.acc + await effect("v-second"))


# The code version a process runs is chosen by the test through the environment.
Versioned = durable(
    _Versioned,
    name="tests.versioned",
    version=os.environ.get("DBOS_LLAMA_FLOW_VERSION", "v1"),
)


@durable
class NeedsArgs(Workflow):
    """A workflow whose constructor needs an argument: recovery waits for an instance."""

    def __init__(self, prefix: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix

    @step
    async def one(self, ev: StartEvent) -> OneDone:
        step_started()
        return OneDone(acc=await effect("na-one"))

    @step
    async def two(self, ev: OneDone) -> StopEvent:
        step_started()
        maybe_crash("needsargs:two")
        return StopEvent(result=self.prefix + ev.acc)


class Progress(Event):
    i: int


@durable
class Streamer(Workflow):
    """Steps that write progress events to the stream around a crash point."""

    @step
    async def one(self, ctx: Context, ev: StartEvent) -> OneDone:
        step_started()
        ctx.write_event_to_stream(Progress(i=0))
        ctx.write_event_to_stream(Progress(i=1))
        first = await effect("s-one")
        maybe_crash("streamer:one")
        ctx.write_event_to_stream(Progress(i=2))
        return OneDone(acc=first)

    @step
    async def two(self, ctx: Context, ev: OneDone) -> StopEvent:
        step_started()
        ctx.write_event_to_stream(Progress(i=3))
        maybe_crash("streamer:two")
        return StopEvent(result=ev.acc)


@durable
class Approval(Workflow):
    """Human in the loop: ask, wait (for days), decide."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        step_started()
        quote = await effect("quote")
        return InputRequiredEvent(prefix=f"approve {quote} for {ev.customer}?")

    @step
    async def decide(self, ev: HumanResponseEvent) -> StopEvent:
        step_started()
        return StopEvent(result=f"answer={ev.response}")


@durable
class Waiter(Workflow):
    """ctx.wait_for_event inside a step, after an external call."""

    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        step_started()
        quote = await effect("before-wait")
        answer = await ctx.wait_for_event(
            HumanResponseEvent,
            waiter_event=InputRequiredEvent(prefix=f"ok with {quote}?"),
            timeout=None,
        )
        after = await effect(f"after-{answer.response}")
        return StopEvent(result=quote + after)


@durable
class Tally(Workflow):
    """State edits (set, edit_state) around crash points."""

    @step
    async def one(self, ctx: Context, ev: StartEvent) -> OneDone:
        step_started()
        await ctx.store.set("customer", ev.customer)
        async with ctx.store.edit_state() as state:
            state.count = getattr(state, "count", 0) + 1
        maybe_crash("tally:one")
        return OneDone(acc="one")

    @step
    async def two(self, ctx: Context, ev: OneDone) -> StopEvent:
        step_started()
        async with ctx.store.edit_state() as state:
            state.count = state.count + 10
        maybe_crash("tally:two-between")
        await ctx.store.set("last", await effect("tally-two"))
        maybe_crash("tally:two-end")
        return StopEvent(
            result={
                "customer": await ctx.store.get("customer"),
                "count": await ctx.store.get("count"),
                "last": await ctx.store.get("last"),
            }
        )


def attempts_so_far(tag: str) -> int:
    path = os.environ.get("DBOS_LLAMA_TEST_LOG")
    if not path or not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.strip() == tag)


def failing_attempt(tag: str, failures: int) -> int:
    """One attempt of a step that fails its first ``failures`` executions (counted
    across processes in the log); crash point ``<tag>:<attempt>``; returns the attempt."""
    step_started()
    attempt = attempts_so_far(f"{tag}-attempt")
    mark(f"{tag}-attempt")
    maybe_crash(f"{tag}:{attempt}")
    if attempt < failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@durable
class Flaky(Workflow):
    """A step that fails twice, retried with a delay by its retry policy."""

    @step(retry_policy=retry_policy(wait=wait_fixed(0.5), stop=stop_after_attempt(4)))
    async def shaky(self, ev: StartEvent) -> StopEvent:
        attempt = failing_attempt("shaky", failures=2)
        return StopEvent(result=f"ok after {attempt} failures")


class ShakyDone(Event):
    text: str


class SteadyDone(Event):
    text: str


@durable
class FlakyWithSibling(Workflow):
    """A retried step (with delays) while a sibling step is still running."""

    @step(retry_policy=retry_policy(wait=wait_fixed(0.3), stop=stop_after_attempt(5)))
    async def shaky(self, ev: StartEvent) -> ShakyDone:
        attempt = failing_attempt("sib", failures=3)
        return ShakyDone(text=f"shaky after {attempt}")

    @step
    async def steady(self, ev: StartEvent) -> SteadyDone:
        step_started()
        await asyncio.sleep(2.0)
        return SteadyDone(text="steady")

    @step
    async def join(self, ctx: Context, ev: ShakyDone | SteadyDone) -> StopEvent | None:
        both = ctx.collect_events(ev, [ShakyDone, SteadyDone])
        if both is None:
            return None
        return StopEvent(result=" + ".join(e.text for e in both))


@durable
class Rescued(Workflow):
    """A step that fails for good, and a @catch_error handler that recovers."""

    @step
    async def fragile(self, ev: StartEvent) -> StopEvent:
        step_started()
        await effect("fragile-call")
        raise ValueError("the fragile step broke")

    @catch_error
    async def rescue(self, ev: StepFailedEvent) -> StopEvent:
        step_started()
        note = await effect("rescue-call")
        maybe_crash("rescue:handler")
        return StopEvent(result=f"rescued {ev.step_name}: {ev.exception} {note}")


@durable
class Timed(Workflow):
    """A run with a 4 s timeout (alive time) whose steps take about 2 s in total."""

    def __init__(self, **kwargs) -> None:
        kwargs["timeout"] = 4.0
        super().__init__(**kwargs)

    @step
    async def one(self, ev: StartEvent) -> OneDone:
        step_started()
        await asyncio.sleep(1.0)
        maybe_crash("timed:one")
        return OneDone(acc=await effect("timed-one"))

    @step
    async def two(self, ev: OneDone) -> StopEvent:
        step_started()
        await asyncio.sleep(1.0)
        return StopEvent(result=ev.acc)


@durable
class Inner(Workflow):
    """A durable workflow that another workflow's step runs."""

    @step
    async def work(self, ev: StartEvent) -> StopEvent:
        step_started()
        value = await effect(f"inner-{ev.tag}")
        maybe_crash("inner:work")
        return StopEvent(result=value)


@durable
class Outer(Workflow):
    """A step that starts a nested durable run and waits for its result."""

    @step
    async def delegate(self, ev: StartEvent) -> StopEvent:
        step_started()
        inner = await Inner(timeout=None).run(run_id=f"{ev.run}-inner", tag=ev.run)
        return StopEvent(result=f"outer({inner})")


class Prepared(Event):
    pass


@durable
class RetryAfterRestart(Workflow):
    """A step that fails once, with a retry delay, in a run recovered after downtime;
    a bystander step ends the run instead if the retry comes later than it."""

    @step
    async def prepare(self, ev: StartEvent) -> Prepared:
        maybe_crash("retry:prepared")
        return Prepared()

    @step(retry_policy=ConstantDelayRetryPolicy(delay=1.0, maximum_attempts=2))
    async def flaky(self, ev: Prepared) -> StopEvent:
        mark(f"attempt {time.time()}")
        attempts = [line for line in _log_lines() if line.startswith("attempt ")]
        if len(attempts) == 1:
            raise RuntimeError("fails once")
        return StopEvent(result="done")

    @step
    async def bystander(self, ev: Prepared) -> StopEvent:
        # Three times the retry delay: the retry comes first unless its delay also
        # counted the run's downtime (4 s in the test).
        await asyncio.sleep(3.0)
        return StopEvent(result="bystander")


def _log_lines() -> list[str]:
    path = os.environ.get("DBOS_LLAMA_TEST_LOG")
    return open(path).read().splitlines() if path and os.path.exists(path) else []


@durable
class ReadThenWrite(Workflow):
    """A step that reads a key, writes it, and uses what it read: after a crash it
    must read what it read the first time, not its own recorded write."""

    @step
    async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        step_started()
        n = await ctx.store.get("n", default=0)
        await ctx.store.set("n", n + 1)
        maybe_crash("rw:after-set")
        if n == 0:  # a branch on the read: a different path would be a different record
            await effect("rw-first")
        maybe_crash("rw:after-call")
        async with ctx.store.edit_state() as state:
            state["seen"] = n
        maybe_crash("rw:after-edit")
        return StopEvent(
            result={"read": n, "n": await ctx.store.get("n"), "seen": await ctx.store.get("seen")}
        )


class Part(Event):
    i: int
    n: int


class PartDone(Event):
    n: int
    value: int


class SummarizeBase(Workflow):
    """Map, then reduce with a summary: the collector counts what it saw in the run's
    state and, once every part is in, makes one durable call (an LLM's, say)."""

    @step
    async def split(self, ctx: Context, ev: StartEvent) -> Part | None:
        step_started()
        for i in range(ev.n):
            ctx.send_event(Part(i=i, n=ev.n))
        return None

    @step
    async def gather(self, ctx: Context, ev: PartDone) -> StopEvent | None:
        step_started()
        seen = await ctx.store.get("seen", default=0) + 1
        await ctx.store.set("seen", seen)
        maybe_crash(f"gather:{seen}")
        done = ctx.collect_events(ev, [PartDone] * ev.n)
        if done is None:
            return None
        summary = await effect("summary")
        maybe_crash("gather:summarized")
        total = sum(e.value for e in done)
        return StopEvent(result=f"{total}|{await ctx.store.get('seen')}|{summary}")


@durable
class Summarize(SummarizeBase):
    """The workers return their results."""

    @step(num_workers=2)
    async def work(self, ev: Part) -> PartDone:
        step_started()
        return PartDone(n=ev.n, value=await square(ev.i))


@durable
class SummarizeSent(SummarizeBase):
    """The workers send their results: they reach the collector through the mailbox,
    so each collector invocation starts beside a new mailbox pull."""

    @step(num_workers=2)
    async def work(self, ctx: Context, ev: Part) -> PartDone | None:
        step_started()
        ctx.send_event(PartDone(n=ev.n, value=await square(ev.i)))
        await asyncio.sleep(0.1)  # (runs on: its event goes out as a message)
        return None


CONSTRUCTOR_ARGS = {"needsargs": {"prefix": "p:"}}

FLOWS = {
    "retry-after-restart": RetryAfterRestart,
    "chain3": Chain3,
    "fanout": FanOut,
    "trickle": Trickle,
    "sleeper": Sleeper,
    "versioned": Versioned,
    "needsargs": NeedsArgs,
    "streamer": Streamer,
    "approval": Approval,
    "waiter": Waiter,
    "tally": Tally,
    "read-then-write": ReadThenWrite,
    "flaky": Flaky,
    "flaky-sibling": FlakyWithSibling,
    "rescued": Rescued,
    "timed": Timed,
    "outer": Outer,
    "summarize": Summarize,
    "summarize-sent": SummarizeSent,
}


class EvolvingBase(Workflow):
    """Steps one and three of the "evolving" workflow; tests/evolving_v1.py and
    evolving_v2.py each add their own step two (a deploy that edits one step)."""

    @step
    async def one(self, ev: StartEvent) -> OneDone:
        step_started()
        return OneDone(acc=await effect("ev-one"))

    @step
    async def three(self, ev: TwoDone) -> StopEvent:
        step_started()
        return StopEvent(result=ev.acc + await effect("ev-three"))


# The "evolving" workflow is defined twice, with different code in step ``two`` (an
# edited deploy); DBOS_LLAMA_EVOLVING names the module a process runs.
FLOWS["evolving"] = importlib.import_module(
    os.environ.get("DBOS_LLAMA_EVOLVING", "tests.evolving_v1")
).Evolving


#: How long the idle-release flows wait idle before they leave their worker's memory.
IDLE_SECONDS = 1.0


@durable(name="tests.IdleApproval", idle_release=IDLE_SECONDS)
class IdleApproval(Workflow):
    """Human in the loop, released from memory while it waits for the answer."""

    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        step_started()
        quote = await effect("quote")
        return InputRequiredEvent(prefix=f"approve {quote} for {ev.customer}?")

    @step
    async def decide(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        step_started()
        mark(f"decided:{ev.response}")
        ctx.write_event_to_stream(Progress(i=9))
        return StopEvent(result=f"answer={ev.response}")


@durable(name="tests.IdleDeadline", idle_release=IDLE_SECONDS)
class IdleDeadline(Workflow):
    """``ctx.wait_for_event`` with a timeout, released while it waits."""

    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        step_started()
        quote = await effect("before-wait")
        try:
            answer = await ctx.wait_for_event(
                HumanResponseEvent,
                waiter_event=InputRequiredEvent(prefix=f"ok with {quote}?"),
                timeout=ev.wait,
            )
        except asyncio.TimeoutError:
            mark("timed-out")
            return StopEvent(result=f"{quote}:timed-out")
        return StopEvent(result=f"{quote}:{answer.response}")


class Poke(Event):
    note: str


@durable(name="tests.IdleNap", idle_release=IDLE_SECONDS)
class IdleNap(Workflow):
    """A step in a durable sleep far longer than the idle threshold (released while
    it sleeps), and a step that takes events sent meanwhile."""

    @step
    async def nap(self, ev: StartEvent) -> StopEvent | Poke:  # (Poke: sent from outside)
        step_started()
        before = await effect("before-nap")
        await sleep(ev.seconds)
        mark("woke")
        return StopEvent(result=before + await effect("after-nap"))

    @step
    async def poked(self, ev: Poke) -> None:
        step_started()
        mark(f"poked:{ev.note}")


FLOWS["idle-approval"] = IdleApproval
FLOWS["idle-deadline"] = IdleDeadline
FLOWS["idle-nap"] = IdleNap
