"""Every bad input the data tests build, through the real CLI with the user's default logging:
stderr ends with the one `tapeline: error:` line, with no traceback and no TensorFlow C++ log."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO
from tests.helpers import CPP_LOG, bad_mnist_dirs, paired_dir

# what the conftest sets for the other tests' speed and quiet: a user has none of it
NOT_A_USERS = ("TF_CPP_MIN_LOG_LEVEL", "PREFECT_LOGGING_LEVEL", "TAPELINE_VERBOSE", "PREFECT_API_URL")


def _cli(args: list[str], api_url: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_USERS}
    env["PYTHONPATH"] = str(REPO)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
                           *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def failed_runs(harness, tmp_path_factory):
    """One CLI run per bad input, run concurrently; all but one share the session's Prefect
    server (the "magic" case starts its own temporary server, as a user's run does)."""
    from prefect.settings import PREFECT_API_URL

    tmp = tmp_path_factory.mktemp("bad")
    mnist = bad_mnist_dirs(tmp)
    pairs = {}
    for case in ("corrupt", "square", "empty"):
        files = [("train", "1.jpg", "ok"), ("val", "1.jpg", "ok")]
        if case != "empty":
            files.append(("train", "2.jpg", case))
        pairs[case] = paired_dir(tmp, case, files)
    for f in (pairs["empty"] / "val").iterdir():
        f.unlink()
    pairs["missing"] = tmp / "nowhere"
    cases = {name: (["run", "mnist-classifier", "--set", f"data.source=idx:{d}"], fname)
             for name, (d, fname) in mnist.items()}
    expect = {"corrupt": "2.jpg", "square": "2.jpg", "empty": "val", "missing": "nowhere"}
    cases.update({name: (["run", "pix2pix", "--set", f"data.source=paired:{d}", "--set", "data.image_size=32"],
                         expect[name]) for name, d in pairs.items()})
    cases["unknown key"] = (["run", "fashion-dcgan", "--set", "no.such.key=1"], "no.such.key")
    cases["bad value"] = (["run", "fashion-dcgan", "--set", "train.epochs=abc"], "train.epochs")
    cases["verbose"] = (cases["magic"][0] + ["--verbose"], cases["magic"][1])
    # the default source (tfds, falling back to the Debian package) imports TensorFlow
    cases["plan"] = (["plan", "fashion-dcgan"], "fashion-dcgan/ingest")
    api = PREFECT_API_URL.value()
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(_cli, args + ["--root", str(tmp / "roots" / name)],
                                     None if name == "magic" else api)
                   for name, (args, _) in cases.items()}
        out = {name: (f.result(), cases[name][1], tmp / "roots" / name) for name, f in futures.items()}
    return out


@pytest.mark.parametrize("case", ["truncated", "magic", "counts", "corrupt", "square", "empty", "missing",
                                  "unknown key", "bad value"])
def test_bad_input_ends_stderr_with_one_line_and_no_traceback(failed_runs, case):
    proc, expect, root = failed_runs[case]
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("tapeline: error: ") and expect in lines[-1], proc.stderr[-3000:]
    assert sum(ln.startswith("tapeline: error: ") for ln in lines) == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not CPP_LOG.search(proc.stderr), CPP_LOG.search(proc.stderr).group(0)
    assert not list(root.glob("*/*/*/_COMMITTED"))


def test_verbose_brings_the_logged_traceback_back(failed_runs):
    proc, expect, _ = failed_runs["verbose"]
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr
    assert "tapeline: error: " in proc.stderr and expect in proc.stderr


def test_plan_prints_no_tensorflow_log(failed_runs):
    proc, expect, _ = failed_runs["plan"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout
    assert not CPP_LOG.search(proc.stderr), proc.stderr[-3000:]
