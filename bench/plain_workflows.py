"""The benchmark's plain LlamaIndex workflows (no dbos_llama import, so the
alternative's own virtualenv can run them too)."""

from __future__ import annotations

import os
import time

from workflows import Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)

from bench.fanout_flows import make_fan

CHAIN = 10  # llama steps in the chain
LOOP = 20  # times the loop step sends itself an event
FAN = 8  # items of the fan-out
FAN_WORKERS = 4  # num_workers of the fan-out's worker step


def maybe_crash(units_done: int) -> None:
    """Kill the process once ``units_done`` units have completed (recovery workload)."""
    if os.environ.get("BENCH_CRASH_AFTER") == str(units_done):
        os._exit(137)


# -- chain -------------------------------------------------------------------------
class Hop(Event):
    n: int


class Chain(Workflow):
    @step
    async def first(self, ev: StartEvent) -> Hop:
        return Hop(n=1)

    @step
    async def hop(self, ev: Hop) -> Hop | StopEvent:
        # `first` completes unit 1; the hop that receives n completes unit n + 1.
        maybe_crash(ev.n)  # (recovery workload: killed as unit n + 1 starts)
        return StopEvent(result=ev.n + 1) if ev.n + 1 >= CHAIN else Hop(n=ev.n + 1)


# -- loop: one step invoked again and again ----------------------------------------------
class Tick(Event):
    n: int


class Loop(Workflow):
    @step
    async def spin(self, ev: StartEvent | Tick) -> Tick | StopEvent:
        n = 0 if isinstance(ev, StartEvent) else ev.n
        return StopEvent(result=n) if n >= LOOP else Tick(n=n + 1)


# -- fan-out and collect ------------------------------------------------------------------
#: One step sends FAN items, FAN_WORKERS workers square them, a collector sums them.
Fan = make_fan(FAN, FAN_WORKERS)


# -- human in the loop ------------------------------------------------------------------------
class Ask(Workflow):
    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="approve?")

    @step
    async def answer(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=time.time())  # when the step after the answer started
