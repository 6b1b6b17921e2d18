"""The server fixtures really serve REAPI: capabilities, a CAS round trip
(FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs, ByteStream Read), the
Action Cache, restarts on the same port, and on BuildGrid with execution a
bot (the Remote Workers API) running an action submitted with Execute."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
)
from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)
from buildgrid.common.protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
    worker_pb2,
)
from buildgrid.common.protos.google.longrunning import operations_pb2

from . import servers


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def open_channel(server: servers.Server) -> grpc.Channel:
    return grpc.insecure_channel(server.address)


def upload(ch: grpc.Channel, instance: str, *blobs: bytes) -> list[re_pb2.Digest]:
    """Put ``blobs`` in the CAS with BatchUpdateBlobs; their digests."""
    cas = re_grpc.ContentAddressableStorageStub(ch)
    request = re_pb2.BatchUpdateBlobsRequest(instance_name=instance)
    for blob in blobs:
        request.requests.add(digest=digest(blob), data=blob)
    answer = cas.BatchUpdateBlobs(request, timeout=30)
    assert [r.status.code for r in answer.responses] == [0] * len(blobs), answer
    return [digest(blob) for blob in blobs]


def missing(ch: grpc.Channel, instance: str, *digests: re_pb2.Digest) -> list[re_pb2.Digest]:
    cas = re_grpc.ContentAddressableStorageStub(ch)
    answer = cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(instance_name=instance, blob_digests=digests), timeout=30
    )
    return list(answer.missing_blob_digests)


def check_round_trip(server: servers.Server, instance: str | None = None) -> None:
    """GetCapabilities, then a blob missing, uploaded, found, read back
    (batch and ByteStream), and an ActionResult stored and fetched."""
    instance = server.instance if instance is None else instance
    capabilities = servers.get_capabilities(server.url, instance)
    assert re_pb2.DigestFunction.SHA256 in capabilities.cache_capabilities.digest_function
    blob = b"kiln remote test blob " + str(time.time_ns()).encode()
    blob_digest = digest(blob)
    with open_channel(server) as ch:
        assert missing(ch, instance, blob_digest) == [blob_digest]
        upload(ch, instance, blob)
        assert missing(ch, instance, blob_digest) == []

        cas = re_grpc.ContentAddressableStorageStub(ch)
        read = cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(instance_name=instance, digests=[blob_digest]), timeout=30
        )
        assert [(r.digest, r.data, r.status.code) for r in read.responses] == [
            (blob_digest, blob, 0)
        ]

        resource = f"blobs/{blob_digest.hash}/{blob_digest.size_bytes}"
        resource = f"{instance}/{resource}" if instance else resource
        stream = bytestream_pb2_grpc.ByteStreamStub(ch).Read(
            bytestream_pb2.ReadRequest(resource_name=resource), timeout=30
        )
        assert b"".join(chunk.data for chunk in stream) == blob

        action_digest = digest(b"not really an action " + blob)
        result = re_pb2.ActionResult(exit_code=0, stdout_digest=blob_digest)
        cache = re_grpc.ActionCacheStub(ch)
        with pytest.raises(grpc.RpcError) as absent:
            cache.GetActionResult(
                re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action_digest),
                timeout=30,
            )
        assert absent.value.code() == grpc.StatusCode.NOT_FOUND
        cache.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(
                instance_name=instance, action_digest=action_digest, action_result=result
            ),
            timeout=30,
        )
        got = cache.GetActionResult(
            re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action_digest),
            timeout=30,
        )
        assert got.exit_code == 0 and got.stdout_digest == blob_digest


def check_loopback_only(server: servers.Server) -> None:
    assert server.process is not None
    assert servers.listening_addresses(server.process.pid) == {("127.0.0.1", server.port)}


# ----------------------------------------------------------------- installs


def test_an_install_is_built_once_by_concurrent_callers(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(folder: Path) -> None:
        builds.append(folder)
        time.sleep(0.2)
        (folder / "tool").write_text("built\n")

    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(servers.ensure_installed(tmp_path, "t", build))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert results == [tmp_path / "t"] * 4
    assert (tmp_path / "t" / "tool").read_text() == "built\n"
    assert servers.install_seconds(tmp_path / "t") is not None
    assert servers.ensure_installed(tmp_path, "t", build) == tmp_path / "t"
    assert len(builds) == 1


def test_a_failed_install_leaves_nothing_and_is_retried(tmp_path: Path) -> None:
    def fail(folder: Path) -> None:
        (folder / "half").write_text("")
        raise RuntimeError("network down")

    with pytest.raises(RuntimeError):
        servers.ensure_installed(tmp_path, "t", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.lock"]
    installed = servers.ensure_installed(tmp_path, "t", lambda f: (f / "ok").write_text(""))
    assert (installed / "ok").exists()


# ------------------------------------------------------------ cache servers


@pytest.mark.parametrize("kind", ["buildgrid_cache", "casd"])
@pytest.mark.slow
@pytest.mark.network
def test_cache_server_serves_reapi(kind: str, request: pytest.FixtureRequest) -> None:
    server: servers.Server = request.getfixturevalue(kind)
    assert server.url == f"grpc://127.0.0.1:{server.port}" and server.port > 0
    assert server.instance == ""
    check_loopback_only(server)
    check_round_trip(server)
    assert server.log.exists()


@pytest.mark.parametrize("buildgrid_cache", [{"instance": "main"}], indirect=True)
@pytest.mark.slow
@pytest.mark.network
def test_buildgrid_cache_with_an_instance_name(buildgrid_cache: servers.Server) -> None:
    assert buildgrid_cache.instance == "main"
    check_round_trip(buildgrid_cache)
    with pytest.raises(grpc.RpcError) as other:
        servers.get_capabilities(buildgrid_cache.url, "elsewhere")
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("casd", [{"instance": "main"}], indirect=True)
@pytest.mark.slow
@pytest.mark.network
def test_casd_with_an_instance_name(casd: servers.Server) -> None:
    assert casd.instance == "main"
    check_round_trip(casd)
    with pytest.raises(grpc.RpcError) as other:
        servers.get_capabilities(casd.url, "")
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def check_restart(server: servers.Server) -> None:
    """Stopped, the server refuses calls; restarted, it has the same port
    and still has a blob put in its CAS before."""
    port, blob = server.port, b"survives a restart"
    with open_channel(server) as ch:
        (blob_digest,) = upload(ch, server.instance, blob)
    first = server.process
    server.stop()
    assert not server.running and first is not None and first.poll() is not None
    with pytest.raises(grpc.RpcError) as down:
        servers.get_capabilities(server.url, server.instance, timeout=2)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    server.restart()
    assert server.running and server.process is not first and server.port == port
    check_loopback_only(server)
    with open_channel(server) as ch:
        assert missing(ch, server.instance, blob_digest) == []
    check_round_trip(server)
    assert len(server.started_s) == 2


@pytest.mark.parametrize("buildgrid_cache", [{"disk": True}], indirect=True)
@pytest.mark.slow
@pytest.mark.network
def test_buildgrid_cache_restarts_on_its_port(buildgrid_cache: servers.Server) -> None:
    check_restart(buildgrid_cache)


@pytest.mark.slow
@pytest.mark.network
def test_casd_restarts_on_its_port(casd: servers.Server) -> None:
    check_restart(casd)


@pytest.mark.slow
@pytest.mark.network
def test_a_restart_waits_for_its_port_to_be_free(casd: servers.Server) -> None:
    """Another process holding the port when the server comes back (a fault
    test's own listener, a slow exit) delays the restart, not fails it."""
    port = casd.port
    casd.stop()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    release = threading.Timer(1.0, squatter.close)
    release.start()
    try:
        casd.start()
    finally:
        release.cancel()
        squatter.close()
    assert casd.port == port and casd.started_s[-1] >= 0.9
    check_round_trip(casd)


# ---------------------------------------------------- BuildGrid + execution

BOT_ID = "kiln-test-bot"


def create_bot_session(ch: grpc.Channel, instance: str) -> bots_pb2.BotSession:
    """A bot with OSFamily=linux, ISA=x86-64. A 3 s deadline makes the server
    answer at once (0.8 x 3 s is under its 3 s NETWORK_TIMEOUT: no long poll)."""
    device = worker_pb2.Device(
        handle=BOT_ID,
        properties=[
            worker_pb2.Device.Property(key="OSFamily", value="linux"),
            worker_pb2.Device.Property(key="ISA", value="x86-64"),
        ],
    )
    worker = worker_pb2.Worker(
        devices=[device], configs=[worker_pb2.Worker.Config(key="capacity", value="1")]
    )
    session = bots_pb2.BotSession(bot_id=BOT_ID, status=bots_pb2.OK, worker=worker)
    return bots_pb2_grpc.BotsStub(ch).CreateBotSession(
        bots_pb2.CreateBotSessionRequest(parent=instance, bot_session=session), timeout=3
    )


def update_bot_session(
    ch: grpc.Channel, session: bots_pb2.BotSession, timeout: float
) -> bots_pb2.BotSession:
    return bots_pb2_grpc.BotsStub(ch).UpdateBotSession(
        bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=timeout
    )


def stage(operation: operations_pb2.Operation) -> int:
    metadata = re_pb2.ExecuteOperationMetadata()
    assert operation.metadata.Unpack(metadata)
    return metadata.stage


@pytest.mark.slow
@pytest.mark.network
def test_buildgrid_exec_bot_runs_an_action(buildgrid_exec: servers.Server) -> None:
    server, instance = buildgrid_exec, buildgrid_exec.instance
    assert server.postgres is not None and server.postgres.port > 0
    check_loopback_only(server)
    assert servers.listening_addresses(server.postgres.process.pid) == {
        ("127.0.0.1", server.postgres.port)
    }
    capabilities = servers.get_capabilities(server.url, instance)
    assert capabilities.execution_capabilities.exec_enabled
    check_round_trip(server)

    with open_channel(server) as ch:
        began = time.monotonic()
        session = create_bot_session(ch, instance)
        assert time.monotonic() - began < 2.5  # no long poll with a 3 s deadline
        assert session.name.startswith(f"{instance}/") and session.bot_id == BOT_ID
        assert not session.leases and session.version == ""

        # A trivial action, with its command and input root in the CAS.
        linux = re_pb2.Platform(
            properties=[re_pb2.Platform.Property(name="OSFamily", value="linux")]
        )
        command = re_pb2.Command(arguments=["true"], platform=linux)
        empty_root = re_pb2.Directory()
        command_digest, root_digest = upload(
            ch, instance, command.SerializeToString(), empty_root.SerializeToString()
        )
        action = re_pb2.Action(
            command_digest=command_digest, input_root_digest=root_digest, platform=command.platform
        )
        (action_digest,) = upload(ch, instance, action.SerializeToString())
        stdout = b"hello from the test bot\n"
        (stdout_digest,) = upload(ch, instance, stdout)

        execution = re_grpc.ExecutionStub(ch)
        stream = execution.Execute(
            re_pb2.ExecuteRequest(
                instance_name=instance, action_digest=action_digest, skip_cache_lookup=True
            ),
            timeout=120,
        )
        queued = next(stream)
        assert not queued.done and queued.name.startswith(f"{instance}/")
        assert stage(queued) in (re_pb2.ExecutionStage.QUEUED, re_pb2.ExecutionStage.EXECUTING)

        # The bot's long poll returns as soon as the job is assigned to it.
        began = time.monotonic()
        session = update_bot_session(ch, session, timeout=30)
        waited = time.monotonic() - began
        assert waited < 20, waited
        (lease,) = session.leases
        assert lease.state == bots_pb2.ACTIVE
        assert lease.id.startswith(f"{instance}/") and lease.id != queued.name
        assert session.version == "1"
        assert lease.payload.Is(re_pb2.Action.DESCRIPTOR)
        leased_action = re_pb2.Action()
        lease.payload.Unpack(leased_action)
        assert leased_action == action
        assert digest(lease.payload.value) == action_digest

        # Heartbeat: the lease sent back unchanged stays (no long poll at capacity).
        began = time.monotonic()
        session = update_bot_session(ch, session, timeout=30)
        assert time.monotonic() - began < 5
        assert [(lease.id, lease.state) for lease in session.leases] == [
            (lease.id, bots_pb2.ACTIVE)
        ]

        # Done: COMPLETED, status OK, result an Any of ActionResult.
        (lease,) = session.leases
        lease.state = bots_pb2.COMPLETED
        lease.status.code = 0
        lease.result.Pack(re_pb2.ActionResult(exit_code=0, stdout_digest=stdout_digest))
        session = update_bot_session(ch, session, timeout=30)
        assert not session.leases

        # Idle, the bot's call is held for 0.8 x its deadline, then answered empty.
        began = time.monotonic()
        idle = update_bot_session(ch, session, timeout=5)
        assert 3.5 < time.monotonic() - began < 5 and not idle.leases

        operations = [queued, *stream]
        final = operations[-1]
        assert final.done and final.name == queued.name
        assert stage(final) == re_pb2.ExecutionStage.COMPLETED
        response = re_pb2.ExecuteResponse()
        assert final.response.Unpack(response)
        assert response.status.code == 0 and not response.cached_result
        assert response.result.exit_code == 0
        assert response.result.stdout_digest == stdout_digest
        assert response.result.execution_metadata.HasField("worker_completed_timestamp")

        cached = re_grpc.ActionCacheStub(ch).GetActionResult(
            re_pb2.GetActionResultRequest(instance_name=instance, action_digest=action_digest),
            timeout=30,
        )
        assert cached.stdout_digest == stdout_digest

        # A platform property the scheduler does not know is refused.
        unknown = re_pb2.Action(
            command_digest=command_digest,
            input_root_digest=root_digest,
            platform=re_pb2.Platform(
                properties=[re_pb2.Platform.Property(name="kiln-abi", value="1")]
            ),
        )
        (unknown_digest,) = upload(ch, instance, unknown.SerializeToString())
        with pytest.raises(grpc.RpcError) as refused:
            list(execution.Execute(
                re_pb2.ExecuteRequest(instance_name=instance, action_digest=unknown_digest),
                timeout=30,
            ))  # fmt: skip
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
