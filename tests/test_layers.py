"""The package's layers (llama_space.LAYERS): no import runs back up, and no two packages import each other.

Every `import` statement of every module counts: at the top, inside functions (a lazy import is a dependency
all the same, only a later one) and under `if TYPE_CHECKING:` (an annotation naming a higher layer's class ties
the lower layer to that class just as firmly, even though nothing is imported at run time). Imports built from
strings at run time (importlib) are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_space

PACKAGE = Path(llama_space.__file__).parent
ROOT = PACKAGE.parent
RANK = {unit: rank for rank, layer in enumerate(llama_space.LAYERS) for unit in layer}
ROOT_UNIT = ""  # llama_space/__init__.py itself (the version, LAYERS): below everything


@dataclass(frozen=True)
class Import:
    """One import of a project module: where it is written and which unit it reaches."""

    path: Path
    line: int
    target: str  # the dotted module name as imported
    source_unit: str
    target_unit: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.target}"


def unit_of(module: str) -> str:
    """The layer unit of dotted module `module` (llama_space.<unit>...); ROOT_UNIT for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_UNIT


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names of what `node` imports, resolved against `module` for relative imports."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    names = [f"{base}.{alias.name}" for alias in node.names]
    # `from llama_space.jobs import files` names a module; `from llama_space.errors import UserError`, a
    # name of one: either way the import reaches base's unit, and the message names the module.
    modules = [name for name in names if is_module(name)]
    yield from modules or [base]


def project_imports() -> list[Import]:
    """Every import of a llama_space module by a llama_space module, outside the importer's own unit."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in imported_modules(node, module, path.name == "__init__.py"):
                if target.split(".")[0] != llama_space.__name__:
                    continue
                source_unit, target_unit = unit_of(module), unit_of(target)
                if target_unit not in RANK:  # a name of llama_space/__init__.py, such as LAYERS
                    target_unit = ROOT_UNIT
                if source_unit != target_unit:
                    found.append(Import(path, node.lineno, target, source_unit, target_unit))
    return found


def rank(unit: str) -> int:
    return -1 if unit == ROOT_UNIT else RANK[unit]


def test_every_package_and_root_module_has_a_layer():
    units = {path.stem if path.suffix else path.name for path in PACKAGE.iterdir()
             if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()}
    unplaced = sorted(units - RANK.keys())
    assert not unplaced, f"place {unplaced} in llama_space.LAYERS (llama_space/__init__.py)"


def test_no_import_runs_back_up_the_layers():
    upward = [f"{imp} ({imp.source_unit or 'llama_space'} may not import {imp.target_unit}: "
              f"layer {rank(imp.target_unit)} is above layer {rank(imp.source_unit)})"
              for imp in project_imports() if rank(imp.target_unit) > rank(imp.source_unit)]
    assert not upward, "imports that run back up llama_space.LAYERS:\n" + "\n".join(upward)


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected groups of units (Tarjan) with more than one member, each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source_unit, set()).add(imp.target_unit)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(unit: str) -> None:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for nxt in graph.get(unit, ()):
            if nxt not in index:
                visit(nxt)
                low[unit] = min(low[unit], low[nxt])
            elif nxt in stack:
                low[unit] = min(low[unit], index[nxt])
        if low[unit] == index[unit]:
            group = []
            while not group or group[-1] != unit:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for unit in sorted(graph):
        if unit not in index:
            visit(unit)
    return groups


def test_no_two_packages_import_each_other():
    imports = project_imports()
    found = []
    for group in cycles(imports):
        edges = [str(imp) for imp in imports if imp.source_unit in group and imp.target_unit in group]
        found.append(f"{' <-> '.join(unit or 'llama_space' for unit in group)}:\n  " + "\n  ".join(edges))
    assert not found, "import cycles between packages:\n" + "\n".join(found)


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path):
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llama_space.web import server\n"
              "def f():\n    from ..service import actions\n")
    tree = ast.parse(source)
    seen = [target for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
            for target in imported_modules(node, "llama_space.model.loading", is_package=False)]
    assert seen == ["typing", "llama_space.web.server", "llama_space.service.actions"]
    assert cycles([Import(tmp_path, 1, "", "a", "b"), Import(tmp_path, 2, "", "b", "c"),
                   Import(tmp_path, 3, "", "c", "a"), Import(tmp_path, 4, "", "c", "d")]) == [["a", "b", "c"]]
