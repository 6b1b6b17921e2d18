"""The architecture, checked: which modules may import which.

The import graph is read from the sources (every ``import``, at the top or
inside a function; those under ``if TYPE_CHECKING:`` count only where a
rule says so), so a rule broken anywhere in the code fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "kiln"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(name: str, typing_too: bool) -> set[str]:
    """The kiln modules ``name`` imports."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not typing_too:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


def _cycles(names: set[str]) -> list[list[str]]:
    """Import cycles among ``names`` (runtime imports only)."""
    graph = {n: _imports(n, typing_too=False) & names for n in names}
    cycles, done = [], set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                walk(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(names):
        if start not in done:
            walk(start, [start])
    return cycles


def _under(*prefixes: str) -> set[str]:
    return {m for m in MODULES if any(m == p or m.startswith(f"{p}.") for p in prefixes)}


def test_the_entry_point_cli_and_server_import_no_cycle() -> None:
    assert _cycles(_under("kiln.cli", "kiln.server", "kiln.api")) == []


def test_the_engine_imports_no_cycle() -> None:
    assert _cycles(_under("kiln.engine", "kiln.api")) == []


EXECUTORS = sorted(_under("kiln.exec") - {"kiln.exec.kinds"})


@pytest.mark.parametrize("module", EXECUTORS)
def test_no_executor_imports_the_local_store(module: str) -> None:
    """Executors get an ``ExecContext`` (protocols, folders), never the
    local ``Store``: a remote CAS or action cache can stand in."""
    local = _under("kiln.store") - {"kiln.store.cas", "kiln.store.actioncache", "kiln.store"}
    assert _imports(module, typing_too=True) & local == set()


def test_the_fast_path_imports_no_engine() -> None:
    """What ``kiln build`` loads before it knows it has to build: the
    entry point and everything it imports at the top of a module."""
    heavy = _under("kiln.engine.evaluation", "kiln.engine.scheduler", "kiln.exec", "kiln.cli.app")
    seen, todo = set(), ["kiln.cli.entry"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            tree = ast.parse(MODULES[module].read_text())
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
            names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
            for n in top:
                if isinstance(n, ast.ImportFrom) and n.module:
                    for a in n.names:
                        sub = f"{n.module}.{a.name}"
                        names.add(sub if sub in MODULES else n.module)
            todo += [m for m in names if m in MODULES]
            # a package's __init__ runs before its modules
            todo += [p for p in (module.rpartition(".")[0],) if p in MODULES]
    assert seen & heavy == set()
