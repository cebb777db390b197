"""The ``dbos-llama`` command line: list, inspect and steer durable runs by database URL."""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from ._cli_db import DB_ENV_VARS, ReportedByTheCommand, fail, run_with_client
from ._cli_render import (
    err,
    out,
    print_entry,
    print_json,
    run_header,
    runs_table,
    timeline_table,
)
from ._client import DurableClient
from ._event_json import event_from_json
from ._history import StepInvocationInfo
from ._run_info import RunInfo
from .errors import DurableError


class _Command(TyperCommand):
    """A command whose help names arguments without Typer's type tags (``<str>``)
    and braces (``{RUN_ID}``): the option and argument names say what to give."""

    def format_help(self, ctx: Any, formatter: Any) -> None:  # typer's own click types
        super().format_help(ctx, formatter)
        lines, section, cut = [], "", 0
        for line in "".join(formatter.buffer).split("\n"):
            if line and not line.startswith(" "):
                section, cut = line, 0
            elif section == "Arguments:" and re.match(r"  \S", line):
                tagged = line
                line = re.sub(r" <(str|int|bool)>", "", line)
                cut = len(tagged) - len(line)
            elif section == "Arguments:" and line.startswith(" " * (cut + 2)):
                line = line[cut:]  # a wrapped line of the help beside the argument
            lines.append(line)
        formatter.buffer[:] = [re.sub(r"\{([A-Z_]+)\}", r"\1", "\n".join(lines))]


app = typer.Typer(
    name="dbos-llama",
    help="Operate durable LlamaIndex workflow runs stored in a DBOS system database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
runs_app = typer.Typer(
    help="List, inspect and steer runs.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(runs_app, name="runs")

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="System database URL: sqlite:///file.sqlite or postgresql://... "
        f"Default: ${DB_ENV_VARS[0]}, then ${DB_ENV_VARS[1]}.",
        show_default=False,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", metavar="", help="Print JSON for scripts (values in full).")
]
Imports = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        metavar="MODULE",
        help="Import this module of the application first (repeatable), so that values "
        "stored as JSON (JsonDataSerializer) read back as its classes; pickled values "
        "import their modules by themselves.",
    ),
]
RunId = Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's ID.", show_default=False)]


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


