"""The remote cache and remote execution against a real engine (BuildGrid).

Servers come from the test helpers (``tests/remote/servers.py``): BuildGrid
0.9.1 in a cached virtualenv, PostgreSQL for its scheduler, all on
127.0.0.1 and stopped at the end, with two changes to the helpers' configs,
both BuildGrid's own limits: at most 256 RPCs at once instead of
max(5, 5 × cores) (10 here: a build holds an Execute stream per running
step, and the rest are refused with RESOURCE_EXHAUSTED), and queued jobs
assigned every ``KILN_BENCH_REMOTE_ASSIGN_INTERVAL`` (0.02 s) instead of
every 0.1 s plus a random 0 to 1 s. Builds go through ``kiln.api.build``
in this process (no interpreter start-up in the figures), except the
distributed one, which is ``kiln build`` from the command line.

1. Remote cache hit cost per step. A project whose target fans out
   ``STEPS`` independent wasm steps (``textkit count``, a new output name
   each) and merges the first four: ``STEPS + 1`` steps, pushed to a
   cache-only BuildGrid by one build, then built from an empty store. The
   target's value is the merged file only, so nothing else needs to come
   down (``downloaded_blobs`` should be 1). Peer: one ``GetActionResult``
   round trip to the same server, the median of ``ROUND_TRIPS`` sequential
   calls (half before the builds, half after) through Kiln's
   ``RemoteClient`` and through a plain synchronous grpc stub. Goals:
   build wall / steps ≤ 1.5 × a round trip; build wall / (steps × a round
   trip) ≤ 0.25 (the lookups overlap). The two are the same number, so
   two more figures: what the server can answer at best, 5 × ROUND_TRIPS
   lookups 64 at a time (as a build sends them) through each client, the
   floor of a fan-out; and a hit that cannot overlap: a chain of
   ``CHAIN_HITS`` steps, each reading the previous one's output, all remote
   hits, per step beyond the first (a 1-step build is the part paid once;
   medians of 3 builds each) against one round trip (≤ 1.5). References:
   the same builds from a warm local store (every step a local hit),
   Kiln's per-step cost without the network.
2. Distributed speed-up. ``SLEEPERS`` independent native steps that each
   sleep 0.5 s, ``kiln build --remote-exec URL -j SLEEPERS`` on BuildGrid
   with ``WORKERS`` ``kiln worker`` processes of ``SLOTS`` slots (the
   workers and the client's store warmed first by a build of short steps:
   other keys, no hits). Goal: wall ≤ 1.25 × the ideal,
   SLEEPERS × 0.5 s / (WORKERS × SLOTS).
3. Remote execution overhead of a trivial uncached action: a chain of
   ``CHAIN`` trivial wasm steps (each counting the previous one's output,
   so they run one at a time; new inputs every run), built locally (``-j1``)
   and on the engine. Per step: the median of ``finished - started`` of the
   report's step records; the overhead is the remote median minus the local
   one (goal ≤ 30 ms). Peer: a cached ``Execute`` round trip (an action the
   engine already has in its action cache, median of ``ROUND_TRIPS / 4``).

For 2 and 3 the CPU time the engine (BuildGrid and PostgreSQL), the
workers and the client used is printed, and for 3 where a remote step's
time goes, from the engine's timestamps (queued, assigned to a bot, run,
completed; one machine, one clock).

Sizes: ``KILN_BENCH_REMOTE_STEPS`` (1000), ``KILN_BENCH_REMOTE_CHAIN_HITS``
(100), ``KILN_BENCH_REMOTE_ROUND_TRIPS`` (200), ``KILN_BENCH_REMOTE_SLEEPERS``
(64), ``KILN_BENCH_REMOTE_CHAIN`` (20). The BuildGrid install is looked for
in ``KILN_BENCH_REMOTE_SERVERS`` (default: this checkout's
``.pytest_cache/d/remote-servers``, where the remote tests put it; made
there on first use, which takes minutes and the network). About 80 s on
two cores.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)
from google.protobuf.timestamp_pb2 import Timestamp
from tests.remote import servers

from bench.common import KILN, run_json
from kiln import api
from kiln.api import BuildRequest, StepStatus
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.remote.client import RemoteClient
from kiln.remote.settings import RemoteSettings, parse_endpoint
from kiln.remote.worker import MATCH_KEYS, WILDCARD_KEYS
from kiln.store import Store

ROOT = Path(__file__).parents[1]
TEXTKIT = ROOT / "examples" / "wordcount" / "tools" / "textkit.wasm"
SERVERS_CACHE = Path(
    os.environ.get("KILN_BENCH_REMOTE_SERVERS", ROOT / ".pytest_cache" / "d" / "remote-servers")
)
STEPS = int(os.environ.get("KILN_BENCH_REMOTE_STEPS", "1000"))
CHAIN_HITS = int(os.environ.get("KILN_BENCH_REMOTE_CHAIN_HITS", "100"))
ROUND_TRIPS = int(os.environ.get("KILN_BENCH_REMOTE_ROUND_TRIPS", "200"))
SLEEPERS = int(os.environ.get("KILN_BENCH_REMOTE_SLEEPERS", "64"))
CHAIN = int(os.environ.get("KILN_BENCH_REMOTE_CHAIN", "20"))
WORKERS, SLOTS = 2, 4
SLEEP_S = 0.5
MERGED = 4  # outputs of the fan-out the final step merges
WORKER_DEADLINE_S = 60.0
CHAIN_REPEATS = 3  # builds of the chain (and of its first step) each way: medians
IN_FLIGHT = 64  # lookups at once, as a build sends them (kiln.remote.connect)
PIPELINED = 5 * ROUND_TRIPS  # lookups of the pipelined floor
# BuildGrid serves at most max(5, 5 × cores) RPCs at once by default (10
# here) and refuses the rest with RESOURCE_EXHAUSTED; a build holds one
# Execute stream per running step, each worker one long poll.
RPC_LIMITS = "thread-pool-size: 256\nmaximum-concurrent-rpcs: 256\n"
# BuildGrid assigns queued jobs to bots by polling: every interval plus a
# random 0-1 s by default (jitter-factor 1), ~0.45 s of waiting per job.
ASSIGN_INTERVAL = float(os.environ.get("KILN_BENCH_REMOTE_ASSIGN_INTERVAL", "0.02"))
ASSIGNER = f"        interval: {ASSIGN_INTERVAL}\n        jitter-factor: 0.0\n"

KILNFILE = '''
from kiln.build import gather, native, source, target, wasm

TEXTKIT = "tools/textkit.wasm"


def count(file, out):
    return wasm(source(TEXTKIT), "count", file.path, out, inputs=[file], outputs=[out],
                description=f"count {out}")


@target
async def fanout():
    """STEPS independent counts, then a merge of the first MERGED."""
    words = source("words.txt")
    steps = await gather(*(count(words, f"out/{i:05d}.txt") for i in range(STEPS)))
    merged = [s.file(f"out/{i:05d}.txt") for i, s in enumerate(steps[:MERGED])]
    final = await wasm(source(TEXTKIT), "merge", "final.txt", *(f.path for f in merged),
                       inputs=merged, outputs=["final.txt"], description="merge")
    return final.file("final.txt")


@target
async def chain():
    """CHAIN steps, each counting the previous one's output."""
    previous = source("words.txt")
    for i in range(CHAIN):
        previous = (await count(previous, f"chain/{i:05d}.txt")).file(f"chain/{i:05d}.txt")
    return previous


