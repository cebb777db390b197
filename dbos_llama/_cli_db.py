"""How the ``dbos-llama`` command reaches the system database: the URL from
``--db`` or the environment, checked for its form, and database errors as one
clear message (printed once)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import typer
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from ._cli_render import err
from ._client import DurableClient
from ._redact import redact
from .errors import DurableError

#: Environment variables read for the system database URL, in order.
DB_ENV_VARS = ["DBOS_LLAMA_DB", "DBOS_SYSTEM_DATABASE_URL"]
#: The database URL forms the command reads.
URL_FORMS = (
    "sqlite:///relative/path.sqlite, sqlite:////absolute/path.sqlite, or "
    "postgresql://user@host:5432/database"
)


def run_with_client(
    db: str | None, action: Callable[[DurableClient], Coroutine[Any, Any, Any]]
) -> Any:
    """Run ``action`` with a client on ``db``; a dbos_llama error is a clear message."""
    url = _database_url(db)

    async def main() -> Any:
        async with _open(url) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except DurableError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        fail(f"Cannot read the system database {url!r}: {_db_error(error)}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _database_url(db: str | None) -> str:
    """``--db``, else the first environment variable set; checked for its form."""
    url = db or next((os.environ[v] for v in DB_ENV_VARS if os.environ.get(v)), None)
    if not url:
        fail(
            f"No system database given: pass --db URL, or set {DB_ENV_VARS[0]} "
            f"(or {DB_ENV_VARS[1]}). A URL is {URL_FORMS}."
        )
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else None
    if scheme is None:
        fail(
            f"{url!r} is not a database URL. For a SQLite file write sqlite:///{url} "
            f"(relative to this directory); the forms are {URL_FORMS}."
        )
    if scheme not in ("sqlite", "postgresql", "postgres"):
        fail(
            f"{scheme}:// databases are not supported: a DBOS system database is on "
            f"SQLite or PostgreSQL ({URL_FORMS})."
        )
    return url


def _open(db: str) -> DurableClient:
    """A client on ``db``, or a clear error for a URL that names no database."""
    if db.startswith("sqlite:///"):
        path = db[len("sqlite:///") :].split("?")[0]
        if not os.path.exists(path):
            fail(f"No SQLite database at {path!r}: check --db / ${DB_ENV_VARS[0]}.")
    try:
        return DurableClient(db)
    except Exception as error:  # a malformed URL or an unreachable server
        fail(f"Cannot open the system database {db!r}: {_db_error(error)}")


def _db_error(error: BaseException) -> str:
    """A database error in one line: the driver's message, without SQLAlchemy's
    statement and background link."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).split("\n(Background on this error")[0].split("\n[SQL:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(cause).__name__}: {' '.join(lines)}"


def fail(message: str) -> NoReturn:
    """Print ``message`` as the command's one error line and exit 1."""
    # The URL of --db may carry a password: never print it. The message is text,
    # not rich markup (an error may hold "[...]").
    err.print(Text.assemble(("error:", "red"), " ", redact(message)))
    raise typer.Exit(1)


class ReportedByTheCommand(logging.Filter):
    """Drops DBOS's own log line for a database it cannot connect to: the command
    prints that error itself, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Error connecting to the DBOS system database")
