"""The messages the core raises as UserError, read from its source: each raise site's text as a template whose
f-string fields, `.format` fields and pieces built elsewhere are wildcards."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "llama_space"
ERRORS = {"UserError", "NotFoundError", "BackendError", "QueueFullError", "ModelLoadError", "MemoryBoundError",
          "RowError"}
WILD = "\x00"  # a piece of a message the source does not spell out


@dataclass(frozen=True)
class Site:
    """One raise site: where, and the texts it can raise (WILD for each unspelled piece)."""

    file: str
    function: str
    line: int
    texts: tuple[str, ...]


class _Module:
    def __init__(self, path: Path, functions: dict[str, list[ast.FunctionDef]]) -> None:
        self.path, self.functions = path, functions
        self.tree = ast.parse(path.read_text())
        self.constants = {target.id: node.value for node in self.tree.body if isinstance(node, ast.Assign)
                          for target in node.targets if isinstance(target, ast.Name)}

    def texts(self, node: ast.AST, scope: ast.AST | None, depth: int = 0) -> set[str]:
        """Every text `node` can evaluate to."""
        if depth > 6:
            return {WILD}
        again = lambda child, where=scope: self.texts(child, where, depth + 1)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.JoinedStr):
            out = {""}
            for part in node.values:
                if not isinstance(part, ast.FormattedValue):
                    pieces = {part.value}
                elif part.conversion == -1 and part.format_spec is None:  # the value's own text
                    pieces = again(part.value)
                else:
                    pieces = {WILD}
                out = {re.sub(f"{WILD}+", WILD, a + b) for a in out for b in pieces}
            return out
        if isinstance(node, ast.IfExp):
            return again(node.body) | again(node.orelse)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return {re.sub(f"{WILD}+", WILD, a + b) for a in again(node.left) for b in again(node.right)}
        if isinstance(node, ast.BoolOp):
            return set().union(*(again(value) for value in node.values))
        if isinstance(node, ast.Name):
            return self._name(node.id, scope, depth)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and isinstance(
                self.constants.get(node.value.id), ast.Dict):  # a message picked from a module's table
            return set().union(*(again(value) for value in self.constants[node.value.id].values))
        if isinstance(node, ast.Call):
            return self._call(node, scope, depth)
        return {WILD}

    def _name(self, name: str, scope: ast.AST | None, depth: int) -> set[str]:
        if scope is not None:
            values = [n.value for n in ast.walk(scope) if isinstance(n, ast.Assign)
                      for target in n.targets if isinstance(target, ast.Name) and target.id == name]
            if values:
                return set().union(*(self.texts(value, scope, depth + 1) for value in values))
        if name in self.constants:
            return self.texts(self.constants[name], None, depth + 1)
        return {WILD}

    def _call(self, node: ast.Call, scope: ast.AST | None, depth: int) -> set[str]:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "format":
            return {_fields_to_wild(text) for text in self.texts(func.value, scope, depth + 1)}
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        local = [node for node in self.tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.name == name]
        definitions = local or self.functions.get(name, [])
        if name == "str" or not definitions:
            return {WILD}
        out = set()
        for definition in definitions:
            for ret in ast.walk(definition):
                if isinstance(ret, ast.Return) and ret.value is not None:
                    out |= self.texts(ret.value, definition, depth + 1)
        return out or {WILD}


def _fields_to_wild(text: str) -> str:
    import string

    try:
        parsed = list(string.Formatter().parse(text.replace(WILD, "\x01")))
    except ValueError:
        return text
    return "".join(literal.replace("\x01", WILD) + (WILD if field is not None else "")
                   for literal, field, _, _ in parsed)


def raise_sites(root: Path = CORE) -> list[Site]:
    """Every `raise SomeUserError(...)` (and `return SomeUserError(...)`) outside the web layer."""
    paths = [p for p in sorted(root.rglob("*.py")) if "web" not in p.relative_to(root).parts]
    functions: dict[str, list[ast.FunctionDef]] = {}
    trees = {}
    for path in paths:
        trees[path] = tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.setdefault(node.name, []).append(node)
    sites = []
    for path in paths:
        module = _Module(path, functions)
        for function in [module.tree, *(n for n in ast.walk(module.tree) if isinstance(
                n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
            for node in ast.iter_child_nodes(function) if function is module.tree else ast.walk(function):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ERRORS
                        and node.args):
                    scope = None if function is module.tree else function
                    sites.append(Site(str(path.relative_to(root.parent)), getattr(function, "name", "<module>"),
                                      node.lineno, tuple(sorted(module.texts(node.args[0], scope)))))
    return sites


# Where the core writes text the UI shows besides its errors: dict keys and keyword arguments of statuses and
# reports, a stage's name given to an export's Reporter, an evaluation's progress line, and the functions that
# word a summary, a plan's reason, a job's end or what an export needs.
STATUS_KEYS = {"message", "error", "summary", "reason", "stage"}
STATUS_CALLS = {"Reporter": 1, "_update": 3}  # function name: the position of its text argument
STATUS_FUNCTIONS = {"_summary", "_reason", "describe", "_needs", "failure_message", "died_message",
                    "interrupted_message", "_formula_warning", "_budget_warning", "changes_disabled_reason",
                    "summary_line"}


def status_texts(root: Path = CORE) -> list[Site]:
    """Every status text of the core (see STATUS_KEYS, STATUS_CALLS, STATUS_FUNCTIONS) outside the web layer."""
    paths = [p for p in sorted(root.rglob("*.py")) if "web" not in p.relative_to(root).parts]
    functions: dict[str, list[ast.FunctionDef]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.setdefault(node.name, []).append(node)
    sites = []
    for path in paths:
        module = _Module(path, functions)
        for function in (n for n in ast.walk(module.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            found = []
            for node in ast.walk(function):
                if isinstance(node, ast.Dict):
                    found += [v for k, v in zip(node.keys, node.values, strict=True)
                              if isinstance(k, ast.Constant) and k.value in STATUS_KEYS]
                elif isinstance(node, ast.Call):
                    found += [kw.value for kw in node.keywords if kw.arg in STATUS_KEYS]
                    name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                    if name in STATUS_CALLS and len(node.args) > STATUS_CALLS[name]:
                        found.append(node.args[STATUS_CALLS[name]])
                elif isinstance(node, ast.Return) and function.name in STATUS_FUNCTIONS and node.value is not None:
                    found.append(node.value)
            for node in found:
                texts = tuple(sorted(t for t in module.texts(node, function) if t.strip(WILD)))
                if texts:
                    sites.append(Site(str(path.relative_to(root.parent)), function.name, node.lineno, texts))
    return sites
