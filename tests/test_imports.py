"""The import graph of ``gvae_dist`` has no cycle.

Every ``import`` counts, at module level and inside functions (a deferred import still ties the
two modules together), except those under ``if TYPE_CHECKING:``, which never run. A cycle means a
definition sits in the wrong module (e.g. the ``Batch`` contract beside the loader that
dispatches to backends which need the contract); the fix is to move it, not to defer the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gvae_dist"


def _modules(pkg: Path) -> dict[str, Path]:
    mods = {}
    for path in pkg.rglob("*.py"):
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _runtime_nodes(tree: ast.AST):
    """The nodes of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` counts ``a.b`` when that
    is a module, else ``a``; importing a submodule also runs its package's ``__init__``, which
    stays empty here, so packages are not added)."""
    mods = _modules(pkg)
    root = pkg.name

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str | None] = set()
        is_pkg = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.split(".")[0] == root)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")[: None if is_pkg else -1]
                    base = base[: len(base) - node.level + 1]
                    name = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    name = node.module or ""
                if name.split(".")[0] != root:
                    continue
                for a in node.names:
                    sub = f"{name}.{a.name}"
                    deps.add(sub if sub in mods else owner(name))
        deps -= {None, mod, root}
        graph[mod] = deps  # type: ignore[assignment]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_deferred_imports_and_skips_type_checking_ones():
    graph = import_graph()
    assert "gvae_dist.model" in graph["gvae_dist.train"]  # module level
    assert "gvae_dist.data.stream" in graph["gvae_dist.data.loader"]  # inside a function
    assert "gvae_dist.data.stream_dali" in graph["gvae_dist.data.stream"]
    assert "gvae_dist.config" not in graph["gvae_dist.model"]  # under `if TYPE_CHECKING:` only


def test_find_cycle_finds_one(tmp_path):
    pkg = tmp_path / "gvae_dist"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from gvae_dist.data.b import X\n")
    (pkg / "data" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "data" / "c.py").write_text("import gvae_dist.data.a\n")
    assert find_cycle(import_graph(pkg)) == [
        "gvae_dist.data.a",
        "gvae_dist.data.b",
        "gvae_dist.data.c",
        "gvae_dist.data.a",
    ]
    (pkg / "data" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gvae_dist.data.a\n"
    )
    assert find_cycle(import_graph(pkg)) is None
