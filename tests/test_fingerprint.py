"""Fingerprints follow transitive project code, params and input content."""
from __future__ import annotations

import os

from artifacts.fingerprint import code_digest, files_digest, module_closure, stage_fingerprint


def test_real_component_closure_follows_imports():
    closure = module_closure("pipelines.fashion_dcgan")
    assert {"components.recipe", "components.sections", "pipelines.mnist_classifier",
            "artifacts.errors"} <= closure.keys()


def test_changing_a_helper_module_changes_the_fingerprint(tmp_path, monkeypatch):
    pkg = tmp_path / "fpdemo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "component.py").write_text("from fpdemo.sub import helper\nfrom . import other\n")
    (pkg / "other.py").write_text("X = 1\n")
    (pkg / "sub" / "helper.py").write_text("def f():\n    return 1\n")
    (pkg / "unrelated.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    packages = ("fpdemo",)
    # `from fpdemo.sub import helper` names the module helper, not the packages above it
    assert set(module_closure("fpdemo.component", packages)) == {
        "fpdemo.component", "fpdemo.other", "fpdemo.sub.helper"}
    before = code_digest("fpdemo.component", packages)
    fp_before = stage_fingerprint("train", before, {"lr": 1}, {"data": "x"})
    (pkg / "unrelated.py").write_text("Y = 2\n")
    assert code_digest("fpdemo.component", packages) == before
    helper = pkg / "sub" / "helper.py"
    stat = helper.stat()
    helper.write_text("def f():\n    return 2\n")
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    after = code_digest("fpdemo.component", packages)
    assert after != before
    assert stage_fingerprint("train", after, {"lr": 1}, {"data": "x"}) != fp_before


def test_comments_docstrings_formatting_and_type_only_imports_do_not_count(tmp_path, monkeypatch):
    pkg = tmp_path / "fpnorm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "types_only.py").write_text("class T:\n    pass\n")
    comp = pkg / "component.py"
    comp.write_text('"""One line."""\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n'
                    '    from fpnorm.types_only import T\n\nLIMIT = 3\n\n\ndef f(x):\n'
                    '    """Doc."""\n    return x * LIMIT\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    packages = ("fpnorm",)
    assert set(module_closure("fpnorm.component", packages)) == {"fpnorm.component"}
    before = code_digest("fpnorm.component", packages)

    def rewrite(text: str) -> str:
        stat = comp.stat()
        comp.write_text(text)
        os.utime(comp, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        return code_digest("fpnorm.component", packages)

    same = ('"""Another docstring,\nover two lines."""\n# a comment\nfrom typing import TYPE_CHECKING\n'
            'if TYPE_CHECKING:  # why\n    from fpnorm.types_only import T\nLIMIT = (3)  # the limit\n'
            'def f(x):\n    # what f does\n    """Another doc."""\n    return (x *\n            LIMIT)\n')
    assert rewrite(same) == before
    assert rewrite(same.replace("LIMIT = (3)", "LIMIT = (4)")) != before
    assert rewrite(same.replace("return (x *", "return (x +")) != before


def test_params_and_inputs_change_the_fingerprint():
    base = stage_fingerprint("train", "c", {"lr": 1}, {"data": "x"})
    assert stage_fingerprint("train", "c", {"lr": 2}, {"data": "x"}) != base
    assert stage_fingerprint("train", "c", {"lr": 1}, {"data": "y"}) != base
    assert stage_fingerprint("train", "c", {"lr": 1}, {"data": "x"}) == base


def test_rewriting_an_input_file_in_place_changes_its_digest(tmp_path):
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(b"0123456789")
    stat = f.stat()
    before = files_digest([str(f)])
    f.write_bytes(b"9876543210")  # same path, same size, same mtime
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert files_digest([str(f)]) != before
