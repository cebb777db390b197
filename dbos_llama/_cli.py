"""The ``dbos-llama`` command line: list, inspect and steer durable runs by database URL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from ._client import DurableClient
from ._event_json import event_from_json
from ._history import StepInvocationInfo
from ._redact import redact
from ._run_info import RunInfo
from .errors import DurableError

#: Environment variables read for the system database URL, in order.
DB_ENV_VARS = ["DBOS_LLAMA_DB", "DBOS_SYSTEM_DATABASE_URL"]

app = typer.Typer(
    name="dbos-llama",
    help="Operate durable LlamaIndex workflow runs stored in a DBOS system database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="List, inspect and steer runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Db = Annotated[
    str,
    typer.Option(
        "--db",
        envvar=DB_ENV_VARS,
        help="System database URL (sqlite:///file.sqlite or postgresql://...). "
        "Default: $DBOS_LLAMA_DB, then $DBOS_SYSTEM_DATABASE_URL.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RunId = Annotated[str, typer.Argument(help="The run's ID.", show_default=False)]


def _run(db: str, action: Callable[[DurableClient], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``action`` with a client on ``db``; a dbos_llama error is a clear message."""

    async def main() -> Any:
        async with _open(db) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except DurableError as error:
        _fail(str(error))
    except SQLAlchemyError as error:
        _fail(f"Cannot read the system database {db!r}: {error.__class__.__name__}: {error}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _open(db: str) -> DurableClient:
    """A client on ``db``, or a clear error for a URL that names no database."""
    if db.startswith("sqlite:///"):
        path = db[len("sqlite:///") :].split("?")[0]
        if not os.path.exists(path):
            _fail(f"No SQLite database at {path!r}: check --db / ${DB_ENV_VARS[0]}.")
    try:
        return DurableClient(db)
    except Exception as error:  # a malformed URL or an unreachable server
        _fail(f"Cannot open the system database {db!r}: {type(error).__name__}: {error}")


def _fail(message: str) -> NoReturn:
    # The URL of --db may carry a password: never print it.
    err.print(f"[red]error:[/red] {redact(message)}")
    raise typer.Exit(1)


def _print_json(data: Any) -> None:
    out.out(json.dumps(data, indent=2, default=str), highlight=False)


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(duration: float | None) -> str:
    return "" if duration is None else f"{duration:.3f}s"


def _status(run: RunInfo) -> str:
    if run.waiting_for_version is not None:
        return f"{run.status} (waiting for its version)"
    if run.released:
        return f"{run.status} (released: waiting for its event)"
    return run.status


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> datetime | timedelta:
    """``30m``, ``2h``, ``1d`` (an age) or an ISO 8601 time."""
    match = _AGE.match(text.strip())
    if match:
        return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            "give an age such as 30m, 2h, 1d, or a time such as 2026-11-25T09:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@runs_app.command("list")
def list_runs(
    db: Db,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only runs of this workflow name.")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", "-s", help="Only runs with this status (PENDING, SUCCESS, ...); repeatable."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only runs started since: an age (30m, 2h, 1d) or a time."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most this many.")] = None,
    as_json: AsJson = False,
) -> None:
    """Runs, newest first. A run held for its code version shows which version it waits for."""
    after = parse_since(since) if since is not None else None
    found: list[RunInfo] = _run(
        db,
        lambda c: c.list_runs(
            workflow=workflow,
            status=[s.upper() for s in status] if status else None,
            limit=limit,
            since=after,
        ),
    )
    if as_json:
        _print_json([r.to_dict() for r in found])
        return
    table = Table(box=None, header_style="bold")
    for column in ("RUN ID", "WORKFLOW", "STATUS", "VERSION", "CREATED", "FORKED FROM"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("WORKFLOW", "FORKED FROM"))
    for r in found:
        forked = f"{r.forked_from} @ {r.forked_from_step}" if r.forked_from else ""
        table.add_row(
            r.run_id, r.workflow, _status(r), r.version or "", _time(r.created_at), forked
        )
    out.print(table)
    if not found:
        out.print("No runs.")


