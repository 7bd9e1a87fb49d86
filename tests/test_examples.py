"""The ``>>>`` examples of the public API run, and every public function and class has one.

The public API is what ``__all__`` exports from the modules in :data:`PUBLIC`, and ``evaluate``
and ``upscale`` from the package itself. The examples of a module run as doctests, one test per
module that defines a public name.
"""
import doctest
import importlib
import inspect

import pytest

#: Module -> the names of its ``__all__`` that are public API (None: all of them).
PUBLIC = {
    "cdism_fast.ops": None,
    "cdism_fast.nn": None,
    "cdism_fast.nn.functional": None,
    "cdism_fast.optim": None,
    "cdism_fast.models": None,
    "cdism_fast.models.pretrained": None,
    "cdism_fast": ("evaluate", "upscale"),
}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def public_objects() -> dict:
    """``{"module.name": object}`` of every public function and class (constants and modules have no docstring
    of their own)."""
    found = {}
    for module_name, names in PUBLIC.items():
        module = importlib.import_module(module_name)
        for name in names or module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found[f"{module_name}.{name}"] = obj
    return found


def defining_modules() -> list:
    return sorted({obj.__module__ for obj in public_objects().values()})


def has_example(obj) -> bool:
    return any(test.examples for test in doctest.DocTestFinder(recurse=False).find(obj, obj.__name__))


def test_every_public_function_and_class_has_an_example():
    missing = sorted(name for name, obj in public_objects().items() if not has_example(obj))
    assert missing == [], f"public names without a >>> example in their docstring: {', '.join(missing)}"


@pytest.mark.parametrize("module_name", defining_modules())
def test_examples_run(module_name, capsys):
    module = importlib.import_module(module_name)
    tests = [t for t in doctest.DocTestFinder().find(module, module_name) if t.examples]
    assert tests, f"{module_name} defines public names but no example"
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test)
    report = capsys.readouterr().out
    assert runner.failures == 0, report
