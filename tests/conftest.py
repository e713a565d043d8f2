"""Fixtures: an instance of the identity server on SQLite (always) and on PostgreSQL
(when CONGVU_TEST_DATABASE_URL names a server), in-process and on a live loopback port.

Each test gets its own database: a temporary SQLite file, or a PostgreSQL database
copied from a migrated template (CREATE DATABASE ... TEMPLATE), dropped afterwards.
Argon2id runs at its lowest accepted cost here so that tests stay fast; the policy's
real cost is measured in bench/, not here.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from identity import create_app
from identity.config import load_config
from tests.helpers import Instance, LoopbackSession

FAST_HASHING = {"memory_cost_kib": 8192, "time_cost": 1, "parallelism": 1}
PG_URL = os.environ.get("CONGVU_TEST_DATABASE_URL", "")


def _backends() -> list[Any]:
    backends: list[Any] = ["sqlite"]
    if PG_URL:
        backends.append("postgresql")
    else:
        backends.append(pytest.param("postgresql", marks=pytest.mark.skip(
            reason="CONGVU_TEST_DATABASE_URL is not set (.ci/run sets it when PostgreSQL answers)")))
    return backends


class PostgresDatabases:
    """Creates a migrated template once per run; each test copies it."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url).set(drivername="postgresql+psycopg")
        self.engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.template: str | None = None

    def _create(self, name: str, template: str | None = None) -> str:
        with self.engine.connect() as connection:
            clause = f" TEMPLATE {template}" if template else ""
            connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def new_database(self) -> str:
        if self.template is None:
            name = f"congvu_tpl_{uuid.uuid4().hex[:8]}"
            url = self._create(name)
            from identity.db import Database

            database = Database(url)
            database.upgrade()
            database.dispose()
            self.template = name
        return self._create(f"congvu_t_{uuid.uuid4().hex[:10]}", self.template)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        if self.template:
            self.drop(self.admin_url.set(database=self.template).render_as_string(False))
        self.engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases | None]:
    if not PG_URL:
        yield None
        return
    databases = PostgresDatabases(PG_URL)
    yield databases
    databases.close()


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path, postgres) -> Iterator[str]:  # type: ignore[no-untyped-def]
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'congvu.db'}"
        return
    url = postgres.new_database()
    yield url
    postgres.drop(url)


@pytest.fixture
def database(database_url: str) -> Iterator[Any]:
    """The test's database, migrated, without an app around it (identity.db.Database)."""
    from identity.db import Database

    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def make_instance(tmp_path, database_url: str):  # type: ignore[no-untyped-def]
    """Factory: an app on this test's database, with optional setting overrides."""
    created: list[Instance] = []

    def factory(issuer: str = "https://127.0.0.1", **overrides: Any) -> Instance:
        settings = {"issuer": issuer, "database_url": database_url,
                    "password_hash": FAST_HASHING, **overrides}
        config = load_config(tmp_path / "data", overrides=settings, environ={})
        app = create_app(config, prepare=True)
        app.config["TESTING"] = True
        instance = Instance(app)
        created.append(instance)
        return instance

    yield factory
    for instance in created:
        dispatcher = instance.app.extensions.get("congvu.logout")
        if dispatcher is not None:
            dispatcher.stop()  # back-channel sends under way must not outlive the database
        watcher = instance.app.extensions.get("congvu.chain_watcher")
        if watcher is not None:
            watcher.wait(60)  # the console's background check must not outlive the database
        instance.services.database.dispose()


@pytest.fixture
def instance(make_instance) -> Instance:  # type: ignore[no-untyped-def]
    return make_instance()


class _LateApp:
    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@contextmanager
def serve(make_instance, host_name: str = "127.0.0.1", **overrides: Any) -> Iterator[Instance]:  # type: ignore[no-untyped-def]
    """The server on a real loopback port (threaded WSGI server), issuer = its URL with
    `host_name` (a browser refuses an IP address as a WebAuthn RP ID: use "localhost")."""
    dispatch = _LateApp()  # the issuer names the port, so the app comes after the socket
    server = make_server("127.0.0.1", 0, dispatch, threaded=True)
    port = server.server_port
    instance = make_instance(issuer=f"http://{host_name}:{port}", **overrides)
    dispatch.app = instance.app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    instance.base_url = f"http://{host_name}:{port}"
    try:
        yield instance
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def live(make_instance) -> Iterator[Instance]:  # type: ignore[no-untyped-def]
    with serve(make_instance) as instance:
        yield instance


@pytest.fixture
def browser(live: Instance) -> LoopbackSession:
    """A requests session that, like a browser, sends Secure cookies to 127.0.0.1."""
    return LoopbackSession()
