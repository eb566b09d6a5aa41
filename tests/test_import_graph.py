"""The package's modules import each other without circles (docs/ARCHITECTURE.md, "Layers").

The graph is read from the source with `ast`, not from what Python happens to import: every
`import` and `from ... import` of a retroplan module counts, relative or absolute, at the top of a
file or inside a function (a function-level import only postpones a circle to the first call).
`from PKG import NAME` is an edge to the module PKG.NAME when there is one, else to PKG itself
(its `__init__.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "retroplan"


def module_graph(package: Path) -> dict[str, set[str]]:
    """Module name -> the names of the package's modules it imports."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:  # the innermost module of ours that `name` lies in
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `here` less (level - 1) trailing names
                    parts = here.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    if not anchor:  # above the package: not ours
                        continue
                    base = f"{anchor}.{base}" if base else anchor
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                            for a in node.names]
        graph[module] = {t for t in map(known, targets) if t and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles, each written a -> b -> ... -> a from its first module: in every
    strongly connected group of modules (Tarjan), the shortest circle through each member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:
        for start in sorted(group):
            circle = _circle(graph, group, start)[:-1]
            first = circle.index(min(circle))
            circle = circle[first:] + circle[:first + 1]
            if circle not in found:
                found.append(circle)
    return sorted(found)


def _circle(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A shortest way round from `start` back to it, inside its group."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected group has a circle through each member")


def test_the_package_imports_without_circles():
    graph = module_graph(PACKAGE)
    assert "retroplan.experiment" in graph and "retroplan.traces.digraphs" in graph
    assert "retroplan.traces" in graph["retroplan.traces.suite"]  # relative imports are read
    # the executor knows no study: it is handed the piece function (the circle it once closed)
    assert not graph["retroplan.runner"] & {"retroplan.experiment", "retroplan.experiment_file",
                                            "retroplan.report", "retroplan.study"}
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_reader_finds_circles_through_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("VERSION = 1\n")
    (package / "a.py").write_text("from .sub import b\n")            # relative, a submodule
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    import pkg.c\n")  # absolute, in a function
    (package / "c.py").write_text("from . import VERSION\nfrom .a import x\n")  # a name of a module
    (package / "d.py").write_text("from .. import elsewhere\nimport os\n")    # outside: no edge
    graph = module_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.c"},
                     "pkg.c": {"pkg", "pkg.a"}, "pkg.d": set()}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    (package / "__init__.py").write_text("def lazy():\n    from .c import y\n")  # the package, too
    assert cycles(module_graph(package)) == [["pkg", "pkg.c", "pkg"],
                                             ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
