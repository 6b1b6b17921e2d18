"""Hashing a 1 GiB file with `Digest.of_file` vs raw in-process SHA-256.

The peer is hashlib over a buffer already in memory: the CPU's SHA-256
throughput with no I/O at all. The file is in the page cache (written, then
read once), so the ratio shows what reading costs Kiln on top of hashing.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import report
from kiln.model.digest import Digest

SIZE = int(os.environ.get("BENCH_HASH_BYTES", str(1 << 30)))
BLOCK = 64 << 20


def raw_hashlib(block: bytes) -> float:
    start = time.perf_counter()
    h = hashlib.sha256()
    for _ in range(SIZE // BLOCK):
        h.update(block)
    h.hexdigest()
    return time.perf_counter() - start


def kiln_file(path: Path) -> float:
    start = time.perf_counter()
    Digest.of_file(path)
    return time.perf_counter() - start


def main() -> list[dict]:
    block = os.urandom(BLOCK)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        path = Path(tmp) / "big"
        with open(path, "wb") as f:
            for _ in range(SIZE // BLOCK):
                f.write(block)
        kiln_file(path)  # warm the page cache
        raws, kilns = [], []
        for _ in range(5):
            raws.append(raw_hashlib(block))
            kilns.append(kiln_file(path))
        raw, ours = statistics.median(raws), statistics.median(kilns)
    print(
        f"sha256 of {SIZE >> 20} MiB: raw hashlib {SIZE / raw / 1e9:.2f} GB/s, "
        f"kiln Digest.of_file {SIZE / ours / 1e9:.2f} GB/s, "
        f"throughput ratio {raw / ours:.2f} (goal >= 0.90)",
        flush=True,
    )
    result = report("hash 1 GiB file (time)", ours, "hashlib in memory", raw, "<= 1.11")
    result["throughput_ratio"] = raw / ours
    return [result]


if __name__ == "__main__":
    main()
