"""The `kiln` command, run as a real process."""

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from conftest import KILN, snapshot
from kiln import __version__


def _one_line_error(proc, fragment: str, code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kiln: error: ") and fragment in lines[0]


def test_version(kiln) -> None:
    proc = kiln("--version", check=True)
    assert __version__ in proc.stdout


def test_put_prints_hex_slash_size_and_get_round_trips(
    kiln, sample_tree: Path, tmp_path: Path
) -> None:
    out = kiln("store", "put", str(sample_tree), check=True).stdout.strip()
    h, size = out.split("/")
    assert len(h) == 64 and size.isdigit()
    kiln("store", "get", out, str(tmp_path / "restored"), check=True)
    assert snapshot(tmp_path / "restored") == snapshot(sample_tree)
    # Same content moved elsewhere: same digest.
    moved = tmp_path / "moved" / "x"
    shutil.copytree(sample_tree, moved, symlinks=True)
    assert kiln("store", "put", str(moved), check=True).stdout.strip() == out


def test_json_reports(kiln, sample_tree: Path) -> None:
    put = json.loads(kiln("store", "put", "--json", str(sample_tree), check=True).stdout)
    assert put["kind"] == "tree" and put["digest"] == f"{put['hash']}/{put['size']}"
    stats = json.loads(kiln("store", "stats", "--json", check=True).stdout)
    assert stats["blobs"] == 4 + 4  # 4 files; root, src, lib and one empty Directory
    assert json.loads(kiln("store", "verify", "--json", check=True).stdout)["ok"] is True
    gc = json.loads(kiln("gc", "--dry-run", "--json", check=True).stdout)
    assert gc["dry_run"] and gc["deleted_blobs"] == 8


def test_roots_and_gc(kiln, sample_tree: Path) -> None:
    d = kiln("store", "put", "--root", "keep", str(sample_tree), check=True).stdout.strip()
    listed = json.loads(kiln("root", "list", "--json", check=True).stdout)
    assert listed[0]["name"] == "keep" and listed[0]["digest"] == d
    assert "deleted 0 blobs" in kiln("gc", check=True).stdout
    kiln("root", "rm", "keep", check=True)
    assert "deleted 8 blobs" in kiln("gc", check=True).stdout
    _one_line_error(kiln("root", "rm", "keep"), "no root named", 3)


def test_diff(kiln, sample_tree: Path) -> None:
    a = kiln("store", "put", str(sample_tree), check=True).stdout.strip()
    (sample_tree / "README").write_text("new\n")
    b = kiln("store", "put", str(sample_tree), check=True).stdout.strip()
    assert kiln("store", "diff", a, b, check=True).stdout.strip() == "~ README"


def test_missing_path(kiln, tmp_path: Path) -> None:
    _one_line_error(kiln("store", "put", str(tmp_path / "nope")), "no such file", 2)


def test_socket_in_tree(kiln, tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "t" / "sock"))
    try:
        _one_line_error(kiln("store", "put", str(tmp_path / "t")), "is a socket", 2)
    finally:
        s.close()


def test_device_file_argument(kiln) -> None:
    _one_line_error(kiln("store", "put", "/dev/null"), "character device", 2)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root + setpriv")
def test_unreadable_file() -> None:
    """Permissions bind only non-root users, so run kiln as nobody."""
    import subprocess
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="kiln-perm-"))
    try:
        base.chmod(0o755)
        tree, home = base / "t", base / "home"
        tree.mkdir()
        home.mkdir()
        home.chmod(0o777)
        (tree / "secret").write_text("x")
        (tree / "secret").chmod(0o000)
        proc = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                KILN,
                "store",
                "put",
                str(tree),
            ],
            capture_output=True,
            text=True,
            env={"KILN_HOME": str(home), "PATH": os.environ["PATH"]},
        )
        _one_line_error(proc, "secret: cannot read (Permission denied)", 2)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("digest", "fragment", "code"),
    [
        ("not-a-digest", "malformed digest", 2),
        ("a" * 64 + "/12", "is not in the store", 3),
        ("a" * 63 + "/12", "64 hex characters", 2),
    ],
)
def test_bad_digests(kiln, tmp_path: Path, digest: str, fragment: str, code: int) -> None:
    _one_line_error(kiln("store", "get", digest, str(tmp_path / "o")), fragment, code)


def test_bad_gc_size(kiln) -> None:
    proc = kiln("gc", "--max-size", "lots")
    assert proc.returncode == 2 and "not a size" in proc.stderr and "Traceback" not in proc.stderr


