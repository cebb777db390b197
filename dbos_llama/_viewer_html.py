"""The viewer's HTML pages, rendered on the server (no front-end build): the runs
list, a run's page, and the error pages. Every value shown is escaped and every
message passes through `redact` (no database password reaches a page)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from . import _registry
from ._history import jsonable
from ._redact import redact
from ._run_info import RunInfo
from ._upstream import class_accepted_events
from ._viewer_data import DERIVED, NOT_READABLE, STATUSES, RunFilter, RunsPage, RunView
from ._viewer_forms import AnswerForm, render_form
from ._viewer_svg import graph_svg, timeline_svg

_CSS = """
body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none}
main{padding:16px 20px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%}td,th{padding:5px 8px;
border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
.badge{padding:1px 7px;border-radius:9px;font-size:12px;background:#dde;white-space:nowrap}
.SUCCESS,.success{background:#cdeccf}.ERROR,.error,.MAX_RECOVERY_ATTEMPTS_EXCEEDED{background:#f6c9c9}
.PENDING,.pending{background:#fde7b0}.CANCELLED,.cancelled{background:#ddd}
.ENQUEUED{background:#d6e4ff}.human{background:#ffd2f0}.held{background:#ffe0c2}
.released{background:#e4d7ff}p.error{padding:8px;border-radius:4px}
.muted{color:#778}table.facts{width:auto}
pre{background:#fff;padding:8px;border:1px solid #e3e6eb;overflow:auto;
max-height:300px;margin:0}form.filters{display:flex;gap:8px;margin-bottom:10px;flex-wrap:wrap}
form.answer label{display:block;margin:6px 0}form.answer textarea{width:420px}
.actions{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start}
.actions form{background:#fff;padding:10px;border:1px solid #e3e6eb}
svg text{font:11px system-ui,sans-serif}.timeline .bar{fill:#7fb07f}
.timeline .pending .bar{fill:#e7b73f}.timeline .error .bar{fill:#d55}
.timeline .cancelled .bar{fill:#aaa}.timeline .reused .bar{fill:#b9c6d6}
.timeline .call rect{fill:#5c7fa8}.timeline .call.error rect{fill:#d55}
.timeline .downtime{fill:#f3d2d2;stroke:#c33;stroke-dasharray:3 2}
.timeline .crash{fill:#b00;font-weight:bold}.human-wait rect{fill:#f5c6e6}
.axis{fill:#778}.retry{fill:#a55}.graph rect{fill:#eee;stroke:#556}.graph .event rect{fill:#fff}
.graph .success rect{fill:#cdeccf}.graph .pending rect{fill:#fde7b0}
.graph .error rect{fill:#f6c9c9}.graph .cancelled rect{fill:#ddd}
.graph .not-run rect{fill:#fafafa;stroke-dasharray:3 2}.edge{stroke:#889}
"""

_POLL_JS = """
(function(){var box=document.getElementById('live');if(!box)return;
var url=box.getAttribute('data-src');var every=2000;
function tick(){if(document.getElementById('live').getAttribute('data-done')==='1')return;
fetch(url,{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null})
.then(function(html){if(html!==null){var d=document.getElementById('live');
d.innerHTML=html;var m=d.querySelector('[data-finished]');
if(m&&m.getAttribute('data-finished')==='1'){location.reload();return;}}
setTimeout(tick,every)}).catch(function(){setTimeout(tick,every*3)})}
setTimeout(tick,every)})();
"""


def page(title: str, body: str, status_line: str = "") -> str:
    """A whole HTML page around ``body``."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · dbos-llama</title><style>{_CSS}</style></head><body>"
        '<header><a href="/"><b>dbos-llama</b> runs</a> '
        f'<span class="muted">{escape(status_line)}</span></header>'
        f"<main>{body}</main><script>{_POLL_JS}</script></body></html>"
    )


def run_href(run_id: str) -> str:
    """The run page's address, escaped for an HTML attribute."""
    return escape("/runs/" + quote(run_id, safe=""), quote=True)


def _time(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_badges(info: RunInfo, waiting_human: bool) -> str:
    """The run's status with what it waits for."""
    parts = [f'<span class="badge {escape(info.status)}">{escape(info.status)}</span>']
    if info.released:
        parts.append('<span class="badge released">released</span>')
    if waiting_human or info.released:
        parts.append('<span class="badge human">waiting for a human</span>')
    if info.waiting_for_version:
        parts.append(
            f'<span class="badge held">waiting for version {escape(info.waiting_for_version)}'
            "</span>"
        )
    return " ".join(parts)


def runs_rows(found: RunsPage) -> str:
    """The runs table (the part the page refreshes while runs progress)."""
    rows = []
    for row in found.rows:
        r = row.info
        forked = (
            f"{escape(r.forked_from)} @ {escape(r.forked_from_step or '')}" if r.forked_from else ""
        )
        rows.append(
            f'<tr class="run" data-run="{escape(r.run_id)}">'
            f'<td><a href="{run_href(r.run_id)}">{escape(r.run_id)}</a></td>'
            f"<td>{escape(r.workflow)}</td><td>{status_badges(r, row.waiting_human)}</td>"
            f"<td>{escape(r.version or '')}</td><td>{_time(r.created_at)}</td>"
            f"<td>{_time(r.updated_at)}</td><td>{forked}</td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="7" class="muted">No runs.</td></tr>')
    head = "".join(
        f"<th>{h}</th>"
        for h in ("run", "workflow", "status", "version", "created", "updated", "forked from")
    )
    return f'<table id="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def runs_page(found: RunsPage, wanted: RunFilter, query: dict[str, str], db: str) -> str:
    """The runs page: filters, the table (polled), and paging links."""
    options = ['<option value="">any status</option>']
    labels = {
        "waiting-human": "waiting for a human",
        "waiting-version": "waiting for its version",
        "released": "released",
    }
    for value in [*STATUSES, *DERIVED]:
        chosen = " selected" if wanted.status == value else ""
        options.append(f'<option value="{value}"{chosen}>{labels.get(value, value)}</option>')
    filters = (
        '<form class="filters" method="get" action="/">'
        f'<input name="workflow" placeholder="workflow" value="{escape(wanted.workflow or "")}">'
        f'<select name="status">{"".join(options)}</select>'
        f'<input name="since" placeholder="since: 2h or 2026-12-01T09:00" '
        f'value="{escape(query.get("since", ""))}">'
        f'<input name="until" placeholder="until" value="{escape(query.get("until", ""))}">'
        '<button type="submit">Filter</button></form>'
    )
    nav = []
    keep = {k: v for k, v in query.items() if k not in ("offset", "token") and v}
    if found.offset > 0:
        back = max(0, found.offset - wanted.limit)
        nav.append(f'<a href="/?{escape(urlencode({**keep, "offset": back}))}">← newer</a>')
    if found.next_offset is not None:
        nxt = urlencode({**keep, "offset": found.next_offset})
        nav.append(f'<a id="older" href="/?{escape(nxt)}">older →</a>')
    src = "/fragments/runs?" + urlencode({**keep, "offset": found.offset})
    body = (
        f'{filters}<div id="live" data-src="{escape(src)}">{runs_rows(found)}</div>'
        f"<p>{' · '.join(nav)}</p>"
    )
    return page("Runs", body, redact(db))


def _json_block(value: Any) -> str:
    if isinstance(value, str) and value.startswith(NOT_READABLE):
        return f'<p class="muted unreadable">{escape(value)}</p>'
    try:
        text = json.dumps(value, indent=2, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return f"<pre>{escape(redact(text))}</pre>"


def run_live(view: RunView) -> str:
    """The parts of the run page that change while it runs (polled)."""
    info = view.info
    facts = [
        ("workflow", escape(info.workflow)),
        ("status", status_badges(info, view.waiting_human)),
        ("version", escape(info.version or "?")),
        ("created", _time(info.created_at)),
        ("updated", _time(info.updated_at)),
        ("executions of the run", str(view.attempts)),
    ]
    if view.attempts > 1:
        facts.append(("recoveries", f'<b class="crash">recovered {view.attempts - 1}×</b>'))
    if info.forked_from:
        link = f'<a href="{run_href(info.forked_from)}">{escape(info.forked_from)}</a>'
        facts.append(("forked from", f"{link} at step {escape(info.forked_from_step or '')}"))
    if info.error:
        facts.append(("error", f'<span class="error">{escape(redact(info.error))}</span>'))
    if view.awaited_prompt is not None:
        facts.append(("asks", f"<b>{escape(view.awaited_prompt)}</b>"))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    finished = "1" if info.finished else "0"
    steps = []
    for inv in view.invocations:
        s = inv.step
        calls = "".join(
            f"<li>{escape(c.name)}: {'ok' if c.ok else 'error'} {escape(c.output)}</li>"
            for c in s.calls
        )
        reexec = (
            f' <b class="crash">re-executed ({inv.attempts} executions)</b>'
            if inv.attempts > 1
            else ""
        )
        number = "" if s.number is None else str(s.number)
        took = "" if s.duration is None else f"{s.duration:.3f}s"
        steps.append(
            f'<tr data-invocation="{escape(s.invocation_id)}"><td>{number}</td>'
            f"<td>{escape(s.step)}{' (reused)' if s.reused else ''}{reexec}</td>"
            f'<td><span class="badge {escape(s.status)}">{escape(s.status)}</span></td>'
            f"<td>{_time(s.started_at)}</td><td>{took}</td>"
            f"<td>{escape(s.output)}<ul>{calls}</ul></td></tr>"
        )
    stream = "".join(
        f"<tr><td>{e.offset}</td><td>"
        + (
            f'<span class="muted unreadable">{escape(redact(e.unreadable))}</span>'
            if e.unreadable
            else _json_block(jsonable(e.event))
        )
        + "</td></tr>"
        for e in view.stream
    )
    edits = "".join(
        f"<tr><td>{seq}</td><td>{escape(source)}</td><td>{_json_block(patch)}</td></tr>"
        for source, seq, patch in sorted(view.edits, key=lambda e: e[1])
    )
    outcome = _json_block(view.result) if info.status == "SUCCESS" else ""
    return (
        f'<div data-finished="{finished}"><table class="facts">{table}</table>'
        f"<h2>Timeline</h2>{timeline_svg(view)}"
        f"<h2>Graph</h2>{graph_svg(view)}"
        '<h2>Step invocations</h2><table id="steps"><tr><th>#</th><th>step</th><th>status</th>'
        f"<th>start</th><th>duration</th><th>output and calls</th></tr>{''.join(steps)}</table>"
        f'<h2>Stream</h2><table id="stream">{stream or "<tr><td>empty</td></tr>"}</table>'
        f'<h2>State</h2><div id="state">{_json_block(view.state)}</div>'
        f'<h2>State edits</h2><table id="edits"><tr><th>#</th><th>by</th><th>JSON Patch</th></tr>'
        f"{edits}</table>"
        + (f'<h2>Result</h2><div id="result">{outcome}</div>' if outcome else "")
        + "</div>"
    )


def run_page(view: RunView, form: AnswerForm, csrf: str, notice: str, db: str) -> str:
    """A run's page: its live part and the actions."""
    info = view.info
    base = run_href(info.run_id)
    token = f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
    actions = []
    if not info.finished:
        kinds = "".join(
            f' <a href="{base}?type={quote(name)}">{escape(name.rpartition(".")[2])}</a>'
            for name in answer_types(info.workflow)
        )
        picked = f'<p class="muted">answer with:{kinds}</p>' if kinds else ""
        actions.append(picked + render_form(form, base + "/answer", csrf))
        actions.append(
            f'<form method="post" action="{base}/cancel">{token}'
            '<button type="submit" id="cancel">Cancel run</button></form>'
        )
    if info.status in ("CANCELLED", "ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
        actions.append(
            f'<form method="post" action="{base}/resume">{token}'
            '<button type="submit" id="resume">Resume run</button></form>'
        )
    names = [
        f"{i.step.step}/{i.step.number}" for i in view.invocations if i.step.number is not None
    ]
    if names:
        choices = "".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in names)
        actions.append(
            f'<form method="post" action="{base}/fork">{token}<label>fork from step '
            f'<select name="from_step" id="from-step">{choices}</select></label> '
            '<button type="submit" id="fork">Fork</button></form>'
        )
    message = f'<p class="notice" role="status">{escape(redact(notice))}</p>' if notice else ""
    src = "/fragments" + run_href(info.run_id)
    done = "1" if info.finished else "0"  # a run that ends while shown: the page reloads
    body = (
        f"<h1>Run {escape(info.run_id)}</h1>{message}"
        f'<div class="actions">{"".join(actions)}</div>'
        f'<div id="live" data-src="{src}" data-done="{done}">{run_live(view)}</div>'
    )
    return page(f"Run {info.run_id}", body, redact(db))


def answer_types(workflow: str) -> list[str]:
    """The event classes the workflow's steps accept (``module.QualName``), when its
    class is imported in this process (by reading its values); else none."""
    binding = _registry.lookup(workflow)
    if binding is None:
        return []
    accepted = class_accepted_events(binding.cls)
    names = [f"{c.__module__}.{c.__qualname__}" for c in accepted]
    return [n for n in names if not n.endswith((".StartEvent", ".StopEvent"))]


def error_page(title: str, message: str, db: str) -> str:
    """A page saying what went wrong and what to do."""
    body = f'<h1>{escape(title)}</h1><p class="error">{escape(redact(message))}</p>'
    body += '<a href="/">All runs</a>'
    return page(title, body, redact(db))
