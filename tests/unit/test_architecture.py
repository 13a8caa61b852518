"""The house rule of shared/DESIGN.md §4: `agentledger.core` is pure and imports nothing of the others.

Checked with `ast` over the source (no import-linter dependency): every import in `core/*.py` must name a
standard-library module or `agentledger.core` itself; relative imports may not climb out of `core`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import agentledger

PACKAGE = Path(agentledger.__file__).parent
CORE = PACKAGE / "core"
CORE_FILES = sorted(CORE.glob("*.py"))
# Pure means no I/O, no clock and no event loop either (STYLE.md lesson 1): `now` is passed in.
FORBIDDEN_STDLIB = {"asyncio", "socket", "subprocess", "sqlite3", "threading", "http", "urllib"}
# Pure parts of a forbidden package: urllib.parse splits strings; urllib.request is the I/O.
PURE_SUBMODULES = {"urllib.parse"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `from . import x` inside core/ is core; `from .. import x` would leave it.
                base = ["agentledger", "core"][: max(0, 2 - (node.level - 1))]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def violations(path: Path) -> list[str]:
    bad = []
    for lineno, module in imported_modules(path):
        top = module.split(".")[0]
        if module == "agentledger.core" or module.startswith("agentledger.core."):
            continue
        if top in sys.stdlib_module_names and top != "agentledger" and top not in FORBIDDEN_STDLIB:
            continue
        if module in PURE_SUBMODULES:
            continue
        bad.append(f"{path.name}:{lineno} imports {module}")
    return bad


def test_core_has_modules_to_check() -> None:
    assert {p.name for p in CORE_FILES} >= {"headers.py", "money.py", "usage.py", "rollup.py", "routing.py"}


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_imports_only_the_standard_library_and_itself(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_catches_what_it_should(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, json\n"
        "from decimal import Decimal\n"
        "from agentledger.core.money import to_nanos\n"
        "from . import errors\n"
        "import sqlalchemy\n"
        "from httpx import AsyncClient\n"
        "from agentledger.store.base import Store\n"
        "import agentledger.gateway\n"
        "from .. import config\n"
        "import asyncio\n"
        "def late():\n"
        "    import starlette\n",
        encoding="utf-8",
    )
    assert [v.split(" imports ")[1] for v in violations(sample)] == [
        "sqlalchemy",
        "httpx",
        "agentledger.store.base",
        "agentledger.gateway",
        "agentledger",
        "asyncio",
        "starlette",
    ]
