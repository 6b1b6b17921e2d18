"""Attacks through what a step leaves at its outputs: symlinks, folders and
special files that try to make Kiln read a host file into the store, or
write and delete on the host while copying outputs back.

Each test performs the attack; none of the host's bytes may reach the store
and no host file outside the step's own folder may change."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import KILN
from kiln.errors import KilnError
from kiln.exec.kinds import local_context
from kiln.exec.native import NativeExecutor
from kiln.model.digest import Digest
from native_helpers import needs_bubblewrap, run_native

UP = "/kiln/inputs" + "/.." * 12  # far above any host folder


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file (and folder) no step declared."""
    folder = tmp_path / "host-secrets"
    folder.mkdir()
    (folder / "token").write_text("s3cr3t-host-token\n")
    return folder


def _assert_not_stored(store, data: bytes) -> None:
    assert not store.cas.has(Digest.of_bytes(data)), "a host file reached the store"


@needs_bubblewrap
@pytest.mark.parametrize(
    "link",
    [
        "{up}{secret}/token",  # through the inputs' mount, upwards
        "/kiln/inputs/../..{secret}/token",
        "/kiln/inputs/./sub/../../../..{secret}/token",
        "/kiln/inputs//{secret}/token",
    ],
)
def test_an_output_link_cannot_read_a_host_file(store, tmp_path, secret, link) -> None:
    target = link.format(up=UP, secret=secret)
    with pytest.raises(KilnError, match=r"output 'stolen.txt'.*refused"):
        run_native(store, tmp_path, f"ln -s '{target}' stolen.txt", tools=("sh", "ln"),
                   outputs=("stolen.txt",))  # fmt: skip
    _assert_not_stored(store, b"s3cr3t-host-token\n")


@needs_bubblewrap
def test_kilns_own_environment_cannot_be_read(store, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KILN_TEST_TOKEN", "leaked-through-proc")
    with pytest.raises(KilnError, match="refused"):
        run_native(store, tmp_path, f"ln -s {UP}/proc/self/environ env.txt",
                   tools=("sh", "ln"), outputs=("env.txt",))  # fmt: skip
    with pytest.raises(KilnError, match="refused"):
        run_native(store, tmp_path, f"mkdir out; ln -s {UP}/proc/self out/proc",
                   tools=("sh", "ln", "mkdir"), outputs=("out",))  # fmt: skip


@needs_bubblewrap
def test_a_linked_host_folder_inside_an_output_folder_is_not_copied(
    store, tmp_path, secret
) -> None:
    with pytest.raises(KilnError, match=r"output 'out'.*refused"):
        run_native(store, tmp_path, f"mkdir -p out/deep; ln -s {UP}{secret} out/deep/host",
                   tools=("sh", "ln", "mkdir"), outputs=("out",))  # fmt: skip
    _assert_not_stored(store, b"s3cr3t-host-token\n")


@needs_bubblewrap
def test_links_a_step_makes_are_kept_as_links_never_followed(store, tmp_path, secret) -> None:
    from kiln.model.reapi import re_pb2

    result, _, _ = run_native(
        store, tmp_path,
        f"mkdir out; ln -s {secret} out/abs; ln -s ../../../../../..{secret}/token out/rel; "
        f"ln -s {secret}/token top.txt",
        tools=("sh", "ln", "mkdir"), outputs=("out", "top.txt"),
    )  # fmt: skip
    assert result.exit_code == 0
    assert [(s.path, s.target) for s in result.output_symlinks] == [("top.txt", f"{secret}/token")]
    [folder] = result.output_directories
    tree = re_pb2.Tree.FromString(store.cas.get_bytes(Digest.from_proto(folder.tree_digest)))
    assert {(s.name, s.target) for s in tree.root.symlinks} == {
        ("abs", str(secret)),
        ("rel", f"../../../../../..{secret}/token"),
    }
    assert not tree.root.files and not tree.root.directories
    _assert_not_stored(store, b"s3cr3t-host-token\n")


@needs_bubblewrap
@pytest.mark.parametrize("parent_link", [f"{UP}{{secret}}", "{secret}", "/etc"])
def test_a_linked_parent_folder_of_an_output_is_refused(
    store, tmp_path, secret, parent_link
) -> None:
    target = parent_link.format(secret=secret)
    with pytest.raises(KilnError, match=r"output 'out/token'.*'out' is not a folder"):
        run_native(store, tmp_path, f"rmdir out; ln -s {target} out",
                   tools=("sh", "ln", "rmdir"), outputs=("out/token",))  # fmt: skip
    _assert_not_stored(store, b"s3cr3t-host-token\n")


@needs_bubblewrap
def test_special_files_at_an_output_are_refused_without_hanging(store, tmp_path) -> None:
    with pytest.raises(KilnError, match=r"output 'pipe'.*FIFO"):
        run_native(store, tmp_path, "mkfifo pipe", tools=("sh", "mkfifo"), outputs=("pipe",))


@needs_bubblewrap
def test_links_to_inputs_still_give_the_inputs_content(store, tmp_path) -> None:
    result, _, _ = run_native(
        store, tmp_path, "ln -s /kiln/inputs/sub/../input.txt same.txt",
        tools=("sh", "ln"), outputs=("input.txt", "same.txt"),
    )  # fmt: skip
    content = Digest.of_bytes(b"an input\n")
    assert {f.path: Digest.from_proto(f.digest) for f in result.output_files} == {
        "input.txt": content,
        "same.txt": content,
    }


# ------------------------------------------------------------ kiln wasm run


def _wasm_run(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KILN, "wasm", "run", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "KILN_HOME": str(home)}, timeout=120,
    )  # fmt: skip


