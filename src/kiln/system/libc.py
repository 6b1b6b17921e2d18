"""The process's own C library through ctypes, for the few Linux calls the
``os`` module lacks (``syncfs``, ``prctl``).

``CDLL(None)`` opens the symbols already loaded into the process, libc's
among them; ``ctypes.util.find_library`` would instead run ``ldconfig -p``
in a subprocess, milliseconds that every build syncing its store paid.
"""

from __future__ import annotations

import ctypes
import functools

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any


@functools.cache
def libc() -> Any:
    """The C library (Linux; elsewhere ``AttributeError`` on the calls)."""
    return ctypes.CDLL(None, use_errno=True)
