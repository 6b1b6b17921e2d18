"""kiln cc's compile cache, driven in-process with the real gcc and the
real native sandbox: hits, misses, what a hit must never hide, and what
runs directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.cc import stats
from kiln.cc.compiles import CompileCache
from kiln.cc.invocation import Exec, Invocation, Ran
from kiln.exec.native import bwrap_path
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.store.local import Store

pytestmark = pytest.mark.skipif(
    bwrap_path() is None or shutil.which("gcc") is None, reason="needs bubblewrap and gcc"
)

MAIN = '#include <stdio.h>\n#include "a.h"\nint main(void) { printf("%d\\n", A); return 0; }\n'


@pytest.fixture
def cache(store: Store):
    c = CompileCache(store)
    yield c
    c.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "inc").mkdir(parents=True)
    (root / "main.c").write_text(MAIN)
    (root / "inc" / "a.h").write_text("#define A 42\n")
    return root


def call(cache: CompileCache, cwd: Path, *args: str, env: dict[str, str] | None = None):
    environ = {"PATH": os.environ["PATH"], **(env or {})}
    return cache.handle(Invocation(["kiln-cc", *args], str(cwd), environ))


def compile_main(cache: CompileCache, cwd: Path, *extra: str):
    return call(cache, cwd, "gcc", *extra, "-Iinc", "-O2", "-c", "main.c", "-o", "main.o")


def counts(cache: CompileCache) -> dict:
    cache.stats.flush()
    return stats.load(cache.store)


def run_program(cwd: Path) -> str:
    subprocess.run(["gcc", "main.o", "-o", "main"], cwd=cwd, check=True)
    return subprocess.run([str(cwd / "main")], capture_output=True, text=True).stdout


def test_a_second_compile_is_a_hit_with_the_same_object(cache, project):
    assert compile_main(cache, project) == Ran(0)
    built = (project / "main.o").read_bytes()
    plain = project / "plain.o"
    subprocess.run(["gcc", "-Iinc", "-O2", "-c", "main.c", "-o", str(plain)], cwd=project,
                   check=True)  # fmt: skip
    assert built == plain.read_bytes()
    (project / "main.o").unlink()
    assert compile_main(cache, project) == Ran(0)
    assert (project / "main.o").read_bytes() == built
    assert counts(cache) == {"hits": 1, "misses": 1, "failed": 0, "listed": 1, "direct": {}}


def test_a_changed_header_is_a_miss(cache, project):
    compile_main(cache, project)
    (project / "inc" / "a.h").write_text("#define A 43\n")
    compile_main(cache, project)
    assert run_program(project) == "43\n"
    assert counts(cache)["misses"] == 2


def test_a_header_appearing_earlier_on_the_include_path_is_not_hidden_by_a_hit(cache, project):
    (project / "first").mkdir()
    assert compile_main(cache, project, "-Ifirst") == Ran(0)
    (project / "first" / "a.h").write_text("#define A 7\n")  # now read instead of inc/a.h
    assert compile_main(cache, project, "-Ifirst") == Ran(0)
    assert run_program(project) == "7\n"
    assert counts(cache)["hits"] == 0


def test_a_manifest_that_lists_too_few_headers_cannot_give_a_wrong_hit(cache, project):
    compile_main(cache, project)
    # Drop inc/a.h from every manifest, as a stale or tampered one would.
    keys = _manifest_keys(cache)
    assert keys
    for hit in (cache.store.action_cache.lookup(k) for k in keys):
        assert hit is not None
        body = json.loads(cache.store.cas.get_bytes(_digest_of(hit.result.output_files[0])))
        assert "inc/a.h" in body["project"]
    _rewrite_manifests(cache, lambda body: {**body, "project": [p for p in body["project"]
                                                                if p != "inc/a.h"]})  # fmt: skip
    (project / "inc" / "a.h").write_text("#define A 44\n")
    assert compile_main(cache, project) == Ran(0)
    assert run_program(project) == "44\n"
    assert counts(cache)["hits"] == 0


def test_a_sandbox_missing_a_header_fails_and_the_compiler_runs_directly(cache, project):
    """A manifest that leaves a header out: the sandboxed compile cannot see
    it, fails, and nothing is cached; the call runs the compiler directly."""
    compile_main(cache, project)
    (project / "main.o").unlink()
    (project / "inc" / "a.h").write_text("#define A 45\n")
    _rewrite_manifests(cache, lambda body: {**body, "project": ["main.c"]})
    # The next call discovers the headers again (the manifest's key misses).
    assert compile_main(cache, project) == Ran(0)
    assert run_program(project) == "45\n"


def test_compile_errors_pass_through_unchanged_and_are_never_cached(cache, project):
    (project / "main.c").write_text("int main(void) { return nope; }\n")
    reply = compile_main(cache, project)
    assert isinstance(reply, Exec)  # the compiler itself reports the error
    direct = subprocess.run(reply.argv, cwd=project, capture_output=True)
    plain = subprocess.run(["gcc", "-Iinc", "-O2", "-c", "main.c", "-o", "x.o"], cwd=project,
                           capture_output=True)  # fmt: skip
    assert direct.returncode == plain.returncode != 0
    assert direct.stderr == plain.stderr
    assert counts(cache)["failed"] == 1
    assert not cache.store.conn.execute(
        "SELECT 1 FROM action_cache WHERE executor = 'native'"
    ).fetchall()


def test_warnings_are_replayed_on_a_hit(cache, project):
    (project / "main.c").write_text(MAIN + "int f(int x) { int unused; return x; }\n")
    first = compile_main(cache, project, "-Wall")
    second = compile_main(cache, project, "-Wall")
    assert isinstance(first, Ran) and b"unused" in first.stderr
    assert second == first
    assert counts(cache)["hits"] == 1


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["gcc", "main.o", "-o", "main"], "linking"),
        (["gcc", "-E", "main.c"], "-E"),
        (["gcc", "-c", "main.c", "other.c"], "several source files"),
        (["gcc", "-c", "-x", "c", "-"], "stdin"),
        (["gcc", "@args.txt"], "response file"),
    ],
)
def test_what_is_not_one_compile_runs_directly(cache, project, args, reason):
    reply = call(cache, project, *args)
    assert isinstance(reply, Exec)
    assert reply.argv[0] == shutil.which("gcc")
    assert reply.argv[1:] == args[1:]
    assert any(reason in r for r in counts(cache)["direct"])


def test_an_unknown_compiler_and_a_missing_one(cache, project, tmp_path):
    tool = tmp_path / "bin" / "mycomp"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    assert isinstance(call(cache, project, str(tool), "-c", "main.c"), Exec)
    missing = call(cache, project, "no-such-cc", "-c", "main.c")
    assert isinstance(missing, Ran) and missing.exit_code == 127
    assert b"no-such-cc" in missing.stderr
    assert call(cache, project) == Ran(2, stderr=call(cache, project).stderr)


def test_compiler_environment_variables_make_the_call_direct(cache, project):
    reply = compile_main(cache, project) and call(
        cache, project, "gcc", "-c", "main.c", env={"CPATH": str(project / "inc")}
    )
    assert isinstance(reply, Exec)
    assert "the environment sets CPATH" in counts(cache)["direct"]


def test_a_masquerading_link_runs_the_next_compiler_on_path(cache, project, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    launcher = links / "kiln-cc"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    (links / "gcc").symlink_to("kiln-cc")
    env = {"PATH": f"{links}:{os.environ['PATH']}"}
    inv = Invocation([str(links / "gcc"), "-Iinc", "-c", "main.c"], str(project), env,
                     str(launcher))  # fmt: skip
    assert cache.handle(inv) == Ran(0)
    assert (project / "main.o").exists()


def test_two_checkouts_in_different_folders_share_hits(cache, project, tmp_path):
    """Absolute paths under the project are normalised (as CMake writes
    them); the dependency file names each checkout's own folder."""
    other = tmp_path / "elsewhere" / "copy"
    shutil.copytree(project, other)
    for root in (project, other):
        (root / "build").mkdir()
        reply = call(cache, root / "build", "gcc", f"-I{root}/inc", "-O2", "-MD", "-MF",
                     "main.o.d", "-c", f"{root}/main.c", "-o", "main.o")  # fmt: skip
        assert reply == Ran(0)
        deps = (root / "build" / "main.o.d").read_text()
        assert f"{root}/inc/a.h" in deps and "/work/" not in deps
    assert counts(cache)["hits"] == 1
    assert (project / "build" / "main.o").read_bytes() == (other / "build/main.o").read_bytes()


