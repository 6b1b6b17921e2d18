"""The step graph of a recorded build, for ``kiln graph`` and ``kiln inputs``.

History (engine/history.py) records, for every step, the digest of each
input its key was computed from and its result, which names every output
by digest. That is enough to find the edges: step B depends on step A when
B read a value whose digest is one of A's outputs (a file or a folder, or
a file or folder inside an output folder), and A was requested before B (a
rule can pass on only what it already has). Edges are matched by content,
so where several steps made the same bytes, the one that made them at the
path B read them at is named, else the first; and a project file read at
its own path is a source even if some step made the same bytes (an empty
file, say) elsewhere. An input that no step made is one of the build's
inputs: a project file, or a value placed at a path of its own.

A rule may also read a step's output to decide which steps to run (a
dynamic dependency: no step reads it, the rule does). History records which
targets each target awaited, so the graph of a target also holds the steps
of the targets it awaited, and says which targets awaited which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln.errors import KilnError
from kiln.exec.kinds import FETCH_ABI
from kiln.model.digest import Digest
from kiln.model.reapi import re_pb2
from kiln.store.cas import read_blob

if TYPE_CHECKING:
    from kiln.engine.history import StepRow
    from kiln.store.local import Store


@dataclass
class Node:
    """One action of the build (steps requested twice with the same key are one)."""

    key: str
    target: str
    step: str
    status: str
    fetch: bool  # a fetch step: what it made is a fetched input of the build

    @property
    def label(self) -> str:
        return f"{self.target}: {self.step}"


@dataclass
class Edge:
    """``to`` read the outputs of ``source`` at ``paths`` (paths in ``to``'s inputs)."""

    source: str
    to: str
    paths: list[str] = field(default_factory=list)


@dataclass
class Input:
    """A value the build read that no step of it made: its path in the
    steps that read it, its digest, and those steps' keys."""

    path: str
    digest: str
    read_by: list[str] = field(default_factory=list)


@dataclass
class StepGraph:
    """The steps of a build (or of the part one target needs), the edges
    between them, and what they read that no step made."""

    nodes: dict[str, Node]
    edges: list[Edge]
    inputs: list[Input]
    rows: dict[str, StepRow]  # each node's first record
    awaits: dict[str, list[str]] = field(default_factory=dict)  # target -> targets awaited


def _made(store: Store, result: re_pb2.ActionResult) -> list[tuple[str, str]]:
    """(path, digest) of everything a result holds: its output files and
    folders, and every file and folder inside those folders (a folder whose
    tree was collected since is left out)."""
    made = [(f.path, str(Digest.from_proto(f.digest))) for f in result.output_files]
    for d in result.output_directories:
        try:
            data = read_blob(store.cas, Digest.from_proto(d.tree_digest), "output tree")
        except KilnError:
            continue
        tree = re_pb2.Tree.FromString(data)
        children = {str(Digest.of_message(c)): c for c in tree.children}
        stack = [(d.path, tree.root)]
        while stack:
            path, directory = stack.pop()
            made.append((path, str(Digest.of_message(directory))))
            made += [
                (f"{path}/{f.name}", str(Digest.from_proto(f.digest))) for f in directory.files
            ]
            for sub in directory.directories:
                child = children.get(str(Digest.from_proto(sub.digest)))
                if child is not None:
                    stack.append((f"{path}/{sub.name}", child))
    return made


def _producer(
    made: list[tuple[str, str]], key: str, path: str, is_source: Callable[[str], bool]
) -> str | None:
    """Which step made the value a step read at ``path``: of the steps
    requested before it that made those bytes (``made``: their paths and
    keys), one that made them at that path, else (unless ``path`` is a
    project file) the first; None for a value no step made."""
    others = [(p, k) for p, k in made if k != key]
    same = [k for p, k in others if p == path]
    if same:
        return same[0]
    return None if not others or is_source(path) else others[0][1]


def step_graph(
    store: Store,
    rows: list[StepRow],
    targets: set[str] | None = None,
    awaits: dict[str, list[str]] | None = None,
    is_source: Callable[[str], bool] = lambda path: False,
) -> StepGraph:
    """The graph of the steps in ``rows`` (one build's records, in the order
    they were requested; ``awaits``: which targets each target awaited;
    ``is_source``: whether a path is a project file); with ``targets``:
    only the steps of those targets and of the targets they awaited, and
    the steps these need, transitively."""
    awaits = awaits or {}
    nodes: dict[str, Node] = {}
    first: dict[str, StepRow] = {}
    made: dict[str, list[tuple[str, str]]] = {}  # digest -> (path, key) of steps that made it
    edges: dict[tuple[str, str], Edge] = {}
    external: dict[tuple[str, str], Input] = {}
    needs: dict[str, set[str]] = {}
    for row in rows:
        if row.key not in nodes:
            fetch = row.inputs.get("platform", {}).get("kiln-abi") == FETCH_ABI
            nodes[row.key] = Node(row.key, row.target, row.step, row.status, fetch)
            first[row.key] = row
        needs.setdefault(row.key, set())
        for path, digest in sorted(row.inputs.get("inputs", {}).items()):
            source = _producer(made.get(digest, []), row.key, path, is_source)
            if source is None:
                read = external.setdefault((path, digest), Input(path, digest))
                if row.key not in read.read_by:
                    read.read_by.append(row.key)
                continue
            needs[row.key].add(source)
            edge = edges.setdefault((source, row.key), Edge(source, row.key))
            if path not in edge.paths:
                edge.paths.append(path)
        result = row.action_result()
        if result is not None and result.exit_code == 0:
            for path, digest in _made(store, result):
                made.setdefault(digest, []).append((path, row.key))
    if targets is not None:
        targets = _upstream(targets, {t: set(a) for t, a in awaits.items()})
        awaits = {t: a for t, a in awaits.items() if t in targets}
        kept = _upstream({k for k, n in nodes.items() if n.target in targets}, needs)
        nodes = {k: n for k, n in nodes.items() if k in kept}
        edges = {k: e for k, e in edges.items() if e.to in kept}
        for read in external.values():
            read.read_by = [k for k in read.read_by if k in kept]
    return StepGraph(
        nodes,
        list(edges.values()),
        [i for i in external.values() if i.read_by],
        {k: first[k] for k in nodes},
        awaits,
    )


def _upstream(start: set[str], needs: dict[str, set[str]]) -> set[str]:
    """``start`` and everything they need, transitively."""
    seen, stack = set(start), list(start)
    while stack:
        for key in needs.get(stack.pop(), ()):
            if key not in seen:
                seen.add(key)
                stack.append(key)
    return seen


def dot(graph: StepGraph, title: str) -> str:
    """The graph in Graphviz's DOT language: a box per step in a frame per
    target (failed steps red, those that never ran grey), an arrow from each
    step to the steps that read its outputs, and a dashed one from a target
    to each target that awaited it."""
    lines = [
        f"digraph {_quote(title)} {{",
        "  rankdir=LR;",
        "  compound=true;",
        '  node [shape=box, fontname="monospace"];',
    ]
    by_target: dict[str, list[Node]] = {}
    for node in graph.nodes.values():
        by_target.setdefault(node.target, []).append(node)
    clusters = {name: f"cluster_{i}" for i, name in enumerate(by_target)}
    for name, nodes in by_target.items():
        lines.append(f"  subgraph {clusters[name]} {{")
        lines.append(f"    label={_quote(name)};")
        for node in nodes:
            style = _STYLES.get(node.status, "") + (", shape=cds" if node.fetch else "")
            label = f"{node.step}\n{node.status}"
            lines.append(f"    {_quote(node.key)} [label={_quote(label)}{style}];")
        lines.append("  }")
    for edge in graph.edges:
        lines.append(f"  {_quote(edge.source)} -> {_quote(edge.to)};")
    for waiter, awaited in sorted(graph.awaits.items()):
        for name in awaited:
            if name in by_target and waiter in by_target:
                source, to = by_target[name][-1].key, by_target[waiter][0].key
                lines.append(
                    f"  {_quote(source)} -> {_quote(to)} [style=dashed, "
                    f"ltail={clusters[name]}, lhead={clusters[waiter]}];"
                )
    lines.append("}")
    return "\n".join(lines) + "\n"


_STYLES = {
    "failed": ", color=red",
    "skipped": ", color=grey, fontcolor=grey",
    "pending": ", color=grey, fontcolor=grey",
}


def _quote(text: str) -> str:
    """``text`` as a DOT string (a newline becomes a line break of the label)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
