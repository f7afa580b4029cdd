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
