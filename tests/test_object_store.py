"""An s3:// root against a real S3 API (moto's server on loopback): the store's conditional writes,
the probe that refuses a store ignoring them, two machines that share nothing but the endpoint and
the credentials (a kill on one, the resume on the other; two runs and two promotions racing), a
SIGTERM, gc beside a live run, faults of the network, and the secret key written nowhere."""
from __future__ import annotations

import glob
import json
import os
import random
import signal
import sqlite3
import time

import pytest

from tests import s3
from tests.conftest import MNIST
from tests.kill_harness import CONFIGS, Outcome

TINY_CLASSIFIER = [f"data.source=idx:{MNIST}", "data.max_examples=300", "data.val_holdout=50", "train.max_steps=20"]


def sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def server():
    srv = s3.start()
    yield srv
    srv.server.stop()


@pytest.fixture
def in_process(server, monkeypatch, tmp_path):
    """This process as a client of the server (its obstore clients made afresh)."""
    from artifacts import objstore

    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TAPELINE_CACHE", str(tmp_path / "cache"))
    objstore.forget_clients()
    yield server
    objstore.forget_clients()


def prefix(name: str) -> str:
    return f"{name}-{random.randrange(1 << 30):08x}"


def test_conditional_writes_and_files_on_s3(in_process):
    from artifacts import gfile, objstore

    root = f"s3://{s3.BUCKET}/{prefix('files')}"
    tag = objstore.create(f"{root}/a/one.json", b"1")
    with pytest.raises(objstore.Exists):
        objstore.create(f"{root}/a/one.json", b"2")
    tag2 = objstore.swap(f"{root}/a/one.json", b"3", tag)
    with pytest.raises(objstore.Changed):  # the ETag read before the last write is stale
        objstore.swap(f"{root}/a/one.json", b"4", tag)
    assert objstore.read(f"{root}/a/one.json") == b"3" and tag2 != tag
    gfile.write_json(f"{root}/a/b/two.json", {"x": 1})
    with gfile.open_read(f"{root}/a/b/two.json") as f:
        assert json.loads(f.read()) == {"x": 1}
    assert gfile.listdir(f"{root}/a") == ["b", "one.json"] and gfile.isdir(f"{root}/a/b")
    assert list(gfile.walk_files(f"{root}/a")) == ["b/two.json", "one.json"]
    assert gfile.kind(f"{root}/a") == "dir" and gfile.kind(f"{root}/a/one.json") == "file"
    assert gfile.kind(f"{root}/nothing") == "missing"
    with pytest.raises(ValueError):
        gfile.read_bytes(f"{root}/a/b/two.json", limit=3)  # bounded before it is read
    try:  # a write that fails inside its block leaves no object
        with gfile._gf(root).GFile(f"{root}/half.bin", "wb") as f:
            f.write(b"half")
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert not gfile.exists(f"{root}/half.bin")
    gfile.rmtree(f"{root}/a")
    assert not in_process.keys(root.split("/", 3)[3] + "/")


def test_an_object_lock_is_exclusive_expires_and_is_taken_over(in_process, monkeypatch):
    from artifacts import lock, objstore

    path = f"s3://{s3.BUCKET}/{prefix('lock')}/x.lock"
    with lock.exclusive(path) as held:
        assert held
        with lock.exclusive(path + "-other", blocking=False) as other:
            assert other  # another name is another lock
        import threading

        seen = []
        t = threading.Thread(target=lambda: seen.append(lock._object_lock(path, False).__enter__()))
        t.start()
        t.join()
        assert seen == [False]  # held: a second taker does not get it
    assert objstore.head(path) is None  # let go: the object removed
    # a SIGKILLed holder's lock: never beaten again, it expires and the next taker swaps it
    objstore.create(path, objstore.record({"owner": "dead", "expires": time.time() - 1}))
    with lock.exclusive(path, blocking=False) as held:
        assert held and json.loads(objstore.read(path))["owner"] != "dead"
    monkeypatch.setenv("TAPELINE_LOCK_TTL", "0.4")  # a live holder's heartbeat keeps it past its ttl
    with lock.exclusive(path):
        time.sleep(1.2)
        with lock._object_lock(path, False) as other:
            assert other is False


