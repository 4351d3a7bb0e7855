"""methods/versions.json: each method module's class versions next to the sha256 of its source.

A method's ``version`` is part of every cache key; code that changes outputs without a version bump
would silently reuse stale results. The committed file makes that hard to get wrong: the test
``test_method_source_change_needs_a_version_bump`` fails when a module's hash (its own bytes plus
every ``methods`` module it imports, transitively) no longer matches the file while a class version is
unchanged. After bumping the version — or, when the change cannot alter any output (a comment, a
refactor), deliberately — record the new state::

    python -m bench.method_versions --update

(docs/reliability.md, "Method versions").
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
from pathlib import Path

from bench.imports import imported_modules, module_files
from bench.io import read_json, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONS_FILE = "methods/versions.json"
UPDATE_COMMAND = "python -m bench.method_versions --update"


def _versions(tree: ast.Module) -> dict[str, str]:
    """Class name → the string assigned to ``version`` in its body."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "version" for t in stmt.targets)
                        and isinstance(stmt.value, ast.Constant)):
                    found[node.name] = str(stmt.value.value)
    return found


def current_state(root: str | Path = REPO_ROOT) -> dict[str, dict]:
    """Module → {"versions": {class: version}, "sha256": hash of its source and the methods modules it
    imports}, for every module that defines a versioned class (methods/base.py's contract excluded)."""
    root = Path(root)
    modules = module_files(root, ("methods",))
    trees = {name: ast.parse(path.read_bytes()) for name, path in modules.items()}
    deps = {name: imported_modules(tree, modules) for name, tree in trees.items()}
    state = {}
    for name, tree in trees.items():
        versions = _versions(tree)
        if not versions or name == "methods.base":
            continue
        closure, todo = {name}, [name]
        while todo:
            for dep in deps[todo.pop()] - closure:
                closure.add(dep)
                todo.append(dep)
        digest = hashlib.sha256()
        for dep in sorted(closure):
            digest.update(dep.encode() + b"\0" + modules[dep].read_bytes() + b"\0")
        state[name] = {"versions": versions, "sha256": digest.hexdigest()}
    return state


def problems(root: str | Path = REPO_ROOT) -> list[str]:
    """What differs between the committed file and the sources, each with what to do."""
    root = Path(root)
    path = root / VERSIONS_FILE
    recorded = read_json(path) if path.is_file() else {}
    found = []
    if not recorded:
        found.append(f"{path} is missing or empty; create it with `{UPDATE_COMMAND}`")
    state = current_state(root)
    for module in sorted(set(state) | set(recorded)):
        now, then = state.get(module), recorded.get(module)
        if now is None or then is None:
            found.append(f"{module} is {'new' if then is None else 'gone'}; record it with `{UPDATE_COMMAND}`")
        elif now["sha256"] != then["sha256"]:
            same = [f"{cls}.version={v!r}" for cls, v in now["versions"].items() if then["versions"].get(cls) == v]
            if same:
                found.append(f"{module} (or a methods module it imports) changed but {', '.join(same)} did not: bump "
                             f"the version if outputs can change, then `{UPDATE_COMMAND}`")
            else:
                found.append(f"{module}: versions bumped; record the new hash with `{UPDATE_COMMAND}`")
        elif now["versions"] != then["versions"]:
            found.append(f"{module}: versions {now['versions']} differ from {then['versions']} in {path}; "
                         f"`{UPDATE_COMMAND}`")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update", action="store_true", help=f"rewrite {VERSIONS_FILE} from the sources")
    args = parser.parse_args(argv)
    if args.update:
        write_json(REPO_ROOT / VERSIONS_FILE, current_state())
        print(f"wrote {REPO_ROOT / VERSIONS_FILE}")
        return 0
    found = problems()
    print("\n".join(found) or f"{VERSIONS_FILE} matches the sources")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
