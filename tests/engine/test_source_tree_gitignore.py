"""``source_tree(path, gitignore=True)``: what git would ignore is no part of
the tree (nor of the key of a step using it), under nested rules, rules
above the tree and ``.git/info/exclude``; the stat cache keeps filtered and
unfiltered puts of a folder apart and sees every change of the rules; bad
rules are clear errors; and the decisions agree with git's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from engine_helpers import build, ran, write_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import KILN, kiln_out_files
from kiln.engine import gitignore
from kiln.engine.gitignore import GitIgnore
from kiln.errors import ExitCode, KilnError
from kiln.model.tree import walk
from kiln.store import Store, ingest


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch) -> None:
    """Files written by a test are trusted by the stat cache at once."""
    monkeypatch.setenv("KILN_RACY_WINDOW_MS", "0")


CAT = "tools/cat.wasm"

# One target placing the tree (kiln-out/tree/...) and one step using it,
# which concatenates src/main.c and src/util.c.
KILNFILE = """
from kiln.build import source, source_tree, target, wasm

@target
async def tree():
    return source_tree("src", gitignore=True)

@target
async def joined():
    src = source_tree("src", gitignore=True)
    return await wasm(source("tools/cat.wasm"), "joined", "src/main.c", "src/util.c",
                      inputs=[src], outputs=["joined"], description="join")
"""

SOURCES = {
    "src/.gitignore": "*.log\nbuild/\n",
    "src/main.c": "main\n",
    "src/util.c": "util\n",
    "src/debug.log": "noise\n",
    "src/build/main.o": "object\n",
}


def placed(root: Path, target: str) -> dict[str, bytes]:
    """The files the build placed for ``target``, by path in its folder."""
    prefix = f"{target}/"
    return {
        k.removeprefix(prefix): v for k, v in kiln_out_files(root).items() if k.startswith(prefix)
    }


def project(tmp_path: Path, tools: dict, kilnfile: str = KILNFILE, **files: str) -> Path:
    return write_project(tmp_path / "p", kilnfile, {**tools, **SOURCES, **files})


def built(store: Store, root: Path, *targets: str):
    report = build(store, root, *targets)
    assert report.ok, [e.render() for e in report.errors]
    return report


# ------------------------------------------------------------------ the tree


def test_ignored_files_are_not_in_the_tree(store, tmp_path, tools) -> None:
    root = project(tmp_path, tools)
    built(store, root)
    assert sorted(placed(root, "tree")) == ["src/.gitignore", "src/main.c", "src/util.c"]
    assert placed(root, "joined") == {"joined": b"main\nutil\n"}


def test_a_step_does_not_see_an_ignored_file(store, tmp_path, tools) -> None:
    root = project(
        tmp_path,
        tools,
        """
from kiln.build import source, source_tree, target, wasm

@target
async def peek():
    return await wasm(source("tools/cat.wasm"), "out", "src/debug.log",
                      inputs=[source_tree("src", gitignore=True)], outputs=["out"])
