"""The package's layering rule (ARCHITECTURE.md), read from the source with ``ast``.

Every module of ``src/jimunet`` belongs to one level; a module imports only from its own level
or below, the imports between modules form no cycle, and a function-level import is allowed only
for an optional third-party package. The package root (``jimunet/__init__.py``, which re-exports
the public API of every level) and ``__main__`` are outside the rule. A module that imports an optional package at its
top is optional itself, and may be imported inside the function that needs it.
"""
from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module is placed by the longest prefix of its dotted name listed here.
LEVELS = [
    ("runtime", ["jimunet._version", "jimunet._messages", "jimunet.backend", "jimunet.random", "jimunet.parallel",
                 "jimunet.allocator", "jimunet.distributed", "jimunet.serialization"]),
    ("math and data", ["jimunet.functional", "jimunet.data", "jimunet.datasets"]),
    ("blocks", ["jimunet.parameter", "jimunet.init", "jimunet.losses", "jimunet.optim", "jimunet.gradcheck",
                "jimunet.layers"]),
    ("networks", ["jimunet.model", "jimunet.graph", "jimunet.models", "jimunet.onnx"]),
    ("training", ["jimunet.training"]),
    ("application", ["jimunet.app"]),
]
EXEMPT = {"jimunet", "jimunet.__main__"}
# Third-party packages that are optional extras (or absent on CPU machines): only these may be
# imported inside a function, where a missing one can be reported when it is needed. A third-party
# import inside ``try: ... except ImportError`` (a version-dependent location) is allowed too.
OPTIONAL = {"matplotlib", "PIL", "onnx", "onnxruntime", "mpi4py", "cupy", "cupyx", "torch", "fcntl", "msvcrt"}