@runs_app.command(cls=_Command, name="list")
def list_runs(
    db: Db = None,
    workflow: Annotated[
        str | None,
        typer.Option("--workflow", "-w", metavar="NAME", help="Only runs of this workflow name."),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="STATUS",
            help="Only runs with this status (PENDING, SUCCESS, ...); repeatable.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="AGE|TIME",
            help="Only runs created since: an age (30m, 2h, 1d) or a UTC time (2026-11-25T09:00).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", metavar="N", help="At most this many.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Runs, newest first. A run held for its code version shows which version it waits for."""
    after = parse_since(since) if since is not None else None
    found: list[RunInfo] = run_with_client(
        db,
        lambda c: c.list_runs(
            workflow=workflow,
            status=[s.upper() for s in status] if status else None,
            limit=limit,
            since=after,
        ),
    )
    if as_json:
        print_json([r.to_dict() for r in found])
    else:
        runs_table(found)


@runs_app.command(cls=_Command, name="show")
def show(run_id: RunId, db: Db = None, imports: Imports = None, as_json: AsJson = False) -> None:
    """A run and the timeline of its steps, with the recorded calls inside each step."""
    _import(imports)

    async def read(client: DurableClient) -> tuple[RunInfo, list[StepInvocationInfo]]:
        run = await client.get_run(run_id)  # a run ID or a server handler ID
        return run, await client.steps(run.run_id)

    run, steps = run_with_client(db, read)
    if as_json:
        print_json({**run.to_dict(), "steps": [s.to_dict() for s in steps]})
        return
    run_header(run)
    timeline_table(steps)


@runs_app.command(cls=_Command, name="events")
def events(
    run_id: RunId,
    db: Db = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", metavar="", help="Keep reading until the run ends.")
    ] = False,
    offset: Annotated[
        int, typer.Option("--offset", metavar="N", help="Start at this stream offset.")
    ] = 0,
    imports: Imports = None,
    as_json: AsJson = False,
) -> None:
    """The run's event stream (what its steps wrote with ctx.write_event_to_stream).
    With --json: a JSON array, or one JSON object per line with --follow."""
    _import(imports)

    async def read(client: DurableClient) -> list[dict[str, Any]]:
        entries = []
        async for entry in client.stream_entries(run_id, offset, follow=follow):
            if follow:
                print_entry(entry.to_dict(), as_json)
            else:
                entries.append(entry.to_dict())
        return entries

    entries = run_with_client(db, read)
    if as_json and not follow:
        print_json(entries)
    else:
        for entry in entries:
            print_entry(entry, as_json)


@runs_app.command(cls=_Command, name="send")
def send(
    run_id: RunId,
    event_json: Annotated[
        str,
        typer.Argument(
            metavar="EVENT_JSON",
            help='The event: {"type": "module.ClassName", "data": {...}}, or the data '
            "alone with --type.",
            show_default=False,
        ),
    ],
    db: Db = None,
    event_type: Annotated[
        str | None,
        typer.Option(
            "--type", "-t", metavar="CLASS", help="The event class (module.ClassName) of the data."
        ),
    ] = None,
    step: Annotated[
        str | None, typer.Option("--step", metavar="STEP", help="Deliver to this step only.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Send an event to a waiting run (human in the loop), exactly once."""
    event = _checked(lambda: event_from_json(event_json, event_type))

    async def deliver(client: DurableClient) -> RunInfo:
        await client.send_event(run_id, event, step=step)
        return await client.get_run(run_id)

    run = run_with_client(db, deliver)
    kind = f"{type(event).__module__}.{type(event).__qualname__}"
    if as_json:
        print_json({"run_id": run_id, "sent": kind, "status": run.status})
    else:
        out.print(f"Sent {kind} to run {run_id} ({run.status}).")


def _import(modules: list[str] | None) -> None:
    """Import the application modules named by ``--import`` (never a module named by
    stored data: the system database is not trusted to choose code)."""
    for module in modules or []:
        try:
            importlib.import_module(module)
        except ImportError as error:
            fail(
                f"--import {module}: cannot import it ({error}). Run the command from the "
                "directory your application imports from (the project root)."
            )


def _checked(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except DurableError as error:
        fail(str(error))


@runs_app.command(cls=_Command, name="cancel")
def cancel(run_id: RunId, db: Db = None, as_json: AsJson = False) -> None:
    """Cancel a run and its unfinished steps (status CANCELLED); "runs resume" continues it."""

    async def act(client: DurableClient) -> tuple[bool, RunInfo]:
        return await client.cancel(run_id), await client.get_run(run_id)

    changed, run = run_with_client(db, act)
    if as_json:
        print_json({"run_id": run_id, "cancelled": changed, "status": run.status})
    elif changed:
        out.print(f"Cancelled run {run_id} ({run.status}).")
    else:
        out.print(f"Run {run_id} had already ended ({run.status}): nothing changed.")


@runs_app.command(cls=_Command, name="resume")
def resume(run_id: RunId, db: Db = None, as_json: AsJson = False) -> None:
    """Resume a cancelled or failed run from its checkpoints (a worker with the code runs it)."""

    async def act(client: DurableClient) -> RunInfo:
        await client.resume(run_id)
        return await client.get_run(run_id)

    run = run_with_client(db, act)
    if as_json:
        print_json({"run_id": run_id, "status": run.status})
    else:
        out.print(f"Resumed run {run_id} ({run.status}): a worker with its code continues it.")


@runs_app.command(cls=_Command, name="fork")
def fork(
    run_id: RunId,
    from_step: Annotated[
        str,
        typer.Option(
            "--from-step",
            metavar="STEP",
            help="Re-execute from this step (its first invocation; STEP/N for invocation N).",
            show_default=False,
        ),
    ],
    db: Db = None,
    new_run_id: Annotated[
        str | None,
        typer.Option("--run-id", metavar="RUN_ID", help="ID of the new run (default: generated)."),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            metavar="VERSION",
            help="Code version the new run runs under (default: the run's).",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Start a new run that reuses every result recorded before STEP and re-executes from it."""

    async def act(client: DurableClient) -> tuple[RunInfo, str]:
        original = await client.get_run(run_id)
        new_id = await client.fork(run_id, from_step, new_run_id=new_run_id, version=version)
        return original, new_id

    original, new_id = run_with_client(db, act)
    runs_under = version or original.version
    if as_json:
        print_json(
            {"run_id": new_id, "forked_from": run_id, "from_step": from_step, "version": runs_under}
        )
        return
    out.print(f"Forked run {run_id} from step {from_step} as {new_id} (version {runs_under}).")
    if version is None and original.waiting_for_version is not None:
        err.print(
            f"note: {run_id} waits for version {original.waiting_for_version}; the fork "
            f"keeps it. To run it on the workers' code: --version {original.held_by_version}"
        )


@app.command(cls=_Command, name="ui")
def ui(
    db: Db = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="HOST",
            help="Address to listen on; any but a loopback address needs --token.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on.")] = 8040,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar="DBOS_LLAMA_UI_TOKEN",
            help="Required of every request (open the viewer once with ?token=TOKEN).",
        ),
    ] = None,
) -> None:
    """Serve a web viewer of the runs (needs the server extra): look, answer, cancel, fork."""
    from ._viewer import check_bind, serve

    _checked(lambda: check_bind(host, token))
    # The database opens (or the command fails as the `runs` commands do).
    run_with_client(db, lambda c: c.list_runs(since=timedelta(0)))
    url = db or next(os.environ[v] for v in DB_ENV_VARS if os.environ.get(v))
    _checked(lambda: serve(url, host, port, token))


def main() -> None:
    """Entry point of the ``dbos-llama`` console script."""
    # Event classes of the application (to send or to read values) import from the
    # working directory, as with ``python -m``.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # DBOS warns about every recorded value it cannot deserialize here; the CLI
    # shows those as unreadable instead.
    logging.getLogger("dbos").setLevel(logging.ERROR)
    logging.getLogger("dbos").addFilter(ReportedByTheCommand())
    app()


if __name__ == "__main__":
    main()