""",
    )
    report = build(store, root)
    assert not report.ok
    assert "src/debug.log" in report.errors[0].render()


def test_editing_or_adding_an_ignored_file_runs_nothing_again(store, tmp_path, tools) -> None:
    root = project(tmp_path, tools)
    assert ran(built(store, root)) == ["joined: join"]
    (root / "src" / "debug.log").write_text("other noise, longer\n")
    (root / "src" / "trace.log").write_text("new\n")
    (root / "src" / "build" / "extra.o").write_text("new object\n")
    assert ran(built(store, root)) == []


def test_editing_a_kept_file_runs_the_step(store, tmp_path, tools) -> None:
    root = project(tmp_path, tools)
    built(store, root)
    (root / "src" / "util.c").write_text("util 2\n")
    assert ran(built(store, root)) == ["joined: join"]
    assert placed(root, "joined") == {"joined": b"main\nutil 2\n"}


def test_nested_gitignore_with_negation(store, tmp_path, tools) -> None:
    root = project(
        tmp_path,
        tools,
        **{
            "src/lib/.gitignore": "!keep.log\n*.c\n!api.c\n",
            "src/lib/keep.log": "kept by lib/.gitignore\n",
            "src/lib/other.log": "left out by src/.gitignore\n",
            "src/lib/impl.c": "left out\n",
            "src/lib/api.c": "kept again\n",
            # a file in a left-out folder cannot be kept again
            "src/lib/.gitignore2": "",
            "src/build/.gitignore": "!main.o\n",
        },
    )
    built(store, root, "tree")
    assert sorted(placed(root, "tree")) == [
        "src/.gitignore",
        "src/lib/.gitignore",
        "src/lib/.gitignore2",
        "src/lib/api.c",
        "src/lib/keep.log",
        "src/main.c",
        "src/util.c",
    ]


def test_rules_above_the_tree_apply_inside_it(store, tmp_path, tools) -> None:
    root = project(
        tmp_path,
        tools,
        **{
            ".gitignore": "/src/generated/\n*.tmp\n",
            "src/generated/table.c": "generated\n",
            "src/scratch.tmp": "scratch\n",
            "src/deep/er/x.tmp": "scratch\n",
            "src/deep/er/x.c": "kept\n",
        },
    )
    built(store, root, "tree")
    assert sorted(placed(root, "tree")) == [
        "src/.gitignore",
        "src/deep/er/x.c",
        "src/main.c",
        "src/util.c",
    ]


def test_git_info_exclude_applies(store, tmp_path, tools) -> None:
    root = project(tmp_path, tools, **{".git/info/exclude": "# mine\nutil.c\n"})
    built(store, root, "tree")
    assert sorted(placed(root, "tree")) == ["src/.gitignore", "src/main.c"]


def test_a_gitignore_can_keep_what_info_exclude_leaves_out(store, tmp_path, tools) -> None:
    """info/exclude has the lowest precedence."""
    root = project(tmp_path, tools, **{".git/info/exclude": "*.c\n", "src/.gitignore": "!util.c\n"})
    built(store, root, "tree")
    assert sorted(placed(root, "tree")) == [
        "src/.gitignore", "src/build/main.o", "src/debug.log", "src/util.c"
    ]  # fmt: skip


def test_a_changed_gitignore_is_seen_by_the_next_build(store, tmp_path, tools) -> None:
    root = project(tmp_path, tools)
    built(store, root)
    (root / "src" / ".gitignore").write_text("*.log\n")  # build/ kept now
    assert ran(built(store, root)) == ["joined: join"]
    assert "src/build/main.o" in placed(root, "tree")
    (root / ".gitignore").write_text("/src/util.c\n")  # a rule above the tree
    report = build(store, root, "joined")  # the step cannot find util.c any more
    assert not report.ok and "src/util.c" in report.errors[0].render()
    built(store, root, "tree")
    assert "src/util.c" not in placed(root, "tree")
    (root / ".gitignore").unlink()
    assert ran(built(store, root)) == []  # as in the first build again: cached
    assert "src/util.c" in placed(root, "tree")


def test_without_gitignore_everything_is_kept(store, tmp_path, tools) -> None:
    root = project(
        tmp_path,
        tools,
        """
from kiln.build import source_tree, target

@target
async def tree():
    return source_tree("src")
""",
        **{".git/info/exclude": "*.c\n"},
    )
    built(store, root)
    assert sorted(placed(root, "tree")) == sorted(p for p in SOURCES if p.startswith("src/"))


def test_filtered_and_unfiltered_trees_of_one_folder(store, tmp_path, tools) -> None:
    root = project(
        tmp_path,
        tools,
        """
from kiln.build import source_tree, target

@target
async def both():
    return {"all": source_tree("src"), "kept": source_tree("src", gitignore=True)}
