"""A stage's code digest follows behaviour: comments and docstrings edited in every project module
leave every fingerprint of every pipeline as it was; a constant changed in a module a stage calls
rebuilds exactly that stage and what reads from it, and `tapeline plan` names the module."""
from __future__ import annotations

import ast
import json
import shutil

import pytest

from tests.conftest import MNIST, PEOPLE, REPO, run_py, tapeline

PACKAGES = ("artifacts", "components", "pipelines", "flows")
# every node of every pipeline, at its defaults on local data and at a small config:
# {"PIPELINE default|small": {node key: fingerprint}}
FINGERPRINTS = """
import json, sys
from flows.graph import fingerprints, nodes
from flows.registry import all_pipelines
sources, small = json.loads(sys.argv[1]), sys.argv[2:]
out = {}
for name, p in all_pipelines().items():
    source = [f"data.source={sources[p.recipe.layout.name]}"]
    for label, sets in (("default", source), ("small", small if name == "mnist-classifier" else source)):
        out[f"{name} {label}"] = {k: v[0] for k, v in fingerprints(nodes(p, p.config(sets))).items()}
print(json.dumps(out))
"""
DATA = [f"data.source=idx:{MNIST}", "data.max_examples=120", "data.val_holdout=20", "train.max_steps=2"]
# a source on this machine for each data layout: the defaults name tfds datasets, which need the internet
SOURCES = {"image": f"idx:{MNIST}", "paired": f"paired:{PEOPLE}", "unpaired": f"paired:{PEOPLE}"}


def _copy(tmp_path):
    tree = tmp_path / "tree"
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _fingerprints(tree) -> dict:
    # cwd too: `python -c` puts the working directory first on sys.path
    r = run_py(FINGERPRINTS + f"\nassert __import__('flows').__file__.startswith({str(tree)!r})",
               json.dumps(SOURCES), *DATA, env={"PYTHONPATH": str(tree)}, timeout=300, cwd=str(tree))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _edit_comments_and_docstrings(path) -> None:
    """Every docstring replaced, a comment line before every top-level statement, and each
    comment of the module rewritten: nothing Python runs changes."""
    text = path.read_text()
    tree = ast.parse(text)
    lines = text.split("\n")
    docs = [n.body[0].value for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
            and isinstance(n.body[0].value.value, str)]
    for d in sorted(docs, key=lambda d: (d.lineno, d.col_offset), reverse=True):
        first, last = lines[d.lineno - 1], lines[d.end_lineno - 1]
        lines[d.lineno - 1:d.end_lineno] = [first[:d.col_offset] + '"""An edited docstring,\nover two lines."""'
                                            + last[d.end_col_offset:]]
    text = "\n".join(lines)
    tree = ast.parse(text)
    lines = text.split("\n")
    for stmt in sorted(tree.body, key=lambda s: s.lineno, reverse=True):
        lines.insert(stmt.lineno - 1, "# an edited comment, and a blank line after it\n")
    path.write_text("\n".join(lines) + "\n# the end\n")


def test_comments_and_docstrings_in_every_module_change_no_fingerprint(tmp_path):
    tree = _copy(tmp_path)
    edited = 0
    for path in sorted(tree.rglob("*.py")):
        _edit_comments_and_docstrings(path)
        edited += 1
    assert edited > 50
    before, after = _fingerprints(REPO), _fingerprints(tree)
    assert set(before) == set(after) and all(before[k] == after[k] for k in before), \
        {k: [n for n in before[k] if before[k][n] != after[k].get(n)] for k in before}
    # and through the command line: what the original tree built, the edited one reuses
    root = str(tmp_path / "root")
    built = tapeline("run", "mnist-classifier", "--root", root, "--json", *[a for s in DATA for a in ("--set", s)])
    assert built.returncode == 0, built.stderr[-3000:]
    plan = run_py("import sys; from flows.cli import main; sys.exit(main())", "plan", "mnist-classifier",
                  "--root", root, *[a for s in DATA for a in ("--set", s)], env={"PYTHONPATH": str(tree)}, cwd=str(tree))
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = [line for line in plan.stdout.splitlines() if line.startswith("mnist-classifier/")]
    assert len(rows) == 7, plan.stdout
    assert all(" reuse " in r for r in rows if not r.startswith("mnist-classifier/promote")), plan.stdout


@pytest.mark.parametrize("module,constant,rebuilt", [
    # the training checkpoints: train and every stage that reads the trained model
    ("components/checkpoints.py", "STATE_FILE", {"train", "evaluate", "render", "animate", "promote"}),
    # the pictures: render and the GIF drawn from its grids, not the model or the data
    ("components/stages/render.py", None, {"render", "animate"}),
])
def test_a_changed_constant_rebuilds_exactly_the_stages_that_call_it_and_what_reads_them(
        tmp_path, module, constant, rebuilt):
    tree = _copy(tmp_path)
    path = tree / module
    text = path.read_text()
    assigns = [s for s in ast.parse(text).body if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
               and (constant is None or s.targets[0].id == constant)]
    target = assigns[0]
    line = text.split("\n")[target.lineno - 1]
    old = ast.get_source_segment(text, target.value)
    new = repr(target.value.value + 1 if isinstance(target.value.value, (int, float)) else target.value.value + "x")
    path.write_text(text.replace(line, line.replace(old, new, 1), 1))
    before, after = _fingerprints(REPO), _fingerprints(tree)
    for key in before:
        changed = {n.split("/")[-1] for n in before[key] if before[key][n] != after[key][n]}
        own = {n.split("/")[-1] for n in before[key] if before[key][n] != after[key][n]
               and n.startswith(key.split()[0] + "/")}
        # the feature classifiers of the GANs are trains of mnist-classifier: the same rule holds there
        pipeline_stages = {n.split("/")[-1] for n in before[key] if n.startswith(key.split()[0] + "/")}
        assert own == rebuilt & pipeline_stages, (key, module, own)
        assert changed <= rebuilt, (key, changed)
    # plan, on a root of the original tree's data stages, names the module
    root = str(tmp_path / "root")
    built = tapeline("run", "mnist-classifier", "--root", root, "--json", *[a for s in DATA for a in ("--set", s)])
    assert built.returncode == 0, built.stderr[-3000:]
    plan = run_py("import sys; from flows.cli import main; sys.exit(main())", "plan", "mnist-classifier",
                  "--root", root, *[a for s in DATA for a in ("--set", s)], env={"PYTHONPATH": str(tree)}, cwd=str(tree))
    rows = {line.split()[0].split("/")[-1]: line for line in plan.stdout.splitlines()
            if line.startswith("mnist-classifier/")}
    dotted = module[:-3].replace("/", ".")
    for stage, row in rows.items():
        if stage in rebuilt and stage != "promote":
            assert " run " in row and f"code changed: {dotted}" in row, plan.stdout
        elif stage != "promote":
            assert " reuse " in row, plan.stdout
