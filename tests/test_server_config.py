"""The config's [server] table: starting the server on a build."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kiln.config import DEFAULT_SERVER_IDLE_S, load_config
from kiln.errors import KilnError
from server_helpers import serving

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server is Linux-only")

PROJECT = """
from kiln.build import target

@target
async def nothing():
    return None
"""


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_and_settings(tmp_path: Path) -> None:
    plain = load_config(_config(tmp_path, ""))
    assert not plain.server_on_build and plain.server_idle_s == DEFAULT_SERVER_IDLE_S
    config = load_config(_config(tmp_path, '[server]\nstart = "on-build"\nidle-hours = 0.5\n'))
    assert config.server_on_build and config.server_idle_s == 1800


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[server]\nstart = "always"\n', 'start must be "manual" or "on-build"'),
        ("[server]\nidle-hours = -1\n", "idle-hours must be a positive number"),
        ("[server]\nidle-hours = true\n", "idle-hours must be a positive number"),
        ('[server]\nport = 1\n', "unknown setting 'port' in [server]"),
        ('server = "on"\n', "[server] must be a table"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(KilnError) as caught:
        load_config(_config(tmp_path, text))
    assert fragment in caught.value.message and "config.toml" in caught.value.message


def test_a_build_starts_the_server_when_configured(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "kilnfile.py").write_text(PROJECT)
    with serving(tmp_path / "home") as served:
        manual = served.kiln("build", cwd=project, KILN_CONFIG=str(_config(tmp_path, "")))
        assert manual.returncode == 0, manual.stderr
        assert served.status() is None  # (the default: only `kiln server start`)
        config = _config(tmp_path, '[server]\nstart = "on-build"\n')
        first = served.kiln("build", cwd=project, KILN_CONFIG=str(config))
        assert first.returncode == 0, first.stderr  # it ran by itself meanwhile
        served.wait_until(served.status, "the server the build started")
        for _ in range(2):  # (the first makes the server watch the project)
            again = served.kiln("build", cwd=project, KILN_CONFIG=str(config))
            assert again.returncode == 0 and "nothing to do" in again.stderr
        assert served.status()["answered_here"] == 2  # both answered by the server itself
        off = served.kiln("build", cwd=project, KILN_CONFIG=str(config), KILN_SERVER="off")
        assert off.returncode == 0
        assert served.status()["answered_here"] == 2
