"""The local store: content-addressed blobs, action cache, roots and GC."""

from kiln.store.cas import ContentStore
from kiln.store.gc import GcPolicy, GcReport
from kiln.store.local import Execution, PutResult, Store, StoreStats, default_home
from kiln.store.verify import VerifyReport

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
