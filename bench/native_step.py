"""A trivial sandboxed native step end to end vs a bare fork+exec of it.

Kiln's side: a fresh action each round (its argument differs), through
``Store.execute_once`` and the native executor: stage the (tiny) input
tree, build the bubblewrap sandbox with /usr holding only coreutils and
what it needs (the tool root is made once, before timing), run
``true ROUND``, collect and record. The peer: ``subprocess.run`` of the
same ``/usr/bin/true``.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import report, time_fresh_action
from kiln.exec.kinds import local_context
from kiln.exec.native import NativeExecutor, NativeLimits
from kiln.exec.tools import Dpkg, identity, resolve
from kiln.model.action import ActionSpec
from kiln.store import Store

ROUNDS = 100


def main() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        (src / "input.txt").write_text("x\n")
        with Store(Path(tmp) / "home") as store:
            root = store.put(src).digest
            tools = [resolve("true", Dpkg())]
            platform = NativeLimits().platform(["true"], identity(tools))
            executor = NativeExecutor(local_context(store))

            def one(i: int) -> float:
                spec = ActionSpec(argv=("true", str(i)), input_root=root, platform=platform)
                return time_fresh_action(store, spec, executor, "native")

            try:
                one(-1)  # builds the tool root once
                ours, peers = [], []
                for i in range(ROUNDS):
                    ours.append(one(i))
                    start = time.perf_counter()
                    subprocess.run(["/usr/bin/true", str(i)], check=True)
                    peers.append(time.perf_counter() - start)
            finally:
                executor.close()  # its sandboxes live in the store, removed next
    return [
        report(
            "trivial sandboxed native step, end to end",
            statistics.median(ours),
            "fork+exec /usr/bin/true",
            statistics.median(peers),
            "<= 6",
        )
    ]


if __name__ == "__main__":
    main()
