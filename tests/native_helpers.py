"""Running one shell script as a native step, for the sandbox's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli.doctor import check_bubblewrap
from kiln.exec.kinds import local_context
from kiln.exec.native import NativeExecutor, NativeLimits, bwrap_path
from kiln.exec.tools import Dpkg, identity, resolve
from kiln.model.action import ActionSpec
from kiln.model.digest import Digest

needs_bubblewrap = pytest.mark.skipif(
    bwrap_path() is None or check_bubblewrap().status != "ok",
    reason="bubblewrap cannot make sandboxes here (see `kiln doctor`)",
)


def run_native(
    store, tmp_path: Path, script: str, tools=("sh",), outputs=(), limits=None, timeout=60,
    executor=None,
):  # fmt: skip
    """Run ``sh -c script`` over an input folder holding ``input.txt``;
    the result, its stdout and its stderr."""
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    (inputs / "input.txt").write_text("an input\n")
    dpkg = Dpkg()
    names = sorted(tools)
    spec = ActionSpec(
        argv=("sh", "-c", script),
        input_root=store.put(inputs).digest,
        outputs=tuple(outputs),
        platform=(limits or NativeLimits()).platform(
            names, identity([resolve(n, dpkg) for n in names])
        ),
    )
    key = store.put_action(spec)
    executor = executor or NativeExecutor(local_context(store), timeout=timeout)
    result = executor.execute(key, *spec.action())
    out = store.cas.get_bytes(Digest.from_proto(result.stdout_digest)).decode()
    err = store.cas.get_bytes(Digest.from_proto(result.stderr_digest)).decode()
    return result, out, err
