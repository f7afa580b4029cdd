"""compare: runs of a pipeline side by side: the config keys that differ, their metrics, their sample grids.

Not a stage: it reads what runs recorded (ROOT/runs/*.json) and the artifacts they name, and
trusts an artifact only once it verifies against its manifest (a root may be shared: it is data).
Its values come from the manifests' params (what each stage was built from, not the `--set`
strings a record repeats), evaluate's metrics and render's newest grid."""
from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass, field

import numpy as np

from artifacts import gfile
from artifacts.errors import UserError
from artifacts.store import ArtifactStore, check_run_id
from components.stages import evaluate, render

LAST = 3                  # no run named: the champion's run and the newest LAST runs
MAX_PIXELS = 16_000_000   # a picture read from the root larger than this is refused, never decoded
ABSENT = "—"              # a key a run's (verified) config does not have
# ROOT/_comparisons/PIPELINE/*.png: a name the store's listings skip (not a pipeline, nothing gc
# or verify looks at)
COMPARISONS = "_comparisons"


@dataclass
class Run:
    run_id: str
    created: str
    champion: bool                                      # the run that made the current champion
    config: dict = field(default_factory=dict)          # {config key: value} from its verified manifests
    metrics: dict = field(default_factory=dict)         # evaluate's metrics, once they verify
    picture: str | None = None                          # its newest sample grid (a classifier: confusion)
    problems: list[str] = field(default_factory=list)   # stages gone or not verifying: not read

    @property
    def label(self) -> str:
        return self.run_id + (" (champion)" if self.champion else "")


def _champion_promote(store: ArtifactStore, pipeline: str) -> str | None:
    champ = store.champion(pipeline)
    return (champ or {}).get("artifacts", {}).get("promote")


def _promote_of(rec: dict, pipeline: str) -> str | None:
    return rec["stages"].get(f"{pipeline}/promote", {}).get("uri")


def select(store: ArtifactStore, pipeline: str, run_ids: list[str], last: int = LAST) -> list[dict]:
    """The run records to compare: those named (in that order), else the champion's run and the
    newest `last` runs of the pipeline (oldest first). An unknown run is a UserError."""
    records = store.runs()
    mine = [r for r in records if r.get("pipeline") == pipeline]
    runs_dir = gfile.join(store.root, "runs")
    if not run_ids:
        if not mine:
            raise UserError(f"no runs of {pipeline} under {store.root}", runs_dir,
                            f"run `tapeline run {pipeline} --root {store.root}` first, or give the root the runs are in")
        champion = _champion_promote(store, pipeline)
        newest = mine[-last:] if last > 0 else []
        held = [r for r in mine if champion is not None and _promote_of(r, pipeline) == champion][-1:]
        chosen = [r for r in mine if r in held or r in newest]
        if not chosen:
            raise UserError(f"no run of {pipeline} chosen: no champion and --last {last}", runs_dir,
                            "give --last 1 or more, or name the runs")
        return chosen
    by_id = {r.get("run_id"): r for r in records}
    out = []
    for run_id in dict.fromkeys(run_ids):
        check_run_id(run_id)
        rec = by_id.get(run_id)
        if rec is None:
            known = ", ".join(str(r.get("run_id")) for r in mine[-3:]) or "none"
            raise UserError(f"no run {run_id} under {store.root}", runs_dir,
                            f"give a run id of ROOT/runs/ (the newest of {pipeline}: {known}), or the --root it ran in")
        if rec.get("pipeline") != pipeline:
            raise UserError(f"run {run_id} is a run of {rec.get('pipeline')}, not of {pipeline}", runs_dir,
                            f"compare it with `tapeline compare {rec.get('pipeline')} {run_id}`")
        out.append(rec)
    return out


