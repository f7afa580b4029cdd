"""Fingerprints: stage name + transitive project code + params + input fingerprints."""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

# Only our own packages count as "code": library upgrades show up in the manifest's versions.
PROJECT_PACKAGES = ("artifacts", "components", "pipelines", "flows")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()


@lru_cache(maxsize=None)
def _package_dirs(top: str) -> tuple[Path, ...]:
    try:
        spec = importlib.util.find_spec(top)  # runs only the top package's __init__
    except (ImportError, ValueError):
        return ()
    return tuple(Path(p) for p in (spec.submodule_search_locations or [])) if spec else ()


@lru_cache(maxsize=None)
def _top_module_file(top: str) -> Path | None:
    """A top-level plain module (a recipe outside any package, e.g. a test's own pipeline)."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations or not (spec.origin or "").endswith(".py"):
        return None
    return Path(spec.origin)


@lru_cache(maxsize=None)
def _module_file(name: str, packages: tuple[str, ...] = PROJECT_PACKAGES) -> Path | None:
    """The source file of a project module, found on disk: importlib.util.find_spec would
    import every parent package and module (a name `x` imported from `pipelines.layers`
    reads as `pipelines.layers.x`, whose parent is layers.py, which imports TensorFlow)."""
    top, *rest = name.split(".")
    if top not in packages:
        return None
    if not rest and _top_module_file(top) is not None:
        return _top_module_file(top)
    for base in _package_dirs(top):
        path = base.joinpath(*rest)
        for candidate in (path.with_name(path.name + ".py") if rest else None, path / "__init__.py"):
            if candidate is not None and candidate.is_file():
                return candidate
    return None


def _imports(name: str, path: Path, packages: tuple[str, ...]) -> set[str]:
    """Project modules named by the import statements of one module (including submodules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            # `from pkg import sub` may name a submodule rather than an attribute.
            found.update(f"{mod}.{alias.name}" for alias in node.names)
    out = set()
    for mod in found:
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):
            out.add(".".join(parts[:i]))
    return {m for m in out if _module_file(m, packages) is not None}


def module_closure(module: str, packages: tuple[str, ...] = PROJECT_PACKAGES) -> dict[str, Path]:
    """The module and every project module it imports, transitively: name -> file."""
    todo, seen = [module], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, packages)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(name, path, packages) - seen.keys())
    return dict(sorted(seen.items()))


@lru_cache(maxsize=None)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_digest(module: str, packages: tuple[str, ...] = PROJECT_PACKAGES) -> str:
    """One digest over the source of module and of the project code it imports."""
    parts = {}
    for name, path in module_closure(module, packages).items():
        st = path.stat()
        parts[name] = _file_digest(str(path), st.st_mtime_ns, st.st_size)
    if not parts:
        raise ValueError(f"{module} is not a project module")
    return digest(parts)


def files_digest(paths: list[str]) -> str:
    """Digest of data files by content (not mtime): a file rewritten in place changes it."""
    from artifacts import gfile

    return digest({p: gfile.sha256(p, follow=True)[0] for p in sorted(paths)})  # a data folder may link its files


def stage_fingerprint(stage: str, code: str, params: Mapping[str, Any],
                      inputs: Mapping[str, str]) -> str:
    """inputs maps input name -> the input artifact's fingerprint (or a data digest)."""
    return digest({"stage": stage, "code": code, "params": params, "inputs": dict(inputs)})
