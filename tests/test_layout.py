"""The test suite's own rules: no test module imports another (shared fixtures live in conftest.py, shared helpers in
the other modules of the `tests` package), and nothing under tests/ edits sys.path (pytest's default import mode puts
the repository root on it, above the `tests` package)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SOURCES = sorted(TESTS.rglob("*.py"))
IMPORTERS = ("import_module", "__import__")  # importlib.import_module(name), __import__(name)
PATH_EDITORS = ("addsitedir",)  # site.addsitedir(folder) puts a folder on sys.path


def _is_test_module(name: str) -> bool:
    """A test module (`test_x`, `tests.test_x`) or a conftest, which pytest imports itself."""
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def _package(path: Path) -> str:
    """The dotted package of a file under tests/ (`tests`, `tests.spaces`), for its relative imports."""
    return ".".join(("tests", *path.parent.relative_to(TESTS).parts))


def imports_of_test_modules(tree: ast.AST, package: str = "tests") -> list[tuple[int, str]]:
    """(line, module) of every import of a test module or conftest in the tree, by statement or by name."""
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import test_x, from .test_x import y
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(part for part in (*parent, base) if part)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Call):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if function in IMPORTERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, name) for name in names if name and _is_test_module(name)]
    return found


def sys_path_edits(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, code) of every use of sys.path (`sys.path.insert(...)`, `sys.path = ...`, `from sys import path`) and
    every site.addsitedir(...) in the tree. Tests have no reason to touch sys.path, reading it included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) \
                and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) in PATH_EDITORS:
            found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_file_under_tests_imports_a_test_module(path: Path):
    found = imports_of_test_modules(ast.parse(path.read_text(), str(path)), _package(path))
    assert not found, f"{path.relative_to(TESTS)} imports test modules (share them through conftest.py or a helper " \
                      f"module of the tests package): {found}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_file_under_tests_edits_sys_path(path: Path):
    found = sys_path_edits(ast.parse(path.read_text(), str(path)))
    assert not found, f"{path.relative_to(TESTS)} edits sys.path (import helpers as tests.<module>): {found}"


@pytest.mark.parametrize("code", [
    "import test_search",
    "import tests.test_search as other",
    "from test_search import tiny_space",
    "from tests.test_search import tiny_space",
    "from tests import test_search",
    "from . import test_search",
    "from .test_search import tiny_space",
    "import conftest",
    "from conftest import TrainedTeacher",
    "def f():\n    from test_search import tiny_space",
    "importlib.import_module('tests.test_search')",
    "__import__('test_search')",
])
def test_the_import_check_finds_each_form_of_import(code: str):
    assert imports_of_test_modules(ast.parse(code)), code


@pytest.mark.parametrize("code", [
    "sys.path.insert(0, 'tests')",
    "sys.path.append(str(ROOT))",
    "sys.path[:0] = ['tests']",
    "sys.path = ['tests', *sys.path]",
    "sys.path += ['tests']",
    "from sys import path\npath.insert(0, 'tests')",
    "site.addsitedir('tests')",
])
def test_the_sys_path_check_finds_each_form_of_edit(code: str):
    assert sys_path_edits(ast.parse(code)), code


def test_helpers_and_fixtures_pass_both_checks():
    code = ("from tests.cli import run_main\nfrom tests.searches import tiny_space\nimport testing_tools\n"
            "from data.names import TRIALS_FILE\nenv = {'PYTHONPATH': str(ROOT)}\nimportlib.import_module('tests.cli')")
    assert imports_of_test_modules(ast.parse(code)) == [] and sys_path_edits(ast.parse(code)) == []


def test_tests_is_a_package_that_pytest_imports_from_the_repository_root():
    assert (TESTS / "__init__.py").is_file()
    assert __name__ == "tests.test_layout"  # prepend import mode: the root on sys.path, this module in the package
