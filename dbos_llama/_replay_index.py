"""A run's replay index: what a replay of its body needs from its recorded calls."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from dbos import DBOS

from . import _naming
from ._context import outside_workflow
from ._records import InlineRecord, step_rows

#: Recorded operations that end a wait of the run's body (`ReplayIndex.load`).
_RECORDED_WAITS = frozenset({_naming.NEXT_STEP, _naming.WAKE_STEP, _naming.INLINE_STEP})


@dataclass
class ReplayIndex:
    """The run's recorded calls as its executing body reads them (`RunState.replay`,
    filled by `RunState.load_wakes`)."""

    # Recorded `WAKE_STEP` decisions of the executing body, by wait number: what a
    # replay takes instead of the step it waited for.
    wakes: dict[int, str] = field(default_factory=dict)
    # The wait numbers of its recorded `NEXT_STEP` choices (decision rules 4).
    choices: set[int] = field(default_factory=set)
    # Recorded step invocation IDs by `invocation_key` (see `load`).
    recorded_children: dict[str, str] = field(default_factory=dict)
    # Invocations recorded in the run's own workflow (`_inline`), by `invocation_key`:
    # the record and its function ID.
    inline_records: dict[str, tuple[InlineRecord, int]] = field(default_factory=dict)
    # The run's recorded operations as `load` read them (for `RunState.restore_state`).
    loaded_steps: list[Any] | None = None
    # The last function ID of a recorded decision or step call of the run (0: none):
    # a wait before it is replayed, never idle (`Decisions._idle`).
    last_recorded_decision: int = 0
    # The last function ID of any recorded operation of the run (0: none): a wait
    # before it was passed by an earlier execution (`Unrecorded.canonical_goes`).
    last_recorded_id: int = 0

    def clear(self) -> None:
        """Forget what the last execution's body read (its function ID marks stay)."""
        self.wakes = {}
        self.choices = set()
        self.recorded_children = {}
        self.inline_records = {}

    async def load(self, run_id: str) -> bool:
        """Read the run's recorded calls: the `WAKE_STEP` decisions, and the step
        invocations it calls (a fork's reused ones keep the IDs of the run they come
        from). False if nothing of the run is recorded yet."""
        steps = await outside_workflow(functools.partial(DBOS.list_workflow_steps, run_id))
        self.loaded_steps = list(steps)
        if not steps:
            return False
        for row in step_rows(steps):
            self.last_recorded_id = max(self.last_recorded_id, row.function_id)
            if row.child_id is not None or row.name in _RECORDED_WAITS:
                self.last_recorded_decision = max(self.last_recorded_decision, row.function_id)
            inline = row.inline()
            if inline is not None:
                key = _naming.invocation_key(inline.invocation_id)  # (a fork's: reused)
                self.inline_records[key] = (inline, row.function_id)
            wake = row.wake()
            if wake is not None:
                self.wakes[wake.number] = wake.kind
            choice = row.choice()
            if choice is not None and choice.wait is not None:
                self.choices.add(choice.wait)
            child = row.child_id
            if child and child.count("/") >= 2:
                self.recorded_children[_naming.invocation_key(child)] = child
        return True

    def invocation_in_db(self, invocation_id: str) -> str:
        """The ID DBOS records for the run's step invocation ``invocation_id``."""
        return self.recorded_children.get(_naming.invocation_key(invocation_id), invocation_id)
