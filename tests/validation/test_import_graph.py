"""The repository's folders depend on each other one way only.

Layers, top to bottom: ``benchmarks/`` → ``validation/`` → ``figures/``. A folder may import
the folders below it, never one above it (that would close a cycle), and none of them imports
``tests/`` (the tests import them). The installed package ``src/pyflashmm`` imports none of
them and never edits ``sys.path`` to reach into the checkout.

Imports are read from the source with :mod:`ast`, so the check covers imports inside
functions and ``importlib.import_module("pkg.mod")`` / ``import_module(f"pkg.{name}")``
calls (by their constant prefix), and needs nothing to be importable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: the layers, top to bottom: each may import only the folders after it
LAYERS = ("benchmarks", "validation", "figures")
REPO_FOLDERS = (*LAYERS, "tests")


def _dynamic_target(call: ast.Call) -> str | None:
    """The module named by ``importlib.import_module(...)`` or ``__import__(...)`` (for an
    f-string, its constant prefix), else None."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return None


def imported_names(source: str, filename: str = "<string>") -> list[tuple[int, str, int]]:
    """``(line, module, level)`` of every import in ``source`` (level > 0: relative)."""
    out = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.module or "", node.level))
        elif isinstance(node, ast.Call):
            target = _dynamic_target(node)
            if target:
                out.append((node.lineno, target, 0))
    return out


def folder_of(module: str, level: int, path: Path) -> str | None:
    """The repository folder a module of ``path``'s import belongs to, or None (a package
    from elsewhere: pyflashmm, numpy, ...). A relative import, or a bare name that is a file
    beside ``path`` (a script's ``import sufficient_stats``), stays in ``path``'s folder."""
    own = path.relative_to(ROOT).parts[0]
    if level > 0:
        return own
    top = module.split(".")[0].strip()
    if top in REPO_FOLDERS:
        return top
    if top and ((path.parent / f"{top}.py").exists() or (path.parent / top).is_dir()):
        return own
    return None


def edges(folder: str) -> list[tuple[str, str, str]]:
    """``(importing folder, imported folder, "file:line module")`` for every import in
    ``folder`` that reaches another repository folder."""
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module, level in imported_names(path.read_text(), str(path)):
            target = folder_of(module, level, path)
            if target is not None and target != folder:
                out.append((folder, target, f"{path.relative_to(ROOT)}:{line} {module}"))
    return out


def test_the_parser_sees_static_relative_and_dynamic_imports(tmp_path):
    src = (
        "import numpy\n"
        "from figures import style\n"
        "from . import sibling\n"
        "def f(name):\n"
        "    import tests.oracle\n"
        "    importlib.import_module(f'validation.{name}')\n"
        "    return importlib.import_module('benchmarks.bench_lmm')\n"
    )
    found = [(m, lv) for _, m, lv in imported_names(src)]
    assert found == [("numpy", 0), ("figures", 0), ("", 1), ("tests.oracle", 0),
                     ("validation.", 0), ("benchmarks.bench_lmm", 0)]  # fmt: skip
    path = ROOT / "validation" / "anything.py"
    assert [folder_of(m, lv, path) for m, lv in found] == [
        None, "figures", "validation", "tests", "validation", "benchmarks"]  # fmt: skip


def test_the_pipeline_edge_is_seen():
    """Guards the check against finding nothing: the pipeline draws the figures."""
    assert ("validation", "figures") in {(a, b) for a, b, _ in edges("validation")}


@pytest.mark.parametrize("folder", LAYERS)
def test_folders_import_only_the_layers_below_them_and_never_tests(folder):
    below = set(LAYERS[LAYERS.index(folder) + 1 :])
    bad = [where for _, target, where in edges(folder) if target not in below]
    assert not bad, f"{folder}/ may import only {sorted(below) or 'none of'} {LAYERS}: {bad}"


def test_the_installed_package_does_not_reach_into_the_repository():
    bad = []
    for path in sorted((ROOT / "src" / "pyflashmm").rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        for line, module, level in imported_names(text, str(path)):
            if level == 0 and module.split(".")[0] in REPO_FOLDERS:
                bad.append(f"{rel}:{line} imports {module}")
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and getattr(node.value, "id", None) == "sys"):  # fmt: skip
                bad.append(f"{rel}:{node.lineno} uses sys.path")
    assert not bad, bad