@pytest.fixture(params=["relative", "absolute"])
def victim(request, tmp_path: Path):
    """A host folder that a guest must not touch, and the link text that
    names it both in the guest (where ``..`` stops at the root and /tmp is
    writable) and on the host: ``../tmp/victim`` from the working folder, or
    an absolute path under the host's /tmp."""
    if request.param == "relative":
        folder, link = tmp_path / "tmp" / "victim", "../tmp/victim"
    else:
        folder = Path(tempfile.mkdtemp(prefix="kiln-victim-", dir="/tmp"))
        request.addfinalizer(lambda: shutil.rmtree(folder))
        link = str(folder)
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "keep.txt").write_text("keep me\n")
    return folder, link


def _host_state(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _workspace(tmp_path: Path, guest) -> Path:
    cwd = tmp_path / "ws"
    cwd.mkdir()
    (cwd / "tool.wasm").write_bytes(guest("fsscript").read_bytes())
    return cwd


@pytest.mark.parametrize(
    "outputs",
    [("a", "a/sub"), ("a/sub", "a"), ("a", "a/sub", "a/keep.txt")],
)
def test_wasm_run_never_writes_through_a_link_the_guest_made(
    home, tmp_path, guest, victim, outputs
) -> None:
    folder, link = victim
    cwd = _workspace(tmp_path, guest)
    before = _host_state(folder)
    made = "tmp/" + folder.name
    script = ["mkdir", made, "mkdir", f"{made}/sub", "write", f"{made}/sub/new.txt", "x",
              "write", f"{made}/sub/keep.txt", "overwritten", "rm", "a",
              "symlink", link, "a"]  # fmt: skip
    args = [a for out in outputs for a in ("--out", out)]
    proc = _wasm_run(home, cwd, "tool.wasm", *args, "--", *script)
    assert _host_state(folder) == before, proc.stderr
    assert proc.returncode != 0 and "'a' is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wasm_run_keeps_a_guest_link_as_a_link(home, tmp_path, guest, victim) -> None:
    folder, link = victim
    cwd = _workspace(tmp_path, guest)
    proc = _wasm_run(home, cwd, "tool.wasm", "--out", "a", "--", "symlink", link, "a")
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(cwd / "a") == link
    assert _host_state(folder) == {"sub/keep.txt": b"keep me\n"}


@pytest.mark.slow
@needs_bubblewrap
def test_folders_nested_thousands_deep_are_refused_or_cleaned_up(store, tmp_path) -> None:
    deep = "d/" * 3000
    nest = f"mkdir -p out/{'d/' * 300} && mkdir -p stray/{deep}"
    executor = NativeExecutor(local_context(store))
    with pytest.raises(KilnError, match="nests more than 256 folders deep"):
        run_native(store, tmp_path, nest, tools=("sh", "mkdir"), outputs=("out",),
                   executor=executor)  # fmt: skip
    result, _, err = run_native(store, tmp_path, nest, tools=("sh", "mkdir"),
                                outputs=(), executor=executor)  # fmt: skip
    assert result.exit_code == 0 and not result.output_directories, err[-300:]
    shallow, _, _ = run_native(store, tmp_path, f"mkdir -p out/{'d/' * 200}", tools=("sh", "mkdir"),
                               outputs=("out",), executor=executor)  # fmt: skip
    assert len(shallow.output_directories) == 1
