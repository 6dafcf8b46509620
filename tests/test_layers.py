"""Imports point down the layers: engine <- modelzoo <- fleet <- jobs <- web/API (README, "How the code is laid out")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(folder: str) -> dict[str, set[str]]:
    """{file: every module it imports (top-level or inside functions)} for the Python files under `folder`."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("modelzoo/engine", ("django", "generation", "modelzoo.models", "modelzoo.pool", "llmsite")),
    ("modelzoo", ("generation",)),
    ("generation/fleet", ("generation.models", "generation.services", "generation.runner", "generation.tasks",
                          "generation.views", "generation.api", "generation.forms", "generation.selectors",
                          "generation.limits", "generation.streams")),
])
def test_it_imports_nothing_from_the_layers_above(folder, forbidden):
    offenders = {
        file: sorted(name for name in names if name.startswith(forbidden))
        for file, names in imported_modules(folder).items()
    }
    assert {file: names for file, names in offenders.items() if names} == {}
