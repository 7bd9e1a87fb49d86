"""Imports point down: every module of cdism_fast imports only its own layer and the layers below it.

The check reads every ``import`` statement of the package with :mod:`ast` (absolute and relative, at module level
or inside functions, under ``TYPE_CHECKING`` too) and fails on

* an import from a higher layer;
* an import cycle between two units (top-level modules or subpackages of ``cdism_fast``);
* a private name (leading underscore) imported from another module, or a private module imported from outside
  the package that holds it (``_extension`` and ``_C``, the compiled extension the ops layer owns, excepted).

docs/DEVELOPING.md ("Layers and allowed imports") describes the same table.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "cdism_fast"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

#: The layers, lowest first, each with its units: the top-level modules and subpackages of cdism_fast ("" is
#: the package's own ``__init__``). A unit may import units of its own layer and of the layers below.
LAYERS = (
    ("shared helpers", ("_extension", "_C", "_checks", "safe_io", "optional")),
    ("ops", ("ops",)),
    ("nn and optim", ("nn", "optim")),
    ("models", ("models",)),
    ("compress, data, evaluation", ("compress", "inheritance", "data", "metrics", "evaluation", "export",
                                    "integrations")),
    ("training", ("training",)),
    ("report", ("report", "run_evaluation")),
    ("workflow", ("workflow",)),
    ("entry points", ("cli", "__main__", "")),
)
#: Private modules directly under cdism_fast that any layer may import (the compiled extension, its loader and
#: the argument checks).
SHARED_PRIVATE_MODULES = frozenset({"_extension", "_C", "_checks"})
#: Modules not checked (as importers).
EXCLUDED: frozenset = frozenset()

LAYER_OF = {unit: index for index, (_, units) in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``cdism_fast.training.stages`` -> ``training``; ``cdism_fast`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_name(unit: str) -> str:
    return LAYERS[LAYER_OF[unit]][0] if unit in LAYER_OF else "undeclared"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def package_sources(root: Path = PACKAGE_DIR) -> dict[str, tuple[str, bool]]:
    """``{module name: (source, is_package)}`` of every module under ``root``."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        sources[name] = (path.read_text(encoding="utf-8"), is_package)
    return sources


