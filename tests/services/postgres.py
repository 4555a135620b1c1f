"""An embedded PostgreSQL server for the test session, and an MLflow server whose backend store it is.

Production runs MLflow on PostgreSQL (many writers at once; sqlite locks under concurrent writers).
``pgserver`` (PyPI) ships PostgreSQL 16 binaries in a wheel: ``pgserver.get_server(pgdata)`` runs
``initdb`` once and starts a server that listens on a Unix socket in ``pgdata`` only (no TCP port).
Run as root, pgserver starts PostgreSQL as a system user ``pgserver`` (created once with
``useradd``) and opens the folders above ``pgdata`` to others for traversal (``o+rx``).

MLflow reaches it through SQLAlchemy with psycopg 3: ``postgresql+psycopg://postgres:@/<db>?host=<socket dir>``.

Fixtures:
- ``postgres_server``: the session's :class:`EmbeddedPostgres` (fsync and synchronous commits off:
  tests need no crash durability; benchmarks/registry_scale.py runs it durable).
- ``mlflow_server_postgres``: an ``mlflow server`` (tests.services.mlflow_server) whose backend
  store is a fresh database ``mlflow`` on it; artifacts in a local temporary folder. Its
  ``backend_store_uri`` is the SQLAlchemy URI; ``postgres_server.connect("mlflow")`` opens a
  psycopg connection to read its tables.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.services.mlflow_server import MlflowServer, running_mlflow_server

DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class EmbeddedPostgres:
    """One PostgreSQL server on ``pgdata`` (created on first start, reused after a stop)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = Path(pgdata)
        self._server = None

    def start(self, durable: bool = True) -> EmbeddedPostgres:
        """Start (initdb on first use). ``durable=False`` turns off fsync, synchronous commits and
        full-page writes: what a test needs (no crash survival), ~35% faster MLflow migrations;
        the SQL is the same."""
        import pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # 'stop': the server stops with the last handle (our `stop`, or this process's exit).
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        with self.connect(autocommit=True) as connection:
            if durable:
                connection.execute("ALTER SYSTEM RESET ALL")
            else:
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    connection.execute(f"ALTER SYSTEM SET {setting} = off")
            connection.execute("SELECT pg_reload_conf()")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (its backends are its children)."""
        return self._server.get_pid() if self._server is not None else None

    def uri(self, database: str = "postgres") -> str:
        """libpq URI (psycopg.connect, psql): ``postgresql://postgres:@/<database>?host=<socket dir>``."""
        if self._server is None:
            raise RuntimeError("the PostgreSQL server is not running")
        return self._server.get_uri(database)

    def sqlalchemy_uri(self, database: str) -> str:
        """The URI MLflow's ``--backend-store-uri`` takes (SQLAlchemy, psycopg 3 driver)."""
        return "postgresql+psycopg://" + self.uri(database).removeprefix("postgresql://")

    def connect(self, database: str = "postgres", autocommit: bool = False):
        import psycopg

        return psycopg.connect(self.uri(database), autocommit=autocommit)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping one of that name first); returns its SQLAlchemy URI."""
        if not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"invalid database name {name!r}")
        with self.connect(autocommit=True) as connection:  # CREATE DATABASE refuses a transaction block
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.sqlalchemy_uri(name)


@contextmanager
def running_postgres(pgdata: Path, durable: bool = True) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(pgdata).start(durable)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    # A short path: the server's Unix socket lives in pgdata (socket paths are limited to ~107 bytes).
    with running_postgres(tmp_path_factory.mktemp("pg") / "data", durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server_postgres(postgres_server: EmbeddedPostgres,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    workdir = tmp_path_factory.mktemp("mlflow-pg")
    backend = postgres_server.create_database("mlflow")
    with running_mlflow_server(workdir, str(workdir / "artifacts"), backend_store_uri=backend) as server:
        yield server
