"""The remote cache against real servers (BuildGrid, buildbox-casd): what
one store pushes, an empty store builds from without running anything;
and the faults, each tried (server down, killed mid-build, lying about a
blob, losing one, lacking SHA-256, wanting a token)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import kiln_out_files
from kiln import api
from kiln.api import BuildRequest, StepStatus
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.store import Store

from .proxy import Proxy

pytestmark = [pytest.mark.slow, pytest.mark.network]

EXAMPLES = Path(__file__).parents[2] / "examples"
CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
AC = "/build.bazel.remote.execution.v2.ActionCache/"
CAPS = "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities"


def project(tmp_path: Path, name: str, example: str = "wordcount") -> Path:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / example, root, ignore=shutil.ignore_patterns("kiln-out"))
    return root


def build(home: Path, root: Path, url: str | None, observer=None, **options) -> api.BuildReport:
    with Store(home) as store:
        request = BuildRequest(cwd=root, store=home, from_stamp=False, remote_cache=url, **options)
        return api.build(request, observer, store=store)


@pytest.fixture(params=["buildgrid_cache", "casd"])
def server(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def test_an_empty_store_builds_from_what_another_pushed(server, tmp_path: Path) -> None:
    a, b = project(tmp_path, "a"), project(tmp_path, "b")
    first = build(tmp_path / "store-a", a, server.url)
    assert first.ok, first.errors
    steps = len(first.steps)
    assert first.count(StepStatus.EXECUTED) == steps > 0
    assert first.remote["pushed"] == steps
    assert first.warnings == []

    second = build(tmp_path / "store-b", b, server.url)
    assert second.ok, second.errors
    summary = second.summary()
    assert summary["executed"] == 0
    assert summary["remote_cached"] == steps
    assert summary["remote"]["downloaded_blobs"] > 0
    assert kiln_out_files(b) == kiln_out_files(a)
    assert [t.digest for t in second.targets] == [t.digest for t in first.targets]

    third = build(tmp_path / "store-b", b, server.url)  # now local: no traffic
    assert third.count(StepStatus.CACHED) == steps
    assert third.remote["downloaded_blobs"] == 0


def test_outputs_nothing_here_needs_stay_on_the_server(buildgrid_cache, tmp_path: Path) -> None:
    a = project(tmp_path, "a")
    assert build(tmp_path / "store-a", a, buildgrid_cache.url).ok
    b = project(tmp_path, "b")
    report = build(tmp_path / "store-b", b, buildgrid_cache.url, targets=("report",))
    assert report.ok, report.errors
    assert report.count(StepStatus.REMOTE_CACHED) == len(report.steps) == 6
    # Only what a rule read (the chapter list) and the target's value came
    # down; the four counts, inputs of a step that was a hit too, did not.
    assert report.remote["downloaded_blobs"] == 2
    assert (b / "kiln-out" / "report" / "report.txt").read_bytes() == (
        a / "kiln-out" / "report" / "report.txt"
    ).read_bytes()
    with Store(tmp_path / "store-b") as store:
        counts = [s for s in report.steps if s.description.startswith("count ")]
        digests = [f.digest for s in counts for f in s.result.output_files]
        assert len(store.cas.find_missing(Digest.from_proto(d) for d in digests)) == 4


def test_large_outputs_go_by_bytestream_and_an_upload_cut_midway_resumes(
    buildgrid_cache, tmp_path: Path, guest
) -> None:
    def big_project(name: str) -> Path:
        root = tmp_path / name
        root.mkdir()
        (root / "fill.wasm").write_bytes(guest("fill").read_bytes())
        (root / "kilnfile.py").write_text("""
from kiln.build import source, target, wasm

@target
async def big():
    step = await wasm(source("fill.wasm"), "write", "big.bin", "6", outputs=["big.bin"])
    return step.file("big.bin")
