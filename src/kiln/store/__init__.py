"""The local store: content-addressed blobs, action cache, roots and GC.

Names are loaded on first use so that commands pay only for what they use.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # (typing itself costs milliseconds at start-up)

if TYPE_CHECKING:
    from kiln.store.cas import ContentStore
    from kiln.store.gc import GcPolicy, GcReport
    from kiln.store.local import Execution, PutResult, Store, StoreStats, default_home
    from kiln.store.verify import VerifyReport

_WHERE = {
    "ContentStore": "kiln.store.cas",
    "GcPolicy": "kiln.store.gc",
    "GcReport": "kiln.store.gc",
    "Execution": "kiln.store.local",
    "PutResult": "kiln.store.local",
    "Store": "kiln.store.local",
    "StoreStats": "kiln.store.local",
    "default_home": "kiln.store.local",
    "VerifyReport": "kiln.store.verify",
}

__all__ = [
    "ContentStore",
    "Execution",
    "GcPolicy",
    "GcReport",
    "PutResult",
    "Store",
    "StoreStats",
    "VerifyReport",
    "default_home",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.store' has no attribute {name!r}")
    return getattr(import_module(module), name)