def load(store: ArtifactStore, pipeline: str, rec: dict) -> Run:
    """A run as compare shows it: what its own pipeline's stages were built from, its metrics and
    its newest grid, each read only once its artifact verifies (the feature model's pipeline is
    compared on its own)."""
    champion = _champion_promote(store, pipeline)
    run = Run(str(rec.get("run_id")), str(rec.get("created", "")),
              champion is not None and _promote_of(rec, pipeline) == champion)
    for key, st in sorted(rec["stages"].items()):
        name, _, stage = key.partition("/")
        if name != pipeline:
            continue
        art = store.load(st["uri"])
        if art is None:
            run.problems.append(f"{stage}: gone (collected?)")
            continue
        bad = store.check(art)
        if bad:
            run.problems.append(f"{stage}: {bad[0]}")
            continue
        run.config.update(art.params)
        if art.type == evaluate.SPEC.output:
            found = evaluate.metrics(art)
            if isinstance(found, dict):
                run.metrics = {k: (store.ref(v) if isinstance(v, str) else v) for k, v in found.items()}
        elif art.type == render.SPEC.output:
            pics = render.pictures(art)
            path = pics.get("samples") or pics.get("confusion")
            # only a file the verified manifest lists (a frame name is data: never a way out of it)
            if path is not None and path.startswith(art.uri + "/") and path[len(art.uri) + 1:] in art.manifest["files"]:
                run.picture = path
    return run


def _text(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def differing(runs: list[Run]) -> list[str]:
    """The config keys whose values differ between the runs. A run missing a key because a stage
    of it did not verify is left out of that key's judgement; one whose stages all verified and
    that lacks it (older code, another variant) counts as different."""
    keys = sorted(set().union(*(r.config for r in runs)))
    out = []
    for k in keys:
        seen = {json.dumps(r.config.get(k, ABSENT), sort_keys=True) for r in runs if k in r.config or not r.problems}
        if len(seen) > 1:
            out.append(k)
    return out


def rows(store: ArtifactStore, runs: list[Run]) -> list[dict]:
    """The comparison as rows of {"": row name, run label: value}: the Prefect table and the text."""
    def row(name: str, values) -> dict:
        return {"": name, **{r.label: v for r, v in zip(runs, values)}}

    out = [row("created", [r.created[:19] for r in runs])]
    out += [row(k, [_text(r.config[k]) if k in r.config else ABSENT for r in runs]) for k in differing(runs)]
    names = list(dict.fromkeys(k for r in runs for k in r.metrics))
    out += [row(f"metric {k}", [_text(r.metrics[k]) if k in r.metrics else ABSENT for r in runs]) for k in names]
    out.append(row("picture", [store.ref(r.picture) if r.picture else ABSENT for r in runs]))
    if any(r.problems for r in runs):
        out.append(row("not verified", ["; ".join(r.problems) or "" for r in runs]))
    return out


def text(table: list[dict], width: int = 0) -> str:
    """The rows as a plain-text table for the terminal; runs that would not fit in `width`
    characters (0: the terminal's width) go on to a further block below, the row names repeated."""
    import shutil

    width = width or shutil.get_terminal_size((160, 24)).columns
    names, runs = list(table[0])[:1], list(table[0])[1:]
    widths = {c: max(len(c), *(len(str(r[c])) for r in table)) for c in names + runs}
    blocks, block = [], []
    for c in runs:  # at least one run a block, however wide its values
        if block and sum(widths[x] + 2 for x in names + block + [c]) > width:
            blocks.append(block)
            block = []
        block.append(c)
    blocks.append(block)
    out = []
    for cols in blocks:
        cols = names + cols
        lines = ["  ".join(f"{c:{widths[c]}s}" for c in cols)]
        lines += ["  ".join(f"{str(r[c]):{widths[c]}s}" for c in cols) for r in table]
        out.append("\n".join(line.rstrip() for line in lines))
    return "\n\n".join(out)


def _image(path: str) -> np.ndarray:
    """A picture of the root as an array; one too large to be a grid is refused before decoding."""
    from PIL import Image

    img = Image.open(io.BytesIO(gfile.read_bytes(path)))
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"{img.width}x{img.height} pixels")
    return np.asarray(img.convert("RGB"))


