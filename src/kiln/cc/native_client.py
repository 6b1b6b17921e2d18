"""The native ``kiln-cc`` client: its C source and checked-in static builds.

``client.c`` is built like the sandbox's zygote (``kiln.exec.zygote``): a
static musl binary per architecture, made by ziglang and checked in next to
its source; ``./dev cc-client`` makes them again.
"""

from __future__ import annotations

from pathlib import Path

from kiln.exec.zygote import build_command as _build_command
from kiln.exec.zygote import helper_binary, rebuild_helpers

FOLDER = Path(__file__).parent
SOURCE = FOLDER / "client.c"


def binary_name(arch: str) -> str:
    return f"kiln-cc-{arch}"


def build_command(zig: list[str], arch: str, out: Path) -> list[str]:
    """How the checked-in client for ``arch`` is made (``zig`` runs ziglang)."""
    return _build_command(zig, arch, out, SOURCE)


def rebuild() -> None:
    """Make the checked-in clients again from the source (``./dev cc-client``)."""
    rebuild_helpers(SOURCE, binary_name)


def binary() -> Path | None:
    """The client built for this machine, if Kiln ships one for it."""
    return helper_binary(FOLDER, binary_name)


if __name__ == "__main__":
    rebuild()
