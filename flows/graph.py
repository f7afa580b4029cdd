"""A pipeline's stage graph: nodes, their fingerprints, running one, and planning them all."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from artifacts.errors import UserError, storage_error
from artifacts.fingerprint import PROJECT_PACKAGES, digest, module_digests, stage_fingerprint
from artifacts.store import Artifact, ArtifactStore, InputRef, StageRun
from components.contract import Runtime, Spec, Stage, feature_input
from components.pipeline import Pipeline
from flows.registry import get


def _stage_module(name: str) -> bool:
    return name == "components.stages" or name.startswith("components.stages.")


def upstream(pipeline: Pipeline, stages: Iterable[str]) -> frozenset[str]:
    """The stages named and every stage of pipeline they read from, transitively: what must run
    before them."""
    out: set[str] = set()
    todo = list(stages)
    while todo:
        stage = todo.pop()
        if stage not in out:
            out.add(stage)
            todo += pipeline.stage(stage).spec.inputs.values()
    return frozenset(out)


@dataclass(frozen=True)
class Node:
    pipeline: Pipeline
    cfg: Any
    component: Stage
    inputs: Mapping[str, str]  # input name -> node key
    # the feature space, for a feature model's node that differs between the recipe's spaces
    # (mnist-classifier[convnet]/train beside mnist-classifier[mlp]/train)
    label: str = ""

    @property
    def key(self) -> str:
        return f"{self.pipeline.name}[{self.label}]/{self.stage}" if self.label else f"{self.pipeline.name}/{self.stage}"

    @property
    def stage(self) -> str:
        return self.component.name

    @property
    def spec(self) -> Spec:
        return self.component.spec

    def params_object(self):
        """The component's Params read from this node's config: all the stage may see."""
        return self.component.params.from_config(self.cfg, self.pipeline.recipe)

    def params(self) -> dict:
        """The Params as {config key: value}: what the fingerprint covers."""
        return self.params_object().as_dict()

    def code_modules(self) -> dict[str, str]:
        """{module: digest of its normalized code} for the code this stage can run: its component
        and what that imports, and where it uses one, the recipe module (its networks and train
        step) and the recipe's data layout with what they import. A recipe's list of stages is
        not code the recipe runs: components.stages is not followed from it."""
        parts = module_digests(self.component.module)
        # a recipe outside the project's packages is followed through its own package too
        packages = tuple(dict.fromkeys(PROJECT_PACKAGES + (self.pipeline.module.split(".")[0],)))
        if self.spec.uses_recipe:
            parts.update(module_digests(self.pipeline.module, packages, stop=_stage_module))
        if any(f.metadata.get("recipe") == "layout" for f in dataclasses.fields(self.component.params)):
            # the recipe's data layout: its methods are this stage's code too
            parts.update(module_digests(type(self.pipeline.recipe.layout).__module__, packages, stop=_stage_module))
        return dict(sorted(parts.items()))

    def code(self) -> str:
        return digest(self.code_modules())

    def runtime(self, base: Runtime | None = None) -> Runtime:
        """How this node runs: base (the run's engine, log rate, callbacks; else read from this
        node's config) with the node's pipeline name, and its recipe where the stage uses one."""
        return dataclasses.replace(base or Runtime.from_config(self.cfg), pipeline=self.pipeline.name,
                                   recipe=self.pipeline.recipe if self.spec.uses_recipe else None)

    @property
    def reuse(self) -> bool:
        """False for a stage that must decide again every run (promote)."""
        return self.spec.reuse

    def identity(self, inputs: Mapping[str, str]) -> tuple[str, dict, dict[str, str]]:
        """(fingerprint, params, {module: code digest}) given {input name: input fingerprint}:
        the one place a stage's fingerprint is computed (its name, code, Params and inputs)."""
        params, modules = self.params(), self.code_modules()
        return stage_fingerprint(self.stage, digest(modules), params, inputs), params, modules

    def fingerprint(self, inputs: Mapping[str, str]) -> str:
        return self.identity(inputs)[0]


def nodes(pipeline: Pipeline, cfg: Any) -> list[Node]:
    """Topological order: the stages of the recipe's feature-model pipelines that the feature
    inputs need first, then the pipeline's own; every edge is a component's Spec."""
    fms = pipeline.recipe.evaluation.feature_models
    out, feature_keys = _feature_nodes(pipeline, cfg) if fms else ([], {})
    names = {s.name for s in pipeline.stages}
    for stage in pipeline.stages:
        declared = stage.spec
        missing = sorted(set(declared.inputs.values()) - names)
        if missing:
            raise ValueError(f"{pipeline.name}/{stage.name} reads from {missing}, which the pipeline does not run")
        inputs = {name: f"{pipeline.name}/{src}" for name, src in declared.inputs.items()}
        for fm in fms:
            inputs.update({feature_input(name, fm.space): feature_keys[fm.space][f"{fm.pipeline}/{src}"]
                           for name, src in declared.feature_inputs.items()})
        out.append(Node(pipeline, cfg, stage, inputs))
    return out


def _feature_nodes(pipeline: Pipeline, cfg: Any) -> tuple[list[Node], dict[str, dict[str, str]]]:
    """The stages every feature model needs, once each: a stage the spaces build alike (same
    code, Params and inputs: the classifiers' shared data stages) is one node; one that differs
    (each space's train) is a node per space, labelled with it. Also {space: {its own node key:
    the key of the node that stands for it}}."""
    per_space, variants = [], {}
    for fm in pipeline.recipe.evaluation.feature_models:
        feature = get(fm.pipeline)
        needed = upstream(feature, (s for stage in pipeline.stages for s in stage.spec.feature_inputs.values()))
        own = [n for n in nodes(feature, fm.config(cfg)) if n.stage in needed]
        ids: dict[str, tuple] = {}
        for n in own:  # what a fingerprint covers, less the data: equal ones build one artifact
            ids[n.key] = (n.key, n.code(), digest(n.params()), tuple(sorted((k, ids[v]) for k, v in n.inputs.items())))
            variants.setdefault(n.key, set()).add(ids[n.key])
        per_space.append((fm.space, own, ids))
    out, keys, seen = [], {}, {}
    for space, own, ids in per_space:
        keys[space] = {}
        for n in own:
            if ids[n.key] not in seen:
                node = dataclasses.replace(n, label=space if len(variants[n.key]) > 1 else n.label,
                                           inputs={k: keys[space][v] for k, v in n.inputs.items()})
                seen[ids[n.key]] = node.key
                out.append(node)
            keys[space][n.key] = seen[ids[n.key]]
    return out, keys


def source_ref(node: Node) -> InputRef:
    """The data source a source stage (ingest) reads, as its Params name it."""
    return node.component.resolve_source(node.params_object())


def fingerprints(nodes_: list[Node]) -> dict[str, tuple[str, dict]]:
    """node key -> (fingerprint, {input name: fingerprint}) without building anything: an
    artifact's fingerprint is its stage fingerprint, so the whole chain is known up front."""
    out: dict[str, tuple[str, dict]] = {}
    for n in nodes_:
        if n.spec.source:
            ins = {"source": source_ref(n).fingerprint}
        else:
            ins = {name: out[key][0] for name, key in n.inputs.items()}
        out[n.key] = (n.fingerprint(ins), ins)
    return out


def needed(nodes_: list[Node], targets: Iterable[str] | None = None) -> list[Node]:
    """The nodes that the node keys in targets read from, transitively, and those nodes, in
    graph order (every node when targets is None): what a walk over the graph visits."""
    if targets is None:
        return list(nodes_)
    keep, todo = set(), list(targets)
    by_key = {n.key: n for n in nodes_}
    while todo:
        key = todo.pop()
        if key not in keep:
            keep.add(key)
            todo += by_key[key].inputs.values()
    return [n for n in nodes_ if n.key in keep]


def build(store: ArtifactStore, nodes_: list[Node], targets: Iterable[str] | None = None,
          runtime: Runtime | None = None) -> Iterator[tuple[Node, StageRun]]:
    """Reuse or build, in order, each node that targets need (all when None), yielding each with
    its run as it finishes: the walk the orchestrator's flow makes with a Prefect task per node,
    here without Prefect (tests, benchmarks, notebooks)."""
    done: dict[str, Artifact] = {}
    for n in needed(nodes_, targets):
        run = run_node(store, n, done, runtime)
        done[n.key] = run.artifact
        yield n, run


def run_node(store: ArtifactStore, node: Node, done: Mapping[str, Artifact],
             runtime: Runtime | None = None) -> StageRun:
    """Reuse or build one stage; done holds the artifacts of every earlier node. The component
    gets its Params, its declared inputs and a Runtime (how to run: never in the fingerprint)."""
    comp = node.component
    if node.spec.source:
        inputs: dict[str, Artifact | InputRef] = {"source": source_ref(node)}
    else:
        inputs = {name: done[key] for name, key in node.inputs.items()}
    fp, params, modules = node.identity({k: v.fingerprint for k, v in inputs.items()})
    p = node.params_object()
    rt = node.runtime(runtime)
    try:
        return store.get_or_build(
            node.pipeline.name, node.stage, fp, type=node.spec.output, params=params, inputs=inputs,
            code=digest(modules), code_modules=modules, build=lambda w: comp.run(w, _local(store, inputs), p, rt),
            reuse=node.reuse)
    except Exception as exc:
        # a full disk is the user's to fix: one line; the store has committed nothing
        user = UserError.find(exc) or storage_error(exc, store.root, node.key)
        if user is None:
            raise
        raise user from None


def _local(store: ArtifactStore, inputs: Mapping[str, Artifact | InputRef]) -> dict:
    """The inputs as the component reads them: on an object-store root, each artifact's copy in the
    local cache (TensorFlow cannot open s3://); as they are on a local root."""
    return {k: store.localized(v) if isinstance(v, Artifact) else v for k, v in inputs.items()}


def plan(store: ArtifactStore, pipeline: Pipeline, cfg: Any) -> list[dict]:
    """Per node: reuse / resume from step N / run, and which part of the fingerprint changed."""
    ns = nodes(pipeline, cfg)
    fps = fingerprints(ns)
    rows = []
    for n in ns:
        fp, ins = fps[n.key]
        if not n.reuse:
            rows.append({"key": n.key, "action": "run", "why": "decides again every run"})
            continue
        if store.find(n.pipeline.name, n.stage, fp) is not None:
            rows.append({"key": n.key, "action": "reuse", "why": f"committed {fp[:12]}"})
            continue
        progress = n.component.progress and n.component.progress(store.work_dir(n.pipeline.name, n.stage, fp))
        if progress:
            step = progress["step"]
            rows.append({"key": n.key, "action": f"resume from step {step}",
                         "why": "checkpoint in work dir"})
            continue
        siblings = [m for m in ns if m.pipeline.name == n.pipeline.name and m.stage == n.stage and m is not n]
        rows.append({"key": n.key, "action": "run", "why": _why(store, n, n.params(), ins, siblings)})
    return rows


def _why(store: ArtifactStore, n: Node, params: dict, ins: dict, siblings: list[Node] = ()) -> str:
    versions = store.versions(n.pipeline.name, n.stage)
    # a node labelled with its feature space is compared only with versions of that space: the
    # keys in which it differs from its siblings (the other spaces' nodes of this stage) match
    own = {k for m in siblings for k, v in m.params().items() if params.get(k) != v}
    versions = [v for v in versions if all(v.params.get(k) == params.get(k) for k in own)]
    if not versions:
        return f"never built for the {n.label} feature space" if siblings and n.label else "never built"
    last = versions[-1].manifest
    if not store.find(n.pipeline.name, n.stage, last["fingerprint"]) and \
            last["fingerprint"] == n.fingerprint(ins):
        return "committed artifact damaged: rebuild"
    reasons = []
    changed = sorted(k for k in params.keys() | last["params"].keys()
                     if params.get(k) != last["params"].get(k))
    if changed:
        reasons.append("params changed: " + ", ".join(
            f"{k} {last['params'].get(k)!r} -> {params.get(k)!r}" for k in changed))
    modules = n.code_modules()
    if last.get("code_digest") != digest(modules):
        reasons.append(_code_change(last.get("code_modules"), modules))
    old_ins = {k: v["fingerprint"] for k, v in last.get("inputs", {}).items()}
    changed_in = sorted(k for k in ins if ins[k] != old_ins.get(k))
    if changed_in:
        reasons.append("input data changed: " + ", ".join(changed_in))
    return "; ".join(reasons) or "committed artifact damaged: rebuild"


def _code_change(before: Any, now: dict[str, str]) -> str:
    """Which modules of the stage's code differ from those the last version was built with."""
    if not isinstance(before, dict) or not before:
        return "code changed (the last version predates per-module digests)"
    changed = sorted(m for m in before.keys() | now.keys() if before.get(m) != now.get(m))
    shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    return f"code changed: {shown}"
