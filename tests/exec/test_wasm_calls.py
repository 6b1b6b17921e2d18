"""Memoized calls between WebAssembly modules (the ``kiln`` imports): what
runs and what is answered from the cache, deterministic fuel, traps and
exits as results, nesting, and the guest's mistakes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import wasmtime

from kiln.errors import KilnError
from kiln.exec import wasm_calls
from kiln.exec.base import TransientError
from kiln.exec.kinds import local_context
from kiln.exec.wasm import EXIT_TRAP, WasmExecutor, WasmLimits
from kiln.exec.wasm_calls import call_key, calls_of
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

GUESTS = Path(__file__).parent / "guests"


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    calls: list[dict]

    @property
    def ran(self) -> list[str]:
        return [c["export"] for c in self.calls if c["ran"]]


@pytest.fixture
def guests(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for name in ("caller", "callee"):
        (root / f"{name}.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / f"{name}.wat").read_text()))
    return root


def run(store, root: Path, *args: str, fuel: int = 10**9, memo: bool = False) -> Run:
    """Run the caller; without ``memo``, calls are answered by the store
    (as in a new process), not this process's memory."""
    if not memo:
        wasm_calls.MEMO.clear()
    spec = ActionSpec(
        argv=("caller.wasm", *args),
        input_root=store.put(root).digest,
        platform=WasmLimits(fuel=fuel).platform(),
    )
    key = store.put_action(spec)
    result = WasmExecutor(local_context(store)).execute(key, *spec.action())
    text = [
        store.cas.get_bytes(Digest.from_proto(d)).decode()
        for d in (result.stdout_digest, result.stderr_digest)
    ]
    return Run(result.exit_code, *text, calls_of(result))


def test_a_call_runs_once_then_is_answered_from_the_store(store, guests: Path) -> None:
    first = run(store, guests, "run", "abc", "hello", "xyz")
    assert (first.exit_code, first.stdout) == (0, "0:ABC\n0:HELLO\n0:XYZ\n")
    assert first.ran == ["run", "run", "run"]
    again = run(store, guests, "run", "abc", "hello", "xyz")
    assert again.stdout == first.stdout and again.ran == []
    edited = run(store, guests, "run", "abc", "hello!", "xyz")  # one item changed
    assert edited.stdout == "0:ABC\n0:HELLO!\n0:XYZ\n"
    assert [c["input"] for c in edited.calls if c["ran"]] == [str(Digest.of_bytes(b"hello!"))]
    warm = run(store, guests, "run", "abc", "hello", "xyz", memo=True)
    assert warm.stdout == first.stdout and warm.ran == []


def test_the_same_call_made_twice_at_once_runs_once(store, guests: Path) -> None:
    result = run(store, guests, "run", "same", "same", "same")
    assert result.stdout == "0:SAME\n" * 3
    assert len(result.ran) == 1


def test_a_trap_and_an_exit_are_results_that_are_cached(store, guests: Path) -> None:
    first = run(store, guests, "run", "trap", "exit", "ok")
    assert first.exit_code == 0
    assert first.stdout == f"{EXIT_TRAP % 10}:\n3:\n0:OK\n"
    assert len(first.ran) == 3
    again = run(store, guests, "run", "trap", "exit", "ok")
    assert again.stdout == first.stdout and again.ran == []
    assert [c["status"] for c in again.calls] == [EXIT_TRAP, 3, 0]


def test_running_out_of_fuel_happens_at_the_same_point_cached_or_not(store, guests: Path) -> None:
    # Each call consumes ~650,000 units (50 bytes); the caller has room for two.
    args = ("run", "a" * 50, "b" * 50, "c" * 50, "d" * 50)
    fuel = 1_500_000
    cold = run(store, guests, *args, fuel=fuel)
    assert cold.exit_code == EXIT_TRAP
    assert cold.stdout == "0:" + "A" * 50 + "\n0:" + "B" * 50 + "\n"
    assert cold.stderr == f"kiln: out of fuel after {fuel} units\n"
    # The three calls waited for ran, each under its own limit (the fourth,
    # started with them, ran too unless the guest ended first: cancelled).
    assert all(c["ran"] for c in cold.calls[:3])
    cached = run(store, guests, *args, fuel=fuel)
    assert not any(c["ran"] for c in cached.calls[:3])
    in_memory = run(store, guests, *args, fuel=fuel, memo=True)
    for other in (cached, in_memory):
        assert (other.exit_code, other.stdout, other.stderr) == (
            cold.exit_code, cold.stdout, cold.stderr,
        )  # fmt: skip
    # With more fuel, all four finish: the charge is what the calls consumed.
    enough = run(store, guests, *args, fuel=4 * 700_000)
    assert enough.exit_code == 0 and enough.stdout.count("\n") == 4