""")
        return root

    proxy = Proxy(buildgrid_cache.address).start()
    proxy.cut_writes_after, proxy.cuts_left = 2, 1  # 2 of the 6 MiB, then the line drops
    try:
        a = big_project("a")
        first = build(tmp_path / "store-a", a, proxy.url)
        assert first.ok and first.warnings == [], (first.errors, first.warnings)
        assert first.remote["pushed"] == 1
        assert proxy.calls.count("Write") == 2 and "QueryWriteStatus" in proxy.calls
        b = big_project("b")
        second = build(tmp_path / "store-b", b, proxy.url)
    finally:
        proxy.stop()
    assert second.ok, second.errors
    assert second.count(StepStatus.REMOTE_CACHED) == 1
    assert "Read" in proxy.calls  # the 6 MiB came down by ByteStream
    big = (b / "kiln-out" / "big" / "big.bin").read_bytes()
    assert len(big) == 6 << 20 and big == (a / "kiln-out" / "big" / "big.bin").read_bytes()


def test_a_pushed_result_that_failed_is_not_pushed(buildgrid_cache, tmp_path: Path) -> None:
    root = project(tmp_path, "a")
    (root / "chapters").mkdir(exist_ok=True)
    kilnfile = root / "kilnfile.py"
    kilnfile.write_text(kilnfile.read_text().replace('"count"', '"no-such-mode"', 1))
    report = build(tmp_path / "store", root, buildgrid_cache.url)
    assert not report.ok
    assert report.remote["pushed"] == report.count(StepStatus.EXECUTED)


def test_a_server_down_at_the_start_gives_a_warning_and_a_local_build(
    buildgrid_cache, tmp_path: Path
) -> None:
    buildgrid_cache.stop()
    report = build(tmp_path / "store", project(tmp_path, "a"), buildgrid_cache.url)
    assert report.ok, report.errors
    assert report.count(StepStatus.EXECUTED) == len(report.steps)
    assert any("building without the remote cache" in w for w in report.warnings)


def test_a_server_killed_mid_build_leaves_the_build_to_finish_locally(
    buildgrid_cache, tmp_path: Path
) -> None:
    class KillAfterFirstStep:
        def on_change(self, record) -> None:
            if record.status is StepStatus.EXECUTED and buildgrid_cache.running:
                buildgrid_cache.stop()

        def on_download(self, *args) -> None: ...

    report = build(
        tmp_path / "store", project(tmp_path, "a"), buildgrid_cache.url, KillAfterFirstStep()
    )
    assert report.ok, report.errors
    assert report.count(StepStatus.EXECUTED) == len(report.steps)
    assert report.warnings  # the lost pushes or lookups, said once each


def _mismatching_reads(request: bytes, answer: bytes) -> bytes:
    """BatchReadBlobs answers with every blob's content altered."""
    reply = re_pb2.BatchReadBlobsResponse.FromString(answer)
    for response in reply.responses:
        if response.data:
            response.data = b"X" + response.data[1:]
    return reply.SerializeToString()


def test_content_that_does_not_match_its_digest_is_never_stored(
    buildgrid_cache, tmp_path: Path
) -> None:
    a = project(tmp_path, "a")
    assert build(tmp_path / "store-a", a, buildgrid_cache.url).ok
    proxy = Proxy(buildgrid_cache.address).start()
    try:
        proxy.rewrite[CAS + "BatchReadBlobs"] = _mismatching_reads
        home = tmp_path / "store-b"
        report = build(home, project(tmp_path, "b"), proxy.url)
    finally:
        proxy.stop()
    assert report.ok, report.errors  # built locally instead
    assert report.count(StepStatus.EXECUTED) == len(report.steps)
    assert any("does not match its digest" in w for w in report.warnings)
    with Store(home) as store:
        assert store.verify().ok


def test_a_blob_lost_between_lookup_and_download_makes_the_step_run(
    buildgrid_cache, tmp_path: Path
) -> None:
    a = project(tmp_path, "a")
    first = build(tmp_path / "store-a", a, buildgrid_cache.url)
    proxy = Proxy(buildgrid_cache.address).start()

    def evicted(request: bytes, answer: bytes) -> bytes:
        reply = re_pb2.BatchReadBlobsResponse.FromString(answer)
        for response in reply.responses:
            response.data = b""
            response.status.code = 5  # NOT_FOUND
        return reply.SerializeToString()

    try:
        proxy.rewrite[CAS + "BatchReadBlobs"] = evicted
        report = build(tmp_path / "store-b", project(tmp_path, "b"), proxy.url)
    finally:
        proxy.stop()
    assert report.ok, report.errors
    assert report.count(StepStatus.EXECUTED) == len(first.steps)
    assert kiln_out_files(tmp_path / "b") == kiln_out_files(a)
    assert all("lost outputs of step" in w for w in report.warnings), report.warnings


def test_a_server_without_sha256_is_refused_clearly(buildgrid_cache, tmp_path: Path) -> None:
    proxy = Proxy(buildgrid_cache.address).start()

    def sha1_only(request: bytes, answer: bytes) -> bytes:
        caps = re_pb2.ServerCapabilities.FromString(answer)
        del caps.cache_capabilities.digest_function[:]
        caps.cache_capabilities.digest_function.append(re_pb2.DigestFunction.SHA1)
        return caps.SerializeToString()

    try:
        proxy.rewrite[CAPS] = sha1_only
        report = build(tmp_path / "store", project(tmp_path, "a"), proxy.url)
    finally:
        proxy.stop()
    assert report.ok
    assert any("does not offer SHA-256" in w and "SHA1" in w for w in report.warnings)
    assert proxy.calls == ["GetCapabilities"]  # nothing else was asked