def test_two_writers_of_one_fingerprint_commit_once(in_process):
    """Past the lock (a holder paused beyond its ttl), the create-only claim still lets one
    writer commit; the other gets Lost with the winner, its own upload removed."""
    from artifacts.commit import Lost
    from artifacts.store import ArtifactStore

    root = f"s3://{s3.BUCKET}/{prefix('claim')}"
    fp = "ab" * 32
    kw = dict(type="T", params={}, inputs={}, code="c", claim=True)
    a, b = ArtifactStore(root), ArtifactStore(root)
    with a.writer("p", "s", fp, **kw) as w:
        open(w.file("x.txt"), "w").write("a")
    winner = a.find("p", "s", fp)
    assert winner is not None
    with pytest.raises(Lost) as lost:
        with b.writer("p", "s", fp, **kw) as w:
            open(w.file("x.txt"), "w").write("b")
    assert lost.value.winner.uri == winner.uri
    assert [x.uri for x in b.versions("p", "s")] == [winner.uri]
    name = root.split("/", 3)[3]
    assert [k for k in in_process.keys(name + "/p/s/") if "/_claims/" not in k and not k.startswith(
        winner.uri.split("/", 3)[3])] == []
    # a claim whose version is gone (gc, damage) is taken over by compare-and-swap
    from artifacts import gfile

    gfile.rmtree(winner.uri)
    with b.writer("p", "s", fp, **kw) as w:
        open(w.file("x.txt"), "w").write("b")
    assert b.find("p", "s", fp) is not None and b.find("p", "s", fp).uri != winner.uri