@target
async def first():
    """The chain's first step alone (what a chain build pays once)."""
    return (await count(source("words.txt"), "chain/00000.txt")).file("chain/00000.txt")


@target
async def warm():
    """A few independent counts: every worker slot loads the module once."""
    words = source("words.txt")
    await gather(*(count(words, f"warm/{i}.txt") for i in range(WARM)))


@target
async def sleepers():
    """SLEEPERS native steps of `sleep SLEEP`, each with its own key."""
    await gather(*(
        native("sleep", "SLEEP", tools=["sleep"], env={"STEP": str(i), "SALT": "SALT_"},
               description=f"sleep {i}")
        for i in range(SLEEPERS)
    ))
'''


def make_project(
    folder: Path, *, steps: int = 0, chain: int = 0, sleepers: int = 0, sleep: float = 0.0
) -> Path:
    """A project with the targets above at these sizes; its words carry a
    new salt, so no step's key was ever seen before."""
    folder.mkdir(parents=True)
    (folder / "tools").mkdir()
    shutil.copy(TEXTKIT, folder / "tools" / "textkit.wasm")
    salt = secrets.token_hex(8)
    sizes = {"STEPS": steps, "MERGED": MERGED, "CHAIN": chain, "WARM": WORKERS * SLOTS,
             "SLEEPERS": sleepers, "SLEEP": f"{sleep:g}", "SALT_": salt}  # fmt: skip
    text = KILNFILE
    for name, value in sizes.items():
        text = text.replace(name, str(value))
    (folder / "kilnfile.py").write_text(text)
    (folder / "words.txt").write_text(f"kiln {salt}\nthe fire the clay the glaze\n")
    return folder


def copy_project(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest, ignore=shutil.ignore_patterns("kiln-out"))
    return dest


def build(home: Path, project: Path, target: str, **options) -> tuple[float, api.BuildReport]:
    """One in-process build of ``target`` (store opened and closed inside
    the timing); its wall seconds and report. Fails loudly."""
    start = time.perf_counter()
    with Store(home) as store:
        request = BuildRequest((target,), cwd=project, store=home, from_stamp=False, **options)
        report = api.build(request, None, store=store)
    took = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"bench: build of {target} failed: {report.errors[0].render()}")
    return took, report


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def result(name: str, kiln_s: float, peer: str | None, peer_s: float | None, goal: str,
           **extra: object) -> dict:  # fmt: skip
    ratio = kiln_s / peer_s if peer_s else None
    return {"name": name, "kiln_s": kiln_s, "peer": peer, "peer_s": peer_s, "ratio": ratio,
            "goal": goal, **extra}  # fmt: skip


# ------------------------------------------------------------------ peers


def client_for(url: str) -> RemoteClient:
    endpoint = parse_endpoint(url, "the benchmark")
    return RemoteClient(endpoint, RemoteSettings(cache=endpoint))


def kiln_round_trips(url: str, key: Digest, n: int) -> list[float]:
    """``n`` sequential GetActionResult calls through Kiln's client."""

    async def go() -> list[float]:
        client = client_for(url)
        await client.check()
        times = []
        try:
            for _ in range(n + 5):
                start = time.perf_counter()
                found = await client.get_action_result(key)
                times.append(time.perf_counter() - start)
                assert found is not None
        finally:
            await client.close()
        return times[5:]  # (after a warm-up)

    return asyncio.run(go())


def stub_round_trips(address: str, key: Digest, n: int) -> list[float]:
    """``n`` sequential GetActionResult calls through a plain sync grpc stub,
    asking the same as Kiln does."""
    request = _lookup_request(key)
    times = []
    with grpc.insecure_channel(address) as channel:
        stub = re_grpc.ActionCacheStub(channel)
        for _ in range(n + 5):
            start = time.perf_counter()
            stub.GetActionResult(request, timeout=30)
            times.append(time.perf_counter() - start)
    return times[5:]


def _lookup_request(key: Digest) -> re_pb2.GetActionResultRequest:
    return re_pb2.GetActionResultRequest(
        action_digest=key.to_proto(), inline_stdout=True, inline_stderr=True
    )


def kiln_pipelined(url: str, keys: list[Digest], n: int) -> float:
    """Seconds per lookup of ``n`` GetActionResult calls (of ``keys`` in
    turn) through Kiln's client, ``IN_FLIGHT`` at a time, as a build's
    lookups go: what the server can answer, the floor of a fan-out of hits."""

    async def go() -> float:
        client = client_for(url)
        await client.check()
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(i: int) -> None:
            async with slots:
                assert await client.get_action_result(keys[i % len(keys)]) is not None

        try:
            await one(0)
            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return (time.perf_counter() - start) / n
        finally:
            await client.close()

    return asyncio.run(go())


def stub_pipelined(address: str, keys: list[Digest], n: int) -> float:
    """The same through a plain sync grpc stub's futures, ``IN_FLIGHT`` at a time."""
    requests = [_lookup_request(keys[i % len(keys)]) for i in range(n)]
    with grpc.insecure_channel(address) as channel:
        stub = re_grpc.ActionCacheStub(channel)
        stub.GetActionResult(requests[0], timeout=30)
        start = time.perf_counter()
        pending: collections.deque = collections.deque()
        for request in requests:
            pending.append(stub.GetActionResult.future(request, timeout=60))
            if len(pending) >= IN_FLIGHT:
                pending.popleft().result()
        for future in pending:
            future.result()
        return (time.perf_counter() - start) / n


def cached_executes(url: str, key: Digest, n: int) -> list[float]:
    """``n`` sequential Executes of an action the engine has cached."""

    async def go() -> list[float]:
        client = client_for(url)
        await client.check(execution=True)
        times = []
        try:
            for _ in range(n + 3):
                start = time.perf_counter()
                response = await client.execute(key)
                times.append(time.perf_counter() - start)
                assert response.cached_result, "the engine ran a cached action again"
        finally:
            await client.close()
        return times[3:]

    return asyncio.run(go())


# -------------------------------------------------------------------- CPU


def group_cpu(*groups: int) -> float:
    """CPU seconds (user and system) of the processes of these process
    groups so far, with their reaped children's (each server and worker
    leads a group of its own), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) in groups:  # pgrp; then utime stime cutime cstime
            total += sum(int(x) for x in fields[11:15])
    return total / tick


class CpuMeter:
    """CPU seconds used by the engine, the workers and the client (this
    process and its reaped children) between ``start`` and ``stop``."""

    def __init__(self, engine: list[int], workers: list[int]) -> None:
        self.engine = engine
        self.workers = workers

    def _now(self) -> tuple[float, float, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        return group_cpu(*self.engine), group_cpu(*self.workers), client

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> tuple[float, float, float]:
        (engine0, workers0, client0), (engine, workers, client) = self._start, self._now()
        self.used = (engine - engine0, workers - workers0, client - client0)
        return self.used

    def describe(self, steps: int) -> str:
        """What ``stop`` measured, as text."""
        engine, workers, client = self.used
        return (
            f"CPU: engine (BuildGrid, PostgreSQL) {engine:.2f} s = {engine / steps * 1e3:.0f} ms "
            f"per step, workers {workers:.2f} s, client {client:.2f} s"
        )


# ---------------------------------------------------------------- servers


def buildgrid_venv() -> Path | None:
    python = servers.find_python313()
    if python is None:
        print("remote: skipped (BuildGrid 0.9.1 needs Python 3.13: pyenv install 3.13.0)")
        return None
    return servers.install_buildgrid(SERVERS_CACHE, python)


class Workers:
    """``kiln worker`` processes, each with its own store; stopped by ``stop``."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, slots: int) -> None:
        env = {**os.environ, "KILN_HOME": str(self.folder / name), "KILN_SERVER": "off"}
        with open(self.folder / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [KILN, "worker", "--remote", self.url, "--slots", str(slots), "--bot-id", name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_for_sessions(self, postgres: servers.Postgres, database: str) -> None:
        """Until the engine has a session of every worker (a row in its
        ``bots`` table: the worker itself says so only once its first long
        poll ends, ~24 s later when there is no work)."""
        query = [str(postgres.bindir / "psql"), "-tAc", "select count(*) from bots", database]
        deadline = time.monotonic() + WORKER_DEADLINE_S
        while True:
            out = subprocess.run(query, capture_output=True, text=True)
            if out.returncode == 0 and int(out.stdout.strip() or 0) >= len(self.procs):
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench: worker {name} did not start:\n{self.log(name)}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs.values():
            servers.stop_process(proc)


# ------------------------------------------------------------------ parts


def remote_cache(venv: Path, tmp: Path) -> list[dict]:
    """Part 1: remote cache hits, pipelined (fan-out) and dependent (chain)."""

    def config(port: int) -> str:
        return servers.buildgrid_cache_config(port, "", None) + RPC_LIMITS

    server = servers.buildgrid_server(venv, tmp / "buildgrid-cache", config, "")
    try:
        server.start()
        print(f"remote: BuildGrid (cache only) started in {server.started_s[-1]:.1f} s", flush=True)
        return _remote_cache(server, tmp)
    finally:
        server.stop()


def _remote_cache(server: servers.Server, tmp: Path) -> list[dict]:
    project = make_project(tmp / "project", steps=STEPS, chain=CHAIN_HITS)
    keys = []
    for target in ("fanout", "chain"):
        took, report = build(tmp / "pusher", project, target, remote_cache=server.url)
        assert report.remote and report.remote["pushed"] == len(report.steps), report.remote
        keys += [s.key for s in report.steps]
        print(f"  pushed {target}: {len(report.steps)} steps run here in {took:.1f} s", flush=True)
    kiln_rtts = kiln_round_trips(server.url, keys[0], ROUND_TRIPS // 2)
    stub_rtts = stub_round_trips(server.address, keys[0], ROUND_TRIPS // 2)

    def hits(target: str, repeats: int = 1) -> tuple[float, float, int, int]:
        """Builds of ``target`` from an empty store (all remote hits) and from
        a warm local store (all local hits): their median seconds, steps,
        blobs downloaded."""
        remote, local = [], []
        for n in range(repeats):
            took, report = build(
                tmp / f"empty-{target}-{n}", copy_project(project, tmp / f"hits-{target}-{n}"),
                target, remote_cache=server.url,
            )  # fmt: skip
            summary = report.summary()
            steps = len(report.steps)
            if summary["remote_cached"] != steps or summary["executed"]:
                raise SystemExit(f"bench: expected {steps} remote hits: {summary}")
            remote.append(took)
            warm = copy_project(project, tmp / f"warm-{target}-{n}")
            local.append(build(tmp / "pusher", warm, target)[0])
        downloaded = summary["remote"]["downloaded_blobs"]
        return statistics.median(remote), statistics.median(local), steps, downloaded

    fanout, fanout_local, fanout_steps, fanout_downloaded = hits("fanout")
    first, first_local, _, _ = hits("first", CHAIN_REPEATS)
    chain, chain_local, chain_steps, chain_downloaded = hits("chain", CHAIN_REPEATS)
    kiln_rtts += kiln_round_trips(server.url, keys[0], ROUND_TRIPS // 2)
    stub_rtts += stub_round_trips(server.address, keys[0], ROUND_TRIPS // 2)
    kiln_rtt, stub_rtt = statistics.median(kiln_rtts), statistics.median(stub_rtts)
    kiln_floor = kiln_pipelined(server.url, keys, PIPELINED)
    stub_floor = stub_pipelined(server.address, keys, PIPELINED)
    print(
        f"  GetActionResult round trip, median of {len(kiln_rtts)} (half before the builds, "
        f"half after): Kiln's RemoteClient {kiln_rtt * 1e3:.2f} ms, a plain sync grpc stub "
        f"{stub_rtt * 1e3:.2f} ms; {PIPELINED} of them {IN_FLIGHT} at a time (the server's "
        f"throughput): {kiln_floor * 1e3:.2f} ms and {stub_floor * 1e3:.2f} ms per lookup",
        flush=True,
    )
    per_step = fanout / fanout_steps
    ratio = per_step / kiln_rtt
    print(
        f"remote cache hits, {fanout_steps} independent steps, empty store: {fanout:.2f} s, "
        f"{per_step * 1e6:.0f} µs per step; per step / round trip {ratio:.2f} (goal <= 1.5: "
        f"{_met(ratio <= 1.5)}), whole build / (steps × round trip) {ratio:.2f} (the same "
        f"number; goal <= 0.25: {_met(ratio <= 0.25)}); against the plain stub's round trip "
        f"{per_step / stub_rtt:.2f}; {per_step / kiln_floor:.2f} × the pipelined floor "
        f"(Kiln's client), {per_step / stub_floor:.2f} × (plain stub); downloaded "
        f"{fanout_downloaded} blob(s). Warm local store: {fanout_local:.2f} s, "
        f"{fanout_local / fanout_steps * 1e6:.0f} µs per step",
        flush=True,
    )
    links = chain_steps - 1
    marginal, marginal_local = (chain - first) / links, (chain_local - first_local) / links
    chain_ratio = marginal / kiln_rtt
    print(
        f"remote cache hits, a chain of {chain_steps} dependent steps, empty store: "
        f"{chain:.2f} s ({chain / chain_steps * 1e6:.0f} µs per step); beyond the first step "
        f"(a 1-step build: {first:.2f} s) {marginal * 1e6:.0f} µs per step = "
        f"{chain_ratio:.2f} round trips (goal <= 1.5: {_met(chain_ratio <= 1.5)}; against the "
        f"plain stub's {marginal / stub_rtt:.2f}); downloaded {chain_downloaded} blob(s). "
        f"Warm local store: {marginal_local * 1e6:.0f} µs per step beyond the first",
        flush=True,
    )
    common = {"rtt_stub_s": stub_rtt, "pipelined_kiln_s": kiln_floor,
              "pipelined_stub_s": stub_floor}  # fmt: skip
    fanout_extra = {"build_s": fanout, "steps": fanout_steps,
                    "downloaded_blobs": fanout_downloaded, "local_warm_s": fanout_local,
                    "local_warm_per_step_s": fanout_local / fanout_steps, **common}  # fmt: skip
    peer = "GetActionResult round trip (Kiln's client)"
    return [
        result(f"remote cache hit per step, {fanout_steps} independent steps, empty store",
               per_step, peer, kiln_rtt, "<= 1.5", **fanout_extra),
        result(f"the same build / ({fanout_steps} × a round trip): lookups overlapped",
               per_step, peer, kiln_rtt, "<= 0.25", **fanout_extra),
        result(f"remote cache hit per step, a chain of {chain_steps} dependent steps, "
               "beyond the first", marginal, peer, kiln_rtt, "<= 1.5", build_s=chain,
               first_step_build_s=first, steps=chain_steps, downloaded_blobs=chain_downloaded,
               local_warm_per_step_s=marginal_local, **common),
    ]  # fmt: skip


def _met(yes: bool) -> str:
    return "met" if yes else "not met"


def remote_exec(venv: Path, tmp: Path) -> list[dict]:
    """Parts 2 and 3: BuildGrid with execution on PostgreSQL, and workers."""
    bindir, user = servers.find_postgres_bin(), servers.postgres_user()
    if bindir is None or user is None:
        print("remote: execution skipped (PostgreSQL is not installed, or no postgres user)")
        return []
    with contextlib.ExitStack() as stack:
        pg_folder = Path(tempfile.mkdtemp(prefix="kiln-bench-pg-"))
        stack.callback(shutil.rmtree, pg_folder, ignore_errors=True)
        postgres = servers.Postgres(bindir, pg_folder, user)
        stack.callback(postgres.stop)
        started = time.monotonic()
        postgres.init()
        postgres.start()
        database = postgres.create_database("bgd")
        servers.migrate_database(venv, database, tmp / "migrate.log")

        database_s = time.monotonic() - started

        def config(port: int) -> str:
            text = servers.buildgrid_exec_config(
                port, "", database, None, match_keys=MATCH_KEYS, wildcard_keys=WILDCARD_KEYS
            )
            assigner = "        interval: 0.1\n"
            assert assigner in text, "the helper's assigner settings changed: see ASSIGNER"
            return text.replace(assigner, ASSIGNER) + RPC_LIMITS

        server = servers.buildgrid_server(venv, tmp / "buildgrid-exec", config, "", "bgd-exec")
        stack.callback(server.stop)
        server.start()
        server_s = time.monotonic() - started - database_s
        workers = Workers(server.url, tmp)
        stack.callback(workers.stop)
        for n in range(WORKERS):
            workers.start(f"worker{n + 1}", SLOTS)
        workers.wait_for_sessions(postgres, database)
        workers_s = time.monotonic() - started - database_s - server_s
        print(
            f"remote: PostgreSQL with BuildGrid's tables up in {database_s:.1f} s, BuildGrid "
            f"(execution) in {server_s:.1f} s, {WORKERS} workers × {SLOTS} slots in "
            f"{workers_s:.1f} s",
            flush=True,
        )
        assert server.process is not None and postgres.process is not None
        meter = CpuMeter(
            [server.process.pid, postgres.process.pid], [p.pid for p in workers.procs.values()]
        )
        return [*_distributed(server, tmp, meter), *_overhead(server, tmp, meter)]
    raise AssertionError("unreachable")


def _distributed(server: servers.Server, tmp: Path, meter: CpuMeter) -> list[dict]:
    def cli_build(name: str, steps: int, sleep: float) -> float:
        """``kiln build`` of a new project, in the client's store (the warm-up
        leaves in it what any used store has, e.g. its tools' dpkg index)."""
        project = make_project(tmp / name, sleepers=steps, sleep=sleep)
        env = {**os.environ, "KILN_HOME": str(tmp / "client-home"), "KILN_SERVER": "off"}
        argv = [KILN, "build", "sleepers", "--remote-exec", server.url, "-j", str(steps),
                "--json"]  # fmt: skip
        took, summary = run_json(argv, cwd=project, env=env)
        if summary["remote_executed"] != steps:
            raise SystemExit(f"bench: expected {steps} remote executions: {summary}")
        return took

    warm_steps = 2 * WORKERS * SLOTS
    warm = cli_build("sleepers-warm-up", warm_steps, 0.0)
    print(
        f"  warm-up: {warm_steps} native steps of `sleep 0` on cold workers, from an empty "
        f"store: {warm:.2f} s"
    )
    meter.start()
    took = cli_build("sleepers", SLEEPERS, SLEEP_S)
    engine, workers, client = meter.stop()
    cpu = meter.describe(SLEEPERS)
    ideal = SLEEPERS * SLEEP_S / (WORKERS * SLOTS)
    print(
        f"distributed: {SLEEPERS} native steps of `sleep {SLEEP_S:g}` on {WORKERS} workers × "
        f"{SLOTS} slots, `kiln build --remote-exec -j {SLEEPERS}`: {took:.2f} s, ideal "
        f"{ideal:.2f} s, ratio {took / ideal:.2f} (goal <= 1.25: {_met(took <= 1.25 * ideal)}); "
        f"{cpu}",
        flush=True,
    )
    return [result(
        f"distributed: {SLEEPERS} × sleep {SLEEP_S:g} s on {WORKERS * SLOTS} worker slots",
        took, "ideal (steps × seconds / slots)", ideal, "<= 1.25", warm_up_s=warm,
        engine_cpu_s=engine, workers_cpu_s=workers, client_cpu_s=client,
    )]  # fmt: skip


def _step_times(report: api.BuildReport, status: StepStatus) -> list[float]:
    steps = [s for s in report.steps if s.status is status]
    return [s.finished - s.started for s in steps if s.started is not None and s.finished]


def _overhead(server: servers.Server, tmp: Path, meter: CpuMeter) -> list[dict]:
    project = make_project(tmp / "chain", chain=CHAIN)
    build(tmp / "local", project, "warm", jobs=1)
    build(tmp / "remote", project, "warm", remote_exec=server.url)
    local_s, local = build(tmp / "local", project, "chain", jobs=1)
    meter.start()
    remote_s, remote = build(
        tmp / "remote", copy_project(project, tmp / "chain-remote"), "chain",
        remote_exec=server.url,
    )  # fmt: skip
    meter.stop()
    cpu = meter.describe(CHAIN)
    if remote.count(StepStatus.REMOTE_EXECUTED) != CHAIN:
        raise SystemExit(f"bench: expected {CHAIN} remote executions: {remote.summary()}")
    local_ms = median_ms(_step_times(local, StepStatus.EXECUTED))
    remote_ms = median_ms(_step_times(remote, StepStatus.REMOTE_EXECUTED))
    _where_remote_time_goes(remote)
    execute_ms = median_ms(cached_executes(server.url, remote.steps[-1].key, ROUND_TRIPS // 4))
    overhead = remote_ms - local_ms
    print(
        f"remote execution of a trivial uncached wasm step ({CHAIN} in a chain): "
        f"{remote_ms:.1f} ms per step, locally {local_ms:.1f} ms: overhead "
        f"{overhead:.1f} ms (goal <= 30 ms: {_met(overhead <= 30)}); a cached Execute round "
        f"trip {execute_ms:.1f} ms, "
        f"ratio {remote_ms / execute_ms:.1f}; whole chain {remote_s:.2f} s remote, "
        f"{local_s:.2f} s local; {cpu}",
        flush=True,
    )
    return [result(
        f"remote execution, trivial uncached step ({CHAIN} in a chain), per step",
        remote_ms / 1000, "cached Execute round trip", execute_ms / 1000, "overhead <= 30 ms",
        local_s=local_ms / 1000, overhead_s=overhead / 1000,
        chain_remote_s=remote_s, chain_local_s=local_s,
    )]  # fmt: skip


def _where_remote_time_goes(report: api.BuildReport) -> None:
    """Medians, per remote step, of the stretches between the engine's
    timestamps (one machine, one clock)."""
    stretches: dict[str, list[float]] = {}

    def ts(stamp: Timestamp) -> float:
        return stamp.ToNanoseconds() / 1e9

    def add(name: str, start: float, end: float) -> None:
        stretches.setdefault(name, []).append(end - start)

    for step in report.steps:
        if step.status is not StepStatus.REMOTE_EXECUTED or step.result is None:
            continue
        meta = step.result.execution_metadata
        queued, assigned = ts(meta.queued_timestamp), ts(meta.worker_start_timestamp)
        run, ran = ts(meta.execution_start_timestamp), ts(meta.execution_completed_timestamp)
        done = ts(meta.worker_completed_timestamp)
        assert step.started is not None and step.finished is not None
        add("client: uploads and Execute until queued", step.started, queued)
        add("queued until assigned to a bot", queued, assigned)
        add("assigned until the run starts (lease to the worker, its downloads)", assigned, run)
        add("the run", run, ran)
        add("run done until completed (worker uploads, reports)", ran, done)
        add("completed until the client has it", done, step.finished)
    print("  where a remote step's time goes (medians):", flush=True)
    for name, values in stretches.items():
        print(f"    {median_ms(values):7.1f} ms  {name}", flush=True)


def main() -> list[dict]:
    venv = buildgrid_venv()
    if venv is None:
        return []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "cache").mkdir()
        (tmp / "exec").mkdir()
        results = remote_cache(venv, tmp / "cache")
        results += remote_exec(venv, tmp / "exec")
    print(f"remote: {time.perf_counter() - started:.0f} s in all", flush=True)
    return results


if __name__ == "__main__":
    main()
