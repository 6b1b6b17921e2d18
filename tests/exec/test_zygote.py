"""The checked-in native helper binaries (the sandbox's zygote, the `kiln cc`
launcher, kiln-sub, the server's native client) are what their source makes."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kiln.cc import native_client
from kiln.exec import substep_proxy, zygote
from kiln.exec.zygote import ARCHES, Helper
from kiln.server import native_client as server_native_client

# (a module with binary_name, build_command and binary, or a Helper)
HELPERS = [
    (zygote, zygote.SANDBOX_DIR, "./dev zygote"),
    (native_client.CLIENT, native_client.CLIENT.folder, "./dev cc-client"),
    (substep_proxy, substep_proxy.CLIENT_FOLDER, "./dev kiln-sub"),
    (server_native_client.CLIENT, server_native_client.CLIENT.folder, "./dev kiln-client"),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(ARCHES.values())))
@pytest.mark.parametrize(
    ("helper", "folder", "remake"), HELPERS, ids=["zygote", "kiln-cc", "kiln-sub", "kiln-client"]
)
def test_the_checked_in_binary_is_a_fresh_build_of_its_source(
    helper: ModuleType | Helper, folder: Path, remake: str, arch: str, tmp_path: Path
) -> None:
    out = tmp_path / helper.binary_name(arch)
    subprocess.run(helper.build_command([sys.executable, "-m", "ziglang"], arch, out), check=True)
    assert out.read_bytes() == (folder / helper.binary_name(arch)).read_bytes(), (
        f"rebuild with `{remake}`"
    )


def test_each_helper_is_found_for_this_machine() -> None:
    arch = ARCHES.get(platform.machine().lower())
    for helper, folder, _ in HELPERS:
        expected = folder / helper.binary_name(arch) if arch else None
        assert helper.binary() == expected
