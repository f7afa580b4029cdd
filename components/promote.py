"""promote (Pusher): a blessed model becomes the pipeline's champion; an unblessed one never does."""
from __future__ import annotations

from artifacts import gfile
from components import metrics

OUTPUT = "PushedModel"
INPUTS = {"model": "Model", "evaluation": "ModelEvaluation"}


def run(out, inputs, cfg, pipeline) -> None:
    from pipelines.registry import recipe

    model, evaluation = inputs["model"], inputs["evaluation"]
    result = gfile.read_json(evaluation.path("metrics.json"))
    blessing = gfile.read_json(evaluation.path("blessing.json"))
    store = out.store
    champion = store.champion(pipeline.name)
    # judged again against the champion of now: another run may have promoted since evaluate
    ok, why = metrics.bless(recipe(pipeline).KIND, result, champion, cfg.eval.tolerance)
    pushed = blessing["blessed"] and ok
    record = {"pushed": pushed, "why": why if blessing["blessed"] else blessing["why"],
              "model": model.uri, "evaluation": evaluation.uri}
    if pushed:
        gfile.makedirs(out.file("exported"))
        for path in gfile.glob(model.path("models", "*.keras")):
            gfile.copy(path, out.file("exported", path.rsplit("/", 1)[-1]))
    gfile.write_json(out.file("push.json"), record)
    out.metadata.update(pushed=pushed)
    # judged once more when it takes the title: another run may have promoted a better model since
    out.on_commit = (lambda art: store.replace_champion(pipeline.name, {
        "version": art.version, "uri": art.uri, "metrics": result, "why": why,
        "artifacts": {"promote": art.uri, "model": model.uri, "evaluation": evaluation.uri},
        "exported": art.path("exported")}, lambda now: metrics.bless(
            recipe(pipeline).KIND, result, now, cfg.eval.tolerance)[0])) if pushed else None
