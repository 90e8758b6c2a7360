"""The layer rule of docs/architecture.md, read off the imports of every module.

Each folder of aeic_codec is a layer; a module imports only from its own layer or the ones
below (imports inside functions and for type checking count too), and no modules import
each other in a circle.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aeic_codec"
# Bottom to top, as in docs/architecture.md section 10.
LAYERS = (
    "runtime",
    "format",
    "nn",
    "entropy_models",
    "latent_codecs",
    "codec",
    "bundles",
    "api",
    "tools",
    "training",
    "cli",
)
FOLDERS = tuple(layer for layer in LAYERS if layer != "api")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package's own __init__: below everything
    return LAYERS.index(parts[1])


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The aeic_codec modules that ``name`` imports, wherever in the file."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - node.level + 1]
                module = ".".join([*prefix, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # ``from package import module`` names modules; otherwise the module itself.
            targets = [
                f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] == "aeic_codec" and t != name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_every_module_sits_in_a_layer() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "api.py")]
    assert loose == []
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert folders == sorted(FOLDERS)


def test_imports_only_point_down() -> None:
    upward = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(name)
        and not (name == "aeic_codec" and target.startswith("aeic_codec.runtime"))
    ]
    assert upward == []


def test_no_import_circles() -> None:
    edges = {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in graph().items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_layer_exports_what_it_names(folder: str) -> None:
    package = importlib.import_module(f"aeic_codec.{folder}")
    assert package.__all__, folder
    missing = [name for name in package.__all__ if getattr(package, name, None) is None]
    assert missing == []
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


@pytest.mark.parametrize("folder", FOLDERS)
def test_importing_a_layer_loads_nothing_heavy(folder: str) -> None:
    """Each layer re-exports lazily (runtime/lazy.py): importing it loads neither torch,
    diffusers nor numpy until a name is used."""
    code = (
        f"import sys, aeic_codec.{folder}; "
        "print(sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_architecture_md_names_every_module() -> None:
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    table = text[text.index("## 9. Training") : text.index("## 11.")]
    unnamed = [
        str(p.relative_to(PACKAGE))
        for p in sorted(PACKAGE.rglob("*.py"))
        if not p.name.startswith("__") and f"`{p.name}`" not in table and f"{p.name}`" not in table
    ]
    assert unnamed == []


def test_no_module_is_over_600_lines() -> None:
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "bench").rglob("*.py")]
    long = {str(p): n for p in files if (n := len(p.read_text().splitlines())) > 600}
    assert len(files) > 80 and long == {}
