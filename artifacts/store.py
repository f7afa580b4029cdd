"""The artifact store of DESIGN.md: ROOT/PIPELINE/STAGE/VERSION/ with MANIFEST.json and _COMMITTED,
made of its parts: the layout (artifacts/layout.py), commit and verify (artifacts/commit.py), and
champions, run records, leases and lineage (artifacts/champions.py); the files go through
artifacts/gfile.py, gc through artifacts/maintenance.py."""
from __future__ import annotations

import os

from artifacts import gfile
from artifacts.champions import Records
from artifacts.commit import Commits, Writer, package_versions  # noqa: F401 - the store's API
from artifacts.layout import RootLayout
from artifacts.refs import (  # noqa: F401
    CHAMPION,
    COMMITTED,
    FINGERPRINT,
    LOCKS,
    MANIFEST,
    NAME,
    PENDING,
    RUNS,
    SERVING,
    WORK,
    Artifact,
    InputRef,
    StageRun,
    canonical_root,
    check_run_id,
)


class ArtifactStore(RootLayout, Commits, Records):
    """One root: its layout, commits and records, each a part of its own."""


DEFAULT_ROOT = "tapeline-artifacts"


def default_root() -> str:
    """$TAPELINE_ROOT, else ./tapeline-artifacts (absolute, so deployments agree on it)."""
    return os.environ.get("TAPELINE_ROOT") or os.path.abspath(DEFAULT_ROOT)


def open_store(root: str | None = None) -> ArtifactStore:
    """The store at root (default_root() when None); a new local root ignores itself in git."""
    root = root or default_root()
    if gfile.is_local(root) and not os.path.exists(root):
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, ".gitignore"), "w") as f:
            f.write("*\n")
    return ArtifactStore(root)