def imports_of(module: str, source: str, is_package: bool, known: set[str]):
    """``(line, target module, imported name or None)`` for every cdism_fast import in ``source``.

    ``from x import y`` gives ``(x.y, None)`` when ``x.y`` is a module, else ``(x, "y")``.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known or alias.name in SHARED_PRIVATE_MODULES and target == PACKAGE:
                    yield node.lineno, submodule, None
                else:
                    yield node.lineno, target, alias.name


def _private_module_problem(importer: str, target: str) -> str | None:
    parts = target.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if not _private(part):
            continue
        owner = ".".join(parts[:index])
        if owner == PACKAGE:
            if part not in SHARED_PRIVATE_MODULES:
                return f"private module {target} (only {sorted(SHARED_PRIVATE_MODULES)} are shared)"
        elif not (importer == owner or importer.startswith(owner + ".")):
            return f"private module {target} from outside {owner}"
    return None


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def violations(sources: dict[str, tuple[str, bool]], excluded=frozenset()) -> list[str]:
    """Every layering problem of ``sources`` (see :func:`package_sources`), one line each."""
    known = set(sources)
    problems, unit_edges, witnesses = [], {}, {}
    for module, (source, is_package) in sorted(sources.items()):
        unit = unit_of(module)
        if unit not in LAYER_OF:
            problems.append(f"{module}: unit {unit!r} is in no layer (declare it in LAYERS)")
        if module in excluded:
            continue
        for line, target, name in imports_of(module, source, is_package, known):
            where = f"{module}:{line}"
            target_unit = unit_of(target)
            if target_unit not in LAYER_OF:
                problems.append(f"{where}: imports {target}, whose unit {target_unit!r} is in no layer")
            elif unit in LAYER_OF and LAYER_OF[target_unit] > LAYER_OF[unit]:
                problems.append(f"{where}: {unit or PACKAGE} ({layer_name(unit)}) imports {target} from a higher "
                                f"layer ({layer_name(target_unit)})")
            private = _private_module_problem(module, target)
            if private:
                problems.append(f"{where}: imports {private}")
            if name is not None and _private(name):
                problems.append(f"{where}: imports the private name {name} from {target}")
            if target_unit != unit:
                unit_edges.setdefault(unit, set()).add(target_unit)
                witnesses.setdefault((unit, target_unit), where)
    for component in _cycles(unit_edges):
        links = [f"{a}->{b} ({witnesses[a, b]})" for a in component for b in component if (a, b) in witnesses]
        layers = sorted({layer_name(u) for u in component})
        problems.append(f"import cycle between {component} (layers {layers}): " + ", ".join(links))
    return list(dict.fromkeys(problems))


def test_every_unit_is_declared_once():
    units = [unit for _, members in LAYERS for unit in members]
    assert len(units) == len(set(units))
    present = {unit_of(module) for module in package_sources()}
    assert present <= set(units), f"undeclared units: {sorted(present - set(units))}"


def test_imports_point_down():
    problems = violations(package_sources(), EXCLUDED)
    assert not problems, "layering violations:\n" + "\n".join(problems)


# The check itself: each kind of violation, on small synthetic packages.
def _package(**modules: str) -> dict[str, tuple[str, bool]]:
    """``name="source"``; a name ending in ``__init`` is a package (``ops__init`` -> ``cdism_fast.ops``)."""
    sources = {PACKAGE: ("", True)}
    for key, source in modules.items():
        is_package = key.endswith("__init")
        name = key[:-len("__init")].rstrip("_") if is_package else key
        sources[".".join(filter(None, (PACKAGE, *name.split("__"))))] = (source, is_package)
    for name in list(sources):  # the parent packages
        parent = name.rpartition(".")[0]
        while parent and parent not in sources:
            sources[parent] = ("", True)
            parent = parent.rpartition(".")[0]
    return sources


CASES = {
    "upward, relative, inside a function": (
        _package(models__swinir="def f():\n    from ..training import engine\n", training__engine=""),
        "from a higher layer"),
    "upward, absolute": (_package(ops__gaussian="import cdism_fast.report\n", report=""), "from a higher layer"),
    "upward, from the package": (_package(nn__losses="from cdism_fast import cli\n", cli__init=""),
                                 "from a higher layer"),
    "cycle in one layer": (_package(data__io="from ..metrics import psnr\n", metrics="from .data import io\n"),
                           "import cycle"),
    "cycle across layers": (_package(training__workflow="from ..report import build_report\n",
                                     report="from .training.artifacts import read_json\n",
                                     training__artifacts=""), "import cycle"),
    "private name, same package": (
        _package(training__workflow="from .stages import _inputs\n", training__stages="def _inputs(): pass\n"),
        "private name _inputs"),
    "private name, other package": (_package(training__stages="from ..training.engine import _AMP_DTYPES\n",
                                             training__engine=""), "private name _AMP_DTYPES"),
    "private module of another package": (
        _package(models__common="from ..ops._checks import check_image\n", ops___checks=""),
        "private module cdism_fast.ops._checks from outside cdism_fast.ops"),
    "private module at the top": (_package(models__counting="from .. import _helpers\n", _helpers=""),
                                  "private module cdism_fast._helpers"),
    "undeclared unit": (_package(newthing="import torch\n"), "is in no layer"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_check_fails_on(case):
    sources, expected = CASES[case]
    problems = violations(sources)
    assert any(expected in problem for problem in problems), problems


def test_the_check_allows_what_the_layers_allow():
    sources = _package(
        ops__init="from ._dispatch import BackendUnavailable\nfrom .._extension import on_load\n",
        ops___dispatch="", _extension="",
        models__swinir="from ..ops import BackendUnavailable\nfrom . import common\n", models__common="",
        training__teacher_cache="def f():\n    from .._extension import cache_dir\n",
        report="from .training import teacher_cache\nfrom .models.common import x as _x\n",
        cli__init="import cdism_fast\nfrom cdism_fast import ops, report\n",
    )
    assert violations(sources) == []
