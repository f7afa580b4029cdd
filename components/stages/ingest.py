"""ingest (ExampleGen): a source URI -> TFRecord shards of tf.train.Example per split, via Beam."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from artifacts import gfile
from artifacts.errors import UserError
from artifacts.refs import InputRef
from components import beam_run, sources, tfrecords
from components.contract import Spec, Stage, StageParams, from_recipe, key

# its input: the data source URI (tfds:, idx:, or a kind the recipe's layout brings) with a digest of its content
SPEC = Spec(output="Examples", source=True)


@dataclass(frozen=True)
class Params(StageParams):
    source: str = key("data.source")
    max_examples: int | None = key("data.max_examples")
    layout: Any = from_recipe("layout")     # which source kinds hold its examples, how to check one
    shards: int = key("beam.shards")        # 0: follows each split's size (tfrecords.auto_shards)
    max_image_pixels: int = key("data.max_image_pixels")


def resolve(p: Params) -> sources.Resolved:
    return sources.resolve(p.source, p.max_image_pixels, p.layout.source_kinds())


def resolve_source(params: Params) -> InputRef:
    r = resolve(params)
    return InputRef(r.uri, r.digest)


class _WriteShard:
    """Beam DoFn body: one element = one shard of one split; reads its own range of the source
    and checks, encodes and writes one example at a time (memory follows an example, not a shard)."""

    def __init__(self, resolved: sources.Resolved, out_dir: str, layout: Any, max_pixels: int):
        self.r, self.out, self.layout, self.max_pixels = resolved, out_dir, layout, max_pixels

    @beam_run.user_errors
    def __call__(self, unit):
        split, shard, nshards, start, end = unit
        path = gfile.join(self.out, split, tfrecords.shard_name(shard, nshards))
        if tfrecords.write_shard(path, self.encoded(split, start, end)) != end - start:
            raise RuntimeError(f"shard {path} is short")
        yield path

    def encoded(self, split: str, start: int, end: int):
        for i, (ex_id, fields) in zip(range(start, end), self.r.read(split, start, end, self.max_pixels)):
            ex = {"id": f"{self.r.uri}#{ex_id}", "index": i, **fields}
            if fields["format"] == "encoded":
                shape = self.layout.check_encoded(f"{self.r.location}/{ex_id}", fields["image"], self.max_pixels)
                if shape is not None:
                    ex["shape"] = shape
            yield tfrecords.encode(ex)


def run(out, inputs, p: Params, rt) -> None:
    import apache_beam as beam

    r = resolve(p)
    p.layout.check_source(r, rt.pipeline)
    units, counts = [], {}
    for s in r.splits:
        n = min(s.count, p.max_examples) if p.max_examples else s.count
        if n == 0:
            raise UserError(f"split {s.name!r} is empty", r.uri, "give a source with examples in every split")
        counts[s.name] = n
        ranges = tfrecords.shard_ranges(n, p.shards or tfrecords.auto_shards(s.nbytes * n // s.count, n))
        gfile.makedirs(out.file(s.name))
        units += [(s.name, i, len(ranges), a, b) for i, (a, b) in enumerate(ranges)]

    def build(pl):
        return (pl | "Shards" >> beam.Create(units)
                | "Write" >> beam.FlatMap(_WriteShard(r, out.path, p.layout, p.max_image_pixels)))

    beam_run.run(rt, build)
    missing = [u for u in units if not gfile.exists(out.file(u[0], tfrecords.shard_name(u[1], u[2])))]
    if missing:  # a runner that dropped work must not commit a partial artifact
        raise RuntimeError(f"ingest shards missing after the Beam run: {missing}")
    gfile.write_json(out.file("splits.json"), {"source": r.uri, "kind": r.kind.scheme, "splits": counts})
    out.metadata.update(splits=counts, source=r.uri)


def splits(artifact) -> dict[str, int]:
    """Examples per split, in the order ingest wrote them: what the stages after it count on."""
    return gfile.read_json(artifact.path("splits.json"))["splits"]


def shards(artifact, split: str) -> list[str]:
    """The TFRecord shard files of one split."""
    return gfile.glob(artifact.path(split, "data-*.tfrecord"))


STAGE = Stage("ingest", SPEC, Params, run, resolve_source=resolve_source)
