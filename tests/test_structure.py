"""Static checks of the product's module structure (read with ``ast``; nothing is imported or executed).

- no import cycle between product modules (imports that run when a module is imported), and no upward import
  across the layers of ARCHITECTURE.md;
- no private name (leading underscore) imported from another product module;
- every function-level import says why on its line or the line above (start-up time, an optional dependency, ...).
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGE_DIRS = {
    "lipdeploy": "lipdeploy",
    "kernels": "lipdeploy.kernels",
    "export": "lipdeploy.export",
    "bench": "lipdeploy.bench",
}

# Layers, top to bottom (ARCHITECTURE.md): a module may import from its own layer and the layers below it. The first
# matching prefix names a module's layer; "core" is everything else in lipdeploy/. ``python -m lipdeploy`` is the entry
# point, above everything. The root package stands outside the layers: Python imports it before any of its modules
# (so importing it for ``__version__`` or ``__file__`` adds nothing), and it loads its public names on first access.
ROOT_PACKAGE = "lipdeploy"
ENTRY = frozenset({"lipdeploy.__main__"})
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry", ()),
    ("cli", ("lipdeploy.cli",)),
    ("bench", ("lipdeploy.bench",)),
    ("export", ("lipdeploy.export",)),
    (
        "engine",
        (
            "lipdeploy.fit",
            "lipdeploy.fit_config",
            "lipdeploy.fit_result",
            "lipdeploy.captured",
            "lipdeploy.imp",
            "lipdeploy.tasks",
            "lipdeploy.multi_image",
            "lipdeploy.latent_fit",
            "lipdeploy.gan_train",
            "lipdeploy.gan_imp",
            "lipdeploy.demo_generator",
        ),
    ),
    ("backends", ("lipdeploy.backends",)),
    ("kernels", ("lipdeploy.kernels",)),
    ("core", ("lipdeploy",)),
)
LAYER_RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}  # 0 is the top


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the product module imported
    names: tuple[str, ...]  # names taken from it (``from target import a, b``); empty for ``import target``
    line: int
    end_line: int
    function_level: bool  # inside a function body: runs when the function is called
    type_checking: bool  # under ``if TYPE_CHECKING:``: never runs


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE_DIRS[parts[0]], *parts[1:]])


@cache
def product_files() -> dict[str, Path]:
    files = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "results" not in path.relative_to(ROOT).parts:
                files[module_name(path)] = path
    return files


@cache
def source(module: str) -> str:
    return product_files()[module].read_text()


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(source(module), filename=str(product_files()[module]))


def is_package(module: str) -> bool:
    return product_files()[module].name == "__init__.py"


def layer(module: str) -> str:
    if module in ENTRY:
        return "entry"
    for name, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    raise AssertionError(f"{module} is in no layer")


def resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if is_package(module) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def import_statements(module: str) -> tuple[tuple[ast.Import | ast.ImportFrom, bool, bool], ...]:
    """Every import statement of ``module`` (of any module), with whether it is inside a function and whether it is
    under ``if TYPE_CHECKING:``."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool, bool]] = []

    def visit(node: ast.AST, in_function: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function, in_type_checking))
            elif isinstance(child, (ast.expr_context, ast.operator, ast.Constant, ast.Name)):
                continue  # leaves: no statement below them
            nested_function = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            nested_checking = in_type_checking or (isinstance(child, ast.If) and _is_type_checking(child.test))
            visit(child, nested_function, nested_checking)

    visit(tree(module), False, False)
    return tuple(found)


@cache
def imports(module: str) -> tuple[Import, ...]:
    """The product modules ``module`` imports, one entry per imported module (``from . import a, b`` of two
    submodules is two)."""
    return tuple(i for node, fn, tc in import_statements(module) for i in _entries(module, node, fn, tc))


def _entries(module: str, node: ast.Import | ast.ImportFrom, in_function: bool, in_checking: bool) -> list[Import]:
    files = product_files()
    end = node.end_lineno or node.lineno
    if isinstance(node, ast.Import):
        targets = [(alias.name, ()) for alias in node.names]
    else:
        base = resolve(module, node)
        submodules = [a.name for a in node.names if f"{base}.{a.name}" in files]
        names = tuple(a.name for a in node.names if f"{base}.{a.name}" not in files)
        targets = [(f"{base}.{name}", ()) for name in submodules]
        if names or not submodules:
            targets.append((base, names))
    return [
        Import(module, target, names, node.lineno, end, in_function, in_checking)
        for target, names in targets
        if target in files
    ]


def runtime_graph() -> dict[str, set[str]]:
    """Module -> the product modules importing it runs (module-level imports outside ``TYPE_CHECKING``)."""
    return {
        module: {i.target for i in imports(module) if not i.function_level and not i.type_checking}
        for module in product_files()
    }


def import_cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """Every strongly connected group of two or more modules (or a module importing itself) in ``graph``, by default
    the runtime import graph (Tarjan)."""
    graph = runtime_graph() if graph is None else graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def _is_upward(i: Import) -> bool:
    if ROOT_PACKAGE in (i.module, i.target):
        return False
    return LAYER_RANK[layer(i.target)] < LAYER_RANK[layer(i.module)]


def upward_imports() -> list[str]:
    """Imports (at any level, ``TYPE_CHECKING`` ones included) of a module in a higher layer."""
    found = []
    for module in product_files():
        for i in imports(module):
            if _is_upward(i):
                found.append(f"{module}:{i.line} imports {i.target} ({layer(module)} -> {layer(i.target)})")
    return found


