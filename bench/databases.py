"""Benchmark databases: a fresh SQLite file or PostgreSQL database, and its row count.

No dbos_llama import here: the alternative's own virtualenv uses it too.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
#: Tables holding configuration, not per-run records.
NOT_COUNTED = ("dbos_migrations", "application_versions", "queues", "alembic_version")


@dataclass
class Backend:
    name: str
    url: str
    cleanup: Callable[[], None] = lambda: None

    def rows(self) -> int:
        """Rows in every DBOS system table (migrations excluded)."""
        if self.name == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                tables = [
                    t for (t,) in conn.execute("select name from sqlite_master where type='table'")
                ]
                return sum(
                    conn.execute(f'select count(*) from "{t}"').fetchone()[0]
                    for t in tables
                    if t not in NOT_COUNTED
                )
        import psycopg

        with psycopg.connect(self.url) as conn:
            tables = [
                t
                for (t,) in conn.execute(
                    "select table_name from information_schema.tables where table_schema='dbos'"
                )
            ]
            return sum(
                conn.execute(f'select count(*) from dbos."{t}"').fetchone()[0]
                for t in tables
                if t not in NOT_COUNTED
            )


def make_backend(name: str) -> Backend:
    if name == "sqlite":
        return Backend(name, f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.sqlite'}")
    import psycopg

    db = f"dbos_llama_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')

    def drop() -> None:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    return Backend(name, f"{PG_SERVER}/{db}", drop)