def test_debug_objects_match_a_plain_compile(cache, project):
    """With -g the object names the host folder, as gcc's own would; so
    the host folder is part of the key (the map is in the command)."""
    assert call(cache, project, "gcc", "-g", "-Iinc", "-c", "main.c") == Ran(0)
    subprocess.run(["gcc", "-g", "-Iinc", "-c", "main.c", "-o", "plain.o"], cwd=project,
                   check=True)  # fmt: skip
    assert (project / "main.o").read_bytes() == (project / "plain.o").read_bytes()


def test_headers_above_the_working_folder_widen_the_project_root(cache, project, tmp_path):
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "v.h").write_text("#define V 3\n")
    (project / "main.c").write_text('#include "../vendor/v.h"\nint main(void) { return V; }\n')
    for _ in range(2):
        assert call(cache, project, "gcc", "-c", "main.c") == Ran(0)
    (vendor / "v.h").write_text("#define V 4\n")
    assert call(cache, project, "gcc", "-c", "main.c") == Ran(0)
    subprocess.run(["gcc", "main.o", "-o", "main"], cwd=project, check=True)
    assert subprocess.run([str(project / "main")]).returncode == 4
    assert counts(cache) | {"direct": {}} == {
        "hits": 1,
        "misses": 2,
        "failed": 0,
        "listed": 1,
        "direct": {},
    }


