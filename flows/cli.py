"""The tapeline command line: parse, then call library code."""
from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import traceback

from artifacts.errors import UserError
from artifacts.store import default_root, open_store
from components import drift, interrupt
from flows import local_api, quiet


def cmd_pipelines(args) -> int:
    from components import config as cfglib
    from flows.registry import all_pipelines

    for name, p in all_pipelines().items():
        print(f"{name:18s} {' -> '.join(s.name for s in p.stages)}")
        print(f"{'':18s} {p.summary}")
        if args.keys:
            for key, value in cfglib.flat(p.default_config()).items():
                print(f"{'':20s}{key} = {value}")
    return 0


def cmd_artifacts(args) -> int:
    store = open_store(args.root)
    names = [args.pipeline] if args.pipeline else store.pipelines()
    from artifacts import gfile, serving

    if not args.pipeline:
        names += [p for p in serving.pipelines(store) if p not in names]
    out = {}
    for p in names:
        out[p] = {"champion": store.champion(p), "stages": {
            s: [{"version": a.version, "uri": a.uri, "fingerprint": a.fingerprint,
                 "created": a.manifest.get("created")} for a in store.versions(p, s)]
            for s in store.stages(p)},
            "serving": [{"version": n, "uri": gfile.join(serving.folder(store, p), str(n))}
                        for n in serving.versions(store, p)]}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not any(v["stages"] for v in out.values()):
        print(f"no artifacts under {store.root}")
    for p, info in out.items():
        champ = info["champion"]
        print(f"{p}" + (f"  champion: {champ['version']} ({_metrics_text(champ.get('metrics', {}))})"
                        if champ else "  champion: none"))
        for s, versions in info["stages"].items():
            for v in versions:
                print(f"  {s:11s} {v['version']}  {v['uri']}")
        for v in info["serving"]:  # what a model server loads (TF Serving's layout)
            print(f"  {'serving':11s} {v['version']:<24}  {v['uri']}")
    return 0


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def cmd_verify(args) -> int:
    from artifacts.maintenance import verify

    store = open_store(args.root)
    checked, damaged = verify(store)
    for d in damaged:
        print(f"DAMAGED {d.uri}: {'; '.join(d.problems)}")
    _print_skipped(store)
    print(f"verified {checked} artifacts: {checked - len(damaged)} ok, {len(damaged)} damaged"
          + (f", {len(store.skipped) + len(store.unreadable)} out of place"
             if store.skipped or store.unreadable else ""))
    return 1 if damaged or store.skipped or store.unreadable else 0


def _print_skipped(store) -> None:
    for path, what in sorted({**store.skipped, **store.unreadable}.items()):
        print(f"OUT OF PLACE {path}: {what}")


def cmd_gc(args) -> int:
    from artifacts.maintenance import gc

    store = open_store(args.root)
    removed = gc(store, keep=args.keep, dry_run=args.dry_run, grace=args.grace)
    for uri in removed:
        print(("would remove " if args.dry_run else "removed ") + uri)
    _print_skipped(store)
    print(f"{len(removed)} {'to remove' if args.dry_run else 'removed'}")
    return 0


def cmd_run(args) -> int:
    from components import beam_run
    from flows.registry import get

    pipeline = get(args.pipeline)
    beam_run.check(pipeline.config(args.set))  # bad keys, values and engine addresses fail here
    server = _prefect_api()
    from flows.pipeline_flow import run_pipeline

    quiet.setup_logging(args.verbose)
    store = open_store(args.root)
    if server is not None:
        server.wait()
    with local_api.activity(), local_api.watched():
        summary = run_pipeline(pipeline.name, args.set, store.root)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    print(stage_table(summary, store.root))
    print(f"metrics: {_metrics_text(summary.get('metrics', {}))}")
    print(f"blessed: {summary.get('blessed')}  champion: {summary.get('champion')}")
    print(f"run: {summary['run_id']}  (`tapeline compare {pipeline.name}` puts it beside the champion's)")
    if "drift" in summary:
        for line in drift.lines(summary["drift"]):
            print(line)
    return 0


