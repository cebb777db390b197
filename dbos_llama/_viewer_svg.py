"""The run page's pictures, drawn as inline SVG: the timeline (Gantt) of step
invocations with their calls, crashes, recoveries and waits, and the workflow graph
coloured by each step's status in the run."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from html import escape
from typing import Any

from workflows.representation import get_workflow_representation

from . import _registry
from ._viewer_data import Invocation, RunView, epoch

#: Width of the timeline's label column and of its time axis, in pixels.
LABEL_W = 190
AXIS_W = 760
ROW_H = 26
CALL_H = 12
#: A silence this long inside a re-executed invocation is drawn as downtime.
MIN_GAP_SEC = 0.2


@dataclass(frozen=True)
class Crash:
    """A re-executed invocation: its executions and the longest silence inside it
    (the time no process ran it, between the crash and the recovery)."""

    invocation_id: str
    attempts: int
    gap_start: float | None
    gap_end: float | None

    @property
    def gap(self) -> float:
        if self.gap_start is None or self.gap_end is None:
            return 0.0
        return self.gap_end - self.gap_start


def _span(inv: Invocation, now: float) -> tuple[float, float]:
    start = epoch(inv.step.started_at) or now
    end = start + inv.step.duration if inv.step.duration is not None else now
    return start, end


def crashes(view: RunView, now: float) -> list[Crash]:
    """The invocations a recovery executed again, with their downtime gap (as `runs
    show` finds it: the longest span with nothing of the invocation recorded, which
    ends at its first call recorded after the restart, or at its result)."""
    found: list[Crash] = []
    for inv in view.invocations:
        step = inv.step
        if not step.reexecuted or step.reused:
            continue
        resumed = next((c.started_at for c in step.calls if c.after_restart), None)
        gap_end = epoch(resumed) or _span(inv, now)[1]
        if step.gap is not None and step.gap >= MIN_GAP_SEC:
            found.append(Crash(step.invocation_id, inv.attempts, gap_end - step.gap, gap_end))
        else:
            found.append(Crash(step.invocation_id, inv.attempts, None, None))
    return found


def human_waits(view: RunView, now: float) -> list[tuple[str, float, float, bool]]:
    """(invocation that asked, start, end, still waiting) of each wait for a human:
    from the end of a step that returned an InputRequiredEvent to the next step."""
    waits = []
    invs = view.invocations
    for i, inv in enumerate(invs):
        if not inv.step.output.startswith("InputRequiredEvent") or inv.step.duration is None:
            continue
        asked = _span(inv, now)[1]
        later = [epoch(n.step.started_at) for n in invs[i + 1 :] if n.step.started_at]
        answered = min((t for t in later if t is not None and t >= asked), default=None)
        if answered is None and view.info.finished:
            continue
        waits.append((inv.step.invocation_id, asked, answered or now, answered is None))
    return waits


def _fmt(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def timeline_svg(view: RunView, now: float | None = None) -> str:
    """The Gantt chart of the run's step invocations on real time."""
    now = time.time() if now is None else now
    invs = view.invocations
    if not invs:
        return '<p class="muted">No step has been called yet.</p>'
    spans = [_span(i, now) for i in invs]
    waits = human_waits(view, now)
    t0 = min(s for s, _ in spans)
    t1 = max([e for _, e in spans] + [w[2] for w in waits] + [t0 + 0.001])
    scale = AXIS_W / (t1 - t0)

    def x(t: float) -> float:
        return LABEL_W + (t - t0) * scale

    found = {c.invocation_id: c for c in crashes(view, now)}
    rows: list[str] = []
    failed_at: dict[str, float] = {}  # step -> end of its last failed invocation
    y = 24
    for inv, (start, end) in zip(invs, spans, strict=True):
        step = inv.step
        crash = found.get(step.invocation_id)
        failed = step.output.startswith("failed:")
        css = "reused" if step.reused else "error" if failed else step.status.lower()
        label = f"{step.step}/{step.number}" if step.number is not None else step.step
        tip = f"{step.invocation_id}: {step.status}, {_fmt(end - start)}"
        if inv.queued_ms:
            tip += f", {inv.queued_ms / 1000:.3f} s in a queue"
        if step.reused:
            label += " (reused)"
        rows.append(
            f'<g class="inv {css}" data-invocation="{escape(step.invocation_id)}">'
            f'<text x="4" y="{y + 15}">{escape(label)}</text>'
            f'<rect class="bar" x="{x(start):.1f}" y="{y + 3}" rx="3" '
            f'width="{max(2.0, (end - start) * scale):.1f}" height="{ROW_H - 8}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if crash is not None:
            rows.append(_crash_marks(crash, x, y))
        if step.step in failed_at:  # the step failed before: this is its retry
            delay = start - failed_at.pop(step.step)
            rows.append(
                f'<text class="retry" x="{x(end) + 4:.1f}" y="{y + 15}">retry, '
                f"{_fmt(max(0.0, delay))} after the failure</text>"
            )
        if failed:
            failed_at[step.step] = end
        rows.append("</g>")
        y += ROW_H
        for call in step.calls:
            begun = epoch(call.started_at)
            if begun is None:
                continue
            width = max(2.0, (call.duration or 0.0) * scale)
            state = "ok" if call.ok else "error"
            mark = " ↻" if call.after_restart else ""  # the first call after the restart
            rows.append(
                f'<g class="call {state}"><text x="16" y="{y + 10}">└ {escape(call.name)}{mark}'
                "</text>"
                f'<rect x="{x(begun):.1f}" y="{y + 2}" width="{width:.1f}" height="{CALL_H - 3}">'
                f"<title>{escape(call.name)}: {escape(call.output)}</title></rect></g>"
            )
            y += CALL_H + 2
    for asked_by, start, end, waiting in waits:
        how = "waiting" if waiting else "waited"
        rows.append(
            f'<g class="human-wait" data-invocation="{escape(asked_by)}">'
            f'<rect x="{x(start):.1f}" y="{y + 3}" width="{max(2.0, (end - start) * scale):.1f}" '
            f'height="{ROW_H - 8}"/><text x="4" y="{y + 15}">human</text>'
            f'<text x="{x(start) + 4:.1f}" y="{y + 15}">{how} for a human '
            f"{_fmt(end - start)}</text></g>"
        )
        y += ROW_H
    axis = (
        f'<text class="axis" x="{LABEL_W}" y="14">0</text>'
        f'<text class="axis" x="{LABEL_W + AXIS_W}" y="14" text-anchor="end">'
        f"{_fmt(t1 - t0)}</text>"
    )
    width, height = LABEL_W + AXIS_W + 230, y + 10  # room for the labels after a bar
    return (
        f'<svg class="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline">{axis}'
        + "".join(rows)
        + "</svg>"
    )


def _crash_marks(crash: Crash, x: Any, y: int) -> str:
    parts = []
    if crash.gap_start is not None and crash.gap_end is not None:
        parts.append(
            f'<rect class="downtime" x="{x(crash.gap_start):.1f}" y="{y}" '
            f'width="{max(2.0, x(crash.gap_end) - x(crash.gap_start)):.1f}" height="{ROW_H - 2}">'
            f"<title>no process ran it for {_fmt(crash.gap)} (crash, then recovery)</title></rect>"
        )
        where = x(crash.gap_start)
    else:
        where = LABEL_W
    down = f", no process ran it for {_fmt(crash.gap)}" if crash.gap_start is not None else ""
    parts.append(
        f'<text class="crash" x="{where + 3:.1f}" y="{y + 15}">⚡ crashed{down}; re-executed '
        f"({crash.attempts} executions)</text>"
    )
    return "".join(parts)


def _step_status(view: RunView) -> dict[str, str]:
    status: dict[str, str] = {}
    rank = {"pending": 3, "error": 2, "cancelled": 1, "success": 0}
    for inv in view.invocations:
        css = inv.step.status.lower()
        old = status.get(inv.step.step)
        if old is None or rank.get(css, 0) > rank.get(old, 0):
            status[inv.step.step] = css
    return status


def _graph_edges(view: RunView) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(source, target, kind) edges and the step node IDs: from upstream's
    representation of the workflow when its class is imported here, else from the
    recorded steps in call order."""
    binding = _registry.lookup(view.info.workflow)
    if binding is not None:
        graph = get_workflow_representation(binding.cls)
        kinds = {n.id: getattr(n, "node_type", "") for n in graph.nodes}
        edges = [(e.source, e.target, kinds.get(e.target, "")) for e in graph.edges]
        steps = [n.id for n in graph.nodes if kinds[n.id] == "step"]
        for n in graph.nodes:
            if kinds[n.id] != "step":
                edges.append((n.id, n.id, "node:" + str(getattr(n, "label", n.id))))
        return edges, steps
    order: list[str] = []
    for inv in view.invocations:
        if inv.step.step not in order:
            order.append(inv.step.step)
    edges = [(a, b, "") for a, b in zip(order, order[1:], strict=False)]
    return edges, order


def graph_svg(view: RunView) -> str:
    """The workflow's graph, steps coloured by their status in this run."""
    raw, steps = _graph_edges(view)
    labels = {a: k[5:] for a, _, k in raw if k.startswith("node:")}
    edges = [(a, b) for a, b, k in raw if not k.startswith("node:")]
    nodes = list(dict.fromkeys([*steps, *labels, *[n for e in edges for n in e]]))
    if not nodes:
        return '<p class="muted">No steps recorded yet.</p>'
    targets = {b for _, b in edges}
    layer = {n: 0 for n in nodes if n not in targets} or {nodes[0]: 0}
    queue = deque(layer)
    while queue:  # longest-path-ish layering, bounded so cycles end
        node = queue.popleft()
        for a, b in edges:
            if a == node and layer[node] + 1 > layer.get(b, -1) and layer[node] < len(nodes):
                layer[b] = layer[node] + 1
                queue.append(b)
    for n in nodes:
        layer.setdefault(n, 0)
    columns: dict[int, list[str]] = {}
    for n in nodes:
        columns.setdefault(layer[n], []).append(n)
    pos = {n: (20 + c * 170, 20 + r * 56) for c, ns in columns.items() for r, n in enumerate(ns)}
    status = _step_status(view)
    parts = []
    for a, b in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        parts.append(
            f'<line class="edge" x1="{x1 + 130}" y1="{y1 + 16}" x2="{x2}" y2="{y2 + 16}" '
            'marker-end="url(#arrow)"/>'
        )
    for n in nodes:
        px, py = pos[n]
        is_step = n in steps or n in status
        css = f"step {status.get(n, 'not-run')}" if is_step else "event"
        text = labels.get(n, n)
        parts.append(
            f'<g class="node {css}" data-node="{escape(n)}"><rect x="{px}" y="{py}" width="130" '
            f'height="32" rx="{4 if is_step else 16}"/><text x="{px + 65}" y="{py + 20}" '
            f'text-anchor="middle">{escape(text[:20])}</text><title>{escape(text)}</title></g>'
        )
    width = 40 + 170 * (max(columns) + 1)
    height = 40 + 56 * max(len(ns) for ns in columns.values())
    arrow = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
    )
    return (
        f'<svg class="graph" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="workflow graph">{arrow}{"".join(parts)}</svg>'
    )
