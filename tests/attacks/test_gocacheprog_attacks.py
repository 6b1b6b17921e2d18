"""Hostile input on ``kiln gocacheprog``'s stdin: whatever a request says,
nothing lands in the store but well-formed entries of the session's own
namespace, and every answer names a file inside the store."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from kiln.gocache.entries import GoCache
from kiln.store import Store

KILN = [sys.executable, "-m", "kiln"]
ACTION = base64.b64encode(b"\x01" * 32).decode()
OUTPUT = base64.b64encode(b"\x02" * 32).decode()


def session(home: Path, stream: bytes, namespace: str = "ns") -> tuple[int, list[dict], str]:
    proc = subprocess.run(
        [*KILN, "gocacheprog", "--namespace", namespace],
        input=stream, capture_output=True, timeout=60,
        env={**os.environ, "KILN_HOME": str(home)},
    )  # fmt: skip
    responses = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, responses, proc.stderr.decode()


def request(fields: dict, body: bytes | None = None) -> bytes:
    line = json.dumps(fields).encode() + b"\n\n"
    if body is not None:
        line += b'"' + base64.b64encode(body) + b'"\n'
    return line


def entries(home: Path, namespace: str = "ns") -> int:
    with Store(home) as store:
        return GoCache(store, namespace).count()


def test_a_put_then_get_answers_a_file_in_the_store(tmp_path: Path) -> None:
    home = tmp_path / "store"
    stream = request({"ID": 1, "Command": "put", "ActionID": ACTION, "OutputID": OUTPUT,
                      "BodySize": 5}, b"hello")  # fmt: skip
    stream += request({"ID": 2, "Command": "get", "ActionID": ACTION})
    stream += request({"ID": 3, "Command": "close"})
    code, responses, _ = session(home, stream)
    assert code == 0
    assert responses[0] == {"ID": 0, "KnownCommands": ["get", "put", "close"]}
    got = responses[2]
    assert got["ID"] == 2 and got["OutputID"] == OUTPUT and got["Size"] == 5
    path = Path(got["DiskPath"])
    assert path.read_bytes() == b"hello" and path.is_relative_to(home.resolve())
    assert responses[3] == {"ID": 3}


def test_bad_fields_get_an_error_and_store_nothing(tmp_path: Path) -> None:
    home = tmp_path / "store"
    bad = [
        {"ID": 1, "Command": "get", "ActionID": "not base64!"},
        {"ID": 2, "Command": "get"},  # no ActionID
        {"ID": 3, "Command": "get", "ActionID": base64.b64encode(b"x" * 4096).decode()},
        {"ID": 4, "Command": "put", "ActionID": ACTION},  # no OutputID
        {"ID": 5, "Command": "rm -rf /", "ActionID": ACTION},
        {"ID": 6, "Command": ["get"], "ActionID": ACTION},
    ]
    code, responses, _ = session(home, b"".join(request(r) for r in bad))
    assert code == 0
    assert [r["ID"] for r in responses[1:]] == [1, 2, 3, 4, 5, 6]
    assert all(r.get("Err") for r in responses[1:]), responses
    assert entries(home) == 0


def test_a_body_that_does_not_match_its_size_ends_the_session(tmp_path: Path) -> None:
    home = tmp_path / "store"
    lying = request({"ID": 1, "Command": "put", "ActionID": ACTION, "OutputID": OUTPUT,
                     "BodySize": 100}, b"short")  # fmt: skip
    code, _, stderr = session(home, lying)
    assert code == 1 and "body has 5 bytes, not BodySize 100" in stderr
    assert "Traceback" not in stderr
    assert entries(home) == 0


def test_streams_that_cannot_be_followed_end_the_session_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "store"
    for stream, said in [
        (b"{not json\n", "not JSON"),
        (b'{"Command": "get"}\n', "no numeric ID"),
        (b'{"ID": 1, "Command": "put", "BodySize": 99999999999999}\n', "out of range"),
        (b'{"ID": 1, "Command": "get", "ActionID": "' + b"A" * 200_000 + b'"}\n', "64 KiB"),
        (request({"ID": 1, "Command": "put", "ActionID": ACTION, "OutputID": OUTPUT,
                  "BodySize": 3})[:-1] + b"'AAAA'\n", "not one base64 JSON string"),
    ]:  # fmt: skip
        code, _, stderr = session(home, stream)
        assert code == 1 and said in stderr and "Traceback" not in stderr, stderr
    assert entries(home) == 0


def test_an_entry_is_never_served_to_another_namespace(tmp_path: Path) -> None:
    home = tmp_path / "store"
    put = request({"ID": 1, "Command": "put", "ActionID": ACTION, "OutputID": OUTPUT,
                   "BodySize": 6}, b"secret")  # fmt: skip
    assert session(home, put, namespace="trusted")[0] == 0
    code, responses, _ = session(home, request({"ID": 1, "Command": "get", "ActionID": ACTION}),
                                 namespace="untrusted")  # fmt: skip
    assert code == 0 and responses[1] == {"ID": 1, "Miss": True}


def test_a_namespace_name_cannot_reach_another(tmp_path: Path) -> None:
    for name in ("", "../trusted", "a b", "x" * 200, "-n"):
        proc = subprocess.run(
            [*KILN, "gocacheprog", f"--namespace={name}"], input=b"", capture_output=True,
            env={**os.environ, "KILN_HOME": str(tmp_path / "store")}, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, (name, proc.stderr)
        assert b"invalid Go cache namespace" in proc.stderr