def _prefect_api():
    """The API, chosen before Prefect is imported (it reads PREFECT_API_URL then): the local
    server, started now where none is up, else Prefect's temporary one, started in the
    background. Returns what to wait on before talking to it (None: nothing)."""
    local = local_api.use_local_server()
    if local is None:
        return local_api.start_in_background()
    if local.started:
        print(f"tapeline: started a local Prefect server, UI at {local.ui}; later runs reuse it, and it "
              f"stops after {local_api.idle_minutes():g} min without a run or with `tapeline server stop`",
              file=sys.stderr, flush=True)
    return local.up


def cmd_compare(args) -> int:
    from components import compare
    from flows.registry import get

    pipeline = get(args.pipeline).name
    store = open_store(args.root)
    runs, table, png = compare.compare(store, pipeline, args.runs, args.out, args.last)
    if not args.runs:
        print(f"{pipeline}: the champion's run and the newest {args.last} runs (name runs to choose others)")
    print(compare.text(table))
    if len(table) and not compare.differing(runs):
        print("no config key differs between these runs")
    print(f"picture: {png}")
    if args.no_prefect:
        return 0
    server = _prefect_api()
    from flows.ui import key, publish

    quiet.setup_logging(args.verbose)
    if server is not None:
        server.wait()
    with local_api.activity():
        publish(pipeline, table, png)
    print(f"prefect: table artifact {key(pipeline)}, picture {key(pipeline)}-png")
    return 0


def cmd_server(args) -> int:
    if args.action == "stop":
        if not args.force and local_api.running() and local_api.runs_live():
            raise UserError("a run is using the local Prefect server", "tapeline server stop",
                            "wait for the run to end (the server stops by itself when idle), or use --force")
        info = local_api.stop()
        print(f"stopped the local Prefect server at {info['ui']}" if info else "no local Prefect server is running")
        return 0
    if args.action == "start":
        local = local_api.use_local_server()
        if local is None:
            raise UserError("PREFECT_API_URL or TAPELINE_LOCAL_SERVER=temporary is set", "environment",
                            "unset it to use the local server")
        if local.up is not None:
            local.up.wait()
    info = local_api.running()
    if info is None:
        print("no local Prefect server is running (the next `tapeline run` starts one)")
        return 0
    left = max(info["idle_seconds"] - (local_api.busy_seconds_ago() or 0.0), 0) / 60
    print(f"local Prefect server: UI at {info['ui']}, API {info['url']}, pid {info['pid']}; "
          f"stops after {left:.1f} more min without a run (`tapeline server stop` now)")
    return 0


def stage_table(summary: dict, root: str) -> str:
    """The run at a glance: each stage, reused or built, its seconds, its artifact."""
    stages = summary["stages"]
    width = max(len(k) for k in stages)
    lines = [f"{'stage':{width}s}  result  {'seconds':>8s}  artifact (under {root})"]
    for key, st in stages.items():
        uri = st["uri"][len(root):].lstrip("/") if st["uri"].startswith(root) else st["uri"]
        lines.append(f"{key:{width}s}  {'reused' if st['reused'] else 'built ':6s}  "
                     f"{st.get('seconds', float('nan')):8.1f}  {uri}")
    total = sum(st.get("seconds", 0.0) for st in stages.values())
    built = sum(not st["reused"] for st in stages.values())
    lines.append(f"{'total':{width}s}  {built} built {total:8.1f}")
    return "\n".join(lines)


def cmd_plan(args) -> int:
    from flows.graph import plan
    from flows.registry import get

    pipeline = get(args.pipeline)
    rows = plan(open_store(args.root), pipeline, pipeline.config(args.set))
    width = max(len(row["key"]) for row in rows)
    for row in rows:
        print(f"{row['key']:{width}s} {row['action']:18s} {row['why']}")
    return 0


