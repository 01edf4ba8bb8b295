"""The package's shape (docs/architecture.md): an acyclic import graph in which data flows one way,
a public API that means the same objects whatever was imported first, and a CLI whose parser
builds without torch."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sidmlp_kernels

PACKAGE_DIR = Path(sidmlp_kernels.__file__).parent

# Bottom to top. A module may import modules of its own layer (without cycles) or of lower layers.
LAYERS = [
    ("errors", "io", "configs", "metrics", "teacher.presets"),
    ("data",),
    ("decode",),
    ("training",),
    ("teacher",),
    ("distill",),
    ("accelerated",),
    ("evaluation", "recommend"),
    ("analysis",),
    ("cli",),
]


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str, root: Path) -> bool:
    return (root / name.replace(".", "/") / "__init__.py").is_file() if name else True


def _resolve(current: str, node: ast.ImportFrom, root: Path) -> list[str]:
    """Package-relative module names an ImportFrom refers to ('' = the package root)."""
    if node.level == 0:
        if not (node.module or "").startswith("sidmlp_kernels"):
            return []
        base = node.module[len("sidmlp_kernels"):].lstrip(".")
    else:
        here = current.split(".") if current else []
        if not _is_package(current, root):
            here = here[:-1]
        here = here[: len(here) - (node.level - 1)]
        base = ".".join(here + ([node.module] if node.module else []))
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        if (root / (candidate.replace(".", "/") + ".py")).is_file() or _is_package(candidate, root):
            targets.append(candidate)  # `from . import submodule`
        else:
            targets.append(base)
    return targets


def import_graph(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """module -> modules of the package it imports, at module level or inside functions."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                deps.update(_resolve(name, node, root))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("sidmlp_kernels."):
                        deps.add(alias.name[len("sidmlp_kernels."):])
        deps.discard(name)
        graph[name] = {d for d in deps if d != "" and d != "_C"}
    return graph


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(name == top or name.startswith(top + ".") for top in layer):
            return i
    raise AssertionError(f"module {name!r} is in no layer of LAYERS: add it (and to docs/architecture.md)")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if state.get(dep) is None and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"accelerated", "decode.reference", "cli", "training"} <= set(graph)
    assert "accelerated" in graph["evaluation"], "the walk resolves relative imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_data_flows_one_way():
    upward = [
        f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})"
        for module, deps in import_graph().items() if module
        for dep in deps if _layer(dep) > _layer(module)
    ]
    assert not upward, "modules importing a layer above them:\n" + "\n".join(upward)


def test_cycle_detector_sees_function_level_imports(tmp_path):
    """The walk catches the kind of cycle that hid behind function-local imports before."""
    pkg = tmp_path / "sidmlp_kernels"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    graph = import_graph(pkg)
    assert graph["a"] == {"sub.b"} and graph["sub.b"] == {"a"}
    assert find_cycle(graph) == ["a", "sub.b", "a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def _all_submodules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="sidmlp_kernels.")
            if not m.name.endswith(("__main__", "._C"))]  # _C loads through decode.constrained


def test_no_public_name_is_a_submodule_name():
    top_level = {name.split(".")[1] for name in _all_submodules()}
    assert not set(sidmlp_kernels.__all__) & top_level


PUBLIC_API_CHECK = """
import importlib, inspect, sys
{first}
import sidmlp_kernels as sk
for _ in range(3):
    for name in sk.__all__:
        if name == "__version__":
            continue
        value = getattr(sk, name)
        assert not inspect.ismodule(value), (name, value)
        assert callable(value), name
        assert value is getattr(importlib.import_module("sidmlp_kernels." + sk._PUBLIC[name]), name), name
assert callable(sk.accelerate) and callable(sk.prepare)
print("ok")
"""


@pytest.mark.parametrize("first", ["nothing", "every submodule"])
def test_public_names_are_stable_whatever_is_imported_first(first):
    if first == "nothing":
        prelude = ""
    else:
        prelude = "\n".join(f"import {name}" for name in _all_submodules())
    proc = subprocess.run([sys.executable, "-c", PUBLIC_API_CHECK.format(first=prelude)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_accelerate_is_callable_twice_after_importing_its_module():
    import sidmlp_kernels.accelerated  # noqa: F401  (binds the submodule attribute)

    assert callable(sidmlp_kernels.accelerate) and callable(sidmlp_kernels.accelerate)
    assert sidmlp_kernels.accelerate is importlib.import_module("sidmlp_kernels.accelerated").accelerate


def test_cli_parser_builds_without_torch():
    code = ("import sys; from sidmlp_kernels.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_source_cites_no_file_outside_the_repository():
    offenders = [str(p.relative_to(PACKAGE_DIR)) for p in PACKAGE_DIR.rglob("*.py")
                 if "../shared" in p.read_text() or "DESIGN.md" in p.read_text()]
    assert not offenders
