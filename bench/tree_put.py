"""`kiln store put` of 50,000 small files in 2,000 folders vs `git add -A`,
and re-putting it unchanged (the stat cache) vs `git status`."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import KILN, make_tree, median_of, real_binary, report, run

DIRS = int(os.environ.get("BENCH_DIRS", "2000"))
FILES_PER_DIR = int(os.environ.get("BENCH_FILES_PER_DIR", "25"))


def main() -> list[dict]:
    git = real_binary("git")
    results = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        tree = Path(tmp) / "tree"
        n = make_tree(tree, DIRS, FILES_PER_DIR)
        print(f"tree: {n} files in {DIRS} folders", flush=True)
        # The repository lives beside the tree so both tools see the same files.
        git_dir = Path(tmp) / "repo.git"
        git_env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_DIR": str(git_dir),
            "GIT_WORK_TREE": str(tree),
        }

        def git_add() -> float:
            shutil.rmtree(git_dir, ignore_errors=True)
            run([git, "init", "-q"], env=git_env)
            return run([git, "add", "-A"], cwd=tree, env=git_env)

        homes = iter(range(100))

        def kiln_cold() -> float:
            home = Path(tmp) / f"home{next(homes)}"
            took = run([KILN, "--store", str(home), "store", "put", str(tree)])
            shutil.rmtree(home)
            return took

        # Interleave the peers so that machine noise hits both alike.
        git_times, kiln_times = [], []
        for _ in range(3):
            git_times.append(git_add())
            kiln_times.append(kiln_cold())
        git_times.sort()
        kiln_times.sort()
        results.append(
            report("put 50k files, cold store", kiln_times[1], "git add -A", git_times[1], "<= 1.5")
        )

        # Warm: one put to fill the store and the stat cache, after the racy window.
        home = Path(tmp) / "warm"
        time.sleep(2.1)
        run([KILN, "--store", str(home), "store", "put", str(tree)])
        run([git, "status", "--porcelain"], cwd=tree, env=git_env)
        warm = median_of(11, lambda: run([KILN, "--store", str(home), "store", "put", str(tree)]))
        status = median_of(11, lambda: run([git, "status"], cwd=tree, env=git_env))
        results.append(
            report("re-put unchanged (stat cache)", warm, "git status", status, "<= 1.5")
        )
    return results


if __name__ == "__main__":
    main()
