"""Running a Beam pipeline on the configured engine (direct, dask, portable, ...), errors made one-line.

Every function takes anything with a `.beam` engine section: the config (the CLI's early check)
or a stage's Runtime (contract.BeamEngine), never part of a fingerprint."""
from __future__ import annotations

import contextlib
import shlex
import socket
from typing import Callable, Iterator

from artifacts.errors import UserError

# Friendly names -> Beam runners. "direct" is the DirectRunner's batch engine itself (FnApiRunner):
# Beam 2.77's DirectRunner first tries the Prism runner, whose binary it downloads at run time;
# naming the engine directly means no run ever attempts (or waits on) that download.
FN_API = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"
ALIASES = {"direct": FN_API, "directrunner": FN_API, "dask": DASK, "daskrunner": DASK,
           "portable": "PortableRunner", "portablerunner": "PortableRunner"}


def engine(cfg) -> str:
    """The Beam runner a config names, after the friendly aliases."""
    return ALIASES.get(cfg.beam.runner.lower(), cfg.beam.runner)


def _reachable(address: str, key: str, fix: str, timeout: float = 5.0) -> None:
    """A clear one-line error now, rather than a runner's retry loop and a long traceback later."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"bad address {address!r} for {key}", "--set", "write HOST:PORT, e.g. localhost:8786")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"nothing answers at {address} ({e.strerror or e})", key, fix) from None


def flags(cfg, scheduler: str | None = None) -> list[str]:
    """The Beam command-line flags of a config: runner, its endpoints, then beam.options."""
    b, runner = cfg.beam, engine(cfg)
    out = [f"--runner={runner}"]
    if runner == DASK:
        out += [f"--dask_client_address={scheduler or b.dask_address}", "--dask_connection_timeout=10"]
        # one work unit (a shard) per partition by default, so every worker gets some
        out.append(f"--dask_npartitions={b.partitions}" if b.partitions else "--dask_partition_size=1")
    elif runner == "PortableRunner":
        out.append(f"--job_endpoint={b.job_endpoint}")
        out += ([ "--environment_type=EXTERNAL", f"--environment_config={b.worker_pool}"]
                if b.worker_pool else ["--environment_type=LOOPBACK"])
    return out + shlex.split(b.options)


def options(cfg, scheduler: str | None = None):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(flags(cfg, scheduler))


def check(cfg) -> None:
    """The engine's services answer: a one-line UserError now (the CLI calls this before a flow
    starts; every run calls it again), not a runner's retry loop and a traceback later."""
    b, runner = cfg.beam, engine(cfg)
    if runner == DASK and b.dask_address:
        _reachable(b.dask_address, "beam.dask_address",
                   "start one with `dask scheduler` and `dask worker ADDRESS --nworkers 2`, "
                   "or leave beam.dask_address empty for a local cluster")
    if runner == "PortableRunner":
        if not b.job_endpoint:
            raise UserError("beam.runner=portable needs a job service", "beam.job_endpoint",
                            "start `python -m apache_beam.runners.portability.local_job_service_main "
                            "--port 8099` and --set beam.job_endpoint=localhost:8099")
        _reachable(b.job_endpoint, "beam.job_endpoint", "start the job service, or fix the address")
        if b.worker_pool:
            _reachable(b.worker_pool, "beam.worker_pool",
                       "start `python -m apache_beam.runners.worker.worker_pool_main --service_port PORT`")


@contextlib.contextmanager
def _scheduler(cfg) -> Iterator[str | None]:
    """The Dask scheduler to use: beam.dask_address, else a LocalCluster for this run only.
    (DaskRunner would start one itself and never close it.)"""
    b = cfg.beam
    if engine(cfg) != DASK:
        yield None
        return
    if b.dask_address:
        yield b.dask_address
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


def run(rt, build: Callable) -> None:
    """build(pipeline) adds the transforms; the pipeline runs to completion here.
    A UserError raised inside a worker comes back through Beam's wrapping as itself."""
    import apache_beam as beam

    check(rt)
    try:
        with _scheduler(rt) as scheduler:
            p = beam.Pipeline(options=options(rt, scheduler))
            build(p)
            result = p.run()
            try:
                result.wait_until_finish()
            finally:
                client = getattr(result, "client", None)  # DaskRunner leaves its client open
                if client is not None:
                    client.close()
    except Exception as exc:
        user = UserError.find(exc)
        if user is not None:
            raise user from None
        raise


def user_errors(fn):
    """Decorate DoFn bodies: a UserError survives Beam's re-raising as a tagged message."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(fn):  # a DoFn body that yields runs only when Beam iterates it
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except UserError as e:
                raise RuntimeError(e.tagged()) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise RuntimeError(e.tagged()) from None
    return wrapper
