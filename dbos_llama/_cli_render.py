"""What the ``dbos-llama`` command prints: JSON for scripts, tables for people.

JSON output carries every value in full (`_history.jsonable`: events as
``{"type", "data"}``); the tables shorten values to fit the terminal and label
times as UTC.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ._history import StepInvocationInfo
from ._run_info import RunInfo

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

#: Shown under a timeline with a re-executed step invocation.
RESTART_LEGEND = (
    "↻ step: executed again after its execution stopped (a crash, or a cancel and a "
    "resume); DBOS attempt N, its downtime (the longest span with nothing recorded) on a "
    "line of its own. ↻ call: the first recorded after that (it may have been in flight "
    "when the execution stopped; a completed call never runs again)."
)


def print_json(data: Any) -> None:
    """``data`` (already JSON-compatible) as indented JSON, nothing shortened."""
    out.out(json.dumps(data, indent=2, ensure_ascii=False), highlight=False)


def utc(moment: datetime | None) -> str:
    """A time in UTC, to the second (the tables label their time columns UTC)."""
    return "" if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def clock(moment: datetime | None) -> str:
    """The UTC time of day to the millisecond (a timeline's date is in its header)."""
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def seconds(duration: float | None) -> str:
    return "" if duration is None else f"{duration:.3f}s"


def status_text(run: RunInfo) -> str:
    """The run's status, with why a PENDING run waits."""
    if run.waiting_for_version is not None:
        return f"{run.status} (waiting for its version)"
    if run.released:
        return f"{run.status} (released: waiting for its event)"
    return run.status


def runs_table(found: list[RunInfo]) -> None:
    """``runs list``: one line per run, newest first."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("RUN ID", overflow="fold", min_width=8)
    table.add_column("WORKFLOW", overflow="fold", min_width=8)
    table.add_column("STATUS", overflow="fold", min_width=7)
    table.add_column("VERSION", overflow="fold", min_width=8)
    table.add_column("CREATED (UTC)", no_wrap=True, min_width=19)
    if any(r.forked_from for r in found):
        table.add_column("FORKED FROM", overflow="fold", min_width=8)
    for r in found:
        row = [r.run_id, r.workflow, status_text(r), r.version or "", utc(r.created_at)]
        if any(x.forked_from for x in found):
            row.append(f"{r.forked_from} @ {r.forked_from_step}" if r.forked_from else "")
        table.add_row(*map(Text, row))  # values as text, never as rich markup
    out.print(table)
    if not found:
        out.print("No runs.")


def run_header(run: RunInfo) -> None:
    """``runs show``: the run's status, times and marks, above its timeline."""
    out.print(
        f"[bold]Run[/bold] {escape(run.run_id)}  [bold]workflow[/bold] {escape(run.workflow)}"
    )
    version = escape(run.version or "?")
    out.print(f"[bold]Status[/bold] {status_text(run)}  [bold]version[/bold] {version}")
    created, updated = utc(run.created_at), utc(run.updated_at)
    out.print(f"[bold]Created[/bold] {created} UTC  [bold]updated[/bold] {updated} UTC")
    if run.attempts is not None and run.attempts > 1:
        out.print(
            f"[bold]Attempts[/bold] {run.attempts} (resumed after a crash, a resume or a "
            "wake-up: recorded work was not redone)"
        )
    if run.waiting_for_version:
        out.print(
            f"[bold]Held[/bold] by a worker running version {run.held_by_version}: finish it "
            f"with a worker running {run.waiting_for_version}, or fork it onto the new code "
            f"(runs fork {run.run_id} --from-step STEP --version {run.held_by_version})"
        )
    if run.forked_from:
        out.print(
            f"[bold]Forked from[/bold] {escape(run.forked_from)} at step "
            f"{escape(run.forked_from_step or '?')}"
        )
    if run.handler_id:
        out.print(f"[bold]Server handler[/bold] {escape(run.handler_id)}")
    if run.error:
        out.print(f"[bold]Error[/bold] {escape(run.error)}")


def timeline_table(steps: list[StepInvocationInfo]) -> None:
    """``runs show``: each step invocation and the recorded calls inside it."""
    cap = max(20, out.width // 4)
    labels = [s.step + (" (reused)" if s.reused else "") + " ↻" for s in steps]
    labels += [f"  └ {_fit(c.name, cap - 6)} ↻" for s in steps for c in s.calls]
    step_width = min(max([len(label) for label in labels] + [4]), cap)
    # Columns apart from STEP and OUTPUT: #, STATUS, START, TOOK (and 2 between each).
    rest = 3 + 9 + 12 + 8 + 2 * 5
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("#", no_wrap=True, justify="right", width=3)
    table.add_column("STEP", overflow="fold", width=step_width)
    table.add_column("STATUS", no_wrap=True, width=9)
    table.add_column("START (UTC)", no_wrap=True, width=12)
    table.add_column("TOOK", no_wrap=True, justify="right", width=8)
    output_width = max(12, out.width - rest - step_width)
    table.add_column("OUTPUT", no_wrap=True, overflow="ellipsis", width=output_width)
    for s in steps:
        label = s.step + (" (reused)" if s.reused else "") + (" ↻" if s.reexecuted else "")
        number = "" if s.number is None else str(s.number)
        took = seconds(s.own_duration)
        cells = (number, label, s.status, clock(s.started_at), took, s.output)
        table.add_row(*map(Text, cells))  # values as text, never as rich markup
        if s.reexecuted:
            took_down = seconds(s.gap)
            down = "downtime" if s.gap is not None else ""
            table.add_row("", f"  ↻ attempt {s.attempts}", "", "", took_down, down, style="yellow")
        for call in s.calls:
            cells = (
                "",
                f"  └ {_fit(call.name, step_width - 6)}" + (" ↻" if call.after_restart else ""),
                "ok" if call.ok else "error",
                clock(call.started_at),
                seconds(call.duration),
                call.output,
            )
            table.add_row(*map(Text, cells))
    out.print(table)
    if not steps:
        out.print("No step has been called yet.")
    elif any(s.reexecuted for s in steps):
        out.print(RESTART_LEGEND, style="dim", soft_wrap=False)


def _fit(name: str, width: int) -> str:
    """A dotted name, without its leading parts if it is wider than ``width``."""
    parts = name.split(".")
    while len(parts) > 1 and len(".".join(parts)) > width:
        parts.pop(0)
    return ".".join(parts)


def print_entry(entry: dict[str, Any], as_json: bool) -> None:
    """One stream entry: a JSON line, or ``offset  type {data}`` for people."""
    if as_json:
        out.out(json.dumps(entry, ensure_ascii=False), highlight=False)
    elif "unreadable" in entry:
        out.out(f"{entry['offset']:>4}  ? {entry['unreadable']}", highlight=False)
    elif "type" in entry:
        data = json.dumps(entry["data"], ensure_ascii=False)
        out.out(f"{entry['offset']:>4}  {entry['type']} {data}", highlight=False)
    else:
        value = {k: v for k, v in entry.items() if k != "offset"}
        out.out(f"{entry['offset']:>4}  {json.dumps(value, ensure_ascii=False)}", highlight=False)
    sys.stdout.flush()
