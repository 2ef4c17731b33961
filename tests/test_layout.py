"""The package layout keeps its own rules, checked on the import graph of the source files.

- ``recon_core`` never imports ``gadgets`` or ``gadgetron`` (the reconstruction runs
  without Gadgetron);
- inference (``recon_core/networks/*``, ``gadgets/*``) never imports ``recon_core.training``;
- operators, evaluation and metrics never import ``recon_core.networks`` (they do not
  depend on learned models).

Imports are read with :mod:`ast` from every ``.py`` file, those inside functions included
(they run too), relative imports resolved, and followed transitively through the project's
own modules, so a rule is broken also when a forbidden module is reached through another.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recon_core", "gadgets", "rtcine")

#: (rule, modules it applies to, forbidden module prefixes)
RULES = (
    ("recon_core does not import Gadgetron code", ("recon_core",), ("gadgets", "gadgetron")),
    ("inference does not import training code", ("recon_core.networks", "gadgets"), ("recon_core.training",)),
    ("operators, evaluation and metrics do not import networks",
     ("recon_core.operators", "recon_core.evaluation", "recon_core.metrics"), ("recon_core.networks",)),
)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for the project's packages under ``root``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Absolute names of everything ``module`` imports (any depth in the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names.add(target)
            for alias in node.names:      # `from pkg import submodule`
                if f"{target}.{alias.name}" in modules:
                    names.add(f"{target}.{alias.name}")
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the names it imports, with every parent package of an imported project
    module (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    modules = project_modules(root)
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(module, path, modules):
            parts = name.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        edges.discard(module)
        graph[module] = edges
    return graph


def import_chain(graph: dict[str, set[str]], start: str, forbidden: tuple[str, ...]) -> list[str] | None:
    """The shortest import chain from ``start`` to a forbidden module, or None."""
    seen, queue = {start: None}, [start]
    while queue:
        current = queue.pop(0)
        for name in sorted(graph.get(current, ())):
            if name in seen:
                continue
            seen[name] = current
            if any(_within(name, f) for f in forbidden):
                chain = [name]
                while seen[chain[-1]] is not None:
                    chain.append(seen[chain[-1]])
                return chain[::-1]
            if name in graph:
                queue.append(name)
    return None


def violations(root: Path) -> list[str]:
    """One line per module that breaks a rule, with its import chain."""
    graph = import_graph(root)
    found = []
    for rule, scope, forbidden in RULES:
        for module in sorted(graph):
            if any(_within(module, s) for s in scope):
                chain = import_chain(graph, module, forbidden)
                if chain:
                    found.append(f"{rule}: {' -> '.join(chain)}")
    return found


def test_the_layout_rules_hold():
    assert violations(ROOT) == []


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph(ROOT)
    # `from .checkpoint import load_checkpoint` inside load_model()
    assert "recon_core.networks.checkpoint" in graph["recon_core.networks.streaming"]
    # gadgets.recon imports the streaming networks inside a function
    assert "recon_core.networks.streaming" in graph["gadgets.recon"]


@pytest.fixture
def source_copy(tmp_path):
    """A copy of the packages' sources to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc", "__pycache__",
                                                                                         "*.safetensors"))
    return tmp_path


def _put_back(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n\ndef _put_back():\n    {line}\n")


def test_fails_when_inference_loads_models_through_training(source_copy):
    _put_back(source_copy / "recon_core/networks/streaming.py",
              "from ..training.checkpoint import load_checkpoint  # noqa")
    found = violations(source_copy)
    assert any(v.startswith("inference does not import training code: recon_core.networks.streaming -> "
                            "recon_core.training") for v in found), found
    # and through it, everything in gadgets that streams a network
    assert any(v.startswith("inference does not import training code: gadgets.recon -> ") for v in found), found


def test_fails_when_evaluation_imports_a_network(source_copy):
    _put_back(source_copy / "recon_core/evaluation.py", "from .networks.problem import make_problem  # noqa")
    found = violations(source_copy)
    assert any(v.startswith("operators, evaluation and metrics do not import networks: recon_core.evaluation -> "
                            "recon_core.networks") for v in found), found


def test_fails_when_recon_core_imports_gadgetron(source_copy):
    _put_back(source_copy / "recon_core/metrics.py", "import gadgetron.external  # noqa")
    found = violations(source_copy)
    assert "recon_core does not import Gadgetron code: recon_core.metrics -> gadgetron" in found, found
