"""Kiln: a build system where every step is a pure, memoized function.

The public Python API: the names in ``__all__``, ``kiln.api`` (building:
``build(BuildRequest) -> BuildReport``) and ``kiln.build`` (what build files
import); everything else is internal. Names here load on first use so that
the ``kiln`` command starts quickly.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

__version__ = "0.1.0"

__all__ = [
    "Digest",
    "KilnError",
    "Store",
    "__version__",
]

if TYPE_CHECKING:
    from kiln.errors import KilnError
    from kiln.model.digest import Digest
    from kiln.store import Store


# (start-up: `import kiln` is on the no-op path; each name loads its module
# on first use)
def __getattr__(name: str) -> object:
    if name == "Digest":
        from kiln.model.digest import Digest

        return Digest
    if name == "KilnError":
        from kiln.errors import KilnError

        return KilnError
    if name == "Store":
        from kiln.store import Store

        return Store
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")
