"""The record a step invocation's DBOS workflow returns.

This module's path is part of the record: DBOS stores `StepOutcome` as
``dbos_llama._step_workflows.StepOutcome`` (in a pickle, or by name with
`JsonDataSerializer`), so runs recorded by any released version find it here.
Never move or rename it.
"""

from __future__ import annotations

import dataclasses

from workflows.events import Event
from workflows.runtime.types.results import StepWorkerOutput

from ._patches import Patch


@dataclasses.dataclass
class StepOutcome:
    """What a step invocation's DBOS workflow returns (and DBOS records)."""

    outputs: list[StepWorkerOutput]
    stream: list[Event]
    state: list[Patch] = dataclasses.field(default_factory=list)
    # The run's clock when the step ended, if the run executed live in this process.
    clock: float | None = None
