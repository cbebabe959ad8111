"""The package's shape, checked from its source text (AST only: nothing is imported).

- no module reaches into another module's private names (``from ._x import _helper``,
  ``_x._helper``); importing a private *module* is how the package is built and is fine;
- the import graph inside the package has no cycles (imports inside functions count too: a cycle
  hidden in a function is still two modules that each need the other);
- no public name of ``s2mosaic`` shadows one of its submodules;
- every exception class lives in ``errors.py`` and is exported from ``s2mosaic``.

Each check is a function of a source tree, run on the package and on small trees that break it.
"""

from __future__ import annotations

import ast
import builtins
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "s2mosaic"
EXCEPTIONS = {n for n, v in vars(builtins).items()
              if isinstance(v, type) and issubclass(v, BaseException)}


@dataclass(frozen=True)
class Module:
    name: str
    """Dotted name; a package's ``__init__.py`` has the package's name."""
    path: Path
    is_package: bool
    tree: ast.Module


def load(root: Path) -> dict[str, Module]:
    """Every module of the package at ``root``, by dotted name."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        mods[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    return mods


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _from_base(mod: Module, node: ast.ImportFrom) -> str | None:
    """The module a ``from ... import`` reads from, when it is in the package."""
    if node.level == 0:
        return node.module
    parts = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


@dataclass(frozen=True)
class Import:
    target: str
    """The module imported (a submodule for ``from . import _cpu``)."""
    name: str | None
    """The name taken from ``target`` (None when the module itself is imported)."""
    line: int


def imports(mod: Module, mods: dict[str, Module]) -> list[Import]:
    """Every import of a package module in ``mod``, at any depth (functions included)."""
    out = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out += [Import(a.name, None, node.lineno) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(mod, node)
            if base not in mods:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(sub, None, node.lineno) if sub in mods
                           else Import(base, a.name, node.lineno))
    return out


def _module_bindings(mod: Module, mods: dict[str, Module]) -> dict[str, str]:
    """Local names bound to package modules (``import s2mosaic._write as w``, ``from . import
    _write``, ``import s2mosaic.x``), anywhere in ``mod``."""
    bound = {}
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods:
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                        a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(mod, node)
            for a in node.names:
                if f"{base}.{a.name}" in mods:
                    bound[a.asname or a.name] = f"{base}.{a.name}"
    return bound


def private_access(mods: dict[str, Module]) -> list[str]:
    """``module:line: what`` for each private name one module takes from another."""
    bad = []
    for mod in mods.values():
        for imp in imports(mod, mods):
            if imp.name is not None and _private(imp.name):
                bad.append(f"{mod.name}:{imp.line}: imports {imp.name} from {imp.target}")
        bound = _module_bindings(mod, mods)
        for node in ast.walk(mod.tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain = []
            value: ast.expr = node
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id not in bound:
                continue
            target = bound[value.id]
            for attr in reversed(chain):
                if f"{target}.{attr}" in mods:
                    target = f"{target}.{attr}"
                    continue
                if _private(attr) and target != mod.name:
                    bad.append(f"{mod.name}:{node.lineno}: uses {target}.{attr}")
                break
    return sorted(set(bad))


def graph(mods: dict[str, Module]) -> dict[str, set[str]]:
    return {m.name: {i.target for i in imports(m, mods)} - {m.name} for m in mods.values()}


def cycles(mods: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components of the import graph with more than one module."""
    edges = graph(mods)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _all(mod: Module) -> list[str]:
    for node in mod.tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                return list(ast.literal_eval(node.value))
    return []


def shadowed_submodules(mods: dict[str, Module], package: str) -> list[str]:
    """Names of ``package.__all__`` that are also the names of its submodules."""
    subs = {name.split(".")[-1] for name in mods if name.rsplit(".", 1)[0] == package
            and name != package}
    return sorted(set(_all(mods[package])) & subs)


