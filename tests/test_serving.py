"""promote's push: each pipeline's champion as a SavedModel under ROOT/serving/PIPELINE/N/ that plain
TensorFlow loads and that answers like the Keras model; a version appears whole or not at all."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import threading
import time

import numpy as np
import pytest

from tests.conftest import MNIST, PEOPLE
from tests.helpers import TINY, copy_artifact

# mnist-classifier as mnist-gan's feature model is configured (tiny mnist-gan's data, the seed's
# training): mnist-gan's evaluation reuses its stages instead of building them again
SETS = {**TINY, "mnist-classifier": [f"data.source=idx:{MNIST}", "data.max_examples=200"], "cyclegan": [f"data.source=paired:{PEOPLE}", "data.max_examples=8", "data.image_size=32",
                             "data.jitter_copies=2", "train.max_steps=3", "train.steps_per_call=3"]}
PIPELINES = sorted(SETS)

# Run with `python -I -S`: no repository, no .pth (the editable install's finder), only site-packages.
LOADER = r"""
import importlib.util, sys
sys.path.append(sys.argv[1])
assert importlib.util.find_spec("components") is None and importlib.util.find_spec("pipelines") is None
import numpy as np
import tensorflow as tf
data = dict(np.load(sys.argv[3]))
out = {}
for key in sorted(data):
    pipeline, sig, _ = key.split("|")
    model = tf.saved_model.load(f"{sys.argv[2]}/{pipeline}/1")
    for name, value in model.signatures[sig](tf.constant(data[key])).items():
        out[f"{pipeline}|{sig}|{name}"] = value.numpy()
