"""Measure a committed GAN train artifact with today's evaluate stage, in the feature spaces another
committed evaluate artifact used: a model trained at an older commit (whose own evaluation knew
fewer spaces) gets the same figures as a new run, from the same feature models. Prints the
metrics as JSON; writes nothing to either root.

    .venv/bin/python tools/remeasure.py PIPELINE MODEL_ROOT TRAIN_URI PREPROCESS_URI SPACE_ROOT EVALUATE_URI

TRAIN_URI and PREPROCESS_URI are the model's train and preprocess artifacts in MODEL_ROOT; EVALUATE_URI
is an evaluate artifact in SPACE_ROOT whose feature models (and their preprocess) are used.
Every artifact is loaded through the store (committed, inside its root, no symlink followed)
and verified against its manifest before it is read."""
from __future__ import annotations

import json
import sys
import tempfile
import types

from artifacts.store import open_store
from components.stages import evaluate
from flows.registry import get


def main(argv: list[str]) -> dict:
    name, model_root, train_uri, transformed_uri, space_root, evaluate_uri = argv
    models, spaces = open_store(model_root), open_store(space_root)
    inputs = {"model": models.load(train_uri), "transformed": models.load(transformed_uri)}
    ev = spaces.load(evaluate_uri)
    if ev is None:
        raise SystemExit(f"no committed evaluate artifact at {evaluate_uri}")
    if spaces.check(ev):  # its manifest names the feature models: verified before it is read
        raise SystemExit(f"{ev.uri} does not verify: {'; '.join(spaces.check(ev))}")
    for key, ref in ev.manifest["inputs"].items():
        if key.startswith("feature_"):
            inputs[key] = spaces.load(spaces.resolve(ref["uri"]) or "")
    missing = [k for k, v in inputs.items() if v is None]
    if missing:
        raise SystemExit(f"not committed or not found: {', '.join(missing)}")
    for key, art in inputs.items():  # every file against its manifest before anything is loaded
        problems = (models if key in ("model", "transformed") else spaces).check(art)
        if problems:
            raise SystemExit(f"{art.uri} does not verify: {'; '.join(problems)}")
    p = get(name)
    params = evaluate.Params.from_config(p.config([]), p.recipe)
    with tempfile.TemporaryDirectory() as tmp:
        out = types.SimpleNamespace(file=lambda f: f"{tmp}/{f}", metadata={})
        evaluate.run(out, inputs, params, types.SimpleNamespace(recipe=p.recipe))
    return {"inputs": {k: v.uri for k, v in inputs.items()}, "metrics": out.metadata["metrics"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
