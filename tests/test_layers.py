"""The package's layers only point down: a module imports nothing from a layer above its own, at
module level or inside a function, and no module imports router.cli or router.report but the
command line itself."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1] / "router"

# Bottom to top. A module may import its own layer and the ones below it.
LAYERS = [
    {"router.schema", "router.errors", "router.cost", "router.config"},
    {"router.budget", "router.backends"},
    {"router.method"},
    {"router.stages"},
    {"router.job"},
    {"router.report", "router.profile_view", "router.api"},
    {"router.cli", "router"},
]


def layer_of(module: str) -> int:
    for depth in (3, 2, 1):
        name = ".".join(module.split(".")[:depth])
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("router"):
            if node.module == "router":  # `from router import schema`: the submodule
                found.update(f"router.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("router"))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        me = module_name(path)
        if me == "router":
            continue  # the public API re-exports from every layer
        for other in imports(path):
            if layer_of(other) > layer_of(me):
                upward.append(f"{me} imports {other}")
    assert not upward, "\n".join(upward)
