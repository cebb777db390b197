"""The benchmark's workloads, each written three ways: a plain LlamaIndex workflow (also
made durable with `@durable`), and raw DBOS at two floors.

floor-a: one ``@DBOS.step`` per llama step (the floor of durability);
floor-b: one child ``@DBOS.workflow`` per llama step, called directly (the floor of
dbos_llama's shape: one DBOS workflow per step invocation).
"""

from __future__ import annotations

import asyncio
import time

from dbos import DBOS
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

from bench.plain_workflows import CHAIN, FAN, LOOP, Ask, Chain, Fan, Loop, maybe_crash
from dbos_llama import durable, durable_step

CALLS = 10  # @durable_step calls made by one step


# -- one step making many durable calls ------------------------------------------------------
@durable_step
async def external_call(i: int) -> int:
    return i + 1


class Calls(Workflow):
    @step
    async def call(self, ev: StartEvent) -> StopEvent:
        total = 0
        for i in range(CALLS):
            total += await external_call(i)
        return StopEvent(result=total)


DURABLE = {
    "chain": durable(Chain, name="bench.chain"),
    "loop": durable(Loop, name="bench.loop"),
    "fanout": durable(Fan, name="bench.fanout"),
    "calls": durable(Calls, name="bench.calls"),
    "hitl": durable(Ask, name="bench.hitl"),
}
PLAIN = {"chain": Chain, "loop": Loop, "fanout": Fan, "calls": Calls, "hitl": Ask}


# -- raw DBOS floors -----------------------------------------------------------------------------
@DBOS.step(name="bench.unit_step")
async def unit_step(i: int) -> int:
    maybe_crash(i)  # a chain's value is the number of units done
    return i + 1


@DBOS.workflow(name="bench.unit_workflow")
async def unit_workflow(i: int) -> int:
    maybe_crash(i)
    return i + 1


@DBOS.workflow(name="bench.calls_workflow")
async def calls_workflow(units: int) -> int:
    total = 0
    for i in range(units):
        total += await unit_step(i)
    return total


@DBOS.workflow(name="bench.floor_a_chain")
async def floor_a_chain(units: int) -> int:
    value = 0
    for _ in range(units):
        value = await unit_step(value)
    return value


@DBOS.workflow(name="bench.floor_b_chain")
async def floor_b_chain(units: int) -> int:
    value = 0
    for _ in range(units):
        value = await unit_workflow(value)
    return value


@DBOS.workflow(name="bench.floor_a_fan")
async def floor_a_fan(units: int) -> int:
    squares = await asyncio.gather(*(unit_step(i) for i in range(units)))
    return sum(squares)


@DBOS.workflow(name="bench.floor_b_fan")
async def floor_b_fan(units: int) -> int:
    squares = await asyncio.gather(*(unit_workflow(i) for i in range(units)))
    return sum(squares)


@DBOS.workflow(name="bench.floor_b_calls")
async def floor_b_calls(units: int) -> int:
    return await calls_workflow(units)


@DBOS.workflow(name="bench.floor_wait")
async def floor_wait() -> float:
    await DBOS.recv_async("answer", timeout_seconds=3600)
    return time.time()


#: Raw DBOS for each workload: (floor-a, floor-b) workflow and its argument.
FLOORS = {
    "chain": (floor_a_chain, floor_b_chain, CHAIN),
    "loop": (floor_a_chain, floor_b_chain, LOOP + 1),
    "fanout": (floor_a_fan, floor_b_fan, FAN),
    "calls": (calls_workflow, floor_b_calls, CALLS),
}
#: Llama step invocations of one run of each workload (the unit of "per step").
INVOCATIONS = {"chain": CHAIN, "loop": LOOP + 1, "fanout": 1 + FAN + FAN, "calls": 1}
