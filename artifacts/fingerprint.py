"""Fingerprints: stage name + the project code it can run (normalized) + params + input fingerprints."""
from __future__ import annotations

import ast
import contextlib
import contextvars
import hashlib
import importlib.util
import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

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


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module, inside functions too, less those under `if
    TYPE_CHECKING:` (what only a type checker reads is not code the module can run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, packages: tuple[str, ...]) -> frozenset[str]:
    """Project modules named by the import statements of one module. `from pkg import sub` names
    the submodule sub, not pkg (a package's __init__ is code only where a name is taken from it):
    so a module importing one stage of components/stages/ does not pull in its siblings."""
    st = path.stat()
    return _parsed_imports(name, str(path), st.st_mtime_ns, st.st_size, packages)


@lru_cache(maxsize=None)
def _parsed_imports(name: str, file: str, mtime_ns: int, size: int, packages: tuple[str, ...]) -> frozenset[str]:
    """_imports of one version of a file (its mtime and size in the key: an edit is parsed again)."""
    path = Path(file)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            mod = f"{base}.{node.module}" if node.module else base
        else:
            mod = node.module or ""
        subs = {f"{mod}.{alias.name}" for alias in node.names}
        modules = {s for s in subs if _module_file(s, packages) is not None}
        found |= modules
        if len(modules) < len(subs):  # some name is an attribute of mod itself
            found.add(mod)
    return frozenset(m for m in found if _module_file(m, packages) is not None)


def module_closure(module: str, packages: tuple[str, ...] = PROJECT_PACKAGES,
                   stop: Callable[[str], bool] = lambda name: False) -> dict[str, Path]:
    """The module and every project module it imports, transitively: name -> file. A module for
    which stop(name) holds is left out, and not followed."""
    todo, seen = [module], {}
    while todo:
        name = todo.pop()
        if name in seen or (stop(name) and name != module):
            continue
        path = _module_file(name, packages)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(name, path, packages) - seen.keys())
    return dict(sorted(seen.items()))


# Top-level names that declare a recipe to the orchestrator (its name, summary, list of stages,
# the test suite's sizes) and that no stage runs: left out of a recipe module's digest.
DECLARATIONS = ("PIPELINE",)


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    tree.body = [s for s in tree.body if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and
                                              isinstance(s.targets[0], ast.Name) and s.targets[0].id in DECLARATIONS)]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def _source_digest(path: str, mtime_ns: int, size: int) -> str:
    """A module's code as Python runs it: its syntax tree without docstrings, without line and
    column numbers, so a comment, a docstring or a reformat never changes it."""
    tree = _strip_docstrings(ast.parse(Path(path).read_text(encoding="utf-8"), filename=path))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode("utf-8")).hexdigest()


def module_digests(module: str, packages: tuple[str, ...] = PROJECT_PACKAGES,
                   stop: Callable[[str], bool] = lambda name: False) -> dict[str, str]:
    """{module: digest of its normalized code} over module_closure(module, packages, stop)."""
    parts = {}
    for name, path in module_closure(module, packages, stop).items():
        st = path.stat()
        parts[name] = _source_digest(str(path), st.st_mtime_ns, st.st_size)
    if not parts:
        raise ValueError(f"{module} is not a project module")
    return parts


def code_digest(module: str, packages: tuple[str, ...] = PROJECT_PACKAGES) -> str:
    """One digest over the normalized code of module and of the project code it imports."""
    return digest(module_digests(module, packages))


def files_digest(paths: list[str]) -> str:
    """Digest of data files by content (not mtime): a file rewritten in place changes it."""
    from artifacts import gfile

    # a data folder may link its files
    return digest({p: file_sha(p, lambda p=p: gfile.sha256(p, follow=True)[0]) for p in sorted(paths)})


# path -> [size, mtime_ns, ctime_ns, sha256, hashed_ns]: what `known_hashes` lets file_sha skip re-reading
_KNOWN: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tapeline_known_hashes", default=None)
_RACY_NS = 2_000_000_000  # a file changed this close to its hashing may change again within one mtime tick


def file_times(path: str) -> tuple[int, int, int] | None:
    """(size, mtime, ctime): the ctime too, since a copy that keeps mtimes (`cp -p`, `rsync -a`) can
    put other bytes of the same size under an old mtime; only the ctime then says it changed."""
    try:
        st = os.stat(path)  # follows a link, as the data readers do
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


@contextlib.contextmanager
def known_hashes(entries: dict) -> Iterator[dict]:
    """Within it, file_sha takes a local file's sha256 from entries when its size, mtime and ctime
    match the entry and it was not changed within 2 s of being hashed (git's racy-clean rule); every
    file hashed inside is written back to entries. For cheap repeated keys of a source (the watch);
    the entries are a hint, checked against the file each time, never a reason to skip a changed one."""
    token = _KNOWN.set(entries)
    try:
        yield entries
    finally:
        _KNOWN.reset(token)


def file_sha(path: str, compute: Callable[[], str]) -> str:
    """compute() (the file's sha256), or the known one (see known_hashes)."""
    known = _KNOWN.get()
    if known is None or "://" in path:
        return compute()
    now = file_times(path)
    entry = known.get(path)
    if (now is not None and isinstance(entry, list) and len(entry) == 5 and list(now) == entry[:3]
            and isinstance(entry[3], str) and len(entry[3]) == 64 and isinstance(entry[4], int)
            and max(now[1], now[2]) < entry[4] - _RACY_NS):
        return entry[3]
    sha = compute()
    if now is not None:
        known[path] = [*now, sha, time.time_ns()]
    return sha


def stage_fingerprint(stage: str, code: str, params: Mapping[str, Any],
                      inputs: Mapping[str, str]) -> str:
    """inputs maps input name -> the input artifact's fingerprint (or a data digest)."""
    return digest({"stage": stage, "code": code, "params": params, "inputs": dict(inputs)})
