"""Version 1 of the "evolving" workflow (evolving_v2 is the same with step two edited)."""

from __future__ import annotations

from workflows import step

from dbos_llama import durable
from tests.flows import EvolvingBase, OneDone, TwoDone, effect, maybe_crash, step_started


@durable(name="tests.evolving")
class Evolving(EvolvingBase):
    @step
    async def two(self, ev: OneDone) -> TwoDone:
        step_started()
        maybe_crash("evolving:two")
        return TwoDone(acc=ev.acc + await effect("ev-two-v1"))