def test_a_name_read_from_the_bucket_never_leads_out_of_the_cache(in_process, tmp_path):
    """A writer of the bucket rewrites an artifact so that its manifest names `../../escape.txt`,
    with a matching _COMMITTED: verify reports it, the fetch refuses it in one line, and nothing is
    written outside the cache. An object whose key holds `..` makes a listing one line, exit 2."""
    import hashlib

    from artifacts import objstore
    from artifacts.errors import UserError
    from artifacts.store import ArtifactStore

    root = f"s3://{s3.BUCKET}/{prefix('escape')}"
    store = ArtifactStore(root)
    with store.writer("p", "s", "cd" * 32, type="T", params={}, inputs={}, code="c", claim=True) as w:
        open(w.file("x.txt"), "w").write("x")
    art = store.find("p", "s", "cd" * 32)
    manifest = dict(art.manifest)
    evil = "../../escape.txt"
    tag = '"0"'
    manifest["files"] = {**manifest["files"], evil: {"sha256": hashlib.sha256(b"evil").hexdigest(), "size": 4,
                                                      "etag": tag}}
    body = objstore.record(manifest)
    objstore.write(f"{art.uri}/MANIFEST.json", body)
    objstore.write(f"{art.uri}/_COMMITTED", hashlib.sha256(body).hexdigest().encode())
    tampered = store.load(art.uri)
    assert any("outside the artifact" in p for p in store.check(tampered)), store.check(tampered)
    with pytest.raises(UserError, match="names a path outside its folder"):
        store.localized(tampered)
    cache = os.environ["TAPELINE_CACHE"]
    assert not glob.glob(os.path.join(os.path.dirname(cache), "**", "escape.txt"), recursive=True)
    # obstore refuses to address such a key itself; any other client of the bucket can write it
    in_process.client().put_object(Bucket=s3.BUCKET, Key=f"{art.uri.split('/', 3)[3]}/{evil}", Body=b"evil")
    env = s3.machine(tmp_path, "a", in_process.env())
    r = s3.tapeline(env, "verify", "--root", root)
    assert r.returncode == 2 and last_line(r.stderr).startswith(
        "tapeline: error: the bucket holds an object whose name has an empty, '.' or '..' part"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_champion_is_replaced_only_over_the_version_read(in_process):
    from artifacts import objstore
    from artifacts.store import ArtifactStore

    root = f"s3://{s3.BUCKET}/{prefix('champ')}"
    a, b = ArtifactStore(root), ArtifactStore(root)
    assert a.champion("p") is None and b.champion("p") is None
    b.set_champion("p", {"version": "b", "score": 2})
    with pytest.raises(objstore.Exists):  # a judged "no champion": another was made meanwhile
        a.set_champion("p", {"version": "a", "score": 1})
    judged, undone = [], []

    def better(now):
        judged.append(now and now["version"])
        return now is None or now["score"] < 3

    def take():  # the push, under the lock; meanwhile (a lapsed lock) b promotes
        if not undone:
            b.champion("p")
            b.set_champion("p", {"version": "b2", "score": 2.5})
        return {"pushed": True}, lambda: undone.append(1)

    assert a.replace_champion("p", {"version": "a", "score": 3}, better, take)
    # the first write met b2: the push undone, judged again against b2, then written over it
    assert judged == ["b", "b2"] and undone == [1] and a.champion("p")["version"] == "a"
    b.champion("p")
    b.set_champion("p", {"version": "b3", "score": 5})
    assert not a.replace_champion("p", {"version": "a2", "score": 4}, lambda now: now is None or now["score"] < 4)
    assert a.champion("p")["version"] == "b3"  # never overwritten by a worse model


def test_a_root_spelled_two_ways_is_one_store(in_process):
    from artifacts.store import ArtifactStore

    name = prefix("spelled")
    a, b = ArtifactStore(f"s3://{s3.BUCKET}/{name}/"), ArtifactStore(f"s3://{s3.BUCKET}//{name}")
    assert a.root == b.root == f"s3://{s3.BUCKET}/{name}"


def test_a_store_that_ignores_conditional_writes_is_refused(server, tmp_path):
    name = prefix("probe")
    with s3.Proxy(server.endpoint, "strip") as proxy:
        env = s3.machine(tmp_path, "a", server.env(proxy.endpoint))
        r = s3.tapeline(env, "run", "mnist-classifier", "--root", f"s3://{s3.BUCKET}/{name}", *sets(TINY_CLASSIFIER))
    assert r.returncode == 2, r.stderr[-2000:]
    assert last_line(r.stderr) == (
        f"tapeline: error: the object store ignores create-only writes (If-None-Match: *) (s3://{s3.BUCKET}) — use a"
        " store with conditional writes (AWS S3 since 2024-11, GCS, moto with its defaults, Cloudflare R2) — tapeline's"
        " commits and champions rest on them"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and server.keys(name) == []  # nothing written, the probe's object removed


@pytest.mark.parametrize("mode, says", [
    ("deny", "the object store refused the credentials (wrong, or expired)"),
    ("503", "the object store kept answering 503 (throttled or unavailable) after retries"),
])
def test_a_store_that_refuses_is_one_line(server, tmp_path, mode, says):
    name = prefix(mode)
    with s3.Proxy(server.endpoint, mode) as proxy:
        env = s3.machine(tmp_path, "a", {**server.env(proxy.endpoint), "TAPELINE_STORE_RETRY_SECONDS": "3"})
        r = s3.tapeline(env, "run", "mnist-classifier", "--root", f"s3://{s3.BUCKET}/{name}", *sets(TINY_CLASSIFIER))
    assert r.returncode == 2 and last_line(r.stderr).startswith(f"tapeline: error: {says} (s3://{s3.BUCKET}"), \
        r.stderr[-2000:]
    assert "Traceback" not in r.stderr and s3.SECRET not in r.stderr + r.stdout
    assert server.keys(name) == []


def test_an_unreachable_endpoint_and_a_missing_bucket_are_one_line(server, tmp_path):
    env = s3.machine(tmp_path, "a", {**server.env("http://127.0.0.1:9"), "TAPELINE_STORE_RETRY_SECONDS": "2"})
    r = s3.tapeline(env, "artifacts", "--root", f"s3://{s3.BUCKET}/x")
    assert r.returncode == 2 and "the object store is unreachable (after retries)" in last_line(r.stderr), r.stderr[-2000:]
    env = s3.machine(tmp_path, "b", server.env())
    r = s3.tapeline(env, "verify", "--root", "s3://no-such-bucket-here/x")
    assert r.returncode == 2 and last_line(r.stderr).startswith(
        "tapeline: error: bucket 'no-such-bucket-here' does not exist"), r.stderr[-2000:]


@pytest.mark.parametrize("name, value", [
    ("TAPELINE_STORE_RETRIES", "many"), ("TAPELINE_STORE_RETRIES", "2.5"), ("TAPELINE_STORE_RETRY_SECONDS", "-1"),
    ("TAPELINE_LOCK_TTL", "nan"), ("TAPELINE_LOCK_TTL", "0"), ("TAPELINE_CACHE_GB", "lots"),
    ("TAPELINE_CACHE_GB", "inf")])
def test_a_malformed_store_setting_is_one_line_before_the_bucket_is_touched(server, tmp_path, name, value):
    root = prefix("env")
    r = s3.tapeline(s3.machine(tmp_path, "a", {**server.env(), name: value}), "artifacts", "--root",
                    f"s3://{s3.BUCKET}/{root}")
    assert r.returncode == 2 and last_line(r.stderr).startswith(f"tapeline: error: bad value {value!r} for {name}"), \
        r.stderr[-2000:]
    assert "Traceback" not in r.stderr and server.keys(root) == []


def download_outcome(server, summary: dict, pipeline: str, dest) -> Outcome:
    """Outcome.of a summary whose artifacts are in the bucket: train's and evaluate's copied here."""
    local = {"stages": {}}
    for stage in ("train", "evaluate"):
        uri = summary["stages"][f"{pipeline}/{stage}"]["uri"]
        key = uri.split("/", 3)[3]
        for k in server.keys(key + "/"):
            path = dest / stage / k[len(key) + 1:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(server.read(k))
        local["stages"][f"{pipeline}/{stage}"] = {"uri": str(dest / stage)}
    return Outcome.of(local, pipeline)


def secret_nowhere(server, texts: list[str], homes: list[dict]) -> None:
    """The secret key is in no object of the bucket, no output, no file of a Prefect home."""
    for key in server.keys():
        assert s3.SECRET.encode() not in server.read(key), key
    for t in texts:
        assert s3.SECRET not in t
    for env in homes:
        for path in glob.glob(os.path.join(env["PREFECT_HOME"], "**", "*"), recursive=True):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    assert s3.SECRET.encode() not in f.read(), path
                if path.endswith(".db"):  # what the Prefect UI shows: parameters, artifacts, logs
                    with sqlite3.connect(path) as db:
                        for (table,) in db.execute("select name from sqlite_master where type='table'"):
                            for row in db.execute(f'select * from "{table}"'):
                                assert s3.SECRET not in repr(row), table


@pytest.mark.slow
@pytest.mark.signals
def test_killed_on_one_machine_resumed_on_another(server, tmp_path, traced):
    """fashion-dcgan at its default batch size and intervals (a checkpoint every 5 epochs, 6
    epochs): machine A SIGKILLed at a training step drawn at random after its first checkpoint,
    machine B with an empty cache resumes from the bucket and ends as the uninterrupted local
    run of the same config ends (the reference the kill tests share, conftest.traced)."""
    pipeline = "fashion-dcgan"
    config = CONFIGS[pipeline]
    reference, moments, _ = traced(pipeline)
    steps = [i for i, m in enumerate(moments) if m == f"train.{pipeline}.step"]
    first_save = moments.index(f"train.{pipeline}.checkpoint.done")
    # past the step right after it: a kill there may come before its upload has finished (then
    # the rerun starts over, which is right, but shows nothing about the resume)
    later = [n for n, i in enumerate(steps, 1) if i > first_save][1:]
    assert later, moments
    seed = random.randrange(1 << 30)
    at = random.Random(seed).choice(later)
    print(f"kill at train.{pipeline}.step@{at} of {len(steps)} (seed {seed})")
    root = f"s3://{s3.BUCKET}/{prefix('resume')}"
    a = s3.machine(tmp_path, "a", server.env())
    trace = tmp_path / "a.trace"
    killed = s3.tapeline({**a, "TAPELINE_FAILPOINTS": f"train.{pipeline}.step@{at}",
                          "TAPELINE_FAILPOINTS_TRACE": str(trace)}, "run", pipeline, "--json", "--root", root,
                         *sets(config))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    moments = trace.read_text().split()
    # the checkpoint's upload finished before the kill (it had a call of steps' time): uploads keep up
    assert f"store.work.pushed.{pipeline}/train" in moments, moments[-20:]
    b = s3.machine(tmp_path, "b", server.env())
    resumed = s3.tapeline(b, "run", pipeline, "--json", "--root", root, *sets(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    import re

    found = [int(n) for n in re.findall(r"resumed from step (\d+)", resumed.stderr)]
    assert found and found[-1] > 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert not summary["stages"][f"{pipeline}/train"]["reused"]
    assert download_outcome(server, summary, pipeline, tmp_path / "got").differences(reference) == []
    v = s3.tapeline(b, "verify", "--root", root)
    assert v.returncode == 0 and " 0 damaged" in v.stdout, v.stdout + v.stderr
    secret_nowhere(server, [killed.stdout, killed.stderr, resumed.stdout, resumed.stderr], [a, b])


@pytest.mark.slow
def test_two_machines_race_one_fingerprint_and_one_champion(server, tmp_path):
    """A and B start the same run at the same moment on a fresh prefix: each artifact is committed
    once and the other machine reuses it; the promotions race: one champion, both decisions recorded."""
    root = f"s3://{s3.BUCKET}/{prefix('race')}"
    envs = [s3.machine(tmp_path, n, server.env()) for n in "ab"]
    procs = [s3.popen(e, "run", "mnist-classifier", "--json", "--root", root, *sets(TINY_CLASSIFIER)) for e in envs]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    summaries = [json.loads(out) for out, _ in outs]
    name = root.split("/", 3)[3]
    keys = server.keys(name + "/")
    for stage in ("ingest", "validate", "preprocess", "train", "evaluate", "render"):
        committed = [k for k in keys if k.startswith(f"{name}/mnist-classifier/{stage}/") and k.endswith("/_COMMITTED")]
        assert len(committed) == 1, (stage, committed)
        assert summaries[0]["stages"][f"mnist-classifier/{stage}"]["uri"] == \
            summaries[1]["stages"][f"mnist-classifier/{stage}"]["uri"]
    promotes = {s["stages"]["mnist-classifier/promote"]["uri"] for s in summaries}
    assert len(promotes) == 2  # a decision per run
    champion = json.loads(server.read(f"{name}/mnist-classifier/champion.json"))
    assert champion["artifacts"]["promote"] in {u[len(root) + 1:] for u in promotes}
    runs = [k for k in keys if k.startswith(f"{name}/runs/")]
    assert len(runs) == 2
    pushed = sorted({k.split("/")[3] for k in keys if k.startswith(f"{name}/serving/mnist-classifier/")
                     and k.split("/")[3].isdigit()})
    assert pushed == [str(champion["serving_version"])] or len(pushed) <= 2, pushed
    assert not [k for k in keys if "/_locks/" in k]  # every lock let go


@pytest.mark.slow
@pytest.mark.signals
def test_sigterm_saves_the_step_in_the_bucket_and_another_machine_resumes(server, tmp_path):
    pipeline = "mnist-gan"
    config = CONFIGS[pipeline]
    root = f"s3://{s3.BUCKET}/{prefix('term')}"
    a = s3.machine(tmp_path, "a", server.env())
    r = s3.tapeline({**a, "TAPELINE_FAILPOINTS": f"train.{pipeline}.step@2:term"}, "run", pipeline,
                    "--root", root, *sets(config))
    assert r.returncode == 143, r.stderr[-3000:]
    assert last_line(r.stderr).startswith(f"tapeline: interrupted during {pipeline}/train at step "), r.stderr[-2000:]
    name = root.split("/", 3)[3]
    progress = [k for k in server.keys(name + "/") if k.endswith("/_work/" + k.split("/_work/")[-1])
                and k.endswith("progress.json")]
    assert progress, "no checkpoint in the bucket"
    step = json.loads(server.read(progress[0]))["step"]
    b = s3.machine(tmp_path, "b", server.env())
    resumed = s3.tapeline(b, "run", pipeline, "--root", root, *sets(config))
    assert resumed.returncode == 0 and f"resumed from step {step}" in resumed.stderr, resumed.stderr[-3000:]


@pytest.mark.slow
def test_gc_on_the_bucket_beside_a_live_run_on_another_machine(server, tmp_path):
    """A run paused in training on machine A (its lease beating); gc --keep 0 --grace 0 on
    machine B removes nothing it uses; A goes on and finishes; its champion's lineage verifies."""
    root = f"s3://{s3.BUCKET}/{prefix('gc')}"
    pause = tmp_path / "pause"
    pause.mkdir()
    a = s3.machine(tmp_path, "a", server.env())
    run = s3.popen({**a, "TAPELINE_FAILPOINTS": "train.mnist-classifier.checkpoint.done@1:pause",
                    "TAPELINE_FAILPOINTS_PAUSE_DIR": str(pause)}, "run", "mnist-classifier", "--json", "--root", root,
                   *sets(TINY_CLASSIFIER + ["train.checkpoint_every=5"]))
    deadline = time.time() + 600
    while not list(pause.glob("*.paused")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert list(pause.glob("*.paused")), run.communicate()[1][-3000:]
    b = s3.machine(tmp_path, "b", server.env())
    gc = s3.tapeline(b, "gc", "--root", root, "--keep", "0", "--grace", "0")
    assert gc.returncode == 0, gc.stderr[-2000:]
    name = root.split("/", 3)[3]
    keys = server.keys(name + "/")
    for stage in ("ingest", "validate", "preprocess"):  # what the live run holds (its lease) stays
        assert len([k for k in keys if k.startswith(f"{name}/mnist-classifier/{stage}/")
                    and k.endswith("/_COMMITTED")]) == 1, (stage, gc.stdout)
    assert [k for k in keys if "/train/_work/" in k and k.endswith("/progress.json")]  # its checkpoint too
    for p in pause.glob("*.paused"):
        (pause / (p.name[:-len(".paused")] + ".resume")).write_text("")
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    v = s3.tapeline(b, "verify", "--root", root)
    assert v.returncode == 0 and " 0 damaged" in v.stdout, v.stdout + v.stderr
    summary = json.loads(out)
    for key, st in summary["stages"].items():  # every artifact the run named is committed in the bucket
        assert st["uri"][len(root) + 1:] + "/_COMMITTED" in {k[len(name) + 1:] for k in server.keys(name + "/")}, key
    after = s3.tapeline(b, "gc", "--root", root, "--keep", "0", "--grace", "0")
    assert after.returncode == 0
    again = s3.tapeline(b, "run", "mnist-classifier", "--json", "--root", root, *sets(TINY_CLASSIFIER + [
        "train.checkpoint_every=5"]))
    assert again.returncode == 0
    reused = json.loads(again.stdout)["stages"]
    # what the champion was built from stayed (render is in no lineage: --keep 0 let it go)
    rebuilt = sorted(k for k, s in reused.items() if not s["reused"])
    assert rebuilt == ["mnist-classifier/promote", "mnist-classifier/render"], rebuilt


@pytest.mark.slow
@pytest.mark.signals
def test_a_run_stopped_past_its_lease_rebuilds_what_gc_on_another_machine_collected(server, tmp_path, references):
    """The object-store form of test_gc_live's SIGSTOP test: machine A's run SIGSTOPped at a
    stage boundary drawn at random until its lease lapses; gc --keep 0 --grace 0 on machine B
    (another host name: it cannot see A's process) collects what A reached in the bucket and
    A's lease; on SIGCONT, A rebuilds it and ends identical to the uninterrupted local run."""
    from flows.registry import get
    from tests.helpers import can_unshare, from_another_host, release, stop_boundary, stopped_past_lease, woken

    if not can_unshare():
        pytest.skip("unshare --uts is refused here (not root): no second host name to gc from")
    pipeline = "mnist-classifier"
    boundary = stop_boundary(pipeline, "sigstop-s3")
    stages = [s.name for s in get(pipeline).stages]
    root = f"s3://{s3.BUCKET}/{prefix('stopped')}"
    name = root.split("/", 3)[3]
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    a = s3.machine(tmp_path, "a", server.env())
    run = s3.popen({**a, "TAPELINE_LEASE_SECONDS": "0.5", "TAPELINE_FAILPOINTS_PAUSE_DIR": str(pauses),
                    "TAPELINE_FAILPOINTS": f"flow.after.{pipeline}/{boundary}@1:pause"},
                   "run", pipeline, "--json", "--root", root, *sets(CONFIGS[pipeline]))

    def committed() -> list[str]:
        return sorted(k for k in server.keys(name + "/") if k.endswith("/_COMMITTED"))

    try:
        stopped_past_lease(run, pauses, pipeline, boundary)
        assert len(committed()) == stages.index(boundary) + 1, committed()
        b = s3.machine(tmp_path, "b", server.env())
        gc = from_another_host(b, "gc", "--root", root, "--keep", "0", "--grace", "0", cwd=b["_WORK"])
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert committed() == [] and not [k for k in server.keys(name + "/") if "/_leases/" in k], gc.stdout
        summary = woken(run)
    finally:
        release(run)
    assert download_outcome(server, summary, pipeline, tmp_path / "got").differences(references(pipeline)) == []
    v = s3.tapeline(b, "verify", "--root", root)
    assert v.returncode == 0 and " 0 damaged" in v.stdout, v.stdout + v.stderr
