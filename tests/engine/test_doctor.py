"""`kiln doctor` and life without bubblewrap."""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine_helpers import build, write_project


def test_doctor_reports_every_check(kiln) -> None:
    proc = kiln("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert set(checks) == {
        "wasmtime", "bubblewrap", "native steps", "user namespaces", "cgroups", "node",
        "store file system", "free space", "remote",
    }  # fmt: skip
    assert checks["remote"]["detail"].startswith("none configured")
    assert checks["wasmtime"]["status"] == "ok"
    if checks["bubblewrap"]["status"] == "ok":  # then steps must run in the resident sandbox
        assert checks["native steps"]["status"] == "ok", checks["native steps"]
    assert proc.returncode == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)


def test_doctor_says_how_to_get_bubblewrap(kiln, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with no bwrap on it
    bin_dir.mkdir()
    proc = kiln("doctor", env={"PATH": str(bin_dir)})
    assert proc.returncode == 1
    assert "fail  bubblewrap: bwrap is not installed" in proc.stdout
    assert "fix: apt-get install bubblewrap" in proc.stdout


def test_without_bubblewrap_native_steps_fail_clearly_and_wasm_steps_work(
    store, tmp_path: Path, tools, monkeypatch
) -> None:
    import kiln.exec.native

    monkeypatch.setattr(kiln.exec.native, "bwrap_path", lambda: None)  # "not installed"
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")
    root = write_project(
        tmp_path / "p",
        """
from kiln.build import native, source, target, wasm

@target
async def sandboxed():
    return await native("sh", "-c", "echo hi > o", tools=["sh"], outputs=["o"])

@target
async def portable():
    return await wasm(source("tools/cat.wasm"), "o", outputs=["o"])
""",
        tools,
    )
    report = build(store, root, keep_going=True)
    outcome = {t.name: t for t in report.targets}
    assert outcome["portable"].output is not None
    message = outcome["sandboxed"].error.render()
    assert "native steps need bubblewrap (bwrap), which is not installed" in message
    assert "apt-get install bubblewrap" in message
    assert os.path.exists(outcome["portable"].output)
