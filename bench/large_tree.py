"""Edit one file of a 50,000-file project, then build a target that reads
one subfolder: time from the command to its first step starting, against
`git status` on the same tree.

The project is `make_tree`'s 50,000 small files in 2,000 folders (20
groups of 100 folders); its one target hands `source_tree("g07")` (2,500
files) to a trivial wasm step. Each round edits one file of `g07`, then
runs `kiln build` with the store's resident server running (it watches
the project) and reads, from the build history, when the step started;
the peer is `git status` on the same tree after the same edit (every file
committed, so git stats all 50,000). Medians of 7 rounds, the two taking
turns. The same is measured without the server, for comparison.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import KILN, kiln_client, make_tree, real_binary, report, run

CAT_C = Path(__file__).parents[1] / "tests" / "exec" / "guests" / "cat.c"
ROUNDS = int(os.environ.get("KILN_BENCH_TREE_ROUNDS", "7"))
EDITED = "g07/d0007/f00.c"

KILNFILE = f'''
from kiln.build import source, source_tree, target, wasm


@target
async def g07():
    """One group of the tree, read by a step."""
    tree = source_tree("g07")
    step = await wasm(source("tools/cat.wasm"), "out.c", "{EDITED}", inputs=[tree],
                      outputs=["out.c"], description="read g07")
    return step.file("out.c")
'''


def _first_step_after(home: Path, t0: float) -> float:
    """Seconds from ``t0`` to the start of the first step the last build ran."""
    with sqlite3.connect(home / "kiln.db") as db:
        build = db.execute("SELECT MAX(id) FROM builds").fetchone()[0]
        started = db.execute(
            "SELECT MIN(started) FROM build_steps WHERE build = ? AND status = 'executed'",
            (build,),
        ).fetchone()[0]
    if started is None:
        raise SystemExit("bench: the edited build ran no step")
    return started - t0


def _kiln_round(project: Path, env: dict[str, str], kiln: str, n: int) -> float:
    edited = project / EDITED
    edited.write_bytes(edited.read_bytes() + f"/* edit {n} */\n".encode())
    t0 = time.time()
    run([kiln, "build", "g07"], cwd=project, env=env)
    return _first_step_after(Path(env["KILN_HOME"]), t0)


def main() -> list[dict]:
    git = real_binary("git")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp_name:
        tmp = Path(tmp_name)
        project = tmp / "project"
        files = make_tree(project, 2000, 25)
        (project / "tools").mkdir()
        subprocess.run(
            [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s",
             "-o", str(project / "tools" / "cat.wasm"), str(CAT_C)],
            check=True,
        )  # fmt: skip
        (project / "kilnfile.py").write_text(KILNFILE)
        (project / ".gitignore").write_text("kiln-out/\n")
        env = {**os.environ, "KILN_HOME": str(tmp / "home")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        git_env = {**env, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                   "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
        run([git, "init", "-q"], cwd=project, env=git_env)
        run([git, "config", "gc.auto", "0"], cwd=project, env=git_env)  # (no background gc)
        run([git, "add", "-A"], cwd=project, env=git_env)
        run([git, "commit", "-q", "-m", "tree"], cwd=project, env=git_env)
        run([KILN, "build", "g07"], cwd=project, env={**env, "KILN_SERVER": "off"})

        def git_round(n: int) -> float:
            edited = project / EDITED
            edited.write_bytes(edited.read_bytes() + f"/* git {n} */\n".encode())
            return run([git, "status", "--porcelain"], cwd=project, env=git_env)

        cold = {**env, "KILN_SERVER": "off"}
        alone = [_kiln_round(project, cold, KILN, n) for n in range(3)]
        client = kiln_client(tmp / "bin", env)
        run([KILN, "server", "start"], env=env)
        try:
            run([client, "build", "g07"], cwd=project, env=env)  # the server starts watching
            kiln, peer = [], []
            for n in range(ROUNDS):
                kiln.append(_kiln_round(project, env, client, 100 + n))
                peer.append(git_round(n))
        finally:
            run([KILN, "server", "stop"], env=env)
    ours, theirs = statistics.median(kiln), statistics.median(peer)
    how = "native client" if client != KILN else "Python client"
    print(f"(tree of {files} files; without the server: {statistics.median(alone) * 1000:.1f} ms)")
    return [
        report(f"edit one file of a 50k-file tree, command to first step (server, {how})", ours,
               "git status", theirs, "<= 1.0"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
