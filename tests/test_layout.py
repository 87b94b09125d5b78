"""The layout of `bnstudy/`, read with `ast`: no module over 400 lines, no import circle, and
no module importing one in a layer above its own (`LAYERS`, the pipeline's order)."""

from __future__ import annotations

import ast
import fnmatch
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "bnstudy"
MAX_LINES = 400

# The pipeline, top to bottom: a module may import modules of its own layer and of the layers
# below it. Names are relative to `bnstudy.`; the first pattern (in this order) that matches a
# module gives its layer.
LAYERS = [
    ("entry points", ["train", "sweep", "cluster", "tune", "trials", "eval", "draw", "rebuild",
                      "report.cli", "report.__main__", "report", "bench", "bench.*"]),
    ("run", ["run"]),
    ("pieces", ["model", "data", "datafiles", "nets", "callbacks", "probes", "pictures",
                "pictures.*", "trackers", "checkpoints", "dashboard", "report.*"]),
    ("records", ["records", "errors", "jobdir", "config", "overrides", "console",
                 "norms"]),  # norms: the registry of names the config checks a run against
]


def modules() -> dict[str, Path]:
    """Every module by dotted name relative to `bnstudy.` (a package's `__init__.py`: its name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules `path` imports, wherever the import stands (a function's too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names]  # a module, or a name in one
        else:
            continue
        for name in names:
            if name.startswith("bnstudy."):
                name = name.removeprefix("bnstudy.")
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
    return found


def layer(module: str) -> int:
    """The index of the module's layer in `LAYERS` (0: the top)."""
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"bnstudy.{module} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_module_is_over_400_lines():
    lines = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert max(lines.values()) <= MAX_LINES, {n: k for n, k in lines.items() if k > MAX_LINES}


def test_no_module_imports_one_in_a_layer_above_its_own():
    upward = {(source, target) for source, targets in graph().items() for target in targets
              if layer(target) < layer(source)}
    assert not upward, sorted(upward)


def test_no_import_circle():
    try:
        TopologicalSorter(graph()).prepare()
    except CycleError as error:
        raise AssertionError(f"an import circle: {' -> '.join(error.args[1])}") from None
