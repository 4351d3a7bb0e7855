"""A class attribute read from source, without importing the class's module.

Method and metric modules import torch (seconds); the job preflight only needs a constant such as a
method's ``uses_image_encoder``. ``class_constant`` parses the class's module and the modules of its
bases (``from X import Name`` imports, as bench/method_versions.py reads ``version``) and returns the
value of the definition Python's MRO would pick. When the source does not settle it (a computed value,
a base it cannot follow), it imports the class and reads the attribute.
"""

from __future__ import annotations

import ast
import importlib
from typing import Any

from bench.imports import REPO_ROOT

OWN_PACKAGES = ("bench.", "methods.")  # bases elsewhere (dataclasses, torch.nn, ...) define none of ours
ClassKey = tuple[str, str]  # (module, class name)


class _Unsettled(LookupError):
    """The source alone does not give the value."""


def _parse(module: str) -> ast.Module:
    """The source of one of our modules, found by path (``find_spec`` would run its packages' __init__)."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return ast.parse(path.read_text(encoding="utf-8"))
    raise _Unsettled(module)


class _Sources:
    """Parsed modules, and for each class reached: its bases and its own definition of the attribute."""

    def __init__(self, attribute: str):
        self.attribute = attribute
        self.trees: dict[str, ast.Module] = {}
        self.bases: dict[ClassKey, list[ClassKey]] = {}
        self.values: dict[ClassKey, Any] = {}

    def tree(self, module: str) -> ast.Module:
        if module not in self.trees:
            self.trees[module] = _parse(module)
        return self.trees[module]

    def _locate(self, module: str, name: str) -> ClassKey | None:
        """Where the name ``name`` used in ``module`` is defined; None for a class outside our packages."""
        for node in self.tree(module).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return module, name
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        own = node.module.startswith(OWN_PACKAGES)
                        return self._locate(node.module, alias.name) if own else None
        raise _Unsettled(f"{module}.{name}")

    def visit(self, key: ClassKey) -> None:
        if key in self.bases:
            return
        module, name = key
        node = next(n for n in self.tree(module).body if isinstance(n, ast.ClassDef) and n.name == name)
        bases = []
        for base in node.bases:
            if not isinstance(base, ast.Name):  # e.g. nn.Module: only plain names are followed
                if ast.unparse(base).startswith(OWN_PACKAGES):
                    raise _Unsettled(ast.unparse(base))
                continue
            found = self._locate(module, base.id)
            if found is not None:
                bases.append(found)
        self.bases[key] = bases
        for stmt in node.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
                stmt, ast.AnnAssign) and stmt.value is not None else []
            if any(isinstance(t, ast.Name) and t.id == self.attribute for t in targets):
                try:
                    self.values[key] = ast.literal_eval(stmt.value)
                except ValueError as err:
                    raise _Unsettled(f"{module}.{name}.{self.attribute}") from err
        for base in bases:
            self.visit(base)

    def ancestors(self, key: ClassKey) -> set[ClassKey]:
        out: set[ClassKey] = set()
        todo = list(self.bases[key])
        while todo:
            base = todo.pop()
            if base not in out:
                out.add(base)
                todo += self.bases[base]
        return out


def class_constant(target: str, attribute: str) -> Any:
    """``getattr(<class target>, attribute)`` for a class ``package.module.Class`` of bench/methods."""
    module, _, name = target.rpartition(".")
    sources = _Sources(attribute)
    try:
        key = sources._locate(module, name) if target.startswith(OWN_PACKAGES) else None
        if key is None:
            raise _Unsettled(target)
        sources.visit(key)
        defining = [k for k in {key} | sources.ancestors(key) if k in sources.values]
        # the MRO lists a class before its bases, so its first definition is in a class that is not a
        # base of another defining class; when all of those agree, that is the value
        nearest = [sources.values[k] for k in defining
                   if not any(k in sources.ancestors(other) for other in defining if other != k)]
        if not nearest or any(value != nearest[0] for value in nearest):
            raise _Unsettled(target)
        return nearest[0]
    except (_Unsettled, SyntaxError, StopIteration, OSError):
        return imported_constant(target, attribute)


def imported_constant(target: str, attribute: str) -> Any:
    """The attribute read the ordinary way: importing the class's module."""
    module, _, name = target.rpartition(".")
    return getattr(getattr(importlib.import_module(module), name), attribute)