np.savez(sys.argv[4], **out)
"""


def _complete(version_dir: str) -> bool:
    return all(os.path.isfile(os.path.join(version_dir, f))
               for f in ("saved_model.pb", "variables/variables.index", "fingerprint.pb"))


class Poller(threading.Thread):
    """Lists serving/*/ as a model server does, and notes any version folder it finds incomplete."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.seen, self.incomplete, self.stop = base, set(), [], threading.Event()

    def run(self):
        while True:  # one last look after stop: the last push too
            done = self.stop.is_set()
            for p in os.listdir(self.base) if os.path.isdir(self.base) else []:
                folder = os.path.join(self.base, p)
                for n in os.listdir(folder) if os.path.isdir(folder) else []:
                    if n.isdigit():
                        self.seen.add((p, n))
                        if not _complete(os.path.join(folder, n)):
                            self.incomplete.append((p, n))
            if done:
                return
            time.sleep(0.005)


@pytest.fixture(scope="module")
def pushed(tiny_flow, tmp_path_factory):
    """Every pipeline run to promote in one root, a poller watching serving/ all along:
    (root, store, {pipeline: {stage: artifact}}, poller). The stages of a TINY pipeline come as
    its shared flow built them (copied; promote decides again here); the others are built here."""
    from artifacts.store import ArtifactStore
    from flows.graph import build, nodes
    from flows.registry import get

    root = str(tmp_path_factory.mktemp("serving") / "root")
    store = ArtifactStore(root)
    for pipeline in PIPELINES:
        if SETS[pipeline] == TINY.get(pipeline):
            flow = tiny_flow(pipeline)
            for key, stage in flow.summary["stages"].items():
                if key.rsplit("/", 1)[1] not in ("render", "animate", "promote"):  # promote reads neither
                    copy_artifact(stage["uri"], store.root + stage["uri"][len(flow.summary["root"]):])
    poller = Poller(os.path.join(root, "serving"))
    poller.start()
    arts = {}
    for pipeline in PIPELINES:
        done = {n.key: run.artifact for n, run in
                build(store, nodes(get(pipeline), get(pipeline).config(SETS[pipeline])), [f"{pipeline}/promote"])}
        arts[pipeline] = {k.split("/", 1)[1]: a for k, a in done.items() if k.startswith(pipeline + "/")}
    poller.stop.set()
    poller.join()
    return root, store, arts, poller


def _expected(arts: dict, pipeline: str, rng) -> dict:
    """{pipeline|signature|input: array} and {pipeline|signature|output: what Keras gives}."""
    import tensorflow as tf

    from components import tfrecords
    from components.stages import evaluate, preprocess
    from flows.registry import get

    nets = evaluate.load_models(arts["train"])
    tr = preprocess.transform(arts["preprocess"])
    norm, shape = tr["normalize"], tr["image_shape"]
    inputs, outputs = {}, {}

    def pixels(y):
        return np.clip(np.round(tfrecords.unnormalize(np.asarray(y, np.float32), norm)), 0, 255).astype(np.uint8)

    for sig, spec in get(pipeline).recipe.serving.signatures.items():
        net = nets[spec.network]
        kind = type(spec).__name__
        if kind == "Generate":
            x = rng.standard_normal((3, net.input_shape[-1])).astype(np.float32)
            outputs[f"{pipeline}|{sig}|images"] = pixels(net(x, training=False))
        else:
            x = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
            model_in = x.astype(np.float32) * norm["scale"] + norm["offset"]
            if kind == "Classify":
                logits = net(model_in.reshape((3, *net.input_shape[1:])), training=False)
                outputs[f"{pipeline}|{sig}|probabilities"] = tf.nn.softmax(logits, -1).numpy()
            else:
                outputs[f"{pipeline}|{sig}|images"] = pixels(net(model_in, training=False))
        inputs[f"{pipeline}|{sig}|in"] = x
    return inputs, outputs


@pytest.mark.slow
def test_each_pushed_savedmodel_answers_like_its_keras_model_in_plain_tensorflow(pushed, tmp_path):
    from artifacts import serving
    from components.stages import promote

    root, store, arts, poller = pushed
    rng = np.random.default_rng(0)
    inputs, expected = {}, {}
    for pipeline in PIPELINES:
        assert promote.decision(arts[pipeline]["promote"], store)["pushed"]
        assert serving.versions(store, pipeline) == [1]
        assert store.champion(pipeline)["serving_version"] == 1
        i, o = _expected(arts[pipeline], pipeline, rng)
        inputs.update(i)
        expected.update(o)
    np.savez(tmp_path / "in.npz", **inputs)
    (tmp_path / "load.py").write_text(LOADER)
    site = sysconfig.get_paths()["purelib"]
    subprocess.run([sys.executable, "-I", "-S", "load.py", site, f"{root}/serving", "in.npz", "out.npz"],
                   cwd=tmp_path, check=True, timeout=300)
    got = dict(np.load(tmp_path / "out.npz"))
    for key, want in expected.items():
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        if want.dtype == np.uint8:  # rounding can fall the other way on a float's last bit
            assert np.abs(got[key].astype(int) - want.astype(int)).max() <= 1, key
            assert (got[key] == want).mean() > 0.99, key
        else:
            np.testing.assert_allclose(got[key], want, atol=1e-5, err_msg=key)
    assert {k.split("|")[0] for k in got} == set(PIPELINES)
    # the poller saw every push, never one incomplete
    assert poller.seen == {(p, "1") for p in PIPELINES} and not poller.incomplete


def test_saved_model_cli_lists_the_signatures(pushed):
    root = pushed[0]
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", f"{root}/serving/cyclegan/1", "--all"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert "signature_def['serving_default']" in out and "signature_def['outline_to_photo']" in out
    assert "dtype: DT_UINT8" in out and "shape: (-1, 32, 32, 3)" in out


def test_a_version_appears_whole_and_old_ones_beyond_keep_versions_go(pushed, tmp_path, monkeypatch):
    from artifacts import failpoints, serving
    from artifacts.maintenance import gc
    from components.stages import promote

    root, store, arts, _ = pushed
    src = promote.saved_model(arts["mnist-classifier"]["promote"])
    folder = os.path.join(root, "serving", "mnist-classifier")
    monkeypatch.setenv(failpoints.ENV, "serving.copied.mnist-classifier@2:pause")
    monkeypatch.setenv(failpoints.ENV + "_PAUSE_DIR", str(tmp_path))
    t = threading.Thread(target=serving.push, args=(store, "mnist-classifier", src))
    t.start()
    stem = tmp_path / "serving.copied.mnist-classifier"
    for _ in range(3000):
        if os.path.exists(f"{stem}.paused"):
            break
        time.sleep(0.01)
    # halfway through the copy: a hidden temporary folder, and no new version
    names = sorted(os.listdir(folder))
    assert [n for n in names if n.isdigit()] == ["1"] and any(n.startswith(serving.TMP) for n in names)
    assert serving.versions(store, "mnist-classifier") == [1]
    open(f"{stem}.resume", "w").close()
    t.join(60)
    monkeypatch.delenv(failpoints.ENV)
    assert serving.versions(store, "mnist-classifier") == [1, 2] and _complete(os.path.join(folder, "2"))
    assert not any(n.startswith(serving.TMP) for n in os.listdir(folder))
    for _ in range(2):
        serving.push(store, "mnist-classifier", src)
    serving.prune(store, "mnist-classifier", 1)  # once champion.json names the newest
    assert serving.versions(store, "mnist-classifier") == [3, 4]  # the newest and keep_versions=1 older
    # a push killed before its rename: gc removes its leftover, never a version
    os.makedirs(os.path.join(folder, serving.TMP + "9-dead"))
    assert os.path.join(folder, serving.TMP + "9-dead") in gc(store, keep=10)
    assert serving.versions(store, "mnist-classifier") == [3, 4]
    assert "serving" not in store.pipelines()


def test_tapeline_artifacts_lists_the_pushed_versions(pushed, capsys):
    from flows import cli

    root = pushed[0]
    assert cli.main(["artifacts", "cyclegan", "--root", root]) == 0
    assert re.search(rf"serving +1 +{re.escape(root)}/serving/cyclegan/1$", capsys.readouterr().out, re.M)


def test_a_serving_folder_reached_through_a_symlink_is_refused(tmp_path):
    from artifacts import serving
    from artifacts.errors import UserError
    from artifacts.store import ArtifactStore

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "serving")
    store = ArtifactStore(str(root))
    with pytest.raises(UserError, match="symlink"):
        serving.push(store, "mnist-classifier", str(tmp_path))
    assert serving.versions(store, "mnist-classifier") == [] and not os.listdir(outside)
