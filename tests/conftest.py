"""Shared fixtures: TensorFlow and Prefect's test server start once per session, and so does a
tiny flow per pipeline that several tests only read."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# a process that drops the session's API (shared_api) gets Prefect's temporary server, gone with it
# (tests of the reused local server, tests/test_local_server.py, give it a PREFECT_HOME of its own
# and stop it)
os.environ.setdefault("TAPELINE_LOCAL_SERVER", "temporary")
# a loaded 2-core machine can take longer than the default 30 s to start the test server
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MNIST = SHARED / "mnist"
PEOPLE = SHARED / "pix2pix-people"
CORRUPT = SHARED / "corrupt" / "truncated-train-images-idx3-ubyte.gz"
FASHION = Path("/usr/share/datasets/fashion-mnist")
# the data sets a recipe's TestRuns name, as sources on this machine
DATASETS = {"mnist": f"idx:{MNIST}", "fashion-mnist": f"idx:{FASHION}", "pix2pix-people": f"paired:{PEOPLE}"}
# what a test's subprocess imports from: the repo, and what this session was given (a recipe of a
# test's own, found through $TAPELINE_PIPELINES)
PYTHONPATH = os.pathsep.join([str(REPO), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path) -> str:
    """An artifact root: a local folder, or TensorFlow's in-memory filesystem."""
    if request.param == "local":
        return str(tmp_path / "root")
    return f"ram://tapeline-test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def harness():
    """One Prefect test server (temporary database) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # its explicit 30 s ignores the env above
        yield


@pytest.fixture(scope="session", autouse=True)
def shared_api(harness):
    """Every process a test starts talks to the session's Prefect test server, as the runs of a
    work pool share one: no temporary server started and stopped per process (about 6 s each).
    A test of what a user's own environment starts (the temporary server, the local server) drops
    PREFECT_API_URL from the environment it gives."""
    import prefect.settings

    os.environ["PREFECT_API_URL"] = prefect.settings.PREFECT_API_URL.value()
    yield
    os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def api(harness):
    """The session's Prefect test server as the environment of a run's own process (no temporary
    server per process)."""
    import prefect.settings

    return {"PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}


@pytest.fixture(scope="session")
def traced(api, tmp_path_factory):
    """pipeline -> (outcome, every moment it passed, seconds) of one uninterrupted run at its
    kill_harness.CONFIGS, shared by every test that compares with one. Its root is seeded with the
    feature models unless kills are drawn from its moments (kill_harness.UNSEEDED); a seeded run
    ends identical to one that built the same feature models itself (same fingerprints,
    deterministic training)."""
    from tests import kill_harness as kh
    from tests.helpers import seed_feature_models

    cache: dict = {}

    def get(pipeline: str):
        if pipeline not in cache:
            root = str(tmp_path_factory.mktemp("ref"))
            if pipeline not in kh.UNSEEDED:
                seed_feature_models(root, pipeline, kh.CONFIGS[pipeline])
            t = time.time()
            r = kh.run(pipeline, root, kh.CONFIGS[pipeline], env=api)
            assert r.returncode == 0, r.stderr[-3000:]
            assert r.resumed_from is None and r.moments
            cache[pipeline] = (kh.Outcome.of(r.summary, pipeline), r.moments, time.time() - t)
        return cache[pipeline]
    return get


@pytest.fixture(scope="session")
def references(traced):
    """pipeline -> the Outcome of its uninterrupted reference run (traced)."""
    return lambda pipeline: traced(pipeline)[0]


@dataclass(frozen=True)
class TinyFlow:
    root: str      # read it, never run in it: a test that runs again copies it (helpers.copy_root)
    summary: dict  # what run_pipeline returned
    ui: dict       # the run's Prefect artifacts, read back right after it (helpers.prefect_artifacts)


@pytest.fixture(scope="session")
def tiny_flow(harness, tmp_path_factory):
    """pipeline -> TinyFlow: its helpers.TINY flow, run once per pytest run on a fresh root from
    scratch (nothing seeded), for every test that reads what such a run leaves."""
    from flows.pipeline_flow import run_pipeline
    from tests.helpers import TINY, prefect_artifacts

    made: dict[str, TinyFlow] = {}

    def get(pipeline: str) -> TinyFlow:
        if pipeline not in made:
            root = str(tmp_path_factory.mktemp(f"tiny-{pipeline}") / "root")
            summary = run_pipeline(pipeline, TINY[pipeline], root)
            made[pipeline] = TinyFlow(root, summary, prefect_artifacts(pipeline))
        return made[pipeline]

    return get


@pytest.fixture
def local_root(tmp_path) -> str:
    return str(tmp_path / "root")


def run_py(code: str, *args: str, timeout: float = 600, env: dict | None = None,
           **kw) -> subprocess.CompletedProcess:
    """Run python code in a fresh process with the repo importable; env adds to this process's
    environment (a value None leaves a variable out)."""
    full_env = {**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: leave the variable out
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, **kw)


def tapeline(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_py("import sys; from flows.cli import main; sys.exit(main())", *args,
                  timeout=timeout, env=env)


# `make test` runs the suite on two pytest-xdist workers with --dist loadfile: the tests of one module
# run on one worker, in order (module fixtures; the local-server tests never start two servers at
# once). --dist loadgroup would keep the modules sharing a session reference run together, but
# pytest-xdist 3.8's group suffix is lost on pytest 9's node ids, so each test went its own way.


def pytest_configure(config):
    # what every xdist worker must agree on, fixed once by the process that starts them: the day's
    # slice of the signal and kill tests (a run across midnight would draw two), and one cache of
    # feature models (tests.helpers.seed_feature_models: built once, whichever worker needs it first;
    # the store's own locks make a second builder wait and reuse)
    if "PYTEST_XDIST_WORKER" not in os.environ:
        import datetime
        import tempfile

        os.environ.setdefault("TAPELINE_SLICE_SEED", datetime.date.today().isoformat())
        if "TAPELINE_TEST_FEATURE_CACHE" not in os.environ:
            import shutil

            made = os.environ["TAPELINE_TEST_FEATURE_CACHE"] = tempfile.mkdtemp(prefix="tapeline-feature-models-")
            config.add_cleanup(lambda: shutil.rmtree(made, True))


def pytest_report_header(config):
    from tests.helpers import SLICE_SEED

    return f"tapeline: the signal and kill tests' slice drawn with TAPELINE_SLICE_SEED={SLICE_SEED} (make test-long runs every case)"