def private_imports() -> list[str]:
    """Private names (one leading underscore, not dunder) taken from another product module: by ``from m import
    _name``, or as ``m._name`` of a module imported as ``m``."""
    found = []
    for module in product_files():
        for i in imports(module):
            found += [f"{module}:{i.line} imports {i.target}.{n}" for n in i.names if _private(n)]
        aliases = _module_aliases(module)
        for node in ast.walk(tree(module)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                target = aliases.get(node.value.id)
                if target is not None and target != module:
                    found.append(f"{module}:{node.lineno} uses {target}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_aliases(module: str) -> dict[str, str]:
    """Local name -> product module, for modules bound by ``import a.b as m`` or ``from a import b``."""
    files = product_files()
    aliases = {}
    for node, _, _ in import_statements(module):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in files:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in files:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def uncommented_function_imports() -> list[str]:
    """Function-level imports (of any module) with no comment on their lines or the line above, as ``path:line``."""
    return [
        f"{path.relative_to(ROOT)}:{line}"
        for module, path in product_files().items()
        for line in uncommented_import_lines(source(module), _function_level_spans(module))
    ]


MAX_FUNCTION_LINES = 80  # the house rule; Triton kernels (``@triton.jit``) are exempt: one kernel is one launch


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions (and methods) longer than ``limit`` lines, ``def`` to last line, outside Triton kernels."""
    found = []
    for module, path in product_files().items():
        for node in ast.walk(tree(module)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            jit = any("jit" in ast.unparse(d) for d in node.decorator_list)
            if lines > limit and not jit:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def _function_level_spans(module: str) -> list[tuple[int, int]]:
    return [(n.lineno, n.end_lineno or n.lineno) for n, in_function, _ in import_statements(module) if in_function]


def uncommented_import_lines(text: str, spans: list[tuple[int, int]] | None = None) -> list[int]:
    """The first lines of the function-level imports of ``text`` (their line ``spans`` when known) that carry no
    comment on their lines or the line above. A comment covers the run of import statements it starts (statements
    with only blank lines between them, as isort separates third-party from first-party imports)."""
    if spans is None:
        spans = [
            (child.lineno, child.end_lineno or child.lineno)
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for child in ast.walk(node)
            if isinstance(child, (ast.Import, ast.ImportFrom))
        ]
    if not spans:
        return []
    lines = text.splitlines()
    commented = _comment_lines(text)
    said: set[int] = set()  # last lines of the imports that carry a comment
    found = []
    for first, last in sorted(set(spans)):
        above = first - 1
        while above > 0 and not lines[above - 1].strip():
            above -= 1
        if commented.intersection(range(first - 1, last + 1)) or above in said:
            said.add(last)
        else:
            found.append(first)
    return found


def _comment_lines(text: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


# --------------------------------------------------------------------------------------------------- the checks


def test_the_scan_sees_the_product() -> None:
    """The checks below look at real code: the known modules and an import edge between them are found."""
    files = product_files()
    for module in ("lipdeploy.ticket", "lipdeploy.cli", "lipdeploy.kernels.dispatch", "lipdeploy.export.onnx_export"):
        assert module in files
    assert "lipdeploy.errors" in runtime_graph()["lipdeploy.fileio"]
    assert {layer(m) for m in files} == set(LAYER_RANK)


def test_the_checks_see_what_they_look_for() -> None:
    """Each check finds its own kind of finding in a made-up example (so an empty result means something)."""
    node = ast.parse("from ..fileio import _tmp, atomic_output").body[0]
    (entry,) = _entries("lipdeploy.ticket.files", node, in_function=True, in_checking=False)
    assert (entry.target, entry.names, entry.function_level) == ("lipdeploy.fileio", ("_tmp", "atomic_output"), True)
    assert [n for n in entry.names if _private(n)] == ["_tmp"] and not _private("__version__")
    example = (
        "import os\n"
        "def f():\n"
        "    import json\n"  # line 3: no comment
        "    # slow: only here\n"
        "    import onnx\n"
        "    from onnx import helper\n"  # covered by the comment above the run
        "\n"
        "    from . import networks\n"  # still the run: only a blank line between
        "    x = 1\n"
        "    import torch\n"  # line 10: code ends the run
        "    import numpy  # optional\n"
    )
    assert uncommented_import_lines(example) == [3, 10]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}) == [["a", "b", "c"], ["e"]]
    assert layer("lipdeploy.cli.run") == "cli" and layer("lipdeploy.kernels.format") == "kernels"


def test_no_import_cycle() -> None:
    assert import_cycles() == []


def test_no_upward_import() -> None:
    assert upward_imports() == []


def test_no_private_name_crosses_modules() -> None:
    assert private_imports() == []


def test_every_function_level_import_says_why() -> None:
    assert uncommented_function_imports() == []


def test_no_function_over_the_limit() -> None:
    assert long_functions() == []


def test_the_length_check_counts_lines() -> None:
    """The limit is real: at 20 lines, the product has long functions, and every one of them is named."""
    short = long_functions(20)
    assert short and all(" lines)" in entry for entry in short)


if __name__ == "__main__":  # a report of every finding: python tests/test_structure.py
    for title, items in (
        ("cycles", [" -> ".join(c) for c in import_cycles()]),
        ("upward", upward_imports()),
        ("private", private_imports()),
        ("uncommented function-level imports", uncommented_function_imports()),
        ("long functions", long_functions()),
    ):
        print(f"{title}: {len(items)}")
        for item in items:
            print("  ", item)
