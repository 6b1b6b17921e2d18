"""The second engine: the same wasm actions under Node.js (V8) with Kiln's
virtual WASI ported to JavaScript must give the same results, digest for
digest, as under Wasmtime."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import wasmtime

from kiln.engine.check import check_engines, compare_results
from kiln.errors import KilnError
from kiln.exec import wasm_calls
from kiln.exec.base import TransientError
from kiln.exec.kinds import local_context
from kiln.exec.node import NodeWasmExecutor, find_node
from kiln.exec.wasm import EXIT_TRAP, WasmExecutor, WasmLimits
from kiln.exec.wasm_calls import call_key
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2

pytestmark = pytest.mark.skipif(find_node() is None, reason="Node.js is not installed")


def _action(store, tmp_path: Path, module: Path, outputs=("out",)):
    root = tmp_path / "in"
    (root / "data" / "sub").mkdir(parents=True)
    shutil.copy(module, root / "tool.wasm")
    (root / "data" / "a.txt").write_text("a\n")
    (root / "data" / "c.bin").write_bytes(bytes(range(256)) * 3)
    (root / "data" / "sub" / "x").write_text("x")
    (root / "data" / "ln").symlink_to("a.txt")
    spec = ActionSpec(
        argv=("tool.wasm", "one", "two words"),
        input_root=store.put(root).digest,
        env={"LANG": "C.UTF-8", "ZED": "z"},
        outputs=outputs,
        platform=WasmLimits().platform(),
    )
    key = store.put_action(spec)
    return key, *spec.action()


def _both(store, key, action, command):
    first = WasmExecutor(local_context(store)).execute(key, action, command)
    second = NodeWasmExecutor(local_context(store)).execute(key, action, command)
    return first, second


def _text(store, digest) -> str:
    return store.cas.get_bytes(Digest.from_proto(digest)).decode()


@pytest.mark.parametrize("name", ["observe", "fsops", "escape"])
def test_engines_agree_digest_for_digest(store, tmp_path: Path, guest, name: str) -> None:
    key, action, command = _action(store, tmp_path, guest(name))
    wasmtime, node = _both(store, key, action, command)
    assert compare_results(store, wasmtime, node) == []
    for result in (wasmtime, node):
        result.ClearField("execution_metadata")
    assert wasmtime == node  # the very same ActionResult message


def test_the_comparison_exercises_the_file_system(store, tmp_path: Path, guest) -> None:
    """The fsops guest really did what the agreement test relies on."""
    key, action, command = _action(store, tmp_path, guest("fsops"))
    _, node = _both(store, key, action, command)
    out = _text(store, node.stdout_digest)
    assert node.exit_code == 3
    for expected in (
        "mkdir out: ok",
        "mkdir in the inputs: Read-only file system",
        "pread: mid, size 103",
        "after truncate: 80",
        "exclusive create of an existing file: File exists",
        "readlink: 8 ../a.txt",
        "through the link: first line",
        "rmdir non-empty: Directory not empty",
        "slept 1500001000 ns (virtual)",
        "realtime 946684800",
    ):
        assert expected in out
    assert "  out/sub/moved.txt type=" in out
    assert _text(store, node.stderr_digest) == "a line on stderr\n"
    assert [d.path for d in node.output_directories] == ["out"]


def test_a_trap_agrees_apart_from_the_engines_wording(store, tmp_path: Path, guest) -> None:
    key, action, command = _action(store, tmp_path, guest("trap"))
    wasmtime, node = _both(store, key, action, command)
    assert wasmtime.exit_code == node.exit_code == EXIT_TRAP
    assert _text(store, node.stderr_digest).startswith("about to trap\nkiln: trap: ")
    assert wasmtime.stderr_digest != node.stderr_digest  # each engine words the trap its way
    assert compare_results(store, wasmtime, node) == []


def test_a_real_difference_is_reported(store, tmp_path: Path, guest) -> None:
    """compare_results can fail: results of two different actions differ."""
    key, action, command = _action(store, tmp_path, guest("observe"))
    first = WasmExecutor(local_context(store)).execute(key, action, command)
    command.arguments.append("extra")
    second = NodeWasmExecutor(local_context(store)).execute(key, action, command)
    whats = {d.what for d in compare_results(store, first, second)}
    assert whats == {"stdout", "output out/report.txt"}


def test_check_engines_uses_the_cached_wasmtime_result(store, tmp_path: Path, guest) -> None:
    key, _, _ = _action(store, tmp_path, guest("observe"))
    first = check_engines(store, key)
    assert first.identical and not first.reference_cached
    again = check_engines(store, key)
    assert again.identical and again.reference_cached


def test_kiln_check_command(kiln, tmp_path: Path, guest, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(guest("observe"), tmp_path / "tool.wasm")
    ran = kiln("wasm", "run", "--json", "--out", "out", "tool.wasm", "--", "hello", check=True)
    key = json.loads(ran.stdout)["key"]
    checked = kiln("check", "--engine", "node", "--json", key, check=True)
    [report] = json.loads(checked.stdout)
    assert report["identical"] and report["reference_cached"]
    assert report["key"] == key
    plain = kiln("check", "--engine", "node", key, check=True)
    assert "identical under wasmtime and node" in plain.stdout


def test_kiln_check_refuses_what_is_not_an_action(kiln, store) -> None:
    blob = store.cas.put_bytes(b"not an action")
    missing = kiln("check", "--engine", "node", "0" * 64 + "/5")
    assert missing.returncode == 3 and "no action" in missing.stderr
    wrong = kiln("check", "--engine", "node", str(blob))
    assert wrong.returncode == 2 and "is not an action" in wrong.stderr
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_out_of_fuel_is_not_comparable(store, tmp_path: Path, guest) -> None:
    from kiln.errors import KilnError

    root = tmp_path / "spin"
    root.mkdir()
    shutil.copy(guest("spin"), root / "tool.wasm")
    spec = ActionSpec(
        argv=("tool.wasm",),
        input_root=store.put(root).digest,
        platform=WasmLimits(fuel=100_000).platform(),
    )
    key = store.put_action(spec)
    with pytest.raises(KilnError, match="ran out of fuel, memory or disk"):
        check_engines(store, key)


# ------------------------------------------------------------ memoized calls
# The ``kiln`` import module under Node: the caller and callee guests of
# test_wasm_calls.py, and callprobe.wat (errnos, notes, seeds, a module the
# guest writes), each run under both engines and compared.

WAT_GUESTS = Path(__file__).parent / "guests"
ABSENT = Digest.of_bytes(b"a module nobody stored")
# A called module that catches an exception (try_table): V8 before 13 lacks it.
CATCHING_CALLEE = """(module
  (import "kiln" "output_write" (func $out (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "caught")
  (tag $e)
  (func (export "run")
    (block $caught (try_table (catch $e $caught) (throw $e)) unreachable)
    (drop (call $out (i32.const 0) (i32.const 6)))))
"""


@pytest.fixture
def calls_root(tmp_path: Path) -> Path:
    root = tmp_path / "calls"
    root.mkdir()
    for name, wasm_name in (("caller", "caller"), ("callee", "callee"), ("callprobe", "probe")):
        wat = (WAT_GUESTS / f"{name}.wat").read_text()
        (root / f"{wasm_name}.wasm").write_bytes(wasmtime.wat2wasm(wat))
    (root / "junk.wasm").write_bytes(b"not wasm")
    (root / "catching.wasm").write_bytes(wasmtime.wat2wasm(CATCHING_CALLEE))
    return root


def _calls_action(store, root: Path, *argv: str):
    spec = ActionSpec(
        argv=argv, input_root=store.put(root).digest, platform=WasmLimits().platform()
    )
    key = store.put_action(spec)
    return key, *spec.action()


def _agree(store, root: Path, *argv: str) -> re_pb2.ActionResult:
    """Run under both engines (Wasmtime answering its calls afresh); the
    very same result, apart from the metadata; Node's result."""
    key, action, command = _calls_action(store, root, *argv)
    wasm_calls.MEMO.clear()
    wasmtime_result, node = _both(store, key, action, command)
    assert compare_results(store, wasmtime_result, node) == []
    for result in (wasmtime_result, node):
        result.ClearField("execution_metadata")
    assert wasmtime_result == node
    return node


def _digest(root: Path, name: str) -> Digest:
    return Digest.of_bytes((root / name).read_bytes())


@pytest.mark.parametrize(
    ("args", "stdout"),
    [
        (("run", "abc", "hello", "xyz"), "0:ABC\n0:HELLO\n0:XYZ\n"),
        (("run", "trap", "exit", "ok", "same", "same"), "4:\n3:\n0:OK\n0:SAME\n0:SAME\n"),
        (("nest", "digest:{callee}"), "0:NESTED\n"),  # a call that makes a call
        (("nest", "/callee.wasm"), "4:\n"),  # a call sees no input files: ENOENT, it traps
        (("@digest:{callee}", "run", "by digest"), "0:BY DIGEST\n"),
        (("nothing", "x"), "4:\n"),  # no such export
        (("@/junk.wasm", "run", "x"), "4:\n"),  # not WebAssembly
        (("@/absent.wasm", "run", "x"), "E44\n"),
        (("@digest:xyz", "run", "x"), "E28\n"),
        (("@/", "run", "x"), "E28\n"),
    ],
)
def test_calls_agree_across_engines(store, calls_root: Path, args, stdout: str) -> None:
    callee = _digest(calls_root, "callee.wasm")
    args = tuple(a.format(callee=callee) for a in args)
    node = _agree(store, calls_root, "caller.wasm", *args)
    assert node.exit_code == 0
    assert _text(store, node.stdout_digest) == stdout


def _first_random_bytes(module: Digest, export: str, data: bytes, n: int = 16) -> str:
    """What random_get gives a call first, computed here from its key."""
    key = call_key(module, export, Digest.of_bytes(data), WasmLimits())
    seed = hashlib.sha256(b"kiln-random\0" + bytes.fromhex(key.hash)).digest()
    return hashlib.sha256(seed + (0).to_bytes(8, "little")).digest()[:n].hex()


def test_what_a_caller_and_a_callee_observe_agrees(store, calls_root: Path) -> None:
    probe = _digest(calls_root, "probe.wasm")
    lenient = f"digest: {probe.hash.upper()}/0{probe.size}\t"  # as Digest.parse takes it
    node = _agree(store, calls_root, "probe.wasm", lenient)
    out = _text(store, node.stdout_digest)
    random = _first_random_bytes(probe, "seeded", b"abc")
    seeded = (
        "wait=0\nstatus=0\n output=argv[0]=seeded\nargc=1\nenvc=0\n"
        f"random={random}\ncreate in /tmp=0\ncreate in /=69\ninput size=3\n"
        "input from 1=bc\ninput from 1000=0\n"
        " stdout=init\nseeded says hi\n stderr=seeded complains\n\n"
    )
    for expected in (
        "input_size=58\ninput_read=58\noutput_write=58\n",  # outside a call: ENOTSUP
        "wait bad handle=8\nread bad handle=8\nrelease bad handle=8\n",
        "empty export=28\nexport with NUL=28\nmodule not UTF-8=28\n",
        "handle out of memory=21\nmodule a folder=28\nhandle=2\n",  # EFAULT used handle 1
        "read before wait=28\nwait=0\nstatus=0\nsize=148\n",
        "stream 3=28\nstream 2**32-1=28\nshort read=0\ncopied=5\n",
        "wait again=0\nrelease=0\nwait released=8\n",
        f"seeded: {seeded}seeded: {seeded}",  # by path, then by digest: the same key
        "exits: wait=0\nstatus=7\n output= stdout=init\nbye\n stderr=\n",
        "with_param: wait=0\nstatus=134\n output= stdout= stderr=kiln: the called "
        "function 'with_param' must take no parameters and return nothing\n",
        "with_result: wait=0\nstatus=134\n output= stdout= stderr=kiln: the called "
        "function 'with_result' must take no parameters and return nothing\n",
        "stderr=kiln: module exports no function 'memory' to call\n",
        'stderr=kiln: module exports no function "it\'s" to call\n',
        "stderr=kiln: module exports no function 'a\\nb' to call\n",
        "stderr=kiln: module exports no function 'été' to call\n",
        # call: all of it at once; cut short; with stdout; a trap; ENOENT; EFAULT
        "call=0\nstatus=0\nsize=1\nhandle=0\noutput=X\n"
        "call=0\nstatus=0\nsize=7\nhandle=13\noutput=WR\nrest=WRITTEN stdout=\n",
        "call=0\nstatus=0\nsize=148\nhandle=14\noutput=argv[0]=seeded\n",
        "seeded says hi\n\ncall=0\nstatus=134\nsize=0\nhandle=15\noutput=\nrest= stdout=\n"
        "call=28\ncall=21\nhandle=17\n",
        "start written=0\nemptied=0\nwritten status=0\nwritten output=WRITTEN\n"
        "empty module status=134\n",
        "open calls=1024\none more=33\nafter a release=0\n",
    ):
        assert expected in out


def test_the_call_key_seeds_the_callee(store, calls_root: Path) -> None:
    """The limits are in a call's key: Node given other limits than
    Wasmtime gives its callee other random bytes (so the comparison can fail)."""
    key, action, command = _calls_action(store, calls_root, "probe.wasm")
    wasmtime_result = WasmExecutor(local_context(store)).execute(key, action, command)
    for prop in action.platform.properties:
        if prop.name == "fuel":
            prop.value = str(int(prop.value) + 1)
    node = NodeWasmExecutor(local_context(store)).execute(key, action, command)
    assert [d.what for d in compare_results(store, wasmtime_result, node)] == ["stdout"]
    probe = _digest(calls_root, "probe.wasm")
    assert f"random={_first_random_bytes(probe, 'seeded', b'abc')}" not in _text(
        store, node.stdout_digest
    )


def test_a_called_digest_whose_blob_is_absent_is_an_error(store, calls_root: Path) -> None:
    key, action, command = _calls_action(
        store, calls_root, "caller.wasm", f"@digest:{ABSENT}", "run", "x"
    )
    node = NodeWasmExecutor(local_context(store))
    with pytest.raises(TransientError, match=f"module blob {ABSENT} is not in the store"):
        node.execute(key, action, command)


def test_a_called_module_node_cannot_compile_is_refused(store, calls_root: Path) -> None:
    key, action, command = _calls_action(
        store, calls_root, "caller.wasm", "@/catching.wasm", "run", "x"
    )
    try:
        result = NodeWasmExecutor(local_context(store)).execute(key, action, command)
    except KilnError as e:  # a Node.js without exnref exceptions (before V8 13)
        assert (
            "cannot compile the called module " + str(_digest(calls_root, "catching.wasm"))
            in e.message
        )
        assert "the module uses exceptions" in e.message
    else:  # a Node.js that has them agrees with Wasmtime
        assert _text(store, result.stdout_digest) == "0:caught\n"


def test_kiln_check_compares_a_step_that_makes_calls(store, calls_root: Path) -> None:
    callee = _digest(calls_root, "callee.wasm")
    key, _, _ = _calls_action(store, calls_root, "caller.wasm", "nest", f"digest:{callee}")
    assert check_engines(store, key).identical


def test_a_call_that_reached_a_limit_is_not_comparable(store, calls_root: Path) -> None:
    """The call stopped at Wasmtime's memory limit and its caller went on:
    under Node, without that limit, the call would have returned."""
    grower = '(module (memory 1) (func (export "grow")'
    grower += " (if (i32.eq (memory.grow (i32.const 32)) (i32.const -1)) (then unreachable))))"
    (calls_root / "grower.wasm").write_bytes(wasmtime.wat2wasm(grower))
    spec = ActionSpec(
        argv=("caller.wasm", "@/grower.wasm", "grow", "x"),
        input_root=store.put(calls_root).digest,
        platform=WasmLimits(memory_mib=1).platform(),
    )
    key = store.put_action(spec)
    with pytest.raises(KilnError, match="or a call it made did"):
        check_engines(store, key)
    ran = WasmExecutor(local_context(store)).execute(key, *spec.action())
    assert (ran.exit_code, _text(store, ran.stdout_digest)) == (0, "4:\n")  # the caller went on
    node = NodeWasmExecutor(local_context(store)).execute(key, *spec.action())
    assert _text(store, node.stdout_digest) == "0:\n"  # what check would otherwise have compared


def test_a_step_that_requests_steps_is_not_comparable(store, tmp_path: Path, guest) -> None:
    """Its requests need the build that ran it: Node refuses, never compares."""
    root = tmp_path / "requests"
    root.mkdir()
    (root / "requester.wasm").write_bytes(guest("requester").read_bytes())
    spec = ActionSpec(
        argv=("requester.wasm", '{"executor": "wasm", "argv": ["x"]}'),
        input_root=store.put(root).digest,
        platform=WasmLimits().platform(),
    )
    key = store.put_action(spec)
    with pytest.raises(KilnError, match="asks its build for steps"):
        NodeWasmExecutor(local_context(store)).execute(key, *spec.action())
