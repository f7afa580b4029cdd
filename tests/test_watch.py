"""The watch: a source keyed cheaply as ingest keys it, and one tapeline.source.changed event per change."""
from __future__ import annotations

import gzip
import os
import time

import numpy as np
import pytest

from artifacts import gfile
from components import watch
from components.stages import ingest
from flows.registry import get
from tests.conftest import MNIST
from tests.helpers import run_stages, write_idx

PIPELINE = "mnist-classifier"


def _source(d, n=60, shift=0, test=True):
    x = np.frombuffer(gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    y = np.frombuffer(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    x = x.reshape(-1, 28, 28)
    d.mkdir(exist_ok=True)
    write_idx(d, "train", np.ascontiguousarray(x[shift:shift + n]), np.ascontiguousarray(y[shift:shift + n]))
    if test:
        write_idx(d, "t10k", np.ascontiguousarray(x[1000:1000 + n // 2]), np.ascontiguousarray(y[1000:1000 + n // 2]))
    return d


def _age(d, seconds=60):
    """Every file's mtime moved into the past, and its ctime (which cannot be set) waited out:
    older than the racy window of the cache."""
    for f in d.iterdir():
        t = time.time() - seconds
        os.utime(f, (t, t))
    time.sleep(2.1)


def _params(d) -> ingest.Params:
    p = get(PIPELINE)
    return ingest.Params.from_config(p.config([f"data.source=idx:{d}"]), p.recipe)


def test_key_is_ingests_and_only_what_changed_is_hashed(tmp_path, monkeypatch):
    d = _source(tmp_path / "src")
    _age(d)
    cache = watch.load_cache(str(tmp_path / "none.json"))
    _, key, how = watch.content_key(_params(d), cache)
    assert key == ingest.resolve_source(_params(d)).fingerprint and how == "keyed"
    hashed = []
    real = gfile.sha256
    monkeypatch.setattr(gfile, "sha256", lambda p, **kw: hashed.append(p) or real(p, **kw))
    assert watch.content_key(_params(d), cache)[1:] == (key, "unchanged sizes and times") and hashed == []
    _source(d, shift=5, test=False)  # new train files; t10k as it was
    _, new, how = watch.content_key(_params(d), cache)
    assert sorted(os.path.basename(p) for p in hashed) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert how == "keyed" and new != key and new == ingest.resolve_source(_params(d)).fingerprint


def test_a_same_size_file_copied_in_with_its_old_mtime_is_keyed_again(tmp_path):
    """`cp -p` and `rsync -a` keep a file's mtime: other bytes of the same size under the same old
    mtime. Only the ctime says it changed, and both the cheap look and the hash cache read it."""
    d = _source(tmp_path / "src")
    params = _params(d)
    cache = watch.load_cache(str(tmp_path / "none.json"))
    f = d / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())  # the same images, stored (level 0): the size follows the length only
    f.write_bytes(gzip.compress(raw, compresslevel=0, mtime=0))
    _age(d)
    _, key, _ = watch.content_key(params, cache)
    assert watch.content_key(params, cache)[1:] == (key, "unchanged sizes and times")
    st = f.stat()
    other = tmp_path / "other.gz"  # other pixels (the first 20 images inverted), the same size
    other.write_bytes(gzip.compress(raw[:16] + bytes(255 - b for b in raw[16:16 + 20 * 784]) + raw[16 + 20 * 784:],
                                    compresslevel=0, mtime=0))
    other.replace(f)  # moved in as a careful publisher does, its old mtime kept as `cp -p` keeps it
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert watch.settling(params.source, 30)  # its mtime is 60 s old; its ctime is now
    _, new, how = watch.content_key(params, cache)
    assert how == "keyed" and new != key and new == ingest.resolve_source(params).fingerprint


def test_a_cache_that_is_not_ours_is_not_trusted(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"version": 1, "sources": [], "files": 3}')
    assert watch.load_cache(str(path))["sources"] == {}
    path.write_text("not json")
    assert watch.load_cache(str(path))["files"] == {}


def _events(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as c:
        page = c.read_events(EventFilter(event=EventNameFilter(name=["tapeline.source.changed"]),
                                         resource=EventResourceFilter(id=[f"tapeline.pipeline.{name}"])), limit=50)
    return page.events


def test_watch_emits_once_for_a_changed_source_and_nothing_for_an_unchanged_one(tmp_path, harness, monkeypatch):
    from prefect.events.worker import EventsWorker

    from flows import watch_flow

    monkeypatch.setattr(watch_flow, "cache_path", lambda: str(tmp_path / "prefect-home" / "watch.json"))
    d = _source(tmp_path / "src")
    root = str(tmp_path / "root")
    run_stages(root, PIPELINE, [f"data.source=idx:{d}"], "ingest")
    kw = {"pipelines": [PIPELINE], "overrides": {PIPELINE: [f"data.source=idx:{d}"]}, "root": root,
          "settle_seconds": 0}
    first = watch_flow.watch(**kw)
    assert [v["emit"] for v in first] == [False] and first[0]["old"] == first[0]["new"]
    _source(d, shift=7)
    second, third = watch_flow.watch(**kw), watch_flow.watch(**kw)
    assert second[0]["emit"] and second[0]["old"] == first[0]["new"] != second[0]["new"]
    assert not third[0]["emit"]  # announced once: its retraining has not ingested it yet
    # ... and again once nothing ingested it for reannounce_seconds (a trigger inside its `within`
    # window drops events; a run may fail before its ingest): the data does not wait for the cron
    again = watch_flow.watch(**{**kw, "reannounce_seconds": 0})
    assert again[0]["emit"] and "announced again" in again[0]["why"] and again[0]["new"] == second[0]["new"]
    assert not watch_flow.watch(**kw)[0]["emit"]
    # a file written a moment ago: the source is still being copied in, no event yet
    _source(d, shift=9)
    assert not watch_flow.watch(**{**kw, "settle_seconds": 300})[0]["emit"]
    EventsWorker.drain_all()
    deadline, events = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        events = _events(PIPELINE)
        if events:
            break
        time.sleep(1)
    time.sleep(2)
    events = _events(PIPELINE)
    assert len(events) == 2, events
    assert all(e.payload == {"old": second[0]["old"], "new": second[0]["new"], "source": f"idx:{d}"} for e in events)


def test_a_missing_source_is_one_line_not_a_failed_watch(tmp_path, harness, monkeypatch):
    from flows import watch_flow

    monkeypatch.setattr(watch_flow, "cache_path", lambda: str(tmp_path / "watch.json"))
    out = watch_flow.watch(pipelines=[PIPELINE], overrides={PIPELINE: [f"data.source=idx:{tmp_path / 'nowhere'}"]},
                           root=str(tmp_path / "root"), settle_seconds=0)
    assert not out[0]["emit"] and "does not exist" in out[0]["why"]


def test_a_tfds_source_read_from_its_local_copy_is_watched_by_that_folder(tmp_path, monkeypatch):
    from components import sources

    d = _source(tmp_path / "copy")
    _age(d)
    monkeypatch.setitem(sources.LOCAL_COPIES, "mnist", (str(d),))
    monkeypatch.setattr(sources, "_online", lambda *a, **k: False)
    p = get(PIPELINE)
    params = ingest.Params.from_config(p.config(["data.source=tfds:mnist"]), p.recipe)
    if ingest.resolve_source(params).uri != f"idx:{d}":
        pytest.skip("tfds mnist is prepared here: not read from a local copy")
    cache = watch.load_cache(str(tmp_path / "c.json"))
    assert watch.content_key(params, cache)[2] == "keyed"
    assert watch.content_key(params, cache) == (f"idx:{d}", ingest.resolve_source(params).fingerprint,
                                                "unchanged sizes and times")


def test_a_watch_that_cannot_keep_its_cache_stops_in_one_line_before_any_event(tmp_path, harness, monkeypatch):
    from artifacts.errors import UserError
    from flows import watch_flow

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(watch_flow, "cache_path", lambda: str(tmp_path / "a-file" / "watch.json"))
    emitted = []
    monkeypatch.setattr(watch_flow, "emit_event", lambda **kw: emitted.append(kw))
    d = _source(tmp_path / "src")
    with pytest.raises(UserError) as err:
        watch_flow.watch(pipelines=[PIPELINE], overrides={PIPELINE: [f"data.source=idx:{d}"]},
                         root=str(tmp_path / "root"), settle_seconds=0)
    assert "cannot keep its cache" in err.value.line() and "PREFECT_HOME" in err.value.line()
    assert not emitted