@runs_app.command("show")
def show(run_id: RunId, db: Db, as_json: AsJson = False) -> None:
    """A run and the timeline of its steps, with the recorded calls inside each step."""

    async def read(client: DurableClient) -> tuple[RunInfo, list[StepInvocationInfo]]:
        run = await client.get_run(run_id)  # a run ID or a server handler ID
        return run, await client.steps(run.run_id)

    run, steps = _run(db, read)
    if as_json:
        _print_json({**run.to_dict(), "steps": [s.to_dict() for s in steps]})
        return
    out.print(f"[bold]Run[/bold] {run.run_id}  [bold]workflow[/bold] {run.workflow}")
    out.print(f"[bold]Status[/bold] {_status(run)}  [bold]version[/bold] {run.version or '?'}")
    created, updated = _time(run.created_at), _time(run.updated_at)
    out.print(f"[bold]Created[/bold] {created}  [bold]updated[/bold] {updated}")
    if run.waiting_for_version:
        out.print(
            f"[bold]Held[/bold] by a worker running version {run.held_by_version}: finish it "
            f"with a worker running {run.waiting_for_version}, or fork it onto the new code "
            f"(runs fork {run.run_id} --from-step STEP --version {run.held_by_version})"
        )
    if run.forked_from:
        out.print(f"[bold]Forked from[/bold] {run.forked_from} at step {run.forked_from_step}")
    if run.handler_id:
        out.print(f"[bold]Server handler[/bold] {run.handler_id}")
    if run.error:
        out.print(f"[bold]Error[/bold] {run.error}")
    table = Table(box=None, header_style="bold")
    for column in ("#", "STEP", "STATUS", "START", "DURATION", "OUTPUT"):
        table.add_column(column, overflow="fold")
    for s in steps:
        label = s.step + (" (reused)" if s.reused else "")
        number = "" if s.number is None else str(s.number)
        table.add_row(number, label, s.status, _time(s.started_at), _seconds(s.duration), s.output)
        for call in s.calls:
            table.add_row(
                "",
                f"  └ {call.name}",
                "ok" if call.ok else "error",
                _time(call.started_at),
                _seconds(call.duration),
                call.output,
            )
    out.print(table)
    if not steps:
        out.print("No step has been called yet.")


@runs_app.command("events")
def events(
    run_id: RunId,
    db: Db,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep reading until the run ends.")
    ] = False,
    offset: Annotated[int, typer.Option("--offset", help="Start at this stream offset.")] = 0,
    as_json: AsJson = False,
) -> None:
    """The run's event stream (``ctx.write_event_to_stream``). With --json: a JSON
    array, or one JSON object per line with --follow."""

    async def read(client: DurableClient) -> list[dict[str, Any]]:
        entries = []
        async for entry in client.stream_entries(run_id, offset, follow=follow):
            if follow:
                _print_entry(entry.to_dict(), as_json)
            else:
                entries.append(entry.to_dict())
        return entries

    entries = _run(db, read)
    if as_json and not follow:
        _print_json(entries)
    else:
        for entry in entries:
            _print_entry(entry, as_json)


