"""Fetch steps against HTTP servers the tests run on 127.0.0.1."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from engine_helpers import build, ran, write_project
from fetch_servers import (
    Served,
    http_server,
    npm_registry,
    pypi_index,
    refused_url,
    silent_server,
    tarball,
)

from kiln.cli.doctor import check_bubblewrap
from kiln.exec.native import bwrap_path


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch) -> None:
    monkeypatch.setenv("KILN_FETCH_TIMEOUT", "1")
    monkeypatch.setenv("KILN_FETCH_ATTEMPTS", "2")


@pytest.fixture
def served():
    with http_server(Served()) as s:
        yield s


def fetch_project(tmp_path: Path, call: str, name: str = "p") -> Path:
    return write_project(
        tmp_path / name,
        f"""
from kiln.build import fetch, target

@target
async def got():
    return await {call}
""",
    )


def test_a_pinned_file_is_fetched_once_and_kept_by_its_key(store, tmp_path, served) -> None:
    served.files["/hello.txt"] = b"hello, world\n"
    root = fetch_project(
        tmp_path, f'fetch.url("{served.base}/hello.txt", digest="{served.sha256("/hello.txt")}")'
    )
    first = build(store, root)
    assert ran(first) == ["got: fetch hello.txt"]
    assert (root / "kiln-out" / "got" / "hello.txt").read_bytes() == b"hello, world\n"
    assert ran(build(store, root)) == []
    assert [r[0] for r in served.requests] == ["/hello.txt"]


def test_a_wrong_hash_is_refused_kept_aside_and_not_cached(store, tmp_path, served) -> None:
    served.files["/hello.txt"] = b"not what was pinned\n"
    pinned = "sha256:" + hashlib.sha256(b"hello, world\n").hexdigest()
    root = fetch_project(tmp_path, f'fetch.url("{served.base}/hello.txt", digest="{pinned}")')
    report = build(store, root)
    assert not report.ok
    message = report.errors[0].render()
    got = "sha256:" + hashlib.sha256(b"not what was pinned\n").hexdigest()
    assert f"expected: {pinned}" in message and f"got:      {got}" in message
    kept = Path(message.split("the download is kept at ")[1].split()[0])
    assert kept.read_bytes() == b"not what was pinned\n"
    assert store.conn.execute("SELECT COUNT(*) FROM action_cache").fetchone()[0] == 0
    assert ran(build(store, root)) == []  # failed again, nothing cached in between
    assert len(served.requests) == 2


def test_a_dropped_connection_is_resumed_on_retry(store, tmp_path, served) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    served.files["/big.bin"] = body
    served.drop_once.add("/big.bin")
    root = fetch_project(
        tmp_path, f'fetch.url("{served.base}/big.bin", digest="{served.sha256("/big.bin")}")'
    )
    assert build(store, root).ok
    assert (root / "kiln-out" / "got" / "big.bin").read_bytes() == body
    first, second = served.requests
    assert first[1] is None and second[1] == f"bytes={len(body) // 2}-"  # resumed, not restarted
    assert not any((store.home / "fetch-partial").iterdir())


def test_a_server_that_never_answers_times_out_clearly(store, tmp_path) -> None:
    with silent_server() as url:
        root = fetch_project(tmp_path, f'fetch.url("{url}", digest="sha256:{"0" * 64}")')
        report = build(store, root)
    assert not report.ok
    assert f"{url}: no answer within 1 s (2 attempts)" in report.errors[0].render()


def test_a_dead_first_mirror_falls_through_to_the_next(store, tmp_path, served) -> None:
    served.files["/a.txt"] = b"mirrored\n"
    dead = refused_url()
    root = fetch_project(
        tmp_path,
        f'fetch.url("{dead}", "{served.base}/a.txt", name="a.txt", '
        f'digest="{served.sha256("/a.txt")}")',
    )
    assert build(store, root).ok
    assert (root / "kiln-out" / "got" / "a.txt").read_text() == "mirrored\n"


def test_an_unpacked_tree_is_pinned_by_its_tree_digest(store, tmp_path, served) -> None:
    served.files["/pkg.tgz"] = tarball(
        {"README": b"read me\n", "bin/run.sh": b"#!/bin/sh\n", "link": "README"}
    )
    root = fetch_project(
        tmp_path, f'fetch.url("{served.base}/pkg.tgz", unpack=True, strip=1, name="pkg")',
    )  # fmt: skip
    report = build(store, root, allow_unpinned=True)  # learn the digest, as a user would
    message = report.errors[0].render()
    assert "has no pinned digest" in message
    pin = message.split("got: ")[1].split()[0]
    root = fetch_project(
        tmp_path, f'fetch.url("{served.base}/pkg.tgz", unpack=True, strip=1, name="pkg", '
        f'digest="{pin}")', name="q",
    )  # fmt: skip
    report = build(store, root)
    out = root / "kiln-out" / "got" / "pkg"
    assert (out / "README").read_text() == "read me\n"
    assert (out / "link").is_symlink() and (out / "bin" / "run.sh").stat().st_mode & 0o111
    # The same files in another archive (other timestamps, order) give the same tree.
    served.files["/again.tgz"] = tarball(
        {"link": "README", "bin/run.sh": b"#!/bin/sh\n", "README": b"read me\n"}, prefix="x/"
    )
    again = fetch_project(
        tmp_path, f'fetch.url("{served.base}/again.tgz", unpack=True, strip=1, name="pkg", '
        f'digest="{pin}")', name="r",
    )  # fmt: skip
    assert build(store, again).ok


def test_an_unpinned_fetch_is_refused_without_the_flag(store, tmp_path, served) -> None:
    root = fetch_project(tmp_path, f'fetch.url("{served.base}/x.txt")')
    report = build(store, root)
    message = report.errors[0].render()
    assert "this fetch has no digest" in message and "kilnfile.py:" in message
    assert served.requests == []


@pytest.mark.parametrize(
    ("members", "complaint"),
    [
        ({"../evil.txt": b"x"}, "climbs out of the tree with '..'"),
        ({"escape": "/etc/passwd"}, "'/etc/passwd' points outside the tree (an absolute path)"),
        ({"up": "../../outside"}, "points outside the tree"),
    ],
)
def test_archives_that_escape_the_tree_are_rejected(
    store, tmp_path, served, members, complaint
) -> None:
    served.files["/evil.tgz"] = tarball(members)
    root = fetch_project(
        tmp_path, f'fetch.url("{served.base}/evil.tgz", unpack=True, digest="sha256:{"0" * 64}")'
    )
    report = build(store, root)
    assert not report.ok and complaint in report.errors[0].render()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "p" / "evil.txt").exists()


def test_npm_and_pypi_style_indexes_resolve_and_fetch_pinned(store, tmp_path, served) -> None:
    tgz = tarball({"package.json": b'{"name": "@demo/left-pad"}\n'}, prefix="package/")
    registry = npm_registry(served, "@demo/left-pad", "1.3.0", tgz)
    wheel = b"not really a wheel, but pinned\n"
    index = pypi_index(served, "demo-pkg", {"demo_pkg-2.0-py3-none-any.whl": wheel})
    import base64

    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    wheel_pin = "sha256:" + hashlib.sha256(wheel).hexdigest()
    root = write_project(
        tmp_path / "p",
        f"""
