"""Controlled impurity: system features, secrets, credentials and the
parallelism hint. Secrets and credentials must reach only where declared
and never the store, keys, logs or traces."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from engine_helpers import build, ran, write_project
from fetch_servers import Served, http_server

from conftest import KILN
from kiln.cli.doctor import check_bubblewrap
from kiln.exec.native import bwrap_path
from kiln.store import Store

pytestmark = pytest.mark.skipif(
    bwrap_path() is None or check_bubblewrap().status != "ok",
    reason="bubblewrap cannot make sandboxes here (see `kiln doctor`)",
)

SECRET = "TOP-SECRET-SIGNING-KEY-8d1f2"
TOKEN = "BEARER-TOKEN-VALUE-41c7e"


def write_config(tmp_path: Path, monkeypatch, text: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("KILN_CONFIG", str(config))
    return config


def native_project(tmp_path: Path, body: str, name: str = "p") -> Path:
    return write_project(
        tmp_path / name,
        "from kiln.build import fetch, native, source, target\n\n" + body,
        {"data.txt": "signed content\n"},
    )


def test_a_feature_no_executor_offers_fails_before_running(store, tmp_path, monkeypatch) -> None:
    write_config(tmp_path, monkeypatch, 'features = ["signer"]\n')
    root = native_project(tmp_path, """
@target
async def vm():
    return await native("true", tools=["true"], requires=["kvm"])
""")  # fmt: skip
    report = build(store, root)
    message = report.errors[0].render()
    assert "requires feature 'kvm', which no executor here offers (offered: signer)" in message
    assert "kilnfile.py:" in message and ran(report) == []


def test_secrets_reach_only_declaring_steps_and_never_the_record(
    store, home, tmp_path, monkeypatch
) -> None:
    key_file = tmp_path / "release.key"
    key_file.write_text(SECRET + "\n")
    write_config(tmp_path, monkeypatch, f"""
features = ["signer"]

[secrets.release-key]
file = "{key_file}"
feature = "signer"
""")  # fmt: skip
    monkeypatch.setenv("KILN_TEST_TOKEN", TOKEN)
    with http_server(Served(token=TOKEN)) as served:
        served.files["/private/notes.txt"] = b"private notes\n"
        root = native_project(tmp_path, f"""
@target
async def signed():
    notes = await fetch.url("{served.base}/private/notes.txt",
                            digest="{served.sha256("/private/notes.txt")}",
                            auth=fetch.bearer("KILN_TEST_TOKEN"))
    step = await native(
        "sh", "-c", "cat /kiln/secrets/release-key data.txt notes.txt | sha256sum > sig.txt",
        tools=["sh", "cat", "sha256sum"], inputs=[source("data.txt"), notes],
        outputs=["sig.txt"], requires=["signer"], secrets=["release-key"],
    )
    return step.file("sig.txt")

@target
async def snoop():
    step = await native("sh", "-c", "ls /kiln; cat /kiln/secrets/release-key",
                        tools=["sh", "ls", "cat"])
    return step.stdout
""")  # fmt: skip
        snoop = build(store, root, "snoop")  # a step that did not declare the secret
        assert "No such file or directory" in snoop.errors[0].render()
        report = build(store, root, "signed")
        assert report.ok, report.errors
        assert [r[2] for r in served.requests] == [f"Bearer {TOKEN}"]
    [signing] = [s for s in report.steps if s.description.startswith("sh")]
    assert signing.identity["platform"]["secrets"] == "release-key"  # the name is in the key
    # Nothing Kiln keeps or shows holds the secret or the token.
    env = {**os.environ, "KILN_HOME": str(home)}
    shown = [
        subprocess.run([KILN, *args], cwd=root, env=env, capture_output=True, text=True).stdout
        for args in (["log", "signed"], ["show", "signed", "--json"], ["why", "signed"],
                     ["trace", "-o", str(tmp_path / "trace.json")])
    ]  # fmt: skip
    shown.append((tmp_path / "trace.json").read_text())
    import json

    marked = [step for step in json.loads(shown[1]) if step["secrets"]]
    assert [(m["secrets"], m["shareable"]) for m in marked] == [(["release-key"], False)]
    store.close()
    for text in shown:
        assert SECRET not in text and TOKEN not in text
    for folder in (home, root):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert SECRET.encode() not in data, path
                assert TOKEN.encode() not in data, path


def test_bad_secret_declarations_are_clear_errors(store, tmp_path, monkeypatch) -> None:
    write_config(tmp_path, monkeypatch, f"""
features = ["signer", "other"]

[secrets.gone]
file = "{tmp_path / "no-such-file"}"
feature = "signer"

[secrets.theirs]
file = "{tmp_path / "config.toml"}"
feature = "other"
""")  # fmt: skip
    cases = {
        'secrets=["gone"], requires=["signer"]': "secret 'gone': cannot read",
        'secrets=["nope"], requires=["signer"]': "unknown secret 'nope'",
        'secrets=["theirs"], requires=["signer"]': "belongs to feature 'other'",
    }
    for i, (args, complaint) in enumerate(cases.items()):
        root = native_project(tmp_path, f"""
@target
async def t():
    return await native("true", tools=["true"], {args})
""", name=f"p{i}")  # fmt: skip
        message = build(store, root).errors[0].render()
        assert complaint in message and "kilnfile.py:" in message, message


def test_a_malformed_config_is_a_clear_error(store, tmp_path, monkeypatch) -> None:
    config = write_config(tmp_path, monkeypatch, "features = signer\n")
    root = native_project(tmp_path, """
@target
async def t():
    return await native("true", tools=["true"], requires=["signer"])
""")  # fmt: skip
    message = build(store, root).errors[0].render()
    assert str(config) in message and "fix the TOML syntax" in message


def test_the_cores_hint_reaches_native_steps_but_not_their_keys(tmp_path, monkeypatch) -> None:
    body = """
@target
async def cores():
    step = await native("sh", "-c", "echo $KILN_BUILD_CORES > cores.txt", tools=["sh"],
                        outputs=["cores.txt"])
    return step.file("cores.txt")
"""
    keys = []
    for cores in (3, 5):
        write_config(tmp_path, monkeypatch, f"build-cores = {cores}\n")
        root = native_project(tmp_path, body, name=f"p{cores}")
        with Store(tmp_path / f"home{cores}") as store:
            report = build(store, root)
        assert report.ok, report.errors
        assert (root / "kiln-out" / "cores" / "cores.txt").read_text() == f"{cores}\n"
        keys.append([s.key for s in report.steps])
    assert keys[0] == keys[1]
