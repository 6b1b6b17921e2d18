"""The checked-in sandbox helper binaries are what their source makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiln.exec.zygote import ARCHES, SANDBOX_DIR, binary_name, build_command


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(ARCHES.values())))
def test_the_checked_in_zygote_is_a_fresh_build_of_its_source(arch: str, tmp_path: Path) -> None:
    out = tmp_path / binary_name(arch)
    subprocess.run(build_command([sys.executable, "-m", "ziglang"], arch, out), check=True)
    assert out.read_bytes() == (SANDBOX_DIR / binary_name(arch)).read_bytes(), (
        "rebuild with `./dev zygote`"
    )