from kiln.build import fetch, target

@target
async def npm():
    return await fetch.npm("@demo/left-pad", "1.3.0", digest="{integrity}", registry="{registry}")

@target
async def wheel():
    return await fetch.pypi("Demo.Pkg", "2.0", "demo_pkg-2.0-py3-none-any.whl",
                            digest="{wheel_pin}", index="{index}")
""",
    )
    report = build(store, root)
    assert report.ok, report.errors
    assert (root / "kiln-out" / "npm" / "left-pad-1.3.0.tgz").read_bytes() == tgz
    assert (root / "kiln-out" / "wheel" / "demo_pkg-2.0-py3-none-any.whl").read_bytes() == wheel
    assert "/simple/demo-pkg/" in [r[0] for r in served.requests]


def test_git_fetches_a_revision_as_a_tree(store, tmp_path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for who in ("AUTHOR", "COMMITTER"):
        env |= {f"GIT_{who}_NAME": "t", f"GIT_{who}_EMAIL": "t@example.org"}

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
        return proc.stdout.strip()

    git("init", "-q")
    (repo / "main.c").write_text("int main(void) { return 0; }\n")
    git("add", ".")
    git("commit", "-qm", "one")
    rev = git("rev-parse", "HEAD")
    (repo / "main.c").write_text("changed later\n")
    git("commit", "-qam", "two")
    call = f'fetch.git("file://{repo}", "{rev}", name="src")'
    report = build(store, fetch_project(tmp_path, call), allow_unpinned=True)
    pin = report.errors[0].render().split("got: ")[1].split()[0]
    root = fetch_project(tmp_path, call.replace(")", f', digest="{pin}")'), name="q")
    assert build(store, root).ok
    out = root / "kiln-out" / "got" / "src"
    assert (out / "main.c").read_text() == "int main(void) { return 0; }\n"
    assert not (out / ".git").exists()


@pytest.mark.parametrize(
    ("call", "complaint"),
    [
        ('fetch.url("ftp://example.org/x.tgz", digest="sha256:' + "0" * 64 + '")',
         "unsupported URL scheme 'ftp'"),
        ('fetch.url("https://example.org/x.tgz", digest="sha256:abc")', "malformed digest"),
        ('fetch.url("https://u:p@example.org/x", digest="sha256:' + "0" * 64 + '")',
         "the URL carries credentials"),
        ('fetch.url("https://example.org/x", digest="sha256:' + "0" * 64 + '", auth="token")',
         "unknown credential 'token'"),
    ],
)  # fmt: skip
def test_bad_fetch_input_is_a_clear_error(store, tmp_path, call, complaint) -> None:
    report = build(store, fetch_project(tmp_path, call))
    message = report.errors[0].render()
    assert complaint in message and "kilnfile.py:" in message


@pytest.mark.skipif(
    bwrap_path() is None or check_bubblewrap().status != "ok",
    reason="bubblewrap cannot make sandboxes here (see `kiln doctor`)",
)
def test_fetched_files_and_trees_are_inputs_of_later_steps(store, tmp_path, served) -> None:
    served.files["/t.tgz"] = tarball({"a.txt": b"from the tree\n"})
    served.files["/f.txt"] = b"from the file\n"
    report = build(store, fetch_project(tmp_path, f'fetch.url("{served.base}/t.tgz", '
                   'unpack=True, strip=1, name="t")'), allow_unpinned=True)  # fmt: skip
    tree_pin = report.errors[0].render().split("got: ")[1].split()[0]
    root = write_project(
        tmp_path / "q",
        f"""
