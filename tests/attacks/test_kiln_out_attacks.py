"""kiln-out/ against its users: outputs edited in place (as root, whom file
modes do not stop) must not reach the store; files deleted or changed
there are put back; `kiln clean` and `kiln gc` delete only the folders Kiln
placed, never through a kiln-out that is a link, and refuse names that are
not targets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_kiln

REPORT = Path("kiln-out") / "report" / "report.txt"


def _build(home: Path, project: Path, *args: str):
    done = run_kiln(home, "build", *args, cwd=project)
    assert done.returncode == 0, done.stderr
    return done


def test_an_output_edited_in_place_leaves_the_store_intact_and_is_put_back(
    home: Path, example: Path
) -> None:
    _build(home, example, "report")
    out = example / REPORT
    good = out.read_bytes()
    assert os.stat(out).st_nlink == 1  # no inode shared with the store
    out.chmod(0o644)  # (root writes through file modes anyway)
    with open(out, "r+b") as f:  # in place: the same inode
        f.write(b"CORRUPTED")
    verify = run_kiln(home, "store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    answered = _build(home, example, "report")  # a no-op build notices and repairs
    assert "restored report" in answered.stderr
    assert out.read_bytes() == good


@pytest.mark.parametrize("from_stamp", [True, False])
def test_a_file_deleted_inside_an_output_folder_is_put_back(
    home: Path, example: Path, from_stamp: bool
) -> None:
    _build(home, example, "report")
    good = (example / REPORT).read_bytes()
    (example / REPORT).unlink()
    if not from_stamp:  # a full build (the build file edited) puts it back too
        with open(example / "kilnfile.py", "a") as f:
            f.write("\n# edited\n")
    _build(home, example, "report")
    assert (example / REPORT).read_bytes() == good


def test_kiln_out_can_be_removed_and_is_put_back_from_the_stamp(home: Path, example: Path) -> None:
    _build(home, example, "report")
    shutil.rmtree(example / "kiln-out")  # folders are writable
    answered = _build(home, example, "report", "--json")
    assert json.loads(answered.stdout)["unchanged"] is True  # the stamp still answers
    assert (example / REPORT).is_file()


@pytest.mark.parametrize("name", ["../", "..", "/etc", "../../x", ".kiln", "a/b", ""])
def test_kiln_clean_refuses_names_that_are_not_targets(
    home: Path, example: Path, name: str
) -> None:
    _build(home, example, "report")
    outside = example.parent / "x"
    outside.mkdir()
    done = run_kiln(home, "clean", name, cwd=example)
    assert done.returncode == 2 and "not a target name" in done.stderr, done.stderr
    assert (example / REPORT).is_file() and outside.is_dir()


def test_kiln_clean_removes_only_what_kiln_placed(home: Path, example: Path) -> None:
    _build(home, example)
    mine = example / "kiln-out" / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    # The user replaced a target's folder with one of their own: not Kiln's.
    shutil.rmtree(example / "kiln-out" / "counts")
    (example / "kiln-out" / "counts").mkdir()
    one = run_kiln(home, "clean", "report", "--json", cwd=example)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["removed"] == ["report"]
    assert not (example / "kiln-out" / "report").exists()
    assert (example / "kiln-out" / "chapters").is_dir()
    every = run_kiln(home, "clean", "--json", cwd=example)
    result = json.loads(every.stdout)
    assert (result["removed"], result["kept"]) == (["chapters"], ["counts"])
    assert sorted(os.listdir(example / "kiln-out")) == ["counts", "mine"]
    assert (mine / "notes.txt").read_text() == "the user's"
    answered = _build(home, example)  # the cache was kept: nothing runs
    assert "restored chapters, counts, report" in answered.stderr
    assert (example / REPORT).is_file()


def test_a_kiln_out_that_is_a_link_is_neither_written_nor_cleaned_through(
    home: Path, example: Path, tmp_path: Path
) -> None:
    _build(home, example, "report")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(example / "kiln-out", elsewhere)  # looks like Kiln's, markers and all
    shutil.rmtree(example / "kiln-out")
    (example / "kiln-out").symlink_to(elsewhere)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
    cleaned = run_kiln(home, "clean", cwd=example)
    assert cleaned.returncode == 2 and "not a folder Kiln made" in cleaned.stderr
    with open(example / "kilnfile.py", "a") as f:
        f.write("\n# edited\n")  # a full build
    built = run_kiln(home, "build", "report", cwd=example)
    assert built.returncode != 0 and "kiln-out" in built.stderr, built.stderr
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before
    assert run_kiln(home, "gc").returncode == 0
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before


def test_a_build_forgets_removed_targets_and_gc_gone_projects_and_nothing_else(
    home: Path, example: Path, tmp_path: Path
) -> None:
    _build(home, example)
    (example / "kiln-out" / "mine").mkdir()  # the user's
    text = (example / "kilnfile.py").read_text()
    # `report` is no longer a target (renamed): its root and folder go.
    (example / "kilnfile.py").write_text(text.replace("async def report(", "async def summary("))
    built = run_kiln(home, "build", "chapters", "--json", cwd=example)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["forgotten"] == ["report"]
    other = tmp_path / "other"
    shutil.copytree(example, other)
    (other / "kilnfile.py").write_text(text)
    _build(home, other, "chapters")
    (other / "kilnfile.py").unlink()  # no longer a project: a folder of files
    done = run_kiln(home, "gc", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["history"]["roots"] == 1  # other's `chapters`
    roots = run_kiln(home, "root", "list", "--json")
    assert sorted(r["name"] for r in json.loads(roots.stdout)) == [
        f"build:{example}:chapters", f"build:{example}:counts"
    ]  # fmt: skip
    assert sorted(os.listdir(example / "kiln-out")) == [".kiln", "chapters", "counts", "mine"]
    assert (other / "kiln-out" / "chapters").is_dir()  # files of a non-project stay


def test_gc_never_runs_a_build_file(home: Path, example: Path, tmp_path: Path) -> None:
    """In a shared store, `kiln gc` by one user must not run another's code."""
    _build(home, example)
    ran = tmp_path / "ran"
    with open(example / "kilnfile.py", "a") as f:
        f.write(f"\nopen({str(ran)!r}, 'w').close()\n")
    done = run_kiln(home, "gc", "--json")
    assert done.returncode == 0, done.stderr
    assert not ran.exists()


