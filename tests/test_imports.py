"""The package's import structure, read from the source (no module is imported): packages import one
way (model <- data <- store <- run <- api/cli, each above the base modules), no cycles between
featdump's modules, no private name imported from another module, a core that imports neither the
CLI nor the console, and a `--help`/`--version` path that does not load torch.

Every ``featdump/**/*.py`` is parsed; every ``import``/``from ... import`` counts, function-local ones
included (they run too, only later), except those under ``if TYPE_CHECKING:`` (never run). The run-time
checks of the same promise are ``test_version_and_help_do_not_import_torch`` (tests/behaviour/
test_cli_core.py) and ``test_import_and_version_do_not_load_torch`` (tests/test_api.py).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "featdump"

# The layers, lowest first: a module imports only from its own layer and those below. Base modules
# (errors, text, options, environment, queues, ...) sit directly in featdump/ and import only each other
# (found below); the other modules directly in featdump/ (api, viz, ...) sit above run.
PACKAGES = ("featdump.model", "featdump.data", "featdump.store", "featdump.run")

CONSOLE = ("rich",)
HEAVY = ("torch", "timm", "torchvision")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, top: bool = True) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node`` and whether it runs at import time (module level)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from (item for stmt in child.orelse for item in _walk_stmt(stmt, top))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, top
            continue
        nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, top and not nested)


def _walk_stmt(stmt: ast.stmt, top: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, top
    else:
        yield from _walk(stmt, top)


def imports(module: str) -> dict[str, bool]:
    """``{imported module: runs at import time}`` for one featdump module (absolute and relative imports)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, bool] = {}

    def add(name: str, top: bool) -> None:
        found[name] = found.get(name, False) or top

    for node, top in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, top)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
        for sub in submodules:
            add(sub, top)
        if len(submodules) < len(node.names):  # names taken from the module itself
            add(target, top)
    return found


GRAPH: dict[str, dict[str, bool]] = {m: imports(m) for m in MODULES}


def _internal(module: str) -> set[str]:
    return {m for m in GRAPH[module] if m in MODULES and m != module}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle in the graph (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_walk_sees_the_package() -> None:
    """The walker is live: it finds the packages and imports of every kind (relative, local, plain)."""
    assert {"featdump", "featdump.errors", "featdump.options", "featdump.cli.commands"} <= set(MODULES)
    assert any(GRAPH[m] for m in MODULES if m.startswith("featdump.cli"))
    local = {m for m, deps in GRAPH.items() for d, top in deps.items() if d in MODULES and not top}
    assert local, "no function-local featdump import found: the walk misses them"


def _base() -> set[str]:
    """The modules directly in featdump/ whose featdump imports are all base modules themselves."""
    base = {m for m, path in MODULES.items() if m.count(".") == 1 and path.name != "__init__.py"} | {"featdump"}
    while shrunk := {m for m in base if any(d in MODULES and d not in base for d in GRAPH[m])}:
        base -= shrunk
    return base


BASE = _base()


def layer(module: str) -> int:
    """0 for the base modules, 1-4 for model, data, store, run; 5 for the rest (api, viz, cli)."""
    if module in BASE:
        return 0
    for k, package in enumerate(PACKAGES, 1):
        if module == package or module.startswith(package + "."):
            return k
    return len(PACKAGES) + 1


def upward(graph: dict[str, dict[str, bool]]) -> list[str]:
    return sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps if d in MODULES and layer(d) > layer(m))


def test_packages_import_one_way() -> None:
    """Module-level and function-local imports alike: a lazy import from above is still a cycle in the design."""
    assert upward(GRAPH) == []


def test_the_layer_check_can_fail() -> None:
    bad = {**GRAPH, "featdump.data.sources": {**GRAPH["featdump.data.sources"], "featdump.run.placement": False}}
    assert "featdump.data.sources imports featdump.run.placement" in upward(bad)
    assert layer("featdump.cli.commands") > layer("featdump.run.job") > layer("featdump.store.sink") > layer("featdump.data.sources")
    assert layer("featdump.data.sources") > layer("featdump.model.backbone") > layer("featdump.options") == 0


def private_imports(module: str, path: Path | None = None) -> list[str]:
    """``from featdump.x import _name`` (dunders such as ``__version__`` are public)."""
    tree = ast.parse((path or MODULES[module]).read_text(encoding="utf-8"))
    return [
        f"{module} imports {node.module}.{alias.name}"
        for node, _ in _walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("featdump")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.endswith("__")
    ]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def private_defined(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, variables and ``self.``/``cls.`` attributes."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _self(node.value):
            found.add(node.attr)
    return {name for name in found if _private(name)}


def _self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


TREES = {m: ast.parse(path.read_text(encoding="utf-8")) for m, path in MODULES.items()}
PRIVATE = {m: private_defined(tree) for m, tree in TREES.items()}


def private_attributes(module: str, tree: ast.AST) -> list[str]:
    """``obj._name`` (obj not ``self``/``cls``) where another featdump module defines ``_name``: a
    private attribute of another module's object (third-party ones such as ``os._exit`` do not count)."""
    elsewhere = set().union(*(names for m, names in PRIVATE.items() if m != module))
    return [
        f"{module} reads {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _private(node.attr) and not _self(node.value) and node.attr in elsewhere
    ]


def test_no_private_name_crosses_a_module() -> None:
    assert [p for m in MODULES for p in private_imports(m)] == []
    tools = [p for folder in ("bench", "scripts") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert [p for path in tools for p in private_imports(str(path.relative_to(ROOT)), path)] == []  # nor to the tools
    assert [p for m, tree in TREES.items() for p in private_attributes(m, tree)] == []


def test_the_private_attribute_check_can_fail() -> None:
    reader = next(iter(PRIVATE["featdump.store.reader"]))
    bad = ast.parse(f"def f(ff):\n    return ff.{reader}, os._exit, self.{reader}")
    assert private_attributes("featdump.store.export", bad) == [f"featdump.store.export reads ff.{reader}"]


def test_no_import_cycles() -> None:
    cycle = _cycle({m: _internal(m) for m in MODULES})
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search finds one


def _is_cli(module: str) -> bool:
    return module == "featdump.cli" or module.startswith("featdump.cli.") or module == "featdump.__main__"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _is_cli(m)))
def test_core_imports_neither_the_cli_nor_the_console(module: str) -> None:
    """Only featdump/cli/ prints: the library (and viz, the API) never imports it or rich."""
    bad = sorted(
        d
        for d in GRAPH[module]
        if _is_cli(d) or d.split(".")[0] in CONSOLE
    )
    assert not bad, f"{module} imports {bad}"


def test_help_and_version_do_not_load_torch() -> None:
    """What runs at import time from the console script down (module-level featdump imports,
    followed transitively) imports no torch/timm: those load inside the commands that need them."""
    seen, todo = set(), ["featdump.__main__", "featdump.cli", "featdump.cli.commands"]
    heavy: list[str] = []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for dep, top in GRAPH[module].items():
            if not top:
                continue
            if dep.split(".")[0] in HEAVY:
                heavy.append(f"{module} imports {dep}")
            elif dep in MODULES:  # with its parent packages, which run first
                parts = dep.split(".")
                todo.extend(".".join(parts[:k]) for k in range(1, len(parts) + 1))
            elif dep.rpartition(".")[0] in MODULES:  # ``import featdump.x.y`` of a name in a module
                todo.append(dep.rpartition(".")[0])
    assert "featdump.errors" in seen
    assert not heavy, heavy
