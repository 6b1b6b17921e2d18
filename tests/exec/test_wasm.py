"""The wasm executor: determinism by construction, limits, isolation, caching."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import pytest

from kiln.exec.base import TransientError
from kiln.exec.kinds import local_context
from kiln.exec.wasi.host import ABI_VERSION, REALTIME_EPOCH_NS
from kiln.exec.wasm import EXIT_TRAP, WasmExecutor, WasmLimits
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest


def _inputs(tmp_path: Path, module: Path) -> Path:
    root = tmp_path / "in"
    (root / "data" / "sub").mkdir(parents=True)
    shutil.copy(module, root / "tool.wasm")
    (root / "data" / "b.txt").write_text("bee\n")
    (root / "data" / "a.txt").write_text("a\n")
    (root / "data" / "c.bin").write_bytes(bytes(300))
    return root


def _run(store, root: Digest, *args: str, limits=None, outputs=("out",), env=None, executor=None):
    spec = ActionSpec(
        argv=("tool.wasm", *args),
        input_root=root,
        env=env or {"LANG": "C", "ZED": "last"},
        outputs=outputs,
        platform=(limits or WasmLimits()).platform(),
    )
    key = store.put_action(spec)
    action, command = spec.action()
    ex = executor or WasmExecutor(local_context(store))
    return key, ex.execute(key, action, command)


def _text(store, digest_proto) -> str:
    return store.cas.get_bytes(Digest.from_proto(digest_proto)).decode()


@pytest.fixture
def observe_root(store, tmp_path: Path, guest) -> Digest:
    return store.put(_inputs(tmp_path, guest("observe"))).digest


def test_guest_sees_only_declared_argv_env_and_virtual_time(
    store, observe_root, monkeypatch
) -> None:
    monkeypatch.setenv("HOST_SECRET", "should-not-leak")
    _, result = _run(store, observe_root, "one", "two words")
    assert result.exit_code == 0, _text(store, result.stderr_digest)
    out = _text(store, result.stdout_digest)
    assert "argv[0]=tool.wasm\nargv[1]=one\nargv[2]=two words\n" in out
    assert [line for line in out.splitlines() if line.startswith("env ")] == [
        "env LANG=C",
        "env ZED=last",
    ]
    assert "HOST_SECRET" not in out
    assert f"realtime {REALTIME_EPOCH_NS // 10**9}.000000000" in out
    assert "monotonic 1000 2000 res 1000" in out
    assert "tmp writable" in out


def test_directory_listing_is_sorted_with_fixed_times_and_synthetic_inodes(
    store, observe_root
) -> None:
    _, result = _run(store, observe_root)
    entries = [
        line
        for line in _text(store, result.stdout_digest).splitlines()
        if line.startswith("entry ")
    ]
    names = [e.split()[1] for e in entries]
    assert names == [".", "..", "a.txt", "b.txt", "c.bin", "sub"]
    assert all(f"mtime={REALTIME_EPOCH_NS // 10**9}" in e for e in entries)
    inos = [int(e.split("ino=")[1].split()[0]) for e in entries]
    assert max(inos) < 100  # small numbers handed out in lookup order, not host inodes


def test_runs_are_bit_identical_and_random_is_seeded_by_the_key(store, observe_root) -> None:
    _, first = _run(store, observe_root, "x")
    _, again = _run(store, observe_root, "x")
    assert first.stdout_digest == again.stdout_digest
    assert first.output_directories[0].tree_digest == again.output_directories[0].tree_digest
    _, other = _run(store, observe_root, "y")  # another key: another random stream

    def random_line(r) -> list[str]:
        lines = _text(store, r.stdout_digest).splitlines()
        return [line for line in lines if line.startswith("random")]

    assert random_line(first) == random_line(again) != random_line(other)


def test_outputs_are_collected_as_trees(store, observe_root, tmp_path: Path) -> None:
    _, result = _run(store, observe_root, "a", "b")
    (out,) = result.output_directories
    assert out.path == "out"
    from kiln.model.reapi import Tree

    tree = Tree.FromString(store.cas.get_bytes(Digest.from_proto(out.tree_digest)))
    (report,) = tree.root.files
    assert report.name == "report.txt"
    assert store.cas.get_bytes(Digest.from_proto(report.digest)) == b"argc=3\n"


def test_guest_gets_nothing_of_the_host(store, tmp_path: Path, guest) -> None:
    root = store.put(_inputs(tmp_path, guest("escape"))).digest
    _, result = _run(store, root)
    out = _text(store, result.stdout_digest)
    assert "read /etc/passwd: No such file or directory" in out
    assert "read ../../../../etc/passwd: No such file or directory" in out
    assert "read /proc/self/environ: No such file or directory" in out
    assert "write input: Read-only file system" in out
    assert "create in input root: Read-only file system" in out
    root_entries = {line.split()[-1] for line in out.splitlines() if line.startswith("root entry")}
    assert root_entries == {".", "..", "data", "tool.wasm", "tmp"}
    parent_entries = {
        line.split()[-1] for line in out.splitlines() if line.startswith("parent-of-root")
    }
    assert parent_entries == root_entries


def test_out_of_fuel_is_a_deterministic_failure(store, tmp_path: Path, guest) -> None:
    root = store.put(_inputs(tmp_path, guest("spin"))).digest
    limits = WasmLimits(fuel=2_000_000)
    results = [_run(store, root, limits=limits)[1] for _ in range(2)]
    for r in results:
        assert r.exit_code == EXIT_TRAP
        assert _text(store, r.stderr_digest) == "kiln: out of fuel after 2000000 units\n"
    assert results[0].stderr_digest == results[1].stderr_digest


def test_memory_limit_is_a_deterministic_failure(store, tmp_path: Path, guest) -> None:
    root = store.put(_inputs(tmp_path, guest("hog"))).digest
    limits = WasmLimits(memory_mib=32)
    first = _run(store, root, limits=limits)[1]
    again = _run(store, root, limits=limits)[1]
    assert first.exit_code == EXIT_TRAP
    assert _text(store, first.stderr_digest).startswith("kiln: memory limit of 32 MiB reached")
    assert (first.exit_code, first.stderr_digest) == (again.exit_code, again.stderr_digest)


def test_module_needing_more_memory_than_allowed_fails_clearly(store, tmp_path, guest) -> None:
    root = store.put(_inputs(tmp_path, guest("hog"))).digest
    result = _run(store, root, limits=WasmLimits(memory_mib=1))[1]
    assert result.exit_code == EXIT_TRAP
    assert "memory limit of 1 MiB reached" in _text(store, result.stderr_digest)


def test_wall_clock_timeout_is_transient(store, tmp_path: Path, guest) -> None:
    root = store.put(_inputs(tmp_path, guest("spin"))).digest
    with pytest.raises(TransientError, match="wall-clock timeout"):
        executor = WasmExecutor(local_context(store), timeout=0.3)
        _run(store, root, limits=WasmLimits(fuel=10**15), executor=executor)


def test_a_timeout_stops_only_its_own_run(store, tmp_path: Path, guest) -> None:
    """Executors share one engine whose epoch ticks for timeouts; a run
    without a timeout, beside a timed one, runs to its end (out of fuel)."""
    import threading

    root = store.put(_inputs(tmp_path, guest("spin"))).digest
    errors: list[Exception] = []

    def timed() -> None:
        try:
            _run(store, root, limits=WasmLimits(fuel=10**15),
                 executor=WasmExecutor(local_context(store), timeout=0.05))  # fmt: skip
        except TransientError as e:
            errors.append(e)

    thread = threading.Thread(target=timed)
    thread.start()
    result = _run(store, root, limits=WasmLimits(fuel=10**10))[1]  # about 0.5 s
    thread.join()
    assert len(errors) == 1 and "wall-clock timeout" in str(errors[0])
    assert result.exit_code == EXIT_TRAP
    assert "out of fuel" in _text(store, result.stderr_digest)


def test_limits_and_contract_version_are_in_the_key(store, observe_root) -> None:
    base = dict(argv=("tool.wasm",), input_root=observe_root)
    keys = {
        ActionSpec(**base, platform=WasmLimits().platform()).key(),
        ActionSpec(**base, platform=WasmLimits(fuel=5).platform()).key(),
        ActionSpec(**base, platform=WasmLimits(memory_mib=5).platform()).key(),
    }
    assert len(keys) == 3
    assert ("kiln-abi", ABI_VERSION) in WasmLimits().platform()


def test_host_os_and_cpu_do_not_enter_the_key(store, observe_root, monkeypatch) -> None:
    key, _ = _run(store, observe_root)
    monkeypatch.setattr(platform, "system", lambda: "Windows")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(platform, "processor", lambda: "Apple M9")
    monkeypatch.setattr("sys.platform", "darwin")
    key_elsewhere, _ = _run(store, observe_root)
    assert key_elsewhere == key


def test_compiled_modules_are_kept_per_cpu(store, monkeypatch) -> None:
    import kiln.exec.wasm

    executor = WasmExecutor(local_context(store))
    module = Digest.of_bytes(b"some module")
    here = executor._cache_path(module)
    kiln.exec.wasm.host_cpu.cache_clear()
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    try:
        assert executor._cache_path(module) != here  # one machine code per CPU
    finally:
        kiln.exec.wasm.host_cpu.cache_clear()


def test_a_compiled_module_this_engine_cannot_load_is_compiled_again(
    store, observe_root
) -> None:
    import wasmtime

    from kiln.exec.wasm import shared_engine

    shared_engine().modules.clear()
    _run(store, observe_root)
    (cached,) = (store.home / "wasm-modules").glob("*.cwasm")
    # What another CPU or engine build left in a shared store: machine code
    # this engine refuses (here: made without fuel metering).
    other = wasmtime.Engine(wasmtime.Config())
    foreign = wasmtime.Module(other, "(module)")
    cached.write_bytes(foreign.serialize())
    shared_engine().modules.clear()  # a new process
    executor = WasmExecutor(local_context(store))
    _, result = _run(store, observe_root, executor=executor)
    assert result.exit_code == 0 and executor.compiled == 1
    wasmtime.Module.deserialize_file(shared_engine().engine, str(cached))  # replaced


def test_compiled_module_is_cached_on_disk_and_shared_in_memory(store, observe_root) -> None:
    from kiln.exec.wasm import shared_engine

    shared_engine().modules.clear()  # as in a new process
    first = WasmExecutor(local_context(store))
    _run(store, observe_root, executor=first)
    assert first.compiled == 1
    shared_engine().modules.clear()  # a new process has only the disk cache
    second = WasmExecutor(local_context(store))
    _run(store, observe_root, executor=second)
    assert second.compiled == 0
    for cached in (store.home / "wasm-modules").glob("*.cwasm"):
        cached.unlink()
    third = WasmExecutor(local_context(store))  # another thread of the same process
    _run(store, observe_root, executor=third)
    assert third.compiled == 0  # the loaded module is shared, not read again


def test_missing_module_is_a_clear_error(store, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    root = store.put(tmp_path / "empty").digest
    with pytest.raises(TransientError, match="not a file in its input root"):
        _run(store, root)
