"""Serve durable workflows over HTTP with LlamaIndex's `WorkflowServer` (extra ``server``).

Example:
    ```python
    import asyncio
    from dbos_llama.server import DurableWorkflowServer

    server = DurableWorkflowServer(
        {"name": "approvals", "system_database_url": "sqlite:///approvals.sqlite"}
    )
    server.add_workflow("approval", Approval())  # a @durable workflow
    asyncio.run(server.serve(host="127.0.0.1", port=8000))
    ```

Every run of a `@durable` workflow started through the server is a DBOS workflow
whose run ID is the server's ``run_id`` (recorded with the server's handler ID as
the run's ``dbos_llama.server_handler_id`` attribute, which `dbos-llama runs show`
accepts in place of a run ID). The server's tables live in the DBOS system database,
and a durable run's events, outcome and state are read from what DBOS recorded, so
they survive crashes exactly as the run does.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig
from llama_agents.server import AbstractWorkflowStore, WorkflowServer
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ._served_runtime import ServedRuntime
from ._served_store import DurableSqliteStore, durable_postgres_store
from .errors import ServerConfigError

__all__ = ["DurableWorkflowServer", "DEBUGGER_CDN_PREFIX", "DEBUGGER_PACKAGE"]

logger = logging.getLogger("dbos_llama")

#: The debugger UI package llama-agents-server 0.8's page loads, and where from.
DEBUGGER_PACKAGE = "@llamaindex/workflow-debugger@0.2.42"
DEBUGGER_CDN_PREFIX = f"https://cdn.jsdelivr.net/npm/{DEBUGGER_PACKAGE}/dist/"
#: Where `DurableWorkflowServer(debugger_assets=...)` serves the UI's files.
LOCAL_ASSETS_PATH = "/debugger-assets"


class DurableWorkflowServer(WorkflowServer):
    """A `WorkflowServer` whose `@durable` workflows run on DBOS, with its tables in
    the DBOS system database.

    ``dbos_config`` configures DBOS for this process (``name`` and
    ``system_database_url`` at least: a ``sqlite:///`` file, or PostgreSQL for several
    replicas sharing one database). The server launches DBOS when it starts (in its
    own event loop, recovering the runs this application left unfinished) and
    destroys it when it stops. ``debugger_assets`` is a directory holding the debugger
    UI's ``app.js`` and ``app.css`` (the ``dist/`` of `DEBUGGER_PACKAGE`) to serve at
    ``/`` instead of loading them from the CDN. Other keyword arguments go to
    `WorkflowServer` (except ``workflow_store`` and ``runtime``, which this sets).

    Workflows that are not `@durable` are served in memory as a plain
    `WorkflowServer` would, with a warning when they are added.
    """

    def __init__(
        self,
        dbos_config: DBOSConfig,
        *,
        debugger_assets: str | Path | None = None,
        **server_options: Any,
    ) -> None:
        for taken in ("workflow_store", "runtime"):
            if taken in server_options:
                raise ServerConfigError(
                    f"DurableWorkflowServer sets {taken}= itself (the DBOS system "
                    "database and the DBOS runtime); leave it out."
                )
        url = dbos_config.get("system_database_url")
        if not url:
            raise ServerConfigError(
                "dbos_config needs a system_database_url (e.g. 'sqlite:///app.sqlite', "
                "or 'postgresql://user@host:5432/app' for several replicas): the "
                "server's tables are kept in that database, beside the runs."
            )
        DBOS(config=dbos_config)
        self.system_database_url = url
        runtime = ServedRuntime(self._launch, self._destroy)
        #: The server's workflow store (in the DBOS system database).
        self.durable_store: AbstractWorkflowStore = _store_on(url, runtime.plain_runs)
        self._store_started = False
        super().__init__(workflow_store=self.durable_store, runtime=runtime, **server_options)
        if debugger_assets is not None:
            self._serve_debugger_assets(Path(debugger_assets))

    async def _launch(self) -> None:
        if not self._store_started:
            await self.durable_store.start()
            self._store_started = True
        DBOS.launch()

    async def _destroy(self) -> None:
        DBOS.destroy()

    def _serve_debugger_assets(self, directory: Path) -> None:
        """Serve the debugger UI's files from ``directory`` (no CDN)."""
        missing = [name for name in ("app.js", "app.css") if not (directory / name).is_file()]
        if missing:
            raise ServerConfigError(
                f"{directory} lacks {', '.join(missing)}: give the dist/ directory of "
                f"{DEBUGGER_PACKAGE} (e.g. from `npm pack {DEBUGGER_PACKAGE}`)."
            )
        page = _debugger_page().replace(DEBUGGER_CDN_PREFIX, f"{LOCAL_ASSETS_PATH}/")

        async def index(request: Request) -> HTMLResponse:
            return HTMLResponse(page)

        routes: list[BaseRoute] = self.app.router.routes
        at = next(i for i, r in enumerate(routes) if getattr(r, "name", None) == "ui")
        routes[at : at + 1] = [
            Mount(LOCAL_ASSETS_PATH, app=StaticFiles(directory=directory), name="ui-assets"),
            Mount("/", app=Starlette(routes=[Route("/", index)]), name="ui"),
        ]


def _debugger_page() -> str:
    """The debugger UI's page as llama-agents-server ships it."""
    import llama_agents.server as package

    page = (Path(package.__file__).parent / "static" / "index.html").read_text()
    if DEBUGGER_CDN_PREFIX not in page:
        raise ServerConfigError(
            f"llama-agents-server's debugger page no longer loads {DEBUGGER_CDN_PREFIX}; "
            "this dbos-llama release cannot serve its assets locally."
        )
    return page


def _store_on(url: str, plain_runs: Collection[str]) -> AbstractWorkflowStore:
    """The server's store in the DBOS system database at ``url``."""
    parsed = make_url(url)
    store: Any
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ServerConfigError(f"{url!r}: the server needs a SQLite file, not memory.")
        store = DurableSqliteStore(parsed.database)
    elif parsed.get_backend_name() == "postgresql":
        dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        store = durable_postgres_store(dsn)
    else:
        raise ServerConfigError(
            f"{parsed.get_backend_name()!r} databases are not supported: use SQLite or PostgreSQL."
        )
    store.serve_durable_runs(plain_runs)
    checked: AbstractWorkflowStore = store
    return checked
