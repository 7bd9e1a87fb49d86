"""How the tests are laid out: a test module never imports another one (what several share lives in
tests/helpers/ or conftest.py)."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[-1].startswith("test_") and (len(parts) == 1 or parts[:-1] == ["tests"])


def test_no_test_module_imports_another():
    offenders = sorted(f"{path.relative_to(TESTS)} imports {name}" for path in TESTS.rglob("*.py")
                       for name in imported_modules(path) if is_test_module(name))
    assert offenders == [], "; ".join(offenders) + " (move what they share to tests/helpers/ or conftest.py)"


def test_the_finder_sees_imports_of_test_modules(tmp_path):
    module = tmp_path / "test_example.py"
    module.write_text("def test_a():\n    from test_workflow import write_images\n\nimport tests.test_ddp\n"
                      "from helpers.images import nearest_pairs\n")
    assert sorted(name for name in imported_modules(module) if is_test_module(name)) == ["test_workflow",
                                                                                         "tests.test_ddp"]
