"""The layers of docs/ARCHITECTURE.md hold: no import in bitmaps/ runs up the dependency order

    core  ←  data / metrics  ←  train  ←  export  ←  runtime  ←  cli

and imports inside functions are kept for heavy optional dependencies only. The check walks every
module's syntax tree (``ast``), so an import hidden inside a function or a ``TYPE_CHECKING`` block
counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bitmaps"

# Layer of each package or top-level module; a module may import its own layer and lower ones.
# data and metrics share a level but do not import each other.
LAYERS = {
    "bitmaps": 0,  # the root package: __version__ and the native library path only
    "bitmaps._C": 0,
    "bitmaps.core": 0,
    "bitmaps.data": 1,
    "bitmaps.metrics": 1,
    "bitmaps.train": 2,
    "bitmaps.export": 3,
    "bitmaps.runtime": 4,
    "bitmaps.cli": 5,
    "bitmaps.__main__": 5,
}

# Imports that may stay inside a function: heavy or optional dependencies that most commands never
# touch, so importing them at the top would slow down or break every command.
LAZY_ALLOWED = {
    "onnxruntime": "optional runtime; heavy to import",
    "tensorrt": "optional; absent on most machines",
    "matplotlib": "only for --plot; slow to import",
    "bitmaps._C": "optional native extension; may not be built",
    "pycuda": "optional",
    "cuda": "optional",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> tuple[str, int] | None:
    best = None
    for prefix, level in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, level)
    return best


def imports_of(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, inside a function) for every import of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for a in child.names:
                    # `from bitmaps import x` may name a submodule: count it as bitmaps.x
                    full = f"{child.module}.{a.name}"
                    is_sub = (PACKAGE.parent / full.replace(".", "/")).exists() or (
                        PACKAGE.parent / (full.replace(".", "/") + ".py")
                    ).exists()
                    found.append((child.lineno, full if is_sub else child.module, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    missing = [module_name(p) for p in MODULES if layer_of(module_name(p)) is None]
    assert not missing, f"modules outside every layer of docs/ARCHITECTURE.md: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_import_runs_up_the_layers(path: Path) -> None:
    me = module_name(path)
    my_prefix, my_level = layer_of(me)
    bad = []
    for line, name, _ in imports_of(path):
        target = layer_of(name) if name.startswith("bitmaps") else None
        if target is None:
            continue
        prefix, level = target
        same_level_sibling = level == my_level == 1 and prefix != my_prefix
        if level > my_level or same_level_sibling:
            bad.append(f"{path.name}:{line} imports {name} ({prefix}, layer {level})")
    assert not bad, f"{me} (layer {my_level}) imports upward: " + "; ".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_inside_functions_only_for_heavy_optional_dependencies(path: Path) -> None:
    # The CLI, the top layer, imports the library per command: `bitmaps --help` and option errors
    # then answer without importing torch, transformers and onnx (about 4 s on 2 cores). The
    # profile's measuring process (its other entry point) imports only its job's backend: ONNX
    # Runtime's process then starts in 3.4 s instead of 11 (no transformers, no model code).
    entry = module_name(path) in ("bitmaps.cli", "bitmaps.runtime.measure")
    lazy = [
        f"{path.name}:{line} {name}"
        for line, name, inside in imports_of(path)
        if inside
        and not any(name == k or name.startswith(k + ".") for k in LAZY_ALLOWED)
        and not (entry and name.startswith("bitmaps."))
    ]
    assert not lazy, "imports inside functions (move them to the top): " + "; ".join(lazy)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker itself: an upward import inside a function is found and classified."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from bitmaps.runtime.profile import run_profile\n")
    assert imports_of(src) == [(2, "bitmaps.runtime.profile", True)]
    assert layer_of("bitmaps.runtime.profile") == ("bitmaps.runtime", 4)
    assert layer_of("bitmaps.core.ops") == ("bitmaps.core", 0)
