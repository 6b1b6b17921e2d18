"""`./dev` says what it installs before the minute it takes, and nothing
once it is installed (run on a copy, with stand-ins for pip and python)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_dev_says_what_it_installs_once(tmp_path: Path) -> None:
    shutil.copy(REPO / "dev", tmp_path / "dev")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("bwrap", "pg_ctl", "python3"):  # present: nothing to apt-get
        (tools / name).write_text(  # `python3 -m venv .venv` makes a venv of stand-ins
            '#!/bin/sh\nif [ "$2" = venv ]; then mkdir -p .venv/bin\n'
            'cp "$0" .venv/bin/python; cp "$0" .venv/bin/pip; fi\n'
        )
        (tools / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "PYTHON": str(tools / "python3")}

    def run() -> str:
        proc = subprocess.run(
            ["./dev", "bench"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    first = run().splitlines()
    assert first[0].startswith("dev: creating the virtual environment .venv")
    assert first[1].startswith("dev: installing Kiln and its dependencies into .venv")
    assert first[2] == "dev: installed"
    assert run() == ""  # installed: quiet
