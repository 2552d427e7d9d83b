"""The architecture as a test: train, deploy and flow never import each other; they meet only
through the MLflow model, the configs and the neutral `common` package, which imports none of
them. bench/ and e2e/ sit on top and may import anything."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from common.paths import PROJECT_ROOT

LAYERS = ("common", "train", "deploy", "flow", "bench", "e2e")
NEVER = {
    "common": {"train", "deploy", "flow", "bench", "e2e"},
    "train": {"deploy", "flow", "bench", "e2e"},
    "deploy": {"train", "flow", "bench", "e2e"},
    "flow": {"train", "deploy", "bench", "e2e"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Absolute imports of a file, at any depth (function-level imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(NEVER))
def test_no_layer_imports_another(layer):
    crossings = [
        f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}"
        for path in sorted((PROJECT_ROOT / layer).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in NEVER[layer]
    ]
    assert crossings == []


def test_what_the_scoring_script_and_flow_tools_carry_needs_no_project_package():
    """score.py and the flow tools run from a copy (Azure's code snapshot, promptflow's
    additional_includes) holding only them and `common`; the payload contract is standard
    library only, so the flow tools need nothing the promptflow runtime lacks."""
    carried = [
        PROJECT_ROOT / "deploy" / "scoring" / "score.py",
        *(PROJECT_ROOT / "flow").glob("*/*.py"),
        *(PROJECT_ROOT / "common").glob("*.py"),
    ]
    project = set(LAYERS) - {"common"}
    for path in carried:
        assert [m for _, m in imported_modules(path) if m.split(".")[0] in project] == [], path
    payloads = PROJECT_ROOT / "common" / "payloads.py"
    outside = [m for _, m in imported_modules(payloads) if m.split(".")[0] not in sys.stdlib_module_names]
    assert outside == []
