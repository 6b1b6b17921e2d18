"""Action cache and the cross-process "execute once" API."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kiln.model.action import ActionSpec
from kiln.model.digest import EMPTY, Digest
from kiln.model.reapi import ActionResult, OutputFile


def _result(store, content: bytes, exit_code: int = 0) -> ActionResult:
    d = store.cas.put_bytes(content)
    return ActionResult(
        output_files=[OutputFile(path="out", digest=d.to_proto())], exit_code=exit_code
    )


def _key(store, n: int = 0) -> Digest:
    return store.put_action(ActionSpec(argv=("tool", str(n)), input_root=EMPTY))


def test_record_and_lookup_with_metadata(store) -> None:
    key = _key(store)
    assert store.lookup(key) is None
    store.action_cache.record(key, _result(store, b"x"), executor="wasm", duration=1.5)
    hit = store.lookup(key)
    assert hit is not None
    assert hit.result.output_files[0].path == "out"
    assert (hit.executor, hit.duration, hit.producer) == ("wasm", 1.5, store.store_id)
    assert hit.created > 0


def test_failures_are_never_cached(store) -> None:
    with pytest.raises(ValueError, match="never cached"):
        store.action_cache.record(_key(store), _result(store, b"x", 1), executor="t", duration=0)


def test_entry_whose_outputs_vanished_is_a_miss(store) -> None:
    key = _key(store)
    result = _result(store, b"will vanish")
    store.action_cache.record(key, result, executor="t", duration=0)
    store.cas.path(Digest.from_proto(result.output_files[0].digest)).unlink()
    assert store.lookup(key) is None


def test_execute_once_memoizes_and_does_not_cache_failures(store) -> None:
    key = _key(store)
    calls = []

    def run() -> tuple[ActionResult, str]:
        calls.append(1)
        return _result(store, b"ok"), "test"

    assert not store.execute_once(key, run).cached
    assert store.execute_once(key, run).cached
    assert len(calls) == 1

    failing = _key(store, 1)
    fails = []

    def fail() -> tuple[ActionResult, str]:
        fails.append(1)
        return _result(store, b"", exit_code=2), "test"

    assert store.execute_once(failing, fail).result.exit_code == 2
    assert store.execute_once(failing, fail).result.exit_code == 2
    assert len(fails) == 2


def test_action_key_normalizes_spec() -> None:
    a = ActionSpec(
        argv=["cc", "-c"], input_root=EMPTY, env={"B": "2", "A": "1"}, outputs=["o", "./a"]
    )
    b = ActionSpec(
        argv=("cc", "-c"),
        input_root=EMPTY,
        env=[("A", "1"), ("B", "2")],
        outputs=["a", "o"],
        description="differs but is not part of the key",
    )
    assert a == b and a.key() == b.key()
    assert ActionSpec(argv=("cc", "-c", "x"), input_root=EMPTY).key() != a.key()
    with pytest.raises(TypeError, match="not one string"):
        ActionSpec(argv="cc -c", input_root=EMPTY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inside the action"):
        ActionSpec(argv=("cc",), input_root=EMPTY, outputs=["../escape"])


WORKER = textwrap.dedent(
    """
    import sys, time
    from kiln.store import Store
    from kiln.model.digest import Digest
    from kiln.model.reapi import ActionResult, OutputFile

    home, key, counter = sys.argv[1], Digest.parse(sys.argv[2]), sys.argv[3]
    with Store(home) as store:
        def run():
            with open(counter, "a") as f:
                f.write("ran\\n")
            time.sleep(0.5)
            d = store.cas.put_bytes(b"the one result")
            return ActionResult(output_files=[OutputFile(path="o", digest=d.to_proto())]), "t"
        ex = store.execute_once(key, run, timeout=60)
        print(ex.cached, ex.waited, ex.result.output_files[0].digest.hash)
    """
)


def test_processes_sharing_a_store_execute_a_key_once(store, home: Path, tmp_path: Path) -> None:
    key = _key(store)
    counter = tmp_path / "counter"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home), str(key), str(counter)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert counter.read_text() == "ran\n"
    assert len({o[2] for o in outputs}) == 1
    assert sum(o[0] == "False" for o in outputs) == 1


async def _async_run(store, key):
    async def execute():
        return _result(store, b"async"), "t"

    return await store.execute_once_async(key, execute)


def test_execute_once_async(store) -> None:
    import asyncio

    key = _key(store)
    assert not asyncio.run(_async_run(store, key)).cached
    assert asyncio.run(_async_run(store, key)).cached
