"""The architecture as a test: train, deploy and flow never import each other; they meet only
through the MLflow model, the configs and the neutral `common` package, which imports none of
them. agent/ (the Agent Framework front end, in an environment of its own) imports only common.
bench/ and e2e/ sit on top and may import anything. Inside deploy/, each room (a
subpackage) keeps to what its `__init__` docstring says it may import, and no function in
deploy/ reaches 80 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from common.paths import PROJECT_ROOT

LAYERS = ("common", "train", "deploy", "flow", "agent", "bench", "e2e")
NEVER = {
    "common": {"train", "deploy", "flow", "agent", "bench", "e2e"},
    "train": {"deploy", "flow", "agent", "bench", "e2e"},
    "deploy": {"train", "flow", "agent", "bench", "e2e"},
    "flow": {"train", "deploy", "agent", "bench", "e2e"},
    # .venv-agent holds agent/ and common/ only (no torch, no promptflow): nothing else would import
    "agent": {"train", "deploy", "flow", "bench", "e2e"},
}
# deploy's rooms -> the rooms they never import. The Azure deployment runs the scoring script, not
# the local server; evaluation and the registry serve both sides; deploy/scoring/ imports only
# common (it is copied alone into Azure's code snapshot: checked below).
DEPLOY_ROOMS_NEVER = {
    "registry": {"serve", "azure", "evaluate", "export"},
    "scoring": {"registry", "serve", "azure", "evaluate", "export"},
    "evaluate": {"serve", "azure", "export"},
    "serve": {"azure", "evaluate", "export"},
    "azure": {"serve", "export"},
    "export": {"serve", "azure"},
}
MAX_FUNCTION_LINES = 80  # in deploy/ (bench/ and train/prepare/ still hold longer ones)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Absolute imports of a file, at any depth (function-level imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from deploy import serve` imports deploy.serve: each name counts as a submodule
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
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
        *(PROJECT_ROOT / "deploy" / "scoring").glob("*.py"),
        *(PROJECT_ROOT / "flow").glob("*/*.py"),
        *(PROJECT_ROOT / "common").glob("*.py"),
    ]
    project = set(LAYERS) - {"common"}
    for path in carried:
        assert [m for _, m in imported_modules(path) if m.split(".")[0] in project] == [], path
    payloads = PROJECT_ROOT / "common" / "payloads.py"
    outside = [m for _, m in imported_modules(payloads) if m.split(".")[0] not in sys.stdlib_module_names]
    assert outside == []


def test_every_deploy_room_says_what_it_owns_and_may_import():
    rooms = {path.parent.name: path for path in (PROJECT_ROOT / "deploy").glob("*/__init__.py")}
    assert set(rooms) == set(DEPLOY_ROOMS_NEVER), "a new room of deploy/ declares what it never imports"
    for init in rooms.values():
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in docstring.lower(), (
            f"{init.relative_to(PROJECT_ROOT)}: say what the room may import"
        )


@pytest.mark.parametrize("room", sorted(DEPLOY_ROOMS_NEVER))
def test_no_deploy_room_imports_a_room_it_must_not(room):
    never = {f"deploy.{other}" for other in DEPLOY_ROOMS_NEVER[room]}
    crossings = [
        f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}"
        for path in sorted((PROJECT_ROOT / "deploy" / room).rglob("*.py"))
        for line, module in imported_modules(path)
        if ".".join(module.split(".")[:2]) in never
    ]
    assert crossings == []


def test_evaluation_renders_no_prompt_of_its_own():
    """deploy/evaluate/ answers through the scoring code's ChatModel (common.generation renders
    and decodes for both servers) and scores lm-eval tasks from log-likelihoods: it never applies
    a chat template or calls generate itself."""
    own = [
        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} calls {node.func.attr}"
        for path in sorted((PROJECT_ROOT / "deploy" / "evaluate").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("apply_chat_template", "generate")
    ]
    assert own == []


def test_no_function_in_deploy_reaches_80_lines():
    """Functions fit a screen; deploy/ is held to it (most are far shorter than 80 lines)."""
    too_long = [
        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name} ({length} lines)"
        for path in sorted((PROJECT_ROOT / "deploy").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := node.end_lineno - node.lineno + 1) >= MAX_FUNCTION_LINES
    ]
    assert too_long == []
