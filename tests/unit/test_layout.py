"""The test tree's own rules (issue 14, item 7): unit and integration tests sit in package folders
that mirror the source tree, and helpers come from tests.factories only; a test module never
imports from another test module or from a conftest (fixtures arrive by injection)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
MIRRORED = ("unit", "integration")
# This file checks the tree as a whole, so it belongs to no package of the source tree.
LAYOUT_TEST = Path(__file__).resolve()
# The fault suite's harness is that suite's own support module, not a test module.
SUITE_SUPPORT = {"tests.faults.harness": TESTS / "faults"}


def imported_tests_modules(source: str, path: Path) -> list[tuple[int, str]]:
    """Every ``tests.*`` module the file ``path`` (with text ``source``) imports, by line; a
    relative import is spelled out, so ``from .conftest import x`` names the conftest it reaches."""
    package = path.relative_to(TESTS.parent).with_suffix("").parts[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tests"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name.split(".")[0] == "tests":
                found.append((node.lineno, name))
    return sorted(found)


def allowed(module: str, importer: Path) -> bool:
    if module == "tests.factories" or module.startswith("tests.factories."):
        return True
    suite = SUITE_SUPPORT.get(module)
    return suite is not None and importer.is_relative_to(suite)


def test_helpers_come_from_the_factories_only() -> None:
    wrong = [
        f"{path.relative_to(TESTS.parent)}:{line}: {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, module in imported_tests_modules(path.read_text(), path)
        if not allowed(module, path)
    ]
    assert not wrong, "import helpers from tests.factories, fixtures by injection:\n" + "\n".join(
        wrong
    )


@pytest.mark.parametrize("suite", MIRRORED)
def test_tests_sit_in_package_folders(suite: str) -> None:
    root = TESTS / suite
    loose = [p.name for p in sorted(root.glob("test_*.py")) if p.resolve() != LAYOUT_TEST]
    assert not loose, f"move into tests/{suite}/<package>/: {loose}"
    packages = [p for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert packages
    without_init = [
        str(d.relative_to(TESTS.parent))
        for package in packages
        for d in [package, *package.rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").exists()
    ]
    assert not without_init, f"test folders are packages (an __init__.py each): {without_init}"


def test_the_import_rule_sees_every_form_of_a_cross_import() -> None:
    """The check itself, on a module that would sit in tests/integration/ingest/."""
    source = (
        "from tests.factories.api import auth\n"
        "from tests.factories import media\n"
        "from tests.integration.conftest import CHUNK\n"
        "import tests.integration.ingest.test_api\n"
        "def f():\n    from .test_chunked import start\n"
        "from ..conftest import serve\n"
        "from tests.faults.harness import Stack\n"
    )
    where = TESTS / "integration" / "ingest" / "test_example.py"
    found = [m for _, m in imported_tests_modules(source, where) if not allowed(m, where)]
    assert found == [
        "tests.integration.conftest",
        "tests.integration.ingest.test_api",
        "tests.integration.ingest.test_chunked",
        "tests.integration.conftest",
        "tests.faults.harness",
    ]
    faults = TESTS / "faults" / "test_example.py"
    assert allowed("tests.faults.harness", faults)
    assert not allowed("tests.conftest", faults)