def _print_entry(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.out(json.dumps(entry, default=str), highlight=False)
    elif "unreadable" in entry:
        out.out(f"{entry['offset']:>4}  ? {entry['unreadable']}", highlight=False)
    elif "type" in entry:
        data = json.dumps(entry["data"], default=str)
        out.out(f"{entry['offset']:>4}  {entry['type']} {data}", highlight=False)
    else:
        out.out(f"{entry['offset']:>4}  {entry}", highlight=False)
    sys.stdout.flush()


@runs_app.command("send")
def send(
    run_id: RunId,
    event_json: Annotated[
        str,
        typer.Argument(
            help='The event: {"type": "module.ClassName", "data": {...}}, or the data '
            "alone with --type.",
            show_default=False,
        ),
    ],
    db: Db,
    event_type: Annotated[
        str | None,
        typer.Option("--type", "-t", help="The event class (module.ClassName) of the data."),
    ] = None,
    step: Annotated[str | None, typer.Option("--step", help="Deliver to this step only.")] = None,
    as_json: AsJson = False,
) -> None:
    """Send an event to a waiting run (human in the loop), exactly once."""
    event = _checked(lambda: event_from_json(event_json, event_type))

    async def deliver(client: DurableClient) -> RunInfo:
        await client.send_event(run_id, event, step=step)
        return await client.get_run(run_id)

    run = _run(db, deliver)
    kind = f"{type(event).__module__}.{type(event).__qualname__}"
    if as_json:
        _print_json({"run_id": run_id, "sent": kind, "status": run.status})
    else:
        out.print(f"Sent {kind} to run {run_id} ({run.status}).")


def _checked(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except DurableError as error:
        _fail(str(error))


@runs_app.command("cancel")
def cancel(run_id: RunId, db: Db, as_json: AsJson = False) -> None:
    """Cancel a run and its unfinished steps (status CANCELLED); `resume` continues it."""

    async def act(client: DurableClient) -> tuple[bool, RunInfo]:
        return await client.cancel(run_id), await client.get_run(run_id)

    changed, run = _run(db, act)
    if as_json:
        _print_json({"run_id": run_id, "cancelled": changed, "status": run.status})
    elif changed:
        out.print(f"Cancelled run {run_id} ({run.status}).")
    else:
        out.print(f"Run {run_id} had already ended ({run.status}): nothing changed.")


@runs_app.command("resume")
def resume(run_id: RunId, db: Db, as_json: AsJson = False) -> None:
    """Resume a cancelled or failed run from its checkpoints (a worker with the code runs it)."""

    async def act(client: DurableClient) -> RunInfo:
        await client.resume(run_id)
        return await client.get_run(run_id)

    run = _run(db, act)
    if as_json:
        _print_json({"run_id": run_id, "status": run.status})
    else:
        out.print(f"Resumed run {run_id} ({run.status}): a worker with its code continues it.")


@runs_app.command("fork")
def fork(
    run_id: RunId,
    db: Db,
    from_step: Annotated[
        str,
        typer.Option(
            "--from-step",
            help="Re-execute from this step (its first invocation; STEP/N for invocation N).",
            show_default=False,
        ),
    ],
    new_run_id: Annotated[
        str | None, typer.Option("--run-id", help="ID of the new run (default: generated).")
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Code version the new run runs under (default: the run's)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Start a new run that reuses every result recorded before STEP and re-executes from it."""

    async def act(client: DurableClient) -> tuple[RunInfo, str]:
        original = await client.get_run(run_id)
        new_id = await client.fork(run_id, from_step, new_run_id=new_run_id, version=version)
        return original, new_id

    original, new_id = _run(db, act)
    runs_under = version or original.version
    if as_json:
        _print_json(
            {"run_id": new_id, "forked_from": run_id, "from_step": from_step, "version": runs_under}
        )
        return
    out.print(f"Forked run {run_id} from step {from_step} as {new_id} (version {runs_under}).")
    if version is None and original.waiting_for_version is not None:
        err.print(
            f"note: {run_id} waits for version {original.waiting_for_version}; the fork "
            f"keeps it. To run it on the workers' code: --version {original.held_by_version}"
        )


@app.command("ui")
def ui(
    db: Db,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8040,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="DBOS_LLAMA_UI_TOKEN", help="Required of every request."),
    ] = None,
) -> None:
    """Serve a web viewer of the runs (needs the server extra): look, answer, cancel, fork."""
    from ._viewer import ViewerSetupError, check_bind, serve

    try:
        check_bind(host, token)
        _run(db, lambda c: c.list_runs(since=timedelta(0)))  # the database opens, as for `runs`
        serve(db, host, port, token)
    except ViewerSetupError as error:
        _fail(escape(str(error)))  # its "[server]" is not rich markup


def main() -> None:
    """Entry point of the ``dbos-llama`` console script."""
    # Event classes of the application (to send or to read values) import from the
    # working directory, as with ``python -m``.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # DBOS warns about every recorded value it cannot deserialize here; the CLI
    # shows those as unreadable instead.
    logging.getLogger("dbos").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    main()
