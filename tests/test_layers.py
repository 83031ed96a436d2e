"""The package's house rules that a parser can check: the one-way import rule (README, "Layout"),
lazy imports that say why, and no function over ~80 lines without a reason.

Layers, lowest first; a module may import its own layer and the layers below, never one above, and
the module graph has no cycle:

    base <- physics <- io <- solver <- analysis <- report, audit <- application <- cli

Imports sit at the top of a module; one inside a function is there for start-up time (torch,
matplotlib, reportlab, ... stay unloaded until needed) and says so with a ``# lazy`` comment on its
line or on the comment line right above its group of imports (blank lines may part the group).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "metrology"

LAYERS = (
    ("base", ("metrology", "metrology.errors", "metrology.conventions", "metrology.orderings",
              "metrology.parameters", "metrology.measurement", "metrology.toml_input", "metrology.progress",
              "metrology.tables", "metrology.limits", "metrology.field_terms")),
    ("physics", ("metrology.physics",)),
    ("io", ("metrology.io", "metrology.references", "metrology.misalignment", "metrology.simulate", "metrology.render",
            "metrology.simulate_optics", "metrology.simulate_field")),
    ("solver", ("metrology.solver",)),
    ("analysis", ("metrology.analysis",)),
    ("edges", ("metrology.report", "metrology.audit")),
    ("application", ("metrology.pipeline", "metrology.pipeline_field", "metrology.inspection", "metrology.calibration", "metrology.batch")),
    ("cli", ("metrology.cli", "metrology.commands", "metrology.__main__")),
)
"""Layer name and the modules (or packages) in it, lowest first."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Rank of ``module``: its own entry, else its closest package's (``metrology`` alone is the
    package's ``__init__``, not a prefix)."""
    best, rank = "", None
    for i, (_, members) in enumerate(layers):
        for m in members:
            if (module == m or (m != layers[0][1][0] and module.startswith(m + "."))) and len(m) > len(best):
                best, rank = m, i
    return rank


def _in_type_checking(node, parents) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test):
            return True
        p = parents.get(p)
    return False


def imports(path: Path, root: Path, modules: set) -> list:
    """``(target, line, lazy, type_checking)`` for every import of a package module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    own = module_name(path, root)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        lazy = any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)) for p in _ancestors(node, parents))
        for t in targets:
            if t == root.name or t.startswith(root.name + "."):
                out.append((t, node.lineno, lazy, _in_type_checking(node, parents)))
    return out


def _ancestors(node, parents):
    p = parents.get(node)
    while p is not None:
        yield p
        p = parents.get(p)


def check_package(root: Path, layers=LAYERS) -> list:
    """Every violation of the rule in the package at ``root``, one line each."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    problems, graph = [], {}
    for f in files:
        own = module_name(f, root)
        rank = layer_of(own, layers)
        if rank is None:
            problems.append(f"{own}: in no layer (add it to LAYERS and to the README's Layout)")
            continue
        for target, line, _lazy, type_checking in imports(f, root, modules):
            trank = layer_of(target, layers)
            if trank is not None and trank > rank:
                problems.append(f"{own}:{line}: upward import of {target} "
                                f"({layers[rank][0]} -> {layers[trank][0]})")
            if not type_checking and target != own:
                graph.setdefault(own, set()).add(target)
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict) -> list:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def unexplained_lazy_imports(root: Path) -> list:
    """Function-level imports without a ``# lazy`` comment on their line or above their group."""
    out = []
    for f in sorted(root.rglob("*.py")):
        lines = f.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                k = node.lineno - 1
                said = "# lazy" in lines[k]
                j = k - 1
                while not said and j >= 0 and (not lines[j].strip()
                                               or lines[j].strip().startswith(("import ", "from ", "# lazy"))):
                    said = lines[j].strip().startswith("# lazy")
                    j -= 1
                if not said:
                    out.append(f"{module_name(f, root)}:{node.lineno}: {lines[k].strip()}")
    return out


# ----------------------------------------------------------------------------- the package
def test_package_imports_go_one_way_without_cycles():
    problems = check_package(PACKAGE)
    assert not problems, "\n".join(problems)


def test_lazy_imports_say_why():
    problems = unexplained_lazy_imports(PACKAGE)
    assert not problems, "imports inside functions without a '# lazy' reason:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- the checker itself
def _package(tmp_path, files: dict) -> Path:
    root = tmp_path / "metrology"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("files,expected", [
    ({"physics/__init__.py": "", "physics/model.py": "from metrology.solver import fit\n",
      "solver/__init__.py": "", "solver/fit.py": ""}, "upward import of metrology.solver"),
    ({"solver/__init__.py": "", "solver/a.py": "def f():\n    from metrology.pipeline import x  # lazy\n",
      "pipeline.py": ""}, "upward import of metrology.pipeline"),
    ({"solver/__init__.py": "", "solver/a.py": "from metrology.solver import b\n",
      "solver/b.py": "from metrology.solver.a import f\n"}, "import cycle: metrology.solver.a -> metrology.solver.b"),
    ({"solver/__init__.py": "", "solver/a.py": "from . import b\n", "solver/b.py": "from .a import f\n"},
     "import cycle"),
    ({"newroom.py": ""}, "metrology.newroom: in no layer"),
])
def test_checker_finds_upward_imports_cycles_and_strays(tmp_path, files, expected):
    problems = check_package(_package(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_checker_accepts_downward_and_type_checking_imports(tmp_path):
    root = _package(tmp_path, {
        "solver/__init__.py": "", "physics/__init__.py": "",
        "solver/a.py": "from metrology.physics import model\n",
        "physics/model.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from metrology.physics import other\n",
        "physics/other.py": "from metrology.physics import model\n",
    })
    assert check_package(root) == []


def test_lazy_import_without_reason_is_found(tmp_path):
    root = _package(tmp_path, {"errors.py": "def f():\n    import json\n    return json\n",
                               "conventions.py": "def g():\n    # lazy: start-up time\n    import json\n"})
    assert unexplained_lazy_imports(root) == ["metrology.errors:2: import json"]


# ----------------------------------------------------------------------------- function length
MAX_FUNCTION_LINES = 80


def long_functions(root: Path) -> list:
    """Functions over :data:`MAX_FUNCTION_LINES` lines (docstring included) whose docstring gives no
    ``Length:`` reason."""
    out = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and "Length:" not in (ast.get_docstring(node) or ""):
                    out.append(f"{module_name(f, root)}.{node.name}: {lines} lines")
    return out


def test_no_long_function_without_a_reason():
    assert long_functions(PACKAGE) == []


def test_long_function_is_found(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    root = _package(tmp_path, {"errors.py": f"def f():\n    \"\"\"Short.\"\"\"\n{body}\n",
                               "conventions.py": f"def g():\n    \"\"\"Length: a table.\"\"\"\n{body}\n"})
    assert long_functions(root) == [f"metrology.errors.f: {MAX_FUNCTION_LINES + 2} lines"]
