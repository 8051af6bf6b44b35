"""The layer rule of docs/architecture.md, checked on the code itself.

The layer order is read from the table under "## Layers" in docs/architecture.md (one row per
package, first row the base). Every module's imports (at module level or inside functions) are
read with ``ast`` and resolved to arihpc modules: none may point to a later layer, and no chain
of imports may lead back to where it started. The table and the packages on disk must agree.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE_ROOT = REPO_ROOT / "arihpc"
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
BASE = "arihpc"                 # the base layer: the modules directly in arihpc/
MAX_BASE_MODULES = 5            # besides __init__.py
# A row of the layer table: | 3 | `arihpc/store/` | ...
_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`arihpc/(?:([a-z_]+)/)?`")


def layer_table(text: str) -> list[str]:
    """Package names in layer order (``arihpc`` for the base) from the "## Layers" table."""
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [_ROW.match(line) for line in section.splitlines()]
    rows = [(int(m.group(1)), f"{BASE}.{m.group(2)}" if m.group(2) else BASE) for m in rows if m]
    assert [n for n, _ in rows] == list(range(1, len(rows) + 1)), \
        f"{ARCHITECTURE}: the layer table's rows must be numbered 1, 2, 3, ...: {rows}"
    return [name for _, name in rows]


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``root`` (a package's is its
    ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """The arihpc modules that ``name`` imports, with the line of each import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                # ``from arihpc.catalog import fields`` imports a module; ``import x`` a name.
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in modules else base, node.lineno))
    return [(target, line) for target, line in found
            if target == BASE or target.startswith(BASE + ".")]


def layer_of(module: str, layers: list[str]) -> int:
    """Index of the module's layer: its package in the table, else the base."""
    parts = module.split(".")
    package = ".".join(parts[:2]) if len(parts) > 1 else BASE
    return layers.index(package) if package in layers else 0


def import_graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def downward_imports(graph: dict, layers: list[str]) -> list[str]:
    """Every import of a module in a later layer than the importer's, as readable lines."""
    return [f"{source} (layer {layers[layer_of(source, layers)]}) imports {target} "
            f"(layer {layers[layer_of(target, layers)]}) at line {line}"
            for source, targets in sorted(graph.items()) for target, line in targets
            if layer_of(target, layers) > layer_of(source, layers)]


def import_circles(graph: dict) -> list[list[str]]:
    """The strongly connected groups of more than one module (or a module importing itself):
    each holds an import circle. Tarjan's algorithm, iterative."""
    edges = {name: sorted({t for t, _ in targets if t in graph}) for name, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in edges[node]:
                        circles.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(circles)


@pytest.fixture(scope="module")
def layers() -> list[str]:
    return layer_table(ARCHITECTURE.read_text())


def test_the_layer_table_and_the_packages_on_disk_agree(layers):
    on_disk = {BASE} | {f"{BASE}.{p.parent.name}" for p in PACKAGE_ROOT.glob("*/__init__.py")}
    assert len(layers) == len(set(layers)), f"a package is listed twice: {layers}"
    assert set(layers) == on_disk, (f"in {ARCHITECTURE.name} only: {set(layers) - on_disk}; "
                                    f"on disk only: {on_disk - set(layers)}")
    assert layers[0] == BASE


def test_the_layer_table_names_every_module_of_its_package(layers):
    rows = {}
    for line in ARCHITECTURE.read_text().split("\n## Layers", 1)[1].splitlines():
        match = _ROW.match(line)
        if match:
            rows[f"{BASE}.{match.group(2)}" if match.group(2) else BASE] = line
    unnamed = []
    for package, row in rows.items():
        folder = PACKAGE_ROOT.joinpath(*package.split(".")[1:])
        for path in sorted(folder.glob("*.py")):
            if path.stem.startswith("__"):
                continue
            name = path.name if package == BASE else path.stem
            if not re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", row):
                unnamed.append(f"{package}: {path.name}")
    assert unnamed == [], f"modules {ARCHITECTURE.name}'s layer table does not name"


def test_few_modules_outside_the_layer_packages():
    loose = sorted(p.name for p in PACKAGE_ROOT.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_BASE_MODULES, f"modules directly in arihpc/: {loose}"
    # every other module sits in a package (a folder with an __init__.py)
    strays = [str(p) for p in PACKAGE_ROOT.rglob("*.py")
              if p.parent != PACKAGE_ROOT and not (p.parent / "__init__.py").is_file()]
    assert not strays


def test_each_package_says_what_it_may_import(layers):
    for package in layers[1:]:
        init = PACKAGE_ROOT / package.split(".")[1] / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init}: its docstring says what it is and may import"


def test_no_import_points_down_the_layer_list(layers):
    assert downward_imports(import_graph(PACKAGE_ROOT), layers) == []


def test_no_import_circles():
    assert import_circles(import_graph(PACKAGE_ROOT)) == []


def test_the_checks_catch_a_downward_import_and_a_circle(tmp_path):
    """The checks themselves, on a small package made for it: a base module importing the
    top layer is found, and so is a circle inside a layer."""
    root = tmp_path / "arihpc"
    for folder, files in {"": {"mous.py": "from arihpc.cli import main\n"},
                          "store": {"a.py": "from arihpc.store import b\n",
                                    "b.py": "import arihpc.store.a\n"},
                          "cli": {"main.py": "from arihpc import mous\n"
                                             "from arihpc.store import a\n"}}.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").write_text('"""May import: ..."""\n')
        for name, text in files.items():
            (root / folder / name).write_text(text)
    graph = import_graph(root)
    layers = layer_table("\n## Layers\n| 1 | `arihpc/` | base |\n| 2 | `arihpc/store/` | s |\n"
                         "| 3 | `arihpc/cli/` | c |\n")
    assert layers == ["arihpc", "arihpc.store", "arihpc.cli"]
    assert downward_imports(graph, layers) == [
        "arihpc.mous (layer arihpc) imports arihpc.cli.main (layer arihpc.cli) at line 1"]
    # the downward import closes a circle with the upward one; the store has one of its own
    assert import_circles(graph) == [["arihpc.cli.main", "arihpc.mous"],
                                     ["arihpc.store.a", "arihpc.store.b"]]
