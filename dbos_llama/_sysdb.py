"""The library's own tables in the DBOS system database: engine, database time, SQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from . import _naming


def _as_dbos_does(dbapi_connection: Any, _record: Any) -> None:
    # Writers take SQLite's write lock at BEGIN and wait for it (never fail on a
    # read snapshot that another writer made stale); DBOS's tables have foreign keys
    # (a message's destination must exist), which SQLite checks only when asked.
    dbapi_connection.isolation_level = "IMMEDIATE"
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


class SystemTable:
    """One table of the library's in the DBOS system database (schema ``dbos_llama``
    on PostgreSQL; a table prefixed ``dbos_llama_`` on SQLite), read and written in
    plain SQL with the database's own clock (`now`, milliseconds since the epoch),
    so workers with skewed clocks agree.

    Example: ``SystemTable(url, "released", "run_id TEXT PRIMARY KEY, ...")``.
    """

    def __init__(
        self, url: str, table: str, columns: str, indexes: dict[str, str] | None = None
    ) -> None:
        parsed = sa.make_url(url)
        self.sqlite = parsed.drivername.startswith("sqlite")
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.engine = (
            sa.create_engine(parsed, pool_size=2, max_overflow=2, pool_pre_ping=True)
            if not self.sqlite
            # SQLite: wait for DBOS's writers instead of failing ("database is locked").
            else sa.create_engine(parsed, connect_args={"timeout": 30})
        )
        if self.sqlite:  # connections set up as DBOS sets up its own
            sa.event.listen(self.engine, "connect", _as_dbos_does)
        self._columns = columns
        self._indexes = {
            f"{_naming.TABLE_SCHEMA}_{table}_{k}": v for k, v in (indexes or {}).items()
        }
        if self.sqlite:
            #: The table's name as SQL refers to it.
            self.name = f"{_naming.TABLE_SCHEMA}_{table}"
            #: Database time now, in milliseconds since the epoch (an SQL expression).
            self.now = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
        else:
            self.name = f"{_naming.TABLE_SCHEMA}.{table}"
            self.now = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        #: The bare table name (what ``ON CONFLICT ... DO UPDATE`` refers to).
        self.bare = self.name.split(".")[-1]

    def write(self, sql: str, **params: Any) -> int:
        """Run one statement; the number of rows it changed."""
        with self.engine.begin() as c:
            return int(c.execute(sa.text(sql), params).rowcount)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Run one statement; the rows it returned."""
        with self.engine.begin() as c:
            return [dict(r) for r in c.execute(sa.text(sql), params).mappings()]

    def create(self) -> None:
        """Create the table (and schema) if missing; safe when workers race to."""
        for attempt in range(3):
            try:
                with self.engine.begin() as c:
                    if not self.sqlite:
                        c.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {_naming.TABLE_SCHEMA}"))
                    c.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {self.name} ({self._columns})"))
                    for index, columns in self._indexes.items():
                        sql = f"CREATE INDEX IF NOT EXISTS {index} ON {self.name} ({columns})"
                        c.execute(sa.text(sql))
                return
            except sa.exc.IntegrityError:  # two workers creating it at once
                if attempt == 2:
                    raise

    def dispose(self) -> None:
        self.engine.dispose()