def cmd_worker(args) -> int:
    from flows.workers import run_worker

    print(json.dumps(run_worker(args.pipeline, args.set, open_store(args.root).root), sort_keys=True))
    return 0


def cmd_train_workers(args) -> int:
    from flows.registry import get
    from flows.workers import launch

    pipeline = get(args.pipeline)
    pipeline.config(args.set)  # bad keys and values fail here, before any worker starts
    return launch(pipeline.name, args.set, open_store(args.root).root, args.workers)


def cmd_serve(args) -> int:
    from flows.serve import serve

    quiet.setup_logging(args.verbose)

    serve(open_store(args.root).root, only=args.pipeline or None, dry_run=args.dry_run)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help, root=True):
        p = sub.add_parser(name, help=help)
        p.set_defaults(fn=fn)
        p.add_argument("-v", "--verbose", action="store_true",
                       default=quiet.verbose_env(),
                       help="show every library's log: TensorFlow's C++ start-up lines, "
                            "tracebacks of input errors ($TAPELINE_VERBOSE=1 does the same)")
        if root:
            p.add_argument("--root", default=default_root(),
                           help="artifact root URI (default: $TAPELINE_ROOT or ./tapeline-artifacts)")
        return p

    p = add("pipelines", cmd_pipelines, "list pipelines and their stages", root=False)
    p.add_argument("--keys", action="store_true", help="also list every config key and default")
    for name, fn, help in (("run", cmd_run, "run a pipeline's flow"),
                           ("plan", cmd_plan, "per stage: reuse / resume / run, and why")):
        p = add(name, fn, help)
        p.add_argument("pipeline")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        if name == "run":
            p.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    p = add("train-workers", cmd_train_workers,
            "train with N MultiWorkerMirroredStrategy workers on this machine (then `run` reuses the model)")
    p.add_argument("pipeline")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p = add("worker", cmd_worker, "one training worker (TF_CONFIG names the cluster and this worker): "
            "the data stages, then train in lockstep; worker 0 commits")
    p.add_argument("pipeline")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p = add("compare", cmd_compare, "runs of a pipeline side by side: config keys that differ, metrics, "
            "sample grids (a table, a PNG, a Prefect table artifact)")
    p.add_argument("pipeline")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run ids (ROOT/runs/RUN.json); none: the champion's run and the newest --last runs")
    p.add_argument("--last", type=int, default=3, metavar="N",
                   help="with no RUN: how many of the newest runs beside the champion's (default 3)")
    p.add_argument("--out", help="where the PNG goes (a file, or a folder that exists); "
                                 "default ROOT/_comparisons/PIPELINE/compare-TIME.png")
    p.add_argument("--no-prefect", action="store_true", help="print and draw only: no Prefect artifact")
    p = add("artifacts", cmd_artifacts, "committed versions")
    p.add_argument("pipeline", nargs="?")
    p.add_argument("--json", action="store_true")
    add("verify", cmd_verify, "re-hash every committed artifact")
    p = add("gc", cmd_gc, "drop what no champion or recent run needs")
    p.add_argument("--keep", type=int, default=5, help="keep what the last N runs used")
    p.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS",
                   help="leave artifacts younger than this alone (default 3600: safe beside live runs)")
    p.add_argument("--dry-run", action="store_true")
    p = add("server", cmd_server, "the local Prefect server that runs reuse (UI, idle stop): status, start, stop",
            root=False)
    p.add_argument("action", nargs="?", choices=("status", "start", "stop"), default="status")
    p.add_argument("--force", action="store_true", help="stop it even while a run uses it")
    p = add("serve", cmd_serve, "serve the deployments of prefect.yaml with their schedules")
    p.add_argument("pipeline", nargs="*", help="only these pipelines' deployments (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="load prefect.yaml, list the deployments and their schedules, and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet.setup_env(args.verbose)  # before anything imports TensorFlow, Beam or Prefect
    quiet.quiet_libraries(args.verbose)
    try:
        if args.fn is cmd_serve:  # prefect.serve stops its runner on SIGTERM itself
            return args.fn(args)
        with interrupt.handlers():
            return args.fn(args)
    except SystemExit:  # e.g. prefect.serve's SIGTERM handler: a clean stop
        raise
    except (interrupt.Interrupted, KeyboardInterrupt) as exc:
        lost = local_api.lost(exc)
        if lost is not None:
            print(f"tapeline: error: {lost.line()}", file=sys.stderr)
            return 2
        return _interrupted(exc)
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        if _is_cancelled_run(exc) and interrupt.requested() and local_api.lost(exc) is None:
            return _interrupted(exc)
        user = local_api.lost(_interrupted_in(exc)) or UserError.find(exc) or _store_error(exc, args)
        if user is None:
            traceback.print_exc()
            return 1
        print(f"tapeline: error: {user.line()}", file=sys.stderr)
        return 2


def _store_error(exc: BaseException, args) -> UserError | None:
    """An object store's persistent failure (unreachable, refused credentials, a missing bucket)
    met by any command, as the one line naming the store."""
    from artifacts import objstore
    from artifacts.store import default_root

    root = getattr(args, "root", None) or default_root()
    return objstore.user_error(exc, root, "") if objstore.is_object(root) else None


def _interrupted_in(exc: BaseException) -> BaseException:
    """The Interrupted that exc was raised while handling (Prefect reporting a stopped task to a
    server that is gone), else exc."""
    seen = exc
    while seen is not None:
        if isinstance(seen, interrupt.Interrupted):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _is_cancelled_run(exc: BaseException) -> bool:
    """Prefect's CancelledRun: what calling a flow that ended Cancelled raises."""
    return type(exc).__name__ == "CancelledRun" and type(exc).__module__.startswith("prefect")


def _interrupted(exc: BaseException) -> int:
    """The one line for a run stopped by Ctrl-C or SIGTERM, and the shell's exit code for it.
    Prefect logs to the console synchronously, so its lines are out already: this one is last."""
    signum = getattr(exc, "signum", None) or interrupt.requested() or signal.SIGINT
    line = exc.line() if isinstance(exc, interrupt.Interrupted) else (
        str(exc) if _is_cancelled_run(exc) else interrupt.Interrupted(signum).line())
    print(f"tapeline: {line}", file=sys.stderr, flush=True)
    return 128 + signum


def console() -> None:
    """The `tapeline` command. After `run`: out at once. Exit handlers run (Prefect's: the last
    logs and events sent, its temporary server stopped); what Python does after them (TensorFlow's
    teardown, seconds after an interrupted run) would only delay the shell's prompt. Other
    commands (a training worker's collective shutdown) leave the ordinary way."""
    # the user asked for library logs: --verbose, or their own TensorFlow log level
    asked = {"-v", "--verbose"} & set(sys.argv[1:]) or quiet.verbose_env() or "TF_CPP_MIN_LOG_LEVEL" in os.environ
    native = None if asked else quiet.NativeStderrFilter()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if sys.argv[1:2] != ["run"]:
        if native is not None:
            native.close()
        sys.exit(code)
    for s in interrupt.SIGNALS:  # a second Ctrl-C while leaving: leave now, without a traceback
        signal.signal(s, lambda signum, frame: os._exit(code))
    _drain_prefect()
    atexit._run_exitfuncs()
    if native is not None:
        native.close()
    os._exit(code)


def _drain_prefect(timeout: float = 5.0) -> None:
    """Send Prefect's queued logs and events while its API is still up. Its exit handlers stop
    the temporary server before logging's own flush runs, which then waits 5 s on a log worker
    that can no longer reach it (the last records of an interrupted run were still queued)."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort: the run's own outcome is decided
            pass


if __name__ == "__main__":
    console()