""",
    )
    hashed = []
    for _ in range(2):  # the second build answers both from the stat cache
        hashed.append(built(store, root, "both").files_hashed)
        files = placed(root, "both")
        assert sorted(files) == sorted(
            [*(f"all/{p.removeprefix('src/')}" for p in SOURCES), "kept/.gitignore",
             "kept/main.c", "kept/util.c"]
        )  # fmt: skip
        assert files["kept/main.c"] == files["all/main.c"] == b"main\n"
    assert hashed == [5 + 3, 0]  # the files of each tree (.gitignore, main.c, util.c in both)


# ------------------------------------------------------------- the stat cache


def tree_files(store: Store, digest) -> dict[str, str]:
    """path -> content hash of every file and symlink of a stored tree."""
    return {
        path: (entry.digest.hash if entry.digest else entry.target)
        for path, entry in walk(store.cas, digest)
        if entry is not None
    }


def put(store: Store, folder: Path, project: Path | None = None, rel: str = ""):
    """Put ``folder``, with the gitignore filter of ``project`` if given."""
    ignore = GitIgnore(project, rel, {}) if project is not None else None
    return store.put(folder, filter=ignore)


def test_filtered_and_unfiltered_puts_never_answer_for_each_other(store, tmp_path) -> None:
    tree = write_project(tmp_path / "p", "", SOURCES)
    whole, kept = put(store, tree), put(store, tree, tree)
    assert whole.digest != kept.digest
    assert sorted(tree_files(store, kept.digest)) == [
        "kilnfile.py", "src/.gitignore", "src/main.c", "src/util.c"
    ]  # fmt: skip
    assert "src/debug.log" in tree_files(store, whole.digest)
    for _ in range(2):  # each has its own rows: neither evicts the other
        again_whole, again_kept = put(store, tree), put(store, tree, tree)
        assert (again_whole.digest, again_kept.digest) == (whole.digest, kept.digest)
        assert again_whole.dirs_rebuilt == again_kept.dirs_rebuilt == 0
        assert again_whole.files_hashed == again_kept.files_hashed == 0


def test_ignored_entries_are_never_listed_or_read(store, tmp_path, monkeypatch) -> None:
    tree = write_project(tmp_path / "p", "", SOURCES)
    os.mkfifo(tree / "src" / "pipe.log")  # (would be refused if it were kept)
    scanned, hashed = [], []
    real_scan, real_hash = ingest.scan, ingest.Ingester._hash_file
    monkeypatch.setattr(ingest, "scan", lambda path: scanned.append(path) or real_scan(path))
    monkeypatch.setattr(
        ingest.Ingester,
        "_hash_file",
        lambda self, batch, path, size: hashed.append(path) or real_hash(self, batch, path, size),
    )
    kept = put(store, tree, tree)
    assert sorted(scanned) == [str(tree), str(tree / "src")]
    assert sorted(hashed) == [
        str(tree / p) for p in ["kilnfile.py", "src/.gitignore", "src/main.c", "src/util.c"]
    ]
    assert kept.files_hashed == 4


def test_a_subtree_reuses_the_rows_of_the_whole_tree(store, tmp_path) -> None:
    tree = write_project(tmp_path / "p", "", {**SOURCES, ".gitignore": "util.c\n"})
    whole = put(store, tree, tree)
    sub = put(store, tree / "src", tree, "src")
    assert sub.files_hashed == sub.dirs_rebuilt == 0
    assert sorted(tree_files(store, sub.digest)) == [".gitignore", "main.c"]
    assert tree_files(store, whole.digest)["src/main.c"] == tree_files(store, sub.digest)["main.c"]


def test_every_rules_change_is_seen(store, tmp_path) -> None:
    tree = write_project(tmp_path / "p", "", {**SOURCES, "src/a/b/c.txt": "c\n"})
    first = put(store, tree, tree)
    assert "src/a/b/c.txt" in tree_files(store, first.digest)
    rules = [  # (a rules file, its text, a subtree that it applies to)
        (".gitignore", "c.txt\n", "src/a"),  # the root's
        ("src/a/.gitignore", "b/\n", "src/a"),  # one between
        (".git/info/exclude", "/src/a/\n", "src"),  # the exclude file
    ]
    for path, text, subtree in rules:
        f = tree / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        assert "src/a/b/c.txt" not in tree_files(store, put(store, tree, tree).digest), path
        sub = tree_files(store, put(store, tree / subtree, tree, subtree).digest)
        assert not any(p.endswith("c.txt") for p in sub), path
        f.unlink()
        assert put(store, tree, tree).digest == first.digest, path


# -------------------------------------------------------------------- errors


def test_a_bad_pattern_names_the_file_and_line(store, tmp_path, tools) -> None:
    root = project(tmp_path, tools, **{"src/lib/.gitignore": "# fine\n*.o\nbad\\\n"})
    report = build(store, root, "tree")
    assert report.exit_code == ExitCode.BAD_INPUT
    message = report.errors[0].render()
    assert "kilnfile.py:6 (target 'tree')" in message
    assert f"{root / 'src' / 'lib' / '.gitignore'}:3: bad gitignore pattern 'bad\\\\'" in message


def test_a_bad_range_is_a_bad_pattern(store, tmp_path) -> None:
    tree = write_project(tmp_path / "p", "", {".gitignore": "ok\n[z-a]\n"})
    with pytest.raises(KilnError, match=r"\.gitignore:2: bad gitignore pattern '\[z-a\]'"):
        put(store, tree, tree)


def test_an_unreadable_gitignore_is_named(store, tmp_path, tools, monkeypatch) -> None:
    root = project(tmp_path, tools)
    rules = root / "src" / ".gitignore"

    def unreadable(path, *args, **kwargs):
        if path == str(rules):  # (chmod 0 would not stop a test run as root)
            raise PermissionError(13, "Permission denied", path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(gitignore, "open", unreadable, raising=False)
    report = build(store, root, "tree")
    assert report.exit_code == ExitCode.BAD_INPUT
    assert f"{rules}: cannot read its gitignore rules" in report.errors[0].render()


def test_an_ignored_tree_folder_is_an_error(store, tmp_path, tools) -> None:
    root = project(tmp_path, tools, **{".gitignore": "# ours\nsrc\n"})
    report = build(store, root, "tree")
    assert report.exit_code == ExitCode.BAD_INPUT
    message = report.errors[0].render()
    assert "source folder 'src' is ignored by git" in message
    assert f"{root / '.gitignore'}:2 ('src')" in message


def test_a_bad_argument(store, tmp_path, tools) -> None:
    root = project(
        tmp_path,
        tools,
        "from kiln.build import source_tree, target\n\n"
        "@target\nasync def tree():\n    return source_tree('src', gitignore='yes')\n",
    )
    report = build(store, root)
    assert report.exit_code == ExitCode.BAD_INPUT
    assert "gitignore=) must be True or False" in report.errors[0].render()


def test_kiln_build_reports_a_bad_pattern_without_a_traceback(tmp_path, tools) -> None:
    root = project(tmp_path, tools, **{"src/.gitignore": "!\n"})
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [KILN, "build", "tree"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    assert f"{root / 'src' / '.gitignore'}:1: bad gitignore pattern '!'" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------- agreement with git itself


@pytest.mark.parametrize(
    ("rules", "kept"),
    [
        # (each as git 2.39 decides it: `git ls-files --others --exclude-standard`)
        # "a/**/" leaves out the folders inside a, not a itself (pathspec's
        # GitIgnoreSpec.match_file says a/f is ignored; git keeps it)
        ("a/**/\n", ["a/f", "a/keep", "f"]),
        # "a/**" leaves out everything inside a; "!a/keep" keeps one again
        ("a/**\n!a/keep\n", ["a/keep", "f"]),
        # a "/" at the end means folders only, once: "*//" matches nothing
        ("*//\n", ["a/b/f", "a/f", "a/keep", "f"]),
        # spaces before that "/" are part of the name
        ("a/\n!a /\n", ["f"]),
        # a folder left out cannot be entered to keep a file again
        ("a/\n!a/f\n", ["f"]),
        # in one file the last pattern that matches decides
        ("b\n!a/b/\n", ["a/b/f", "a/f", "a/keep", "f"]),
        ("!a/b/\nb\n", ["a/f", "a/keep", "f"]),
    ],
)
def test_edge_cases_as_git_decides_them(store, tmp_path, rules, kept) -> None:
    tree = write_project(
        tmp_path / "p", "", {"a/b/f": "", "a/f": "", "a/keep": "", "f": "", ".gitignore": rules}
    )
    (tree / "kilnfile.py").unlink()
    files = tree_files(store, put(store, tree, tree).digest)
    assert sorted(files) == sorted([".gitignore", *kept])


GIT = shutil.which("git")
NAMES = ["a", "b", "x.log", "y.txt", "build", ".hidden", "a "]
SEGMENTS = ["a", "b", "build", "*.log", "*.txt", "*", "**", "?", "[ab]", ".h*", "y.*", "", "a "]

folders = st.recursive(
    st.just("file"),
    lambda children: st.dictionaries(st.sampled_from(NAMES), children, max_size=4),
    max_leaves=14,
).filter(lambda t: isinstance(t, dict))
patterns = st.builds(
    lambda neg, lead, segs, trail: ("!" if neg else "") + ("/" if lead else "")
    + "/".join(segs) + ("/" if trail else ""),
    st.booleans(),
    st.booleans(),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3),
    st.booleans(),
).filter(lambda p: p != "!")  # (a bad pattern: an error, tested above)  # fmt: skip
rule_files = st.lists(patterns, max_size=4).map("\n".join)


def _write_tree(path: Path, node) -> list[Path]:
    """Write a generated tree; its folders, top first."""
    if node == "file":
        path.write_text(path.name)
        return []
    path.mkdir(exist_ok=True)
    found = [path]
    for name, child in node.items():
        found += _write_tree(path / name, child)
    return found


def _git_keeps(root: Path) -> set[str]:
    """The files git would add to a fresh repository at ``root`` (without
    any global or system config, so without core.excludesFile)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(root),
        "XDG_CONFIG_HOME": str(root / ".no-config"),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    out = subprocess.run(
        [GIT, "ls-files", "-z", "--others", "--exclude-standard"],
        cwd=root, env=env, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return {os.fsdecode(p) for p in out.split(b"\0") if p}


@pytest.mark.skipif(GIT is None, reason="git is not installed (it is the reference)")
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tree=folders,
    rules=st.lists(st.tuples(st.integers(0, 20), rule_files), min_size=1, max_size=4),
    exclude=rule_files,
    changed=st.lists(st.tuples(st.integers(0, 20), rule_files), max_size=2),
)
def test_the_decisions_are_gits(store, tree, rules, exclude, changed) -> None:
    """Any tree, any rules files anywhere in it: the files kept are those
    git would add, and stay so after some rules files change (the stat
    cache must not answer from the old rules)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        subprocess.run([GIT, "init", "-q", str(root)], check=True, capture_output=True)
        dirs = _write_tree(root, tree)
        (root / ".git" / "info").mkdir(parents=True, exist_ok=True)
        (root / ".git" / "info" / "exclude").write_text(exclude + "\n")
        for step in (rules, changed):
            for where, text in step:
                (dirs[where % len(dirs)] / ".gitignore").write_text(text + "\n")
            digest = put(store, root, root).digest
            ours = {p for p, e in walk(store.cas, digest) if e is not None}
            assert ours == _git_keeps(root)
