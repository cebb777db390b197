"""Version 2 of the "evolving" workflow: a deploy edited step two (see evolving_v1)."""

from __future__ import annotations

from workflows import step

from dbos_llama import durable
from tests.flows import EvolvingBase, OneDone, TwoDone, effect, step_started


@durable(name="tests.evolving")
class Evolving(EvolvingBase):
    @step
    async def two(self, ev: OneDone) -> TwoDone:
        step_started()
        edited = await effect("ev-two-v2")
        return TwoDone(acc=f"{ev.acc}{edited}")
