"""`kiln doctor` and life without bubblewrap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from engine_helpers import build, write_project

from conftest import KILN


def test_doctor_reports_every_check(kiln) -> None:
    proc = kiln("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert set(checks) == {
        "wasmtime", "wasm contract", "bubblewrap", "native steps", "user namespaces", "pids cgroup",
        "memory cgroup", "node", "store writable", "store file system", "free space", "remote",
        "watch",
    }  # fmt: skip
    assert checks["remote"]["detail"].startswith("none configured")
    assert checks["wasmtime"]["status"] == "ok"
    contract = checks["wasm contract"]["detail"]
    assert contract.startswith("kiln-wasi-p1-v2: WASI preview 1") and "any CPU and OS" in contract
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


def test_doctor_fails_a_store_it_cannot_write(kiln, tmp_path: Path) -> None:
    blocker = tmp_path / "file"  # the store would have to be made inside a file
    blocker.write_text("")
    proc = kiln("--store", str(blocker / "store"), "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["store writable"]["status"] == "fail", checks["store writable"]
    assert "every build would be refused" in checks["store writable"]["detail"]
    assert proc.returncode == 1
    assert _by_name(kiln("doctor", "--json"))["store writable"]["status"] == "ok"


def _by_name(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in json.loads(proc.stdout)}


NOBODY = 65534


@pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root to run Kiln as another user",
)
def test_doctor_as_an_unprivileged_user() -> None:
    """A read-only store fails (every build would be refused); the cgroup
    fallbacks are worded for a user that is not root."""
    place = Path(tempfile.mkdtemp(prefix="kiln-nobody-"))
    try:
        place.chmod(0o755)
        os.chown(place, NOBODY, NOBODY)
        env = {"PATH": os.environ["PATH"], "HOME": str(place), "KILN_HOME": str(place / "store"),
               "KILN_SERVER": "off", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", KILN]

        def doctor() -> dict[str, dict[str, str]]:
            proc = subprocess.run(
                [*as_nobody, "doctor", "--json"], env=env, capture_output=True, text=True
            )
            return _by_name(proc)

        assert doctor()["store writable"]["status"] == "ok"
        (place / "f").write_text("x\n")
        put = subprocess.run([*as_nobody, "store", "put", str(place / "f")], env=env)
        assert put.returncode == 0
        subprocess.run(["chmod", "-R", "a-w", str(place / "store")], check=True)
        checks = doctor()
        assert checks["store writable"]["status"] == "fail", checks["store writable"]
        assert "Permission denied" in checks["store writable"]["detail"]
        assert "nobody" in checks["store writable"]["fix"]
        for kind in ("pids", "memory"):
            check = checks[f"{kind} cgroup"]
            assert "root" not in check["detail"], check
            if check["status"] == "warn":  # no cgroup delegated to this user here
                assert "run kiln as root" in check["fix"], check
        if checks["pids cgroup"]["status"] == "warn":
            assert "every process of user nobody" in checks["pids cgroup"]["detail"]
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(place)], check=False)
        shutil.rmtree(place)
