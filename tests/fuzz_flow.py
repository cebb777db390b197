"""One durable workflow that runs any generated "program" (for the crash fuzz test).

Run it in a process with ``python -m tests.fuzz_driver``. With ``FUZZ_KILL_AT=N``
the process kills itself (``os._exit(137)``) at its Nth kill point.

A program is a list of stages, run in order:

- ``{"kind": "chain", "calls": n, "edit": bool, "stream": m}``: one step making ``n``
  `@durable_step` calls, an optional state edit and ``m`` stream writes;
- ``{"kind": "fan", "items": k, "workers": 1|3, "calls": c}``: ``k`` events sent to a
  step with ``num_workers`` 1 or 3, each making ``c`` calls, a state write of its
  own key, an edit of two keys every item edits (a count and a sum) and a stream
  write; a collector step waits for all ``k`` results;
- ``{"kind": "ask"}``: the run asks a human (``InputRequiredEvent``) and continues
  with the answer, sent by run ID from another process.
"""

from __future__ import annotations

import json
import os

from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)

from dbos_llama import durable, durable_step
from tests.flows import mark

_points = 0


def point(label: str) -> None:
    """A kill point: the process dies here if it is its ``FUZZ_KILL_AT``-th."""
    global _points
    _points += 1
    if os.environ.get("FUZZ_KILL_AT") == str(_points):
        mark(f"crash:{_points}:{label}")
        os._exit(137)


@durable_step
async def fx(tag: str) -> str:
    point(f"pre:{tag}")
    mark(f"fx:{tag}")
    point(f"post:{tag}")
    return f"<{tag}>"


class Stage(Event):
    index: int
    acc: str


class Item(Event):
    stage: int
    k: int
    calls: int


class SerialItem(Item):
    pass


class ParallelItem(Item):
    pass


class ItemDone(Event):
    k: int
    out: str


class Note(Event):
    tag: str


@durable(name="tests.fuzz.Program")
class Program(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Stage:
        await ctx.store.set("program", json.loads(ev.program))
        return Stage(index=0, acc="")

    @step
    async def stage(
        self, ctx: Context, ev: Stage
    ) -> Stage | SerialItem | ParallelItem | InputRequiredEvent | StopEvent | None:
        program = await ctx.store.get("program")
        if ev.index >= len(program):
            return StopEvent(result=ev.acc)
        spec = program[ev.index]
        i = ev.index
        point(f"stage{i}:start")
        if spec["kind"] == "ask":
            await ctx.store.set("asking", {"index": i, "acc": ev.acc})
            return InputRequiredEvent(prefix=f"stage {i}")
        if spec["kind"] == "fan":
            await ctx.store.set("fan", {"index": i, "acc": ev.acc, "items": spec["items"]})
            cls = SerialItem if spec["workers"] == 1 else ParallelItem
            for k in range(spec["items"]):
                ctx.send_event(cls(stage=i, k=k, calls=spec["calls"]))
                point(f"stage{i}:sent{k}")
            return None
        acc = ev.acc
        for n in range(spec["calls"]):
            acc += await fx(f"s{i}c{n}")
        if spec.get("edit"):
            async with ctx.store.edit_state() as state:
                state["edits"] = state.get("edits", 0) + 1
                state[f"s{i}"] = acc
            point(f"stage{i}:edited")
        for n in range(spec.get("stream", 0)):
            ctx.write_event_to_stream(Note(tag=f"s{i}w{n}"))
            point(f"stage{i}:wrote{n}")
        point(f"stage{i}:end")
        return Stage(index=i + 1, acc=acc)

    @step
    async def answer(self, ctx: Context, ev: HumanResponseEvent) -> Stage:
        asking = await ctx.store.get("asking")
        point(f"stage{asking['index']}:answered")
        return Stage(index=asking["index"] + 1, acc=asking["acc"] + f"[{ev.response}]")

    async def _work(self, ctx: Context, ev: Item) -> ItemDone:
        point(f"item{ev.stage}.{ev.k}:start")
        out = ""
        for n in range(ev.calls):
            out += await fx(f"s{ev.stage}i{ev.k}c{n}")
        await ctx.store.set(f"s{ev.stage}i{ev.k}", out)
        # Concurrent workers edit the same keys (order-independent values).
        async with ctx.store.edit_state() as state:
            state[f"s{ev.stage}n"] = state.get(f"s{ev.stage}n", 0) + 1
            state[f"s{ev.stage}sum"] = state.get(f"s{ev.stage}sum", 0) + ev.k + 1
        point(f"item{ev.stage}.{ev.k}:edited")
        ctx.write_event_to_stream(Note(tag=f"s{ev.stage}i{ev.k}"))
        point(f"item{ev.stage}.{ev.k}:end")
        return ItemDone(k=ev.k, out=out)

    @step(num_workers=1)
    async def serial(self, ctx: Context, ev: SerialItem) -> ItemDone:
        return await self._work(ctx, ev)

    @step(num_workers=3)
    async def parallel(self, ctx: Context, ev: ParallelItem) -> ItemDone:
        return await self._work(ctx, ev)

    @step
    async def collect(self, ctx: Context, ev: ItemDone) -> Stage | None:
        fan = await ctx.store.get("fan")
        done = ctx.collect_events(ev, [ItemDone] * fan["items"])
        if done is None:
            return None
        point(f"stage{fan['index']}:collected")
        outs = "".join(d.out for d in sorted(done, key=lambda d: d.k))
        return Stage(index=fan["index"] + 1, acc=fan["acc"] + outs)
