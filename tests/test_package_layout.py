"""The package's shape: no import cycle between its modules (module-level or inside functions), and the
solver imports without torch."""
import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mads_fast"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """module -> the mads_fast modules it imports anywhere in its source (functions included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    deps.add(target)  # a submodule importing its own package's __init__ is not a cycle
        graph[name] = deps
    return graph


def find_cycle(graph: dict):
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "mads_fast.solver._backends" in graph and "mads_fast.solver._native" in graph["mads_fast.solver._cuda"]
    assert find_cycle(graph) is None


def test_solver_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            "import numpy as np, mads_fast.solver as s\n"
            "fit = s.FacilityLocation(2, backend='numpy').fit(np.eye(4, dtype=np.float32))\n"
            "print(sorted(fit.ranking_.tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1]"


def test_extract_is_the_function_whatever_was_imported_first():
    code = ("import mads_fast.extraction, mads_fast\n"
            "print(mads_fast.extract is mads_fast.extraction.extract, callable(mads_fast.extract))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_every_subpackage_is_installed():
    """setup.py lists its packages by name: a new subpackage missing there would be left out of a wheel."""
    setup = (PACKAGE.parent / "setup.py").read_text()
    listed = set(re.findall(r'"(mads_fast(?:\.\w+)*)"', setup.split("packages=", 1)[1].split("]", 1)[0]))
    found = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
