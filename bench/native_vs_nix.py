"""Per-step cost of a sandboxed trivial step: Kiln's native steps vs Nix.

Both sides build N trivial steps (`sh -c 'echo NONCE I > out'`), each in
its sandbox, from the command line, one at a time (`kiln build -j1`,
Nix `max-jobs = 1`). The nonce is new every run, so nothing is a cache hit
on either side. The per-step cost is (T(N) - T(1)) / (N - 1), which leaves
out what each tool pays once per invocation (start-up, evaluation).

Nix is Debian's `nix-bin` run as root without a daemon, sandbox on:
``build-users-group =``, ``substituters =``, ``sandbox = true``,
``sandbox-paths = /bin /usr /lib /lib64``. Without it the benchmark says so
and how to install it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import KILN, report, run

STEPS = int(os.environ.get("KILN_BENCH_NIX_STEPS", "200"))

NIX_EXPR = """{ n, nonce }:
builtins.genList (i: derivation {
  name = "kiln-bench-${toString i}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo ${nonce} ${toString i} > $out" ];
}) n
"""

KILNFILE = """from kiln.build import gather, native, target

@target
async def steps():
    return await gather(*(
        native("sh", "-c", f"echo NONCE {i} > o{i}.txt", tools=["sh"], outputs=[f"o{i}.txt"],
               description=f"step {i}")
        for i in range(STEPS)
    ))
"""

NIX_CONFIG = "\n".join([
    "build-users-group =",
    "substituters =",
    "sandbox = true",
    "sandbox-paths = /bin /usr /lib /lib64",
    "max-jobs = 1",
])  # fmt: skip


def _nix(tmp: Path, steps: int, nonce: str) -> float:
    expr = tmp / "steps.nix"
    expr.write_text(NIX_EXPR)
    env = {**os.environ, "NIX_CONFIG": NIX_CONFIG}
    argv = [shutil.which("nix-build") or "nix-build", "--no-out-link", str(expr),
            "--arg", "n", str(steps), "--argstr", "nonce", nonce]  # fmt: skip
    return run(argv, env=env)


def _kiln(tmp: Path, steps: int, nonce: str) -> float:
    project = tmp / f"kiln-{nonce}"
    project.mkdir()
    text = KILNFILE.replace("NONCE", nonce).replace("range(STEPS)", f"range({steps})")
    (project / "kilnfile.py").write_text(text)
    env = {**os.environ, "KILN_HOME": str(tmp / "home")}  # nonces: never a cache hit
    return run([KILN, "build", "-j1"], cwd=project, env=env)


def main() -> list[dict]:
    if shutil.which("nix-build") is None:
        print("native vs nix: skipped, nix-build is not installed (apt-get install nix-bin)")
        return []
    if os.geteuid() != 0:
        print("native vs nix: skipped, Debian's nix without a daemon needs root")
        return []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp_name:
        tmp = Path(tmp_name)
        base = f"{os.getpid()}-{time.time_ns()}"
        _kiln(tmp, 1, f"warm{base}")  # tool root and dpkg index made once, as in real use
        costs = {}
        for name, build in (("kiln", _kiln), ("nix", _nix)):
            one = build(tmp, 1, f"one{name}{base}")
            many = build(tmp, STEPS, f"many{name}{base}")
            costs[name] = (many - one) / (STEPS - 1)
    return [
        report(
            f"sandboxed trivial step, per step ({STEPS} steps, one at a time)",
            costs["kiln"],
            "nix-build (sandbox on)",
            costs["nix"],
            "<= 0.33 (3x faster)",
        )
    ]


if __name__ == "__main__":
    main()