def stray_errors(mods: dict[str, Module], package: str) -> list[str]:
    """Exception classes defined outside ``package.errors`` or missing from ``package.__all__``."""
    classes = [(m, node) for m in mods.values() for node in ast.walk(m.tree)
               if isinstance(node, ast.ClassDef)]
    known = set(EXCEPTIONS)
    errors: dict[str, str] = {}
    grew = True
    while grew:  # a class is an exception when a base is; bases may come later in the walk
        grew = False
        for m, node in classes:
            bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")
                     for b in node.bases}
            if bases & known and f"{m.name}.{node.name}" not in errors:
                known.add(node.name)
                errors[f"{m.name}.{node.name}"] = node.name
                grew = True
    exported = set(_all(mods[package]))
    bad = []
    for where, name in sorted(errors.items()):
        if where != f"{package}.errors.{name}":
            bad.append(f"{where}: exception class outside {package}.errors")
        if name not in exported:
            bad.append(f"{where}: not in {package}.__all__")
    return bad


# -- the package ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    return load(PACKAGE)


def test_no_private_names_across_modules(package: dict[str, Module]) -> None:
    assert private_access(package) == []


def test_import_graph_is_acyclic(package: dict[str, Module]) -> None:
    assert cycles(package) == []


def test_public_names_do_not_shadow_submodules(package: dict[str, Module]) -> None:
    assert shadowed_submodules(package, "s2mosaic") == []


def test_every_error_in_errors_module_and_exported(package: dict[str, Module]) -> None:
    assert stray_errors(package, "s2mosaic") == []


def test_items_is_ground_floor(package: dict[str, Module]) -> None:
    """What a STAC item means is read by every stage; it depends on none of them."""
    assert graph(package)["s2mosaic._items"] <= {"s2mosaic.errors"}


# -- each check fails when it should --------------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return load(root)


def test_private_access_is_caught(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {
        "__init__.py": "from ._a import ok\n",
        "_a.py": "def ok(): ...\ndef _helper(): ...\n",
        "_b.py": "from ._a import _helper\nfrom . import _a\nx = _a._helper\n",
        "_c.py": "import pkg._a\ny = pkg._a._helper()\nz = pkg._a.ok()\n",
        "sub/__init__.py": "",
        "sub/_k.py": "def _check(): ...\n",
        "sub/_x.py": "from . import _k\nfrom ._k import _check\nfrom .. import _a\n_k._check()\n",
    })
    assert private_access(mods) == [
        "pkg._b:1: imports _helper from pkg._a",
        "pkg._b:3: uses pkg._a._helper",
        "pkg._c:2: uses pkg._a._helper",
        "pkg.sub._x:2: imports _check from pkg.sub._k",
        "pkg.sub._x:4: uses pkg.sub._k._check",
    ]


def test_cycles_are_caught(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {
        "__init__.py": "from ._a import f\n",
        "_a.py": "from ._b import g\ndef f(): ...\n",
        "_b.py": "def g():\n    from ._a import f\n",
        "sub/__init__.py": "from ._k import h\n",
        "sub/_k.py": "def h(): ...\n",
        "sub/_x.py": "from . import _k\n",  # an edge to sub._k, not to sub: no cycle
    })
    assert cycles(mods) == [["pkg._a", "pkg._b"]]
    assert graph(mods)["pkg.sub._x"] == {"pkg.sub._k"}
    mods = _tree(tmp_path, {"sub/_k.py": "from . import h\n"})  # into the package __init__
    assert cycles(mods) == [["pkg._a", "pkg._b"], ["pkg.sub", "pkg.sub._k"]]


def test_shadowing_is_caught(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {
        "__init__.py": "from ._a import write\nfrom . import sub\n__all__ = ['sub', 'write']\n",
        "_a.py": "def write(): ...\n",
        "write.py": "",
        "sub/__init__.py": "",
    })
    assert shadowed_submodules(mods, "pkg") == ["sub", "write"]


def test_stray_errors_are_caught(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {
        "__init__.py": "from .errors import RootError\n__all__ = ['RootError', 'Unlisted']\n",
        "errors.py": "class RootError(Exception): ...\nclass Unlisted(RootError, KeyError): ...\n"
                     "class Hidden(RootError): ...\n",
        "_a.py": "from . import errors\nclass Local(errors.RootError): ...\n"
                 "class Deeper(Local): ...\nclass Plain: ...\n",
    })
    assert stray_errors(mods, "pkg") == [
        "pkg._a.Deeper: exception class outside pkg.errors",
        "pkg._a.Deeper: not in pkg.__all__",
        "pkg._a.Local: exception class outside pkg.errors",
        "pkg._a.Local: not in pkg.__all__",
        "pkg.errors.Hidden: not in pkg.__all__",
    ]
