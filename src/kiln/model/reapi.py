"""The REAPI v2 messages Kiln uses everywhere, re-exported from one place.

The generated stubs come from ``buildgrid-common``; nothing here is copied
generated code. Protobuf costs ~25 ms to load, so the fast paths (a no-op
``kiln build``, ``kiln store put`` of an unchanged tree) never import this
module, nor a module that imports it (``kiln.model.tree``, ``kiln.model.action``).
"""

from __future__ import annotations

from buildgrid.common.protos.build.bazel.remote.execution.v2 import (
    remote_execution_pb2 as re_pb2,
)

Action = re_pb2.Action
ActionResult = re_pb2.ActionResult
Command = re_pb2.Command
Digest = re_pb2.Digest
Directory = re_pb2.Directory
DirectoryNode = re_pb2.DirectoryNode
ExecutedActionMetadata = re_pb2.ExecutedActionMetadata
FileNode = re_pb2.FileNode
OutputDirectory = re_pb2.OutputDirectory
OutputFile = re_pb2.OutputFile
OutputSymlink = re_pb2.OutputSymlink
Platform = re_pb2.Platform
SymlinkNode = re_pb2.SymlinkNode
Tree = re_pb2.Tree

__all__ = [
    "Action",
    "ActionResult",
    "Command",
    "Digest",
    "Directory",
    "DirectoryNode",
    "ExecutedActionMetadata",
    "FileNode",
    "OutputDirectory",
    "OutputFile",
    "OutputSymlink",
    "Platform",
    "SymlinkNode",
    "Tree",
    "re_pb2",
]