def test_a_system_header_outside_the_compilers_packages_runs_directly(cache, project):
    with cache._executor() as executor:
        root = executor.tool_root(executor.tools(shutil.which("gcc"))[0])
    candidates = ("zlib.h", "bzlib.h", "expat.h", "sqlite3.h", "curses.h", "ncurses.h")
    foreign = [
        h
        for h in candidates
        if Path("/usr/include", h).exists() and not (root / "usr/include" / h).exists()
    ]
    if not foreign:
        pytest.skip("no header of a package outside gcc's own here")
    (project / "main.c").write_text(f"#include <{foreign[0]}>\nint main(void) {{ return 0; }}\n")
    assert isinstance(call(cache, project, "gcc", "-c", "main.c"), Exec)
    assert any("not part of the compiler's packages" in r for r in counts(cache)["direct"])


def _manifest_keys(cache: CompileCache) -> list[Digest]:
    rows = cache.store.conn.execute(
        "SELECT hash, size FROM action_cache WHERE executor = 'cc-manifest'"
    ).fetchall()
    return [Digest(h, s) for h, s in rows]


def _digest_of(output_file) -> Digest:
    return Digest.from_proto(output_file.digest)


def _rewrite_manifests(cache: CompileCache, change) -> None:
    for key in _manifest_keys(cache):
        hit = cache.store.action_cache.lookup(key)
        body = json.loads(cache.store.cas.get_bytes(_digest_of(hit.result.output_files[0])))
        digest = cache.store.cas.put_bytes(json.dumps(change(body)).encode())
        result = re_pb2.ActionResult(exit_code=0, output_files=[
            re_pb2.OutputFile(path="headers.json", digest=digest.to_proto())])  # fmt: skip
        cache.store.action_cache.record(key, result, executor="cc-manifest", duration=0.0)


def test_a_compiler_reached_through_alternatives_links_runs_in_the_sandbox(cache, project):
    """/usr/bin/cc is a chain of links (/etc/alternatives/cc, gcc, gcc-12):
    the sandbox has each of them, so the compile is cached."""
    if not os.path.islink("/usr/bin/cc"):
        pytest.skip("/usr/bin/cc is not a link here")
    assert call(cache, project, "/usr/bin/cc", "-Iinc", "-c", "main.c") == Ran(0)
    assert counts(cache)["misses"] == 1


def test_a_unit_that_probes_for_headers_by_name_runs_directly(cache, project):
    """__has_include asks about a file the dependency list never shows: the
    sandbox, holding only the listed files, would answer differently."""
    (project / "inc" / "optional.h").write_text("#define OPTIONAL 1\n")
    (project / "main.c").write_text(
        '#if __has_include("optional.h")\nint v = 1;\n#else\nint v = 0;\n#endif\n'
    )
    assert isinstance(call(cache, project, "gcc", "-Iinc", "-c", "main.c"), Exec)
    assert any("__has_include" in reason for reason in counts(cache)["direct"])


def test_an_edited_source_reuses_its_previous_headers_without_listing_them(cache, project):
    compile_main(cache, project)
    (project / "main.c").write_text(MAIN + "int extra(void) { return 2; }\n")
    assert compile_main(cache, project) == Ran(0)
    assert run_program(project) == "42\n"
    got = counts(cache)
    assert (got["misses"], got["listed"]) == (2, 1)


def test_an_edit_that_includes_a_new_header_lists_the_headers_again(cache, project):
    compile_main(cache, project)
    (project / "inc" / "b.h").write_text("#define B 5\n")
    (project / "main.c").write_text(
        MAIN.replace('"a.h"', '"a.h"\n#include "b.h"').replace("A)", "A + B)")
    )
    assert compile_main(cache, project) == Ran(0)
    assert run_program(project) == "47\n"
    got = counts(cache)
    assert (got["misses"], got["listed"], got["failed"]) == (2, 2, 0)


def test_a_header_that_starts_including_another_is_seen(cache, project):
    compile_main(cache, project)
    (project / "inc" / "c.h").write_text("#define C 8\n")
    (project / "inc" / "a.h").write_text('#include "c.h"\n#define A C\n')
    assert compile_main(cache, project) == Ran(0)
    assert run_program(project) == "8\n"
    (project / "inc" / "c.h").write_text("#define C 9\n")
    assert compile_main(cache, project) == Ran(0)
    assert run_program(project) == "9\n"
    got = counts(cache)
    assert (got["misses"], got["listed"], got["failed"]) == (3, 2, 0)


def test_a_package_upgrade_drops_what_the_service_remembered(cache, project, monkeypatch):
    """Installing or removing a Debian package (new headers, a new compiler)
    may change the compiler's identity: answers remembered under the old
    one, and executors that resolved it, are dropped."""
    import kiln.cc.compiles as compiles

    status = project / "dpkg-status"
    status.write_text("one\n")
    monkeypatch.setattr(compiles, "DPKG_STATUS", str(status))
    cache._packages = compiles.signature(str(status))
    compile_main(cache, project)
    remembered = dict(cache._recent)
    compile_main(cache, project)  # answered from memory: the same answer object
    assert all(cache._recent[k] is v for k, v in remembered.items())
    status.write_text("two packages\n")
    compile_main(cache, project)  # a hit all the same (the identity did not change) ...
    assert all(cache._recent[k] is not v for k, v in remembered.items())  # ... worked out anew
    assert counts(cache)["hits"] == 2
