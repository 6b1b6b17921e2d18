"""The API of build files (``kilnfile.py``)::

    from kiln.build import target, source, glob, wasm, gather

    @target
    async def hello():
        \"\"\"Says hello.\"\"\"
        tool = source("tools/hello.wasm")
        return await wasm(tool, "world", outputs=["hello.txt"])

See docs/build-files.md for the whole API.
"""

from kiln.engine.rules import (
    Rule,
    Target,
    gather,
    glob,
    native,
    pick,
    read_bytes,
    rule,
    setting,
    source,
    source_tree,
    target,
    unpack,
    wasm,
)
from kiln.engine.values import File, StepResult, Tree
from kiln.rules import c, fetch

__all__ = [
    "File",
    "Rule",
    "StepResult",
    "Target",
    "Tree",
    "c",
    "fetch",
    "gather",
    "glob",
    "native",
    "pick",
    "read_bytes",
    "rule",
    "setting",
    "source",
    "source_tree",
    "target",
    "unpack",
    "wasm",
]
