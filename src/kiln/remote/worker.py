"""``kiln worker``: a Remote Workers API bot that runs Kiln's steps for a
REAPI engine (BuildGrid's bots service).

The bot opens a session advertising what it can run (platform properties,
matched by the engine's scheduler), then long-polls ``UpdateBotSession``.
Each lease carries an Action: the bot downloads its Command and input tree
into its own local store, runs it with Kiln's own executor for its
contract (through the store's execute-once lock and action cache, like a
local build), uploads the outputs and completes the lease with the
``ActionResult``. While leases run, every poll sends them back as a
heartbeat; a lease the engine drops was cancelled.

Failures: a step's own failure (non-zero exit) is a result; the executor
not managing to run it is ``INTERNAL`` (the engine gives the job to a bot
again); an action for a contract this bot does not run is
``FAILED_PRECONDITION``; one that names secrets is ``PERMISSION_DENIED``:
any client of the engine could send one that prints them, so a worker
never runs such a step (its client does). The engine going away (a restart) makes the bot
retry with backoff and open a new session; its leases are then the
engine's to requeue.

Properties advertised (the scheduler matches an action's on them):
``kiln-abi`` for each contract, ``isa`` (``wasm32`` and this CPU), ``os``,
and ``requires``: every combination of the machine's features, written as
steps write it (sorted, comma-joined), so a step that requires features
only reaches a worker that has them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
    worker_pb2,
)
from buildgrid.common.protos.google.rpc import code_pb2, status_pb2

from kiln import errors
from kiln.engine.runners import Outcome, ThreadRunner
from kiln.exec import kinds
from kiln.model.action import shareable
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.remote.cache import RemoteCache, RemoteStats, platform_of
from kiln.remote.client import RemoteClient
from kiln.remote.execution import REMOTE_KINDS
from kiln.remote.retry import TRANSIENT
from kiln.remote.settings import RemoteSettings
from kiln.store.actioncache import result_blobs
from kiln.store.local import Store

# The platform properties of Kiln's actions, as an engine's scheduler must
# know them: those it matches against what a bot offers, and those it lets
# through unmatched (limits, checked by the worker's executors themselves;
# tool identities, checked by the native executor against its host).
MATCH_KEYS = ("kiln-abi", "isa", "os", "requires")
WILDCARD_KEYS = ("disk-mib", "fuel", "memory-mib", "pids", "tool-names", "tools")

POLL_SECONDS = 30.0  # the deadline of one UpdateBotSession long poll
MAX_FEATURE_COMBINATIONS = 255  # 8 features: every combination advertised


@dataclass(frozen=True)
class WorkerOptions:
    """What ``kiln worker`` was asked to be."""

    slots: int = 1
    bot_id: str = ""  # default: host name and process id
    features: frozenset[str] = frozenset()


def properties(features: frozenset[str]) -> list[tuple[str, str]]:
    """The platform properties this bot offers (see the module's docstring)."""
    props = [("kiln-abi", kinds.KINDS[k].abi) for k in sorted(REMOTE_KINDS)]
    props += [("isa", "wasm32"), ("isa", platform.machine()), ("os", "linux")]
    names = sorted(features)
    combos = 0
    for n in range(1, len(names) + 1):
        for combo in itertools.combinations(names, n):
            combos += 1
            if combos > MAX_FEATURE_COMBINATIONS:
                raise errors.KilnError(
                    f"this machine offers {len(names)} features; a worker can advertise at most 8",
                    hint="remove features from the config of this worker",
                    exit_code=errors.ExitCode.BAD_INPUT,
                )
            props.append(("requires", ",".join(combo)))
    return props


class Worker:
    """One bot: a session with the engine and the leases it runs."""

    def __init__(
        self,
        store: Store,
        settings: RemoteSettings,
        options: WorkerOptions,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        assert settings.exec is not None
        self.store = store
        self.settings = settings
        self.options = options
        self.say = say
        self.bot_id = options.bot_id or f"{socket.gethostname()}-{os.getpid()}"
        self.runner = ThreadRunner(
            store, kinds.factories(kinds.local_context(store)), options.slots
        )
        self.done = 0
        self._running: dict[str, asyncio.Task[bots_pb2.Lease]] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the leases in hand, then end (e.g. on SIGTERM)."""
        self._stopping.set()

    async def run(self, max_leases: int | None = None) -> None:
        """Serve leases until stopped (or ``max_leases`` have completed)."""
        client = RemoteClient(self.settings.exec, self.settings)  # type: ignore[arg-type]
        self.cas = RemoteCache(self.store, client, push=False, stats=RemoteStats())
        self.bots = bots_pb2_grpc.BotsStub(client.channel)
        self.metadata = client.metadata
        await asyncio.to_thread(self._warm)
        try:
            session = await self._create_session()
            while not (self._stopping.is_set() and not self._running):
                if max_leases is not None and self.done >= max_leases and not self._running:
                    break
                session = await self._poll(session)
        finally:
            for task in self._running.values():
                task.cancel()
            self.runner.close()
            await client.close()

    def _warm(self) -> None:
        """Build the host tool index native steps resolve their tools in,
        once, before the slots' executors start together and each builds
        it (it is then cached in the store)."""
        from kiln.exec.tools import Dpkg, resolve, tool_roots_folder

        with contextlib.suppress(errors.KilnError, OSError):
            resolve("sh", Dpkg(cache=tool_roots_folder(self.store.home)))

    # ----------------------------------------------------------- session

    def _session(self) -> bots_pb2.BotSession:
        device = worker_pb2.Device(
            handle=self.bot_id,
            properties=[
                worker_pb2.Device.Property(key=k, value=v)
                for k, v in properties(self.options.features)
            ],
        )
        configs = [worker_pb2.Worker.Config(key="capacity", value=str(self.options.slots))]
        return bots_pb2.BotSession(
            bot_id=self.bot_id,
            status=bots_pb2.BotStatus.OK,
            worker=worker_pb2.Worker(devices=[device], configs=configs),
        )

    async def _create_session(self) -> bots_pb2.BotSession:
        """A new session, retried while the engine cannot be reached."""
        request = bots_pb2.CreateBotSessionRequest(
            parent=self.settings.instance, bot_session=self._session()
        )
        delay = 0.2
        while True:
            try:
                session = await self.bots.CreateBotSession(
                    request, timeout=POLL_SECONDS, metadata=self.metadata
                )
                self.say(f"session {session.name} on {self.settings.exec}")
                return session
            except grpc.aio.AioRpcError as e:
                if e.code() not in TRANSIENT:
                    raise _refused(e, self.settings) from None
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _poll(self, session: bots_pb2.BotSession) -> bots_pb2.BotSession:
        """Start the session's new leases, send the leases' state back, and
        return the engine's answer (the session to poll with next)."""
        self._start_new(session)
        outgoing = bots_pb2.BotSession()
        outgoing.CopyFrom(session)
        del outgoing.leases[:]
        for lease in session.leases:
            task = self._running.get(lease.id)
            if task is not None and task.done():
                outgoing.leases.append(task.result())
                del self._running[lease.id]
                self.done += 1
            elif lease.state == bots_pb2.LeaseState.ACTIVE and lease.id in self._running:
                outgoing.leases.append(lease)  # still running: a heartbeat
            elif lease.state == bots_pb2.LeaseState.COMPLETED:
                outgoing.leases.append(lease)  # its report did not get through: again
        if self._stopping.is_set():
            outgoing.status = bots_pb2.BotStatus.BOT_TERMINATING
        # The engine holds the call until it has work for this bot; a lease
        # finishing here meanwhile cancels it, to report at once. (A lease the
        # engine assigned in the cancelled answer comes again in the next:
        # it re-sends every job it has given this bot that the bot omits.)
        call = self.bots.UpdateBotSession(
            bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=outgoing),
            timeout=POLL_SECONDS,
            metadata=self.metadata,
        )
        update = asyncio.ensure_future(call)
        finished = asyncio.ensure_future(self._next_finished(outgoing))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({update, finished, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
            stopping.cancel()
        if not update.done():
            update.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await update
            return outgoing  # sent again at once, with what finished
        try:
            answer = update.result()
        except grpc.aio.AioRpcError as e:
            if e.code() in _SESSION_LOST:
                self.say(f"lost the session ({e.code().name}); opening a new one")
                return await self._create_session()
            if e.code() in TRANSIENT:  # the engine restarting, or slow: say it again
                await asyncio.sleep(0.5)
                return outgoing
            raise _refused(e, self.settings) from None
        kept = {lease.id for lease in answer.leases}
        for lease_id in [i for i in self._running if i not in kept]:
            self._running.pop(lease_id).cancel()  # the engine cancelled it
        return answer

    def _start_new(self, session: bots_pb2.BotSession) -> None:
        """Start the leases the engine gave this bot (in any answer, the
        one that opened the session included) that are not running yet."""
        for lease in session.leases:
            if lease.state == bots_pb2.LeaseState.ACTIVE and lease.id not in self._running:
                self._running[lease.id] = asyncio.ensure_future(self._run_lease(lease))

    async def _next_finished(self, sent: bots_pb2.BotSession) -> None:
        """Return when a lease that ``sent`` reported as running finishes."""
        running = {lease.id for lease in sent.leases if lease.state == bots_pb2.LeaseState.ACTIVE}
        tasks = [t for i, t in self._running.items() if i in running]
        if tasks:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.Event().wait()  # nothing to wait for: only the answer

    # ------------------------------------------------------------- leases

    async def _run_lease(self, lease: bots_pb2.Lease) -> bots_pb2.Lease:
        """Run a lease's action; the lease, completed with its outcome."""
        done = bots_pb2.Lease()
        done.CopyFrom(lease)
        done.state = bots_pb2.LeaseState.COMPLETED
        try:
            result = await self._execute(lease)
            done.result.Pack(result)
            done.status.CopyFrom(status_pb2.Status(code=code_pb2.OK))
            self.say(f"lease {lease.id}: exit code {result.exit_code}")
        except _Refused as e:
            done.status.CopyFrom(status_pb2.Status(code=e.code, message=e.message))
            self.say(f"lease {lease.id}: refused: {e.message}")
        except Exception as e:  # the bot could not run it: the engine tries again
            message = getattr(e, "message", "") or str(e) or type(e).__name__
            done.status.CopyFrom(status_pb2.Status(code=code_pb2.INTERNAL, message=message))
            self.say(f"lease {lease.id}: could not run: {message}")
        return done

    async def _execute(self, lease: bots_pb2.Lease) -> re_pb2.ActionResult:
        action = re_pb2.Action()
        if not lease.payload.Unpack(action):
            raise _Refused(code_pb2.INVALID_ARGUMENT, "the lease does not carry an Action")
        key = Digest.of_message(action)
        self.say(f"lease {lease.id}: running {key}")
        command_digest = Digest.from_proto(action.command_digest)
        root = Digest.from_proto(action.input_root_digest)
        # The Command and the input tree's top folder in one round trip.
        first = [command_digest, *self.store.cas.find_missing([root])]
        blobs = await self.cas.client.download(first)
        if root in blobs:
            await asyncio.to_thread(self.cas.store_folders, {root: blobs[root]})
        if command_digest not in blobs:
            raise _Refused(code_pb2.FAILED_PRECONDITION, f"the command {command_digest} is missing")
        command = re_pb2.Command.FromString(blobs[command_digest])
        platform_props = platform_of(action, command)
        kind = kinds.by_abi(platform_props.get("kiln-abi", ""))
        if kind is None or kind.name not in REMOTE_KINDS:
            raise _Refused(
                code_pb2.FAILED_PRECONDITION,
                f"this worker does not run contract {platform_props.get('kiln-abi')!r}",
            )
        if not shareable(platform_props):
            # Any client of the engine could ask for a step that reads this
            # machine's secrets and prints them: a worker never lends them.
            raise _Refused(
                code_pb2.PERMISSION_DENIED,
                "this worker runs no step that reads secrets; such steps run on their client",
            )
        if not await self.cas.fetch_tree(root):
            raise _Refused(code_pb2.FAILED_PRECONDITION, f"inputs of {key} are missing")
        with self.store.writing():
            self.store.put_messages(action, command)
        where = f"action {key}"
        outcome: Outcome = await asyncio.wrap_future(
            self.runner.submit(kind.name, key, action, command, where)
        )
        if outcome.error is not None or outcome.result is None:
            raise outcome.error or RuntimeError("no result")
        result = re_pb2.ActionResult()
        result.CopyFrom(outcome.result)
        result.execution_metadata.worker = self.bot_id
        await self.cas.upload({}, result_blobs(self.store.cas, result))
        return result


class _Refused(Exception):
    """A lease this bot will not run, with the status the engine gets."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_SESSION_LOST = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})


def _refused(e: grpc.aio.AioRpcError, settings: RemoteSettings) -> errors.KilnError:
    return errors.KilnError(
        f"remote {settings.exec}: the bots service refused this worker "
        f"({e.code().name}): {e.details()}",
        hint="check the URL, the instance name (--instance) and the token",
        exit_code=errors.ExitCode.FAILED,
    )


async def serve(worker: Worker) -> None:
    """Run ``worker`` until SIGINT/SIGTERM, finishing the leases in hand."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, worker.stop)
    await worker.run()
