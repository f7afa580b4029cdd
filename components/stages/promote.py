"""promote (Pusher): judges the evaluation against the champion of this moment; only a blessed
model becomes the champion, and is pushed as a SavedModel (ROOT/serving/PIPELINE/N/) when its
recipe declares serving signatures. It runs on every run: its decision is about state outside any
fingerprint (the champion), so it is recorded per run, never reused."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifacts import gfile, serving
from components import export
from components.contract import Spec, Stage, StageParams, from_recipe, key
from components.stages import evaluate, preprocess, train

# reuse=False: a new artifact (this run's decision) every run; uses_recipe: its serving signatures
SPEC = Spec(output="PushedModel", inputs={"model": "train", "evaluation": "evaluate", "transformed": "preprocess"},
            reuse=False, uses_recipe=True)
SAVED_MODEL = "saved_model"


@dataclass(frozen=True)
class Params(StageParams):
    tolerance: float = key("eval.tolerance")
    keep_versions: int = key("promote.keep_versions")
    primary: str = from_recipe("evaluation.primary")
    higher_is_better: bool = from_recipe("evaluation.higher_is_better")


def run(out, inputs, params: Params, rt) -> None:
    model, evaluation = inputs["model"], inputs["evaluation"]
    result = evaluate.metrics(evaluation)
    store = out.store
    champion = store.champion(rt.pipeline)
    if champion is not None and champion.get("artifacts", {}).get("model") == model.uri:
        blessed, pushed, why = True, False, "already the champion"
    else:
        blessed, why = bless(params.primary, params.higher_is_better, result, champion,
                                     params.tolerance)
        pushed = blessed
    record = {"blessed": blessed, "pushed": pushed, "why": why, "tolerance": params.tolerance,
              "champion": champion["version"] if champion else None,
              "model": store.ref(model.uri), "evaluation": store.ref(evaluation.uri)}  # relative to the root
    spec = rt.recipe.serving if rt.recipe is not None else None
    if pushed:
        gfile.makedirs(out.file("exported"))
        for path in train.model_files(model).values():
            gfile.copy(path, out.file("exported", path.rsplit("/", 1)[-1]))
        if spec is not None:  # in the artifact (hashed, verified); serving/ gets a copy of it
            export.save(spec, evaluate.load_models(model), preprocess.transform(inputs["transformed"]),
                        out.file(SAVED_MODEL))
    gfile.write_json(out.file("push.json"), record)
    out.metadata.update(pushed=pushed, blessed=blessed)

    def take(art) -> dict:  # under the champion lock, once the title is won
        if spec is None:
            return {}
        return {"serving_version": serving.push(store, rt.pipeline, art.path(SAVED_MODEL), params.keep_versions)}

    # judged once more when it takes the title: another run may have promoted a better model since
    out.on_commit = (lambda art: store.replace_champion(rt.pipeline, {
        "version": art.version, "uri": art.uri, "metrics": result, "why": why,
        "artifacts": {"promote": art.uri, "model": model.uri, "evaluation": evaluation.uri},
        "exported": art.path("exported")}, lambda now: bless(
            params.primary, params.higher_is_better, result, now, params.tolerance)[0],
        lambda: take(art))) if pushed else None


def decision(artifact) -> dict:
    """This run's decision: blessed, pushed, why, against which champion."""
    return gfile.read_json(artifact.path("push.json"))


def saved_model(artifact) -> str | None:
    """The SavedModel folder a pushed decision holds, None when it holds none."""
    path = artifact.path(SAVED_MODEL)
    return path if gfile.isdir(path) else None


def bless(key: str, higher: bool, metrics: dict, champion: dict | None,
          tolerance: float) -> tuple[bool, str]:
    """Whether metrics[key] is no worse than the champion's (within tolerance), and why."""
    value = metrics[key]
    if not np.isfinite(value):
        return False, f"{key} is not finite"
    if champion is None:
        return True, f"no champion yet; {key}={value:.4g}"
    best = champion["metrics"].get(key)
    if best is None:
        return True, f"champion has no {key}"
    ok = value >= best - tolerance if higher else value <= best + tolerance
    word = "not lower" if higher else "not higher"
    return ok, (f"{key}={value:.4g} vs champion {best:.4g} (tolerance {tolerance}): "
                + (f"{word}, blessed" if ok else "worse, not blessed"))


STAGE = Stage("promote", SPEC, Params, run)