def level_of(module: str) -> int | None:
    """The index in LEVELS of ``module``'s level; None for a module placed nowhere."""
    best, level = "", None
    for i, (_, prefixes) in enumerate(LEVELS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, level = p, i
    return level


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute names of the jimunet modules an ``from ... import ...`` statement reads."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not (target == "jimunet" or target.startswith("jimunet.")):
        return []
    # ``from . import layers`` names submodules; ``from .model import load`` names the module.
    return [f"{target}.{a.name}" for a in node.names] + [target]


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def _imports(module: str, path: Path, known: set[str]):
    """(imported jimunet module, line, inside a function?) and (third-party top name, line, inside?)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    inside, guarded = set(), set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(fn) if n is not fn)
        if isinstance(fn, ast.Try) and any(_catches_import_error(h) for h in fn.handlers):
            guarded.update(id(n) for stmt in fn.body + fn.handlers for n in ast.walk(stmt))
    ours, theirs = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "jimunet" or a.name.startswith("jimunet."):
                    ours.append((a.name, node.lineno, id(node) in inside))
                else:
                    theirs.append((a.name.split(".")[0], node.lineno, id(node) in inside and id(node) not in guarded))
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(module, is_package, node)
            if names:
                # keep the most specific names that are modules; a plain name falls back to its module
                mods = [n for n in names[:-1] if n in known] or [names[-1]]
                ours.extend((m, node.lineno, id(node) in inside) for m in mods)
            elif not node.level:
                theirs.append(((node.module or "").split(".")[0], node.lineno,
                               id(node) in inside and id(node) not in guarded))
    return ours, theirs


def import_graph(src: Path = SRC):
    files = {_module_name(p, src): p for p in sorted((src / "jimunet").rglob("*.py"))}
    known = set(files)
    graph, problems = {}, []
    stdlib = set(sys.stdlib_module_names)
    found = {mod: _imports(mod, path, known) for mod, path in files.items()}
    # A module that imports an optional package at its top (onnx/_export.py imports onnx) is
    # itself optional: its package may import it inside the function that needs it.
    optional = {mod for mod, (_, theirs) in found.items() if any(t in OPTIONAL and not f for t, _, f in theirs)}
    for mod, path in files.items():
        ours, theirs = found[mod]
        graph[mod] = set()
        for target, line, in_function in ours:
            while target not in known and "." in target:  # a name imported from a module
                target = target.rsplit(".", 1)[0]
            if target == mod:
                continue
            where = f"{path.relative_to(src)}:{line}"
            if in_function and mod not in EXEMPT and target not in optional:
                problems.append(f"{where}: {mod} imports {target} inside a function (only optional third-party "
                                f"packages may be; import it at the top, or move the code to the right level)")
            if target == "jimunet":
                problems.append(f"{where}: {mod} imports the package root (jimunet/__init__.py), which imports "
                                f"every level; import the module that defines the name")
                continue
            graph[mod].add((target, where))
        for top, line, in_function in theirs:
            if in_function and top not in OPTIONAL and top not in stdlib and mod not in EXEMPT:
                problems.append(f"{path.relative_to(src)}:{line}: {mod} imports {top} inside a function, but it "
                                f"is not an optional package (OPTIONAL in tests/test_layering.py)")
    return graph, problems


def upward_edges(graph):
    out = []
    for mod, targets in graph.items():
        if mod in EXEMPT:
            continue
        for target, where in sorted(targets):
            if target in EXEMPT or level_of(mod) is None or level_of(target) is None:
                continue  # unplaced modules are reported by test_every_module_has_a_level
            if level_of(target) > level_of(mod):
                out.append(f"{where}: {mod} ({LEVELS[level_of(mod)][0]}) imports {target} "
                           f"({LEVELS[level_of(target)][0]}), a higher level")
    return out


def cycles(graph):
    """Every import cycle, each as a list of modules (Tarjan's strongly connected components)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]
    edges = {m: sorted({t for t, _ in ts if t in graph and t not in EXEMPT}) for m, ts in graph.items()
             if m not in EXEMPT}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, []):
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def unplaced(graph):
    return [f"{mod} is in no level of tests/test_layering.py's LEVELS: place it there and in ARCHITECTURE.md"
            for mod in sorted(graph) if mod not in EXEMPT and level_of(mod) is None]


def test_every_module_has_a_level():
    graph, _ = import_graph()
    problems = unplaced(graph)
    assert not problems, "\n".join(problems)


def test_no_import_points_up_or_hides_in_a_function():
    graph, problems = import_graph()
    problems = problems + upward_edges(graph)
    assert not problems, "layering rule broken (ARCHITECTURE.md):\n" + "\n".join(problems)


def test_no_import_cycle():
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def _tree(tmp_path, files: dict) -> Path:
    for name, text in files.items():
        p = tmp_path / "jimunet" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_check_names_an_upward_import(tmp_path):
    src = _tree(tmp_path, {"__init__.py": "", "layers/__init__.py": "", "app/__init__.py": "",
                           "layers/conv.py": "from ..app import cli\n", "app/cli.py": "import numpy\n"})
    graph, _ = import_graph(src)
    assert upward_edges(graph) == ["jimunet/layers/conv.py:1: jimunet.layers.conv (blocks) imports jimunet.app.cli "
                                   "(application), a higher level"]


def test_the_check_names_a_cycle_and_a_hidden_import(tmp_path):
    src = _tree(tmp_path, {"__init__.py": "", "model.py": "from .graph import Model\n",
                           "graph.py": "def f():\n    from .model import load\n"})
    graph, problems = import_graph(src)
    assert cycles(graph) == [["jimunet.graph", "jimunet.model"]]
    assert len(problems) == 1 and "jimunet/graph.py:2" in problems[0] and "inside a function" in problems[0]


def test_a_module_that_needs_an_optional_package_may_be_imported_lazily(tmp_path):
    src = _tree(tmp_path, {"__init__.py": "", "onnx/__init__.py": "def load():\n    from ._import import read\n",
                           "onnx/_import.py": "import onnx\n", "model.py": "def f():\n    from .onnx import load\n"})
    _, problems = import_graph(src)
    assert len(problems) == 1 and "jimunet/model.py:2: jimunet.model imports jimunet.onnx inside" in problems[0]


def test_the_check_refuses_a_module_without_a_level(tmp_path):
    src = _tree(tmp_path, {"__init__.py": "", "newthing.py": "import numpy\n"})
    graph, _ = import_graph(src)
    assert unplaced(graph) == ["jimunet.newthing is in no level of tests/test_layering.py's LEVELS: place it "
                               "there and in ARCHITECTURE.md"]