def test_the_fuel_charged_is_what_the_call_consumed(store, guests: Path) -> None:
    ran = run(store, guests, "run", "q" * 40)
    charged = ran.calls[0]["fuel"]
    assert 400_000 < charged < 700_000  # 40,000 loop iterations
    cached = run(store, guests, "run", "q" * 40)
    assert cached.calls[0]["fuel"] == charged and cached.ran == []


def test_calls_nest(store, guests: Path) -> None:
    callee = Digest.of_bytes((guests / "callee.wasm").read_bytes())
    result = run(store, guests, "nest", f"digest:{callee}")
    assert result.stdout == "0:NESTED\n"
    assert [(c["export"], c["depth"], c["ran"]) for c in result.calls] == [
        ("nest", 0, True),
        ("run", 1, True),
    ]
    # The outer call's fuel includes what it was charged for the inner one.
    assert result.calls[0]["fuel"] > result.calls[1]["fuel"]
    assert run(store, guests, "nest", f"digest:{callee}").ran == []


def test_a_missing_export_or_a_module_that_is_not_wasm_is_a_trapped_call(
    store, guests: Path
) -> None:
    (guests / "junk.wasm").write_bytes(b"not wasm")
    assert run(store, guests, "nothing", "x").stdout == f"{EXIT_TRAP % 10}:\n"
    assert run(store, guests, "@/junk.wasm", "run", "x").stdout == f"{EXIT_TRAP % 10}:\n"


def test_a_module_that_is_not_there_is_refused(store, guests: Path) -> None:
    assert run(store, guests, "@/absent.wasm", "run", "x").stdout == "E44\n"  # ENOENT
    assert run(store, guests, "@digest:xyz", "run", "x").stdout == "E28\n"  # EINVAL
    assert run(store, guests, "@/", "run", "x").stdout == "E28\n"  # a folder


def test_a_digest_whose_blob_is_not_in_the_store_is_not_a_result(store, guests: Path) -> None:
    # Whether a blob is in the store must not change what a step computes:
    # the step fails as an error (never cached), not with a different output.
    absent = Digest.of_bytes(b"a module nobody stored")
    with pytest.raises(TransientError, match="not in the store"):
        run(store, guests, f"@digest:{absent}", "run", "x")


def test_the_key_names_module_export_input_and_limits() -> None:
    module, data = Digest.of_bytes(b"m"), Digest.of_bytes(b"input")
    base = call_key(module, "run", data, WasmLimits())
    assert call_key(module, "run", data, WasmLimits()) == base
    others = [
        call_key(Digest.of_bytes(b"n"), "run", data, WasmLimits()),
        call_key(module, "walk", data, WasmLimits()),
        call_key(module, "run", Digest.of_bytes(b"other"), WasmLimits()),
        call_key(module, "run", data, WasmLimits(fuel=5)),
        call_key(module, "run", data, WasmLimits(memory_mib=5)),
        call_key(module, "run", data, WasmLimits(disk_mib=5)),
    ]
    assert len({base, *others}) == 7


def test_a_call_that_calls_itself_fails_the_step_clearly(store, guests: Path) -> None:
    # It would never end; whichever call closes the circle depends on timing,
    # so no result is made of it: the step fails with an error (never cached).
    callee = Digest.of_bytes((guests / "callee.wasm").read_bytes())
    with pytest.raises(KilnError, match="memoized calls form a cycle") as caught:
        run(store, guests, "loop", f"digest:{callee}")
    assert "loop of " in caught.value.message
