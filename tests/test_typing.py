"""The typed surface: the stubs of the compiled modules say what the bindings define, and the public API
is annotated.

The stubs are checked against the binding sources (every ``m.def`` / ``.def`` / property and each
``py::arg`` name), so a binding that changes without its stub fails here even where the module cannot be
built; the C++ module is also checked live, since it is built on every machine.
"""
import ast
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stub(name):
    """{'module': {func: [params]}, class: {member: [params] or None for properties}} from a .pyi file."""
    tree = ast.parse((ROOT / "mads_fast" / f"{name}.pyi").read_text())
    out = {"module": {}}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out["module"][node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.AnnAssign):
            out["module"][node.target.id] = None
        elif isinstance(node, ast.ClassDef):
            members = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    is_prop = any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list)
                    members[item.name] = None if is_prop else [a.arg for a in item.args.args if a.arg != "self"]
            out[node.name] = members
    return out


def _bindings(cpp_file):
    """The same shape, read from a pybind11 source: names of defs, properties, attrs and their py::arg names."""
    src = (ROOT / "csrc" / cpp_file).read_text()
    body = src[src.index("PYBIND11_MODULE"):]
    out = {"module": {a: None for a in re.findall(r'm\.attr\("(\w+)"\)', body)}}
    current = "module"
    tokens = list(re.finditer(r'py::class_<\w+>\(m, "(\w+)"\)|m\.def\(\s*"(\w+)"|\.def_property_readonly\(\s*"(\w+)"'
                              r'|\.def\(\s*py::init|\.def\(\s*"(\w+)"', body))
    for i, t in enumerate(tokens):
        end = tokens[i + 1].start() if i + 1 < len(tokens) else len(body)
        args = re.findall(r'py::arg\("(\w+)"\)', body[t.end():end])   # the py::arg names up to the next def
        if t.group(1):
            current = t.group(1)
            out[current] = {}
        elif t.group(2):
            out["module"][t.group(2)] = args
        elif t.group(3):
            out[current][t.group(3)] = None
        elif t.group(4):
            out[current][t.group(4)] = args
        else:  # the constructor
            out[current]["__init__"] = args
    return out


@pytest.mark.parametrize("module, source", [("_solver_cpu", "bindings_cpu.cpp"), ("_solver_cuda", "bindings_cuda.cpp")])
def test_stub_matches_binding_source(module, source):
    stub, bound = _stub(module), _bindings(source)
    assert set(stub) == set(bound)
    for scope in bound:
        assert stub[scope] == bound[scope], scope


def test_cpu_stub_matches_compiled_module():
    mod = pytest.importorskip("mads_fast._solver_cpu", reason="the C++ solver is not built")
    stub = _stub("_solver_cpu")
    public = {n for n in dir(mod) if not n.startswith("_")}
    assert public == set(stub) - {"module"} | set(stub["module"])
    for name, params in stub["module"].items():      # module-level functions: their parameter names
        if params is not None:
            doc = getattr(mod, name).__doc__.splitlines()[0]
            assert re.findall(r"(?:\(|,\s)(\w+):", doc) == params, name
    cls = mod.DenseSimilarity
    assert {n for n in dir(cls) if not n.startswith("_")} == set(stub["DenseSimilarity"]) - {"__init__"}
    for name, params in stub["DenseSimilarity"].items():
        if params is None:
            assert isinstance(getattr(cls, name), property), name
            continue
        doc = getattr(cls, name).__doc__.splitlines()[0]       # pybind11: "name(self: ..., idx: ..., ...) -> ..."
        got = re.findall(r"(?:\(|,\s)(\w+):", doc)   # parameter names; types may hold commas but no colon
        assert got[0] == "self" and got[1:] == params, name


def test_package_is_typed_and_ships_its_stubs():
    assert (ROOT / "mads_fast" / "py.typed").exists()
    setup = (ROOT / "setup.py").read_text()
    assert '"py.typed"' in setup and '"*.pyi"' in setup


def test_public_api_is_annotated():
    from mads_fast import FacilityLocation, KCenter, extract, load_features, select, solve

    for fn in (select, solve, extract, load_features, FacilityLocation.__init__, FacilityLocation.fit,
               KCenter.__init__, KCenter.fit):
        sig = inspect.signature(fn)
        bare = [n for n, p in sig.parameters.items()
                if n != "self" and p.kind is not p.VAR_KEYWORD and p.annotation is inspect.Parameter.empty]
        assert not bare, f"{fn.__qualname__}: {bare}"
        assert sig.return_annotation is not inspect.Signature.empty, fn.__qualname__
