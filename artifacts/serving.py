"""ROOT/serving/PIPELINE/N/: the pushed SavedModels in TensorFlow Serving's layout, each version
written under a hidden temporary name and renamed into place whole, so a server polling the
folder never sees half a model; the newest and `keep` older versions stay."""
from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from artifacts import failpoints, gfile, objstore
from artifacts.refs import SERVING

if TYPE_CHECKING:
    from artifacts.store import ArtifactStore

TMP = ".partial-"                 # hidden, and not an integer: TF Serving and listings skip it
CLAIMS = ".claims"                # an object store's version numbers, each claimed once
VERSION = re.compile(r"[1-9][0-9]{0,17}")  # what TF Serving reads as a version: a positive int64


def folder(store: ArtifactStore, pipeline: str) -> str:
    """ROOT/serving/PIPELINE, refused (UserError) when a symlink or a file out of place leads to it."""
    return store.inside(gfile.join(store.root, SERVING, pipeline), f"{SERVING}/{pipeline}")


def versions(store: ArtifactStore, pipeline: str) -> list[int]:
    """The pushed versions of a pipeline, oldest first; a link or anything but a folder named by
    a version is noted in store.skipped and never followed."""
    base = gfile.join(store.root, SERVING, pipeline)
    if not store.contained(base):
        store.skipped[base] = "a symlink or not a folder, not followed"
        return []
    out = []
    for name in gfile.listdir(base):
        path = gfile.join(base, name)
        if not VERSION.fullmatch(name):
            continue
        if (gfile.kind(path) if gfile.is_local(store.root) else "dir" if gfile.isdir(path) else "file") == "dir":
            out.append(int(name))
        else:
            store.skipped[path] = "not a folder, not followed"
    return sorted(out)


def pipelines(store: ArtifactStore) -> list[str]:
    """The pipelines that have a serving folder."""
    base = gfile.join(store.root, SERVING)
    if not store.contained(base):
        return []
    return [n for n in gfile.listdir(base) if not n.startswith(".") and store.contained(gfile.join(base, n))
            and gfile.isdir(gfile.join(base, n))]


def push(store: ArtifactStore, pipeline: str, saved_model: str) -> int:
    """Copy the SavedModel folder saved_model (a committed artifact's) to the next version N and
    return N. Callers hold the pipeline's champion lock, so two pushes never pick one N, and prune
    only once champion.json names it. Locally the version appears by one rename; an object store
    has no folder rename, so there saved_model.pb, what a server loads first, is copied last. A
    Python-level stop (a signal, a full disk) before it returns takes the version away again."""
    base = folder(store, pipeline)
    gfile.makedirs(base)
    number = max(versions(store, pipeline), default=0) + 1
    local = gfile.is_local(store.root)
    while not local:  # an object store: the number is claimed create-only, so two pushes never share one
        try:
            objstore.create(gfile.join(base, CLAIMS, str(number)), b"")
            break
        except objstore.Exists:
            number += 1
    final = gfile.join(base, str(number))
    tmp = store.inside(gfile.join(base, f"{TMP}{number}-{uuid.uuid4().hex[:8]}"), "a push") if local else final
    try:
        files = list(gfile.walk_files(saved_model))
        for rel in sorted(files, key=lambda r: r == "saved_model.pb"):
            dst = gfile.join(tmp, rel)
            gfile.makedirs(dst.rsplit("/", 1)[0])
            gfile.copy(gfile.join(saved_model, rel), dst)
            failpoints.hit(f"serving.copied.{pipeline}")
        if local:
            store.inside(final, "a pushed version")
            gfile.rename_dir(tmp, final)
        failpoints.hit(f"serving.pushed.{pipeline}")
    except BaseException:
        gfile.rmtree(tmp)
        if local and gfile.exists(final):
            gfile.rmtree(final)
        raise
    return number


def prune(store: ArtifactStore, pipeline: str, keep: int) -> None:
    """Drop all but the newest and `keep` older pushed versions (after champion.json names the newest)."""
    base = folder(store, pipeline)
    for old in versions(store, pipeline)[:-(keep + 1)]:
        gfile.rmtree(gfile.join(base, str(old)))


def newest_holding(store: ArtifactStore, pipeline: str, saved_models: list[str]) -> int | None:
    """The newest pushed version when it holds exactly the files of one of saved_models (the push
    of a run killed before it could name it in champion.json): pushing again would duplicate it."""
    numbers = versions(store, pipeline)
    if not numbers:
        return None
    newest = gfile.join(folder(store, pipeline), str(numbers[-1]))
    theirs = sorted(gfile.walk_files(newest))
    for saved in saved_models:
        if sorted(gfile.walk_files(saved)) == theirs and all(
                gfile.sha256(gfile.join(saved, r))[0] == gfile.sha256(gfile.join(newest, r))[0] for r in theirs):
            return numbers[-1]
    return None


def withdraw(store: ArtifactStore, pipeline: str, number: int) -> None:
    """Remove pushed version number (a push whose champion.json could not be written)."""
    gfile.rmtree(gfile.join(folder(store, pipeline), str(number)))


def abandoned(store: ArtifactStore, pipeline: str) -> list[str]:
    """Temporary folders a push left behind when it was killed (gc removes the old ones)."""
    base = gfile.join(store.root, SERVING, pipeline)
    if not store.contained(base):
        return []
    return [gfile.join(base, n) for n in gfile.listdir(base) if n.startswith(TMP)]