def test_unusable_store(tmp_path: Path) -> None:
    import subprocess

    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [KILN, "--store", str(blocker / "sub"), "store", "stats"], capture_output=True, text=True
    )
    _one_line_error(proc, "cannot be used", 4)


def test_help_lists_commands(kiln) -> None:
    out = kiln("--help", check=True).stdout
    for word in ("store", "gc", "root"):
        assert word in out


def test_help_summaries_are_the_commands_own() -> None:
    """`kiln --help` lists each command by the summary in the table of
    commands, which is the first sentence of the command's docstring."""
    import importlib

    from kiln.cli.app import COMMANDS

    for name, (module, function, summary) in COMMANDS.items():
        command = getattr(importlib.import_module(module), function)
        assert command.get_short_help_str(limit=1000) == summary, name


def test_help_loads_no_command_module() -> None:
    import subprocess
    import sys

    probe = (
        "import sys\nfrom kiln.cli.app import run\nrun(['--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('kiln.cli.')), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "build  " in proc.stdout and "Delete blobs and cache entries" in proc.stdout
    assert proc.stderr.strip() == "['kiln.cli.app']"


def test_a_known_hash_at_another_size_is_not_found(kiln, tmp_path: Path) -> None:
    """The store has the hash, but not at that size: not found (3), not corrupt."""
    (tmp_path / "f").write_bytes(b"some content\n")
    hash_hex, _ = kiln("store", "put", str(tmp_path / "f"), check=True).stdout.strip().split("/")
    for options in ((), ("--blob",)):
        proc = kiln("store", "get", *options, f"{hash_hex}/7", str(tmp_path / "o"))
        _one_line_error(proc, "is not in the store", 3)
        assert "corrupt" not in proc.stderr


def test_get_of_a_file_blob_as_tree_is_a_clear_error(kiln, tmp_path: Path) -> None:
    for content in (b"plain text that is not protobuf\n", b"\x0a\x03abc"):
        (tmp_path / "f").write_bytes(content)
        d = kiln("store", "put", str(tmp_path / "f"), check=True).stdout.strip()
        proc = kiln("store", "get", d, str(tmp_path / "o"))
        _one_line_error(proc, "is not a tree", 2)
        assert "--blob" in proc.stderr
        (tmp_path / "f").unlink()


@pytest.mark.parametrize(
    ("args", "fragment", "hint"),
    [
        (
            ("store", "put", "--bogus", "x"),
            "no such option '--bogus'",
            "see `kiln store put --help`",
        ),
        (("store", "get"), "missing argument", "see `kiln store get --help`"),
        (("store", "put", "--jsn", "x"), "no such option '--jsn'", "did you mean"),
        (("biuld",), "no command 'biuld'", "did you mean `kiln build`?"),
        (("gc", "--max-size", "lots"), "'lots' is not a size", "see `kiln gc --help`"),
    ],
)
def test_usage_errors_are_one_line_with_a_hint(kiln, args, fragment: str, hint: str) -> None:
    """click's own usage errors take kiln's form: `kiln: error: ... (hint: ...)`."""
    proc = kiln(*args)
    _one_line_error(proc, fragment, 2)
    assert f"(hint: {hint}" in proc.stderr and "Usage:" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("args", "fragment", "code"),
    [
        (("store", "put", "--json", "--bogus", "x"), "no such option '--bogus'", 2),
        (("store", "put", "--json", "/no/such/path"), "no such file or directory", 2),
        (("store", "get", "--json", "a" * 64 + "/12", "out"), "is not in the store", 3),
        (("-C", "/no/such/folder", "store", "stats", "--json"), "cannot enter the folder", 2),
        (("show", "--json"), "missing argument 'TARGET'", 2),
    ],
)
def test_json_errors_are_json(kiln, args, fragment: str, code: int) -> None:
    """With --json, a failed command still prints JSON on stdout (and the
    one-line error on stderr), with its own exit code."""
    proc = kiln(*args)
    assert proc.returncode == code, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False and fragment in report["error"]
    assert set(report) == {"ok", "error", "hint"}
    assert proc.stderr.startswith("kiln: error: ")


def test_dash_c_runs_as_if_started_in_the_folder(kiln, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("in sub\n")
    here = kiln("store", "put", str(tmp_path / "sub" / "f"), check=True).stdout
    assert kiln("-C", str(tmp_path), "-C", "sub", "store", "put", "f", check=True).stdout == here
    assert kiln(f"-C{tmp_path / 'sub'}", "store", "put", "f", check=True).stdout == here