def _fit(value: str, limit: int = 40) -> str:
    """A value as long as a column of the figure holds, its middle elided (a reference keeps its
    stage and its fingerprint's end); the terminal's table keeps it whole."""
    return value if len(value) <= limit else value[:limit // 2 - 1] + "…" + value[-(limit // 2):]


PER_BAND = 6  # runs side by side in one band of the figure: more go on to further bands below


def figure(path: str, pipeline: str, runs: list[Run], table: list[dict]) -> None:
    """The PNG: for each band of up to PER_BAND runs, the table's columns of those runs and each
    run's grid below its own column; bands stack downwards, so any number of runs stays as
    readable as a few (the width never passes PER_BAND columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(runs)
    bands = [runs[i:i + PER_BAND] for i in range(0, n, PER_BAND)]
    body = [r for r in table if r[""] != "picture"]
    config = set(differing(runs))
    table_h, image_h, gap = 0.25 * (len(body) + 1), 3.6, 0.45  # inches
    band_h = table_h + gap + image_h + 0.5
    fig_h = band_h * len(bands) + 0.4
    cols = min(n, PER_BAND)
    fig = plt.figure(figsize=(max(3.6 * cols + 2.6, 7.0), fig_h))
    ratios = [h for _ in bands for h in (table_h, gap, image_h, 0.5)]
    grid = fig.add_gridspec(4 * len(bands), cols, height_ratios=ratios, hspace=0.0,
                            top=1 - 0.4 / fig_h, bottom=0.02)
    for b, band in enumerate(bands):
        ax = fig.add_subplot(grid[4 * b, :len(band)])
        ax.axis("off")
        cells = [[_fit(str(r[x.label])) for x in band] for r in body]
        tab = ax.table(cellText=cells, rowLabels=[r[""] for r in body], colLabels=[x.label for x in band],
                       loc="center", cellLoc="center", bbox=[0, 0, 1, 1])
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        for i, r in enumerate(body, start=1):  # the keys that differ stand out from the metrics
            if r[""] in config:
                for j in range(-1, len(band)):
                    tab[i, j].set_facecolor("#fff2b3")
        for i, run in enumerate(band):
            a = fig.add_subplot(grid[4 * b + 2, i])
            a.axis("off")
            a.set_title(run.label, fontsize=9)
            try:
                if run.picture is None:
                    raise ValueError("no picture verified")
                a.imshow(_image(run.picture), interpolation="nearest")
            except (OSError, ValueError) as e:
                a.text(0.5, 0.5, f"no picture:\n{e}", ha="center", va="center", fontsize=8, wrap=True)
    fig.suptitle(f"{pipeline}: {n} run{'s' if n > 1 else ''} side by side", fontsize=11,
                 y=1 - 0.12 / fig_h, va="top")  # in the top margin, whatever the figure's height
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    gfile.write_bytes(path, buf.getvalue())


def out_path(store: ArtifactStore, pipeline: str, out: str | None) -> str:
    """Where the PNG goes: --out (a file, or a folder that exists), else
    ROOT/_comparisons/PIPELINE/compare-TIME.png (never followed through a link)."""
    name = f"compare-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}.png"
    if out:
        if gfile.isdir(out):
            return gfile.join(out, name)
        parent = out.rsplit("/", 1)[0] if "/" in out.rstrip("/") else "."
        if not gfile.isdir(parent):
            raise UserError(f"no folder {parent!r} to write the comparison into", "--out",
                            "name a file in a folder that exists, or an existing folder")
        return out
    folder = store.inside(gfile.join(store.root, COMPARISONS, pipeline), "the comparisons folder")
    gfile.makedirs(folder)
    return store.inside(gfile.join(folder, name), "a comparison")


def compare(store: ArtifactStore, pipeline: str, run_ids: list[str], out: str | None = None,
            last: int = LAST) -> tuple[list[Run], list[dict], str]:
    """(the runs, the table rows, the PNG written): the whole comparison."""
    runs = [load(store, pipeline, rec) for rec in select(store, pipeline, run_ids, last)]
    table = rows(store, runs)
    path = out_path(store, pipeline, out)
    figure(path, pipeline, runs, table)
    return runs, table, path
