"""`./dev demo`: store the bundled example tree, restore it, compare, verify.

Runs the real `kiln` command (from this virtualenv) step by step and shows
each command line, so what it does can be repeated by hand.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "hello-tree"
KILN = str(Path(sys.executable).parent / "kiln")


def kiln(*args: str) -> str:
    print(f"$ kiln {' '.join(args)}", flush=True)
    proc = subprocess.run([KILN, *args], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    return proc.stdout.strip()


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    for name in cmp.common_files:
        if os.access(a / name, os.X_OK) != os.access(b / name, os.X_OK):
            return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def main() -> None:
    digest = kiln("store", "put", "--root", "demo", str(EXAMPLE))
    with tempfile.TemporaryDirectory(prefix="kiln-demo-") as tmp:
        out = Path(tmp) / "restored"
        kiln("store", "get", digest, str(out))
        print(f"restored tree at {out}: ", end="")
        if not same_tree(EXAMPLE, out) or os.readlink(out / "README.md") != "docs/about.md":
            print("DIFFERS from the original")
            sys.exit(1)
        print("identical to the original (contents, executable bits, symlinks)")
    print("putting it again: files_hashed counts files read; unchanged ones are known by stat")
    kiln("store", "put", "--json", str(EXAMPLE))
    kiln("store", "verify")
    kiln("store", "stats")


if __name__ == "__main__":
    main()
