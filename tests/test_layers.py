"""Imports run one way: flows -> pipelines -> components -> artifacts (DESIGN.md "Layout",
STYLE.md item 12). Every import statement counts, at top level or inside a function."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

LAYERS = ("artifacts", "components", "pipelines", "flows")  # lowest first
# the tree to read: this checkout, or another one named by TAPELINE_LAYERS_ROOT
ROOT = Path(os.environ.get("TAPELINE_LAYERS_ROOT") or Path(__file__).resolve().parents[1])


def imported(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                out.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                out.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
            out.append((node.lineno, node.args[0].value))  # importlib.import_module("pkg.mod")
    return out


def upward(root: Path) -> list[str]:
    """'file:line imports module' for each import of a higher layer."""
    bad = []
    for rank, layer in enumerate(LAYERS):
        files = sorted((root / layer).rglob("*.py"))
        assert files, f"no modules under {root / layer}"
        for path in files:
            rel = path.relative_to(root)
            package = ".".join(rel.with_suffix("").parts[:-1]) if rel.name != "__init__.py" \
                else ".".join(rel.parent.parts)
            for line, module in imported(path, package):
                top = module.split(".")[0]
                if top in LAYERS and LAYERS.index(top) > rank:
                    bad.append(f"{rel}:{line} imports {module}")
    return bad


def test_no_import_goes_up_a_layer():
    bad = upward(ROOT)
    assert not bad, "imports that go up a layer (flows > pipelines > components > artifacts):\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "components" / "x.py").write_text("def f():\n    from pipelines import y\n    import flows.cli\n"
                                               "    importlib.import_module('flows.graph')\n")
    (tmp_path / "pipelines" / "y.py").write_text("from components import x\nfrom . import z\n")
    assert upward(tmp_path) == ["components/x.py:2 imports pipelines", "components/x.py:3 imports flows.cli",
                                "components/x.py:4 imports flows.graph"]


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_read(layer):
    assert list((ROOT / layer).glob("*.py")), f"{layer}/ has no modules under {ROOT}"


def import_time_state(root: Path) -> list[str]:
    """'file:line what' for each module-level statement that fills or changes state at import: a
    write into a dict or list held by a module (LIMITS[k] = v, X.update(...), X.append(...)),
    globals() changed, or a module imported by a name built at run time (an f-string)."""
    bad = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            where = f"{path.relative_to(root)}"
            for stmt in tree.body:
                if isinstance(stmt, (ast.Assign, ast.AugAssign)):
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                    if any(isinstance(t, (ast.Subscript, ast.Attribute)) for t in targets):
                        bad.append(f"{where}:{stmt.lineno} writes into a module-level object")
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                    func = stmt.value.func
                    name = getattr(func, "attr", getattr(func, "id", ""))
                    if name in ("update", "setdefault", "append", "extend", "register") or \
                            (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
                             and getattr(func.value.func, "id", "") == "globals"):
                        bad.append(f"{where}:{stmt.lineno} calls {name}() at import")
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                        "import_module" and node.args and isinstance(node.args[0], ast.JoinedStr):
                    bad.append(f"{where}:{node.lineno} imports a module by a name built from a string")
    return bad


def test_no_module_fills_state_at_import_or_imports_by_a_built_name():
    assert import_time_state(ROOT) == []


def test_the_state_check_catches_what_it_looks_for(tmp_path):
    pkg = tmp_path / "components"
    pkg.mkdir()
    (pkg / "bad.py").write_text('import importlib\nLIMITS = {}\nLIMITS["a"] = 1\nLIMITS.update(b=2)\n'
                                'globals().update(c=3)\n'
                                'def f(stage):\n    return importlib.import_module(f"components.{stage}")\n')
    for layer in LAYERS:
        (tmp_path / layer).mkdir(exist_ok=True)
    assert [b.split(" ", 1)[1] for b in import_time_state(tmp_path)] == [
        "writes into a module-level object", "calls update() at import", "calls update() at import",
        "imports a module by a name built from a string"]
