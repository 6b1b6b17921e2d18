"""A build file that calls sys.exit() must not make `kiln build` report
success (or any exit code it chose): it is a user error at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_kiln

AT_LOAD = """import sys
from kiln.build import target
sys.exit({code})
"""

IN_A_TARGET = """import sys
from kiln.build import target

@target
async def a():
    sys.exit({code})
"""


@pytest.mark.parametrize("code", ["0", "'done'"])
@pytest.mark.parametrize(("kilnfile", "line"), [(AT_LOAD, 3), (IN_A_TARGET, 6)])
def test_sys_exit_in_a_build_file_is_an_error(home, tmp_path: Path, kilnfile, line, code) -> None:
    (tmp_path / "kilnfile.py").write_text(kilnfile.format(code=code))
    for command in (["build"], ["targets"]) if kilnfile is AT_LOAD else (["build"],):
        proc = run_kiln(home, *command, env={"KILN_SERVER": "off"}, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"kilnfile.py:{line}:" in proc.stderr and "sys.exit(" in proc.stderr
        assert "Traceback" not in proc.stderr
