"""The native ``kiln-cc`` client: its C source and checked-in static builds.

``client.c`` is built like the sandbox's zygote (``kiln.exec.zygote``): a
static musl binary per architecture, made by ziglang and checked in next to
its source (it includes ``kiln/server/private_socket.h``, shared with the
server's native client); ``./dev cc-client`` makes them again.
"""

from __future__ import annotations

from pathlib import Path

from kiln.exec.zygote import Helper

CLIENT = Helper(Path(__file__).parent / "client.c", "kiln-cc")
binary = CLIENT.binary  # the client built for this machine, if Kiln ships one
rebuild = CLIENT.rebuild  # ./dev cc-client

if __name__ == "__main__":
    rebuild()
