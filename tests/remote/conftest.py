"""Fixtures that start real REAPI servers on 127.0.0.1 (see servers.py).

``buildgrid_cache``, ``buildgrid_exec`` and ``casd`` each yield a started
``servers.Server``: ``.url`` ("grpc://127.0.0.1:PORT"), ``.address``
("127.0.0.1:PORT"), ``.port``, ``.instance``, ``.log`` (its output),
``.stop()``, ``.start()``, ``.restart()`` (same port), ``.running`` and
``.started_s`` (seconds each start took). ``buildgrid_exec`` also has
``.database_url`` (its own database) and ``.postgres`` (the session's
``servers.Postgres``: ``.port``, ``.log``, ``.url(database)``). Each server
is always stopped at teardown (PostgreSQL at the end of the session).

Options go through indirect parametrization, e.g.::

    @pytest.mark.parametrize("buildgrid_cache", [{"instance": "main"}], indirect=True)

- ``buildgrid_cache``: ``instance`` (default ""), ``disk`` (keep blobs in a
  folder instead of memory, so they survive ``restart()``; default False).
- ``buildgrid_exec``: the same, plus ``match_keys`` and ``wildcard_keys``
  (platform property names besides OSFamily and ISA that bots must match,
  or that actions may carry unmatched) and ``keepalive_s`` (seconds before a
  silent bot is dead; default 60).
- ``casd``: ``instance`` (default ""; another name is served instead of "").

The installs they need are made once in pytest's cache (first run: minutes,
and the network); the tests using these fixtures should be marked ``slow``
and ``network``.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import servers


@pytest.fixture(scope="session")
def remote_servers_cache(request: pytest.FixtureRequest) -> Path:
    """Where the servers' installs go: ``.pytest_cache/d/remote-servers``."""
    return Path(request.config.cache.mkdir(servers.CACHE_FOLDER)).resolve()


@pytest.fixture(scope="session")
def buildgrid_venv(remote_servers_cache: Path) -> Path:
    """The virtualenv holding BuildGrid (built on first use)."""
    python = servers.find_python313()
    if python is None:
        pytest.skip("BuildGrid 0.9.1 needs Python 3.13 (pyenv install 3.13.0)")
    return servers.install_buildgrid(remote_servers_cache, python)


@pytest.fixture(scope="session")
def buildbox(remote_servers_cache: Path) -> Path:
    """The folder holding buildbox-casd (downloaded on first use)."""
    return servers.install_buildbox(remote_servers_cache)


def _options(request: pytest.FixtureRequest, allowed: set[str]) -> dict:
    options = dict(getattr(request, "param", None) or {})
    if unknown := set(options) - allowed:
        raise pytest.UsageError(f"unknown options {sorted(unknown)}; known: {sorted(allowed)}")
    return options


@pytest.fixture
def buildgrid_cache(
    request: pytest.FixtureRequest, buildgrid_venv: Path, tmp_path: Path
) -> Iterator[servers.Server]:
    """BuildGrid serving CAS, ByteStream and the Action Cache (no execution)."""
    options = _options(request, {"instance", "disk"})
    instance = options.get("instance", "")
    folder = tmp_path / "buildgrid-cache"
    storage = folder / "cas" if options.get("disk") else None

    def config(port: int) -> str:
        return servers.buildgrid_cache_config(port, instance, storage)

    server = servers.buildgrid_server(buildgrid_venv, folder, config, instance)
    if storage is not None:
        storage.mkdir(parents=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(
    buildgrid_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[servers.Postgres]:
    """A private PostgreSQL for the session, with a database ``bgd_template``
    holding BuildGrid's tables, of which each ``buildgrid_exec`` gets a copy."""
    bindir = servers.find_postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; ./dev installs it)")
    user = servers.postgres_user()
    if user is None:
        pytest.skip("running as root, and there is no postgres user to run PostgreSQL")
    # Not under pytest's tmp folders: they are private to us, and the server
    # may run as another user.
    folder = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    logs = tmp_path_factory.mktemp("postgres")
    cluster = servers.Postgres(bindir, folder, user)
    try:
        cluster.init()
        cluster.start()
        template = cluster.create_database(TEMPLATE_DATABASE)
        servers.migrate_database(buildgrid_venv, template, logs / "migrate.log")
        yield cluster
    finally:
        cluster.stop()
        if cluster.log.exists():
            shutil.copyfile(cluster.log, logs / "postgres.log")
        shutil.rmtree(folder, ignore_errors=True)


TEMPLATE_DATABASE = "bgd_template"


@pytest.fixture
def buildgrid_exec(
    request: pytest.FixtureRequest, buildgrid_venv: Path, postgres: servers.Postgres, tmp_path: Path
) -> Iterator[servers.Server]:
    """BuildGrid with remote execution (Execution, Operations, Bots) on its
    SQL scheduler, besides CAS, ByteStream and the Action Cache; its jobs and
    bots are in a database of its own in the session's PostgreSQL."""
    options = _options(request, {"instance", "disk", "match_keys", "wildcard_keys", "keepalive_s"})
    instance = options.get("instance", "")
    folder = tmp_path / "buildgrid-exec"
    folder.mkdir()
    storage = folder / "cas" if options.get("disk") else None
    if storage is not None:
        storage.mkdir()
    database_url = postgres.create_database(f"bgd_{uuid.uuid4().hex}", template=TEMPLATE_DATABASE)

    def config(port: int) -> str:
        return servers.buildgrid_exec_config(
            port, instance, database_url, storage,
            match_keys=tuple(options.get("match_keys", ())),
            wildcard_keys=tuple(options.get("wildcard_keys", ())),
            keepalive_s=options.get("keepalive_s", 60),
        )  # fmt: skip

    server = servers.buildgrid_server(buildgrid_venv, folder, config, instance, name="bgd-exec")
    server.postgres, server.database_url = postgres, database_url
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def casd(
    request: pytest.FixtureRequest, buildbox: Path, tmp_path: Path
) -> Iterator[servers.Server]:
    """buildbox-casd serving CAS, ByteStream and the Action Cache from a
    folder (kept across ``restart()``)."""
    options = _options(request, {"instance"})
    server = servers.casd_server(buildbox, tmp_path / "casd", options.get("instance", ""))
    try:
        server.start()
        yield server
    finally:
        server.stop()
