"""What WebAssembly guests written in C use to reach Kiln: ``kiln.h``, the
``kiln`` import module (memoized calls) declared for clang, with small
helpers. Build files get it with ``kiln.build.c.guest_header()``."""

from __future__ import annotations

from pathlib import Path

HEADER = Path(__file__).with_name("kiln.h")