from kiln.build import fetch, native, target

@target
async def joined():
    f = await fetch.url("{served.base}/f.txt", digest="{served.sha256("/f.txt")}")
    t = await fetch.url("{served.base}/t.tgz", unpack=True, strip=1, name="t",
                        digest="{tree_pin}")
    step = await native("sh", "-c", "cat f.txt t/a.txt > joined.txt", tools=["sh", "cat"],
                        inputs=[f, t], outputs=["joined.txt"])
    return step.file("joined.txt")
""",
    )
    report = build(store, root)
    assert report.ok, report.errors
    joined = root / "kiln-out" / "joined" / "joined.txt"
    assert joined.read_text() == "from the file\nfrom the tree\n"


def test_prefetch_prints_the_pin_and_the_build_then_needs_no_network(kiln, home, tmp_path) -> None:
    import json

    from kiln.store import Store

    with http_server(Served()) as served:
        served.files["/pkg.tgz"] = tarball({"README": b"read me\n"})
        file_pin = kiln("prefetch", f"{served.base}/pkg.tgz", check=True).stdout.strip()
        assert file_pin == served.sha256("/pkg.tgz")
        proc = kiln("prefetch", "--unpack", "--strip=1", "--json", f"{served.base}/pkg.tgz")
        tree = json.loads(proc.stdout)
        assert proc.returncode == 0 and tree["mode"] == "tree"
        base = served.base
    # The server is gone: both pinned fetches are answered from the store.
    root = write_project(
        tmp_path / "p",
        f"""
from kiln.build import fetch, target

@target
async def got():
    f = await fetch.url("{base}/pkg.tgz", digest="{file_pin}")
    t = await fetch.url("{base}/pkg.tgz", unpack=True, strip=1, name="pkg",
                        digest="{tree["digest"]}")
    return [f, t]
""",
    )
    with Store(home) as store:
        report = build(store, root)
    assert report.ok, report.errors
    assert (root / "kiln-out" / "got" / "pkg" / "README").read_text() == "read me\n"


def test_prefetch_of_a_bad_url_is_a_clear_error(kiln) -> None:
    proc = kiln("prefetch", "gopher://example.org/x")
    assert proc.returncode == 2 and "unsupported URL scheme 'gopher'" in proc.stderr
    proc = kiln("prefetch", refused_url())
    assert proc.returncode == 1 and "could not download" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_netrc_credentials_are_sent_to_their_host_only(
    store, tmp_path, served, monkeypatch
) -> None:
    import base64

    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login robot password s3cret-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    served.files["/n.txt"] = b"via netrc\n"
    root = fetch_project(
        tmp_path,
        f'fetch.url("{served.base}/n.txt", digest="{served.sha256("/n.txt")}", auth=fetch.netrc())',
    )
    assert build(store, root).ok
    expected = "Basic " + base64.b64encode(b"robot:s3cret-pass").decode()
    assert [r[2] for r in served.requests] == [expected]


def test_zip_archives_unpack_like_tarballs_and_refuse_escapes(store, tmp_path, served) -> None:
    import io
    import zipfile

    def zipped(members: dict[str, bytes]) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return out.getvalue()

    served.files["/ok.zip"] = zipped({"pkg/README": b"read me\n", "pkg/src/a.c": b"int a;\n"})
    served.files["/ok.tgz"] = tarball({"src/a.c": b"int a;\n", "README": b"read me\n"})
    served.files["/evil.zip"] = zipped({"../../evil": b"x"})
    pins = []
    for name in ("ok.zip", "ok.tgz"):
        call = f'fetch.url("{served.base}/{name}", unpack=True, strip=1, name="pkg")'
        report = build(store, fetch_project(tmp_path, call, name=name), allow_unpinned=True)
        pins.append(report.errors[0].render().split("got: ")[1].split()[0])
    assert pins[0] == pins[1]  # the same files, whatever the archive format
    call = f'fetch.url("{served.base}/evil.zip", unpack=True, digest="sha256:{"1" * 64}")'
    report = build(store, fetch_project(tmp_path, call, name="evil"))
    assert "climbs out of the tree with '..'" in report.errors[0].render()