def test_the_token_goes_with_every_call_and_a_wrong_one_is_explained(
    buildgrid_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    proxy = Proxy(buildgrid_cache.address).start()
    proxy.token = "s3cret-token"
    try:
        config.write_text(f'[remote]\ncache = "{proxy.url}"\ntoken-env = "TEST_REMOTE_TOKEN"\n')
        monkeypatch.setenv("KILN_CONFIG", str(config))
        monkeypatch.setenv("TEST_REMOTE_TOKEN", "s3cret-token")
        good = build(tmp_path / "store-a", project(tmp_path, "a"), None)
        assert good.ok and good.warnings == []
        assert good.remote["pushed"] == len(good.steps)
        assert all(("authorization", "Bearer s3cret-token") in m for m in proxy.metadata_seen)

        monkeypatch.setenv("TEST_REMOTE_TOKEN", "wrong")
        bad = build(tmp_path / "store-b", project(tmp_path, "b"), None)
    finally:
        proxy.stop()
    assert bad.ok  # built locally
    assert any("UNAUTHENTICATED" in w for w in bad.warnings)


SECRET = "REMOTE-TEST-SECRET-5b7e0c"


@pytest.mark.parametrize("buildgrid_cache", [{"disk": True}], indirect=True)
def test_no_secret_and_no_step_that_used_one_reaches_the_server(
    buildgrid_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.cli.doctor import check_bubblewrap

    if check_bubblewrap().status != "ok":
        pytest.skip("bubblewrap cannot make sandboxes here (see `kiln doctor`)")
    key = tmp_path / "release.key"
    key.write_text(SECRET)
    config = tmp_path / "config.toml"
    config.write_text(
        f'features = ["signer"]\n[secrets.release-key]\nfile = "{key}"\nfeature = "signer"\n'
        f'[remote]\ncache = "{buildgrid_cache.url}"\n'
    )
    monkeypatch.setenv("KILN_CONFIG", str(config))
    root = tmp_path / "p"
    root.mkdir()
    (root / "data.txt").write_text("content\n")
    (root / "kilnfile.py").write_text("""
from kiln.build import native, source, target

@target
async def signed():
    step = await native(
        "sh", "-c", "cat /kiln/secrets/release-key data.txt > sig.txt; cat sig.txt",
        tools=["sh", "cat"], inputs=[source("data.txt")], outputs=["sig.txt"],
        requires=["signer"], secrets=["release-key"],
    )
    return step.file("sig.txt")

@target
async def plain():
    step = await native("sh", "-c", "cat data.txt > copy.txt", tools=["sh", "cat"],
                        inputs=[source("data.txt")], outputs=["copy.txt"])
    return step.file("copy.txt")
""")
    report = build(tmp_path / "store", root, None)
    assert report.ok, report.errors
    assert SECRET in (root / "kiln-out" / "signed" / "sig.txt").read_text()
    assert report.remote["pushed"] == 1  # plain's step only
    stored = b"".join(p.read_bytes() for p in buildgrid_cache.cwd.rglob("*") if p.is_file())
    assert b"content\n" in stored  # plain's output went up ...
    assert SECRET.encode() not in stored  # ... the secret and what it produced did not


def test_an_output_tree_with_nested_folders_is_a_hit_for_an_empty_store(
    server, tmp_path: Path
) -> None:
    # buildbox-casd serves a result only if every folder inside its output
    # trees is in its CAS, although REAPI names them only inside the Tree.
    kilnfile = """
from kiln.build import native, target

@target
async def nested():
    step = await native("sh", "-c", "mkdir -p out/a/b && echo deep > out/a/b/f && echo top > out/t",
                        tools=["sh", "mkdir"], outputs=["out"])
    return step.tree("out")
"""
    roots = []
    for name in ("a", "b"):
        roots.append(tmp_path / name)
        roots[-1].mkdir()
        (roots[-1] / "kilnfile.py").write_text(kilnfile)
    first = build(tmp_path / "store-a", roots[0], server.url)
    assert first.ok, first.errors
    assert first.remote["pushed"] == 1
    second = build(tmp_path / "store-b", roots[1], server.url)
    assert second.ok, second.errors
    assert second.summary()["remote_cached"] == 1 and second.summary()["executed"] == 0
    assert (roots[1] / "kiln-out" / "nested" / "out" / "a" / "b" / "f").read_text() == "deep\n"
