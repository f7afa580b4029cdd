"""What everyone who reads or writes a root names: its layout's fixed names, the name patterns a
file in it may use, an artifact and an input as values, and the one spelling of a root. A leaf:
importing a type from here pulls no store code into a stage's fingerprint."""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from artifacts import gfile
from artifacts.errors import UserError

MANIFEST = "MANIFEST.json"
COMMITTED = "_COMMITTED"  # written last: without it a directory is not an artifact
PENDING = "_PENDING"      # written first: names the fingerprint a writer is building
WORK = "_work"
LOCKS = "_locks"
CLAIMS = "_claims"        # an object store's STAGE/_claims/FINGERPRINT.json: the one version of it
RUNS = "runs"
CHAMPION = "champion.json"
SERVING = "serving"       # ROOT/serving/PIPELINE/N/: pushed SavedModels (artifacts/serving.py)
RESERVED = {WORK, LOCKS, CLAIMS}  # folders of a stage that are not versions
# What a file in the root may name, checked before any path is built from it: the root is data.
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")  # one path component tapeline writes


@dataclass(frozen=True)
class InputRef:
    """An input that is not an artifact (a data source): a URI and a digest of its content."""
    uri: str
    fingerprint: str


@dataclass(frozen=True)
class Artifact:
    uri: str
    manifest: dict = field(repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def type(self) -> str:
        return self.manifest["type"]

    @property
    def params(self) -> dict:
        return self.manifest["params"]

    def path(self, *parts: str) -> str:
        return gfile.join(self.uri, *parts)


@dataclass(frozen=True)
class StageRun:
    artifact: Artifact
    reused: bool


def reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(e).split("\n")[0][:200] or type(e).__name__

def legacy_ref(root: str, ref: str) -> str | None:
    """An absolute local reference written by an older tapeline (or under another spelling of
    this root, one that still resolves to it), relative to root; None if it is not under it."""
    norm = posixpath.normpath(re.sub("/+", "/", ref))
    if norm.startswith(root + "/"):
        return norm[len(root) + 1:]
    head, tail = norm, []
    for _ in range(6):
        head, name = posixpath.split(head)
        if not name:
            return None
        tail.insert(0, name)
        if len(tail) >= 3 and os.path.realpath(head) == root:
            return "/".join(tail)
    return None

def canonical_root(root: str) -> str:
    """The one spelling of a root: a local one absolute with every symlink and `..` resolved
    (a relative path, `//`, a symlinked parent or a moved root all name the same store); a URI
    with its path normalized. Every reference inside the root is relative to this."""
    if root.startswith("file://"):
        return "file://" + canonical_root(root[len("file://"):])
    if "://" not in root:
        return os.path.realpath(os.path.expanduser(root))
    scheme, _, rest = root.partition("://")
    rest = posixpath.normpath(re.sub("/+", "/", rest)).lstrip("/")
    return f"{scheme}://{'' if rest == '.' else rest}"


def check_run_id(run_id: str) -> str:
    """A run id names a file under the root: one plain name, never a path."""
    if not isinstance(run_id, str) or not NAME.fullmatch(run_id):
        raise UserError(f"bad run id {run_id!r}", "run_id",
                        "use letters, digits, '.', '_', '+' and '-' only, starting with a letter or digit")
    return run_id


def manifest_problem(m: Any) -> str | None:
    """What makes a decoded manifest unusable, checked before anything trusts a field of it."""
    def strs(d: Any, inner: Callable[[Any], bool]) -> bool:
        return isinstance(d, dict) and all(isinstance(k, str) and inner(v) for k, v in d.items())

    ok = (isinstance(m, dict) and isinstance(m.get("fingerprint"), str) and isinstance(m.get("version"), str)
          and isinstance(m.get("type"), str) and isinstance(m.get("params"), dict)
          and strs(m.get("files"), lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str)
                   and isinstance(v.get("size"), int))
          and strs(m.get("inputs", {}), lambda v: isinstance(v, dict) and isinstance(v.get("uri"), str)
                   and isinstance(v.get("fingerprint"), str)))
    return None if ok else f"{MANIFEST} does not hold a manifest"
