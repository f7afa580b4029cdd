"""promote (Pusher): judges the evaluation against the champion of this moment; only a blessed
model becomes the champion, and is pushed as a SavedModel (ROOT/serving/PIPELINE/N/) when its
recipe declares serving signatures. It runs on every run: its decision is about state outside any
fingerprint (the champion), so it is recorded per run, never reused."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifacts import failpoints, gfile, serving
from components import export, interrupt
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
    # compared as references: on an object-store root the model read here is the cache's copy
    if champion is not None and store.ref(champion.get("artifacts", {}).get("model", "")) == store.ref(model.uri):
        blessed, push, why = True, False, "already the champion"
    else:
        blessed, why = bless(params.primary, params.higher_is_better, result, champion, params.tolerance)
        push = blessed
    # The decision, as it was made: nothing here says the push happened, which comes after the
    # commit (champion.json naming this artifact is that record; decision() reads it back).
    record = {"blessed": blessed, "why": why, "tolerance": params.tolerance,
              "champion": champion["version"] if champion else None,
              "model": store.ref(model.uri), "evaluation": store.ref(evaluation.uri)}  # relative to the root
    spec = rt.recipe.serving if rt.recipe is not None else None
    if push:
        gfile.makedirs(out.file("exported"))
        for path in train.model_files(model).values():
            gfile.copy(path, out.file("exported", path.rsplit("/", 1)[-1]))
        if spec is not None:  # in the artifact (hashed, verified); serving/ gets a copy of it
            export.save(spec, evaluate.load_models(model), preprocess.transform(inputs["transformed"]),
                        out.file(SAVED_MODEL))
    gfile.write_json(out.file("push.json"), record)
    out.metadata.update(blessed=blessed)

    def take(art):  # under the champion lock, once the title is won: ({fields}, undo)
        if spec is None:
            return {}, None
        saved = art.path(SAVED_MODEL)
        # a run of this model killed after its push and before champion.json: its version is
        # named now, not pushed again (the SavedModels of one model differ in bytes, not weights)
        champion = store.champion(rt.pipeline)
        earlier = [a.path(SAVED_MODEL) for a in store.versions(rt.pipeline, "promote")
                   if a.uri != art.uri and saved_model(a) and decision(a).get("model") == store.ref(model.uri)]
        done = serving.newest_holding(store, rt.pipeline, [saved] + earlier)
        if done is not None and not (champion and champion.get("serving_version") == done):
            return {"serving_version": done}, None
        number = serving.push(store, rt.pipeline, saved)
        return {"serving_version": number}, lambda: serving.withdraw(store, rt.pipeline, number)

    def crown(art) -> None:
        """Judged once more when it takes the title (another run may have promoted a better model
        since): the SavedModel pushed, then champion.json names this artifact, the record of both."""
        try:
            crowned = store.replace_champion(rt.pipeline, {
                "version": art.version, "uri": art.uri, "metrics": result, "why": why,
                "artifacts": {"promote": art.uri, "model": model.uri, "evaluation": evaluation.uri},
                "exported": art.path("exported")}, lambda now: bless(
                    params.primary, params.higher_is_better, result, now, params.tolerance)[0],
                lambda: take(art))
        except interrupt.Interrupted as stop:  # the push rolled back; the decision is committed
            stop.note = "its decision committed, the push not made"
            raise
        try:
            failpoints.hit(f"champion.set.{rt.pipeline}")
            if crowned and spec is not None:
                serving.prune(store, rt.pipeline, params.keep_versions)
        except interrupt.Interrupted as stop:
            stop.note = "its decision committed and pushed"
            raise

    out.on_commit = crown if push else None


def decision(artifact, store=None) -> dict:
    """This run's decision: blessed, why, against which champion; with the store, also whether it
    was pushed: whether champion.json names this artifact (written only after the push)."""
    out = gfile.read_json(artifact.path("push.json"))
    if store is not None:
        champion = store.champion(artifact.manifest.get("pipeline", ""))
        out["pushed"] = bool(champion) and champion.get("artifacts", {}).get("promote") == artifact.uri
    return out


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
