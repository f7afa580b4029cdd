"""Issue 26: the data stages (ingest, validate, preprocess) on synthetic sources of growing size,
on the direct engine and on a local Dask cluster: wall time per stage, examples per second and
peak RSS per process (the driver; each Dask worker). Targets: peak RSS grows by at most 10 % from
the smallest to the largest pair source, on the direct engine and per Dask worker; time per
example at the largest is at most 1.2x that at the second.

Sources are made here, once each, under a scratch folder in /tmp (removed after their runs, as is
each run's artifact root): side-by-side pair JPEGs (PAIR_W x PAIR_W/2, a smooth gradient with
per-pair colours: a few KB each) read by pix2pix, and MNIST-format IDX files of 28x28 images read
by mnist-classifier. Each run is a fresh child process. The largest pair sources run first, so the
rows the targets are judged on exist even if a long run is cut off; the table is printed in order.

Usage: data_scale.py [--pairs N,N,...] [--idx N,N,...] [--engines direct,dask] [--pair-width W]
(defaults: pairs 500,5000,20000; idx 60000,600000; both engines; W 256: the full run took 10 to 17 minutes
on 2 busy cores)."""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
from common import REPO, scratch_root

STAGES = ("ingest", "validate", "preprocess")


def make_pairs(d: str, n: int, width: int) -> None:
    from PIL import Image

    h = width // 2
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * np.linspace(0.5, 1, h)[:, None, None]
    for split, k, blue in (("train", n, 60), ("val", 50, 200)):
        os.makedirs(os.path.join(d, split), exist_ok=True)
        for i in range(k):
            colour = np.array([i % 256, (i // 256) % 256, blue], np.float32)
            img = (ramp * colour).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, split, f"{i}.jpg"), quality=90)


def make_idx(d: str, n: int) -> None:
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, k in (("train", n), ("t10k", max(1000, n // 6))):
        with gzip.open(os.path.join(d, f"{prefix}-images-idx3-ubyte.gz"), "wb", compresslevel=1) as f:
            f.write(struct.pack(">IIII", 2051, k, 28, 28))
            for a in range(0, k, 10000):  # never the whole file in memory
                f.write(rng.integers(0, 256, (min(10000, k - a), 28, 28), np.uint8).tobytes())
        with gzip.open(os.path.join(d, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">II", 2049, k) + rng.integers(0, 10, k, np.uint8).tobytes())


def child(kind: str, src: str, engine: str) -> dict:
    """Runs in a fresh process: the three stages, timed; this process's and the workers' peaks; the
    CPU seconds they took (this process during the stages, plus each worker's whole life): on
    shared cores, wall time follows the load, CPU time much less."""
    from common import run_stages

    from components.stages import ingest

    pipeline, sets = ({"pairs": ("pix2pix", [f"data.source=paired:{src}", "data.image_size=32"]),
                       "idx": ("mnist-classifier", [f"data.source=idx:{src}"])}[kind])
    cluster = None
    if engine == "dask":
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        sets = sets + ["beam.runner=dask", f"beam.dask_address={cluster.scheduler_address}"]
    root = scratch_root("scale")
    try:
        cpu0 = _cpu()
        out = run_stages(root, pipeline, sets, STAGES)
        res = {"seconds": {s: out[s][0] for s in STAGES}, "examples": ingest.splits(out["ingest"][1]),
               "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu": _cpu() - cpu0}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if cluster is not None:
        from distributed import Client

        with Client(cluster.scheduler_address) as c:
            peaks = c.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            res["cpu"] += sum(c.run(_cpu).values())
        res["worker_peaks_mib"] = sorted(peaks.values())
        cluster.close()
    return res


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_child(kind: str, src: str, engine: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, src, engine], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps(child(*argv[1:4])))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default="500,5000,20000")
    ap.add_argument("--idx", default="60000,600000")
    ap.add_argument("--engines", default="direct,dask")
    ap.add_argument("--pair-width", type=int, default=256)
    a = ap.parse_args(argv)
    cases = sorted([("pairs", int(n)) for n in a.pairs.split(",") if n] + [("idx", int(n)) for n in a.idx.split(",") if n],
                   key=lambda c: (c[0] != "pairs", -c[1]))  # the rows the targets are judged on first
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 shared cores: timings are noisy)")
    base, rows = scratch_root("scale-src"), []
    try:
        for kind, n in cases:
            src = os.path.join(base, f"{kind}-{n}")
            t = time.perf_counter()
            make_pairs(src, n, a.pair_width) if kind == "pairs" else make_idx(src, n)
            print(f"made {kind} N={n} in {time.perf_counter() - t:.0f} s", flush=True)
            for engine in a.engines.split(","):
                r = run_child(kind, src, engine)
                total = sum(r["examples"].values())
                secs = sum(r["seconds"].values())
                rows.append({"kind": kind, "n": n, "engine": engine, "examples": total, **r["seconds"],
                             "eps": total / secs, "ms": 1000 * secs / total, "cpu_ms": 1000 * r["cpu"] / total, "peak": r["peak_mib"],
                             "workers": r.get("worker_peaks_mib", [])})
                print(json.dumps(rows[-1]), f"load {os.getloadavg()[0]:.1f}", flush=True)
            shutil.rmtree(src)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    table(rows)
    return 0


def table(rows: list[dict]) -> None:
    """The Markdown table, then each target judged on the pair rows there are."""
    print("\n| source | N | engine | examples | ingest s | validate s | preprocess s | examples/s | ms/example "
          "| CPU ms/example | peak RSS MiB (driver) | peak RSS MiB (each worker) |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["kind"] != "pairs", r["n"], r["engine"])):
        workers = " / ".join(f"{p:.0f}" for p in r["workers"]) or "-"
        print(f"| {r['kind']} | {r['n']:,} | {r['engine']} | {r['examples']:,} | {r['ingest']:.1f} | "
              f"{r['validate']:.1f} | {r['preprocess']:.1f} | {r['eps']:.0f} | {r['ms']:.2f} | {r['cpu_ms']:.2f} | {r['peak']:.0f} "
              f"| {workers} |")
    for engine in sorted({r["engine"] for r in rows}):
        pairs = sorted((r for r in rows if r["kind"] == "pairs" and r["engine"] == engine), key=lambda r: r["n"])
        if len(pairs) < 2:
            continue
        lo, hi = pairs[0], pairs[-1]
        for what, a, b in [("driver", lo["peak"], hi["peak"])] + (
                [("largest worker", max(lo["workers"]), max(hi["workers"]))] if lo["workers"] and hi["workers"] else []):
            growth = 100 * (b / a - 1)
            print(f"{engine}: peak RSS ({what}) {a:.0f} -> {b:.0f} MiB from N={lo['n']:,} to {hi['n']:,}: "
                  f"{growth:+.1f} % ({'holds' if growth <= 10 else 'MISSES'} the 10 % target)")
        for what in ("ms", "cpu_ms"):
            ratio = pairs[-1][what] / pairs[-2][what]
            print(f"{engine}: {'wall' if what == 'ms' else 'CPU'} ms/example at N={pairs[-1]['n']:,} / at "
                  f"N={pairs[-2]['n']:,} = {ratio:.2f}x ({'holds' if ratio <= 1.2 else 'MISSES'} the 1.2x target)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
