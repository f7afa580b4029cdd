"""A bad environment or a bad place to write gets the one line too: a malformed
$TAPELINE_SERVER_IDLE_MINUTES, $TAPELINE_PIPELINES naming nothing, `compare --out` into a folder
that does not exist, a PREFECT_HOME that cannot be used. Exit 2, the last line `tapeline: error: ...`, no traceback."""
from __future__ import annotations

import subprocess

import pytest

from tests.conftest import tapeline


def _one_line(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert lines and lines[-1].startswith("tapeline: error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert all(w in lines[-1] for w in words), lines[-1]


@pytest.mark.parametrize("value", ["soon", "nan", "-5", "0", "1e400", "inf"])
def test_a_malformed_idle_time_is_refused_in_one_line(tmp_path, value):
    # the local server is chosen (not the tests' temporary one) in a home of this test's own
    env = {"TAPELINE_LOCAL_SERVER": "", "PREFECT_API_URL": None, "PREFECT_HOME": str(tmp_path / "home"),
           "TAPELINE_SERVER_IDLE_MINUTES": value}
    (tmp_path / "home").mkdir()
    r = tapeline("run", "mnist-classifier", "--root", str(tmp_path / "root"), env=env, timeout=120)
    _one_line(r, "TAPELINE_SERVER_IDLE_MINUTES")
    assert not (tmp_path / "root" / "mnist-classifier").exists()


@pytest.mark.parametrize("value", ["no.such.module", "not a module", "json"])
def test_tapeline_pipelines_naming_nothing_is_refused_in_one_line(tmp_path, value):
    r = tapeline("pipelines", env={"TAPELINE_PIPELINES": value}, timeout=120)
    _one_line(r, "TAPELINE_PIPELINES")


def test_compare_into_a_folder_that_does_not_exist_is_refused_in_one_line(tmp_path):
    from tests.helpers import TINY

    root = str(tmp_path / "root")
    run = tapeline("run", "mnist-classifier", "--root", root, *[a for s in TINY["mnist-classifier"] for a in ("--set", s)])
    assert run.returncode == 0, run.stderr[-2000:]
    r = tapeline("compare", "mnist-classifier", "--root", root, "--out", str(tmp_path / "missing" / "c.png"))
    _one_line(r, "--out", "missing")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("value", ["often", "0", "-1", "nan", "1e9"])
def test_a_malformed_lease_heartbeat_is_refused_in_one_line(tmp_path, value):
    r = tapeline("run", "mnist-classifier", "--root", str(tmp_path / "root"),
                 env={"TAPELINE_LEASE_SECONDS": value}, timeout=300)
    _one_line(r, "TAPELINE_LEASE_SECONDS")
    assert not (tmp_path / "root" / "_leases").exists() or not list((tmp_path / "root" / "_leases").iterdir())


@pytest.fixture
def mounts(tmp_path):
    """mount(name, options) -> a small tmpfs mounted at tmp_path/name; unmounted after the test."""
    made = []

    def mount(name: str, options: str) -> str:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        made.append(str(where))
        return str(where)

    yield mount
    for where in reversed(made):
        if subprocess.run(["umount", where]).returncode != 0:
            subprocess.run(["umount", "-l", where])


@pytest.mark.parametrize("mode", ["reuse", "temporary"])
def test_a_prefect_home_that_cannot_be_used_is_refused_in_one_line(tmp_path, mounts, mode):
    from tests.helpers import TINY

    full = mounts("full", "size=256k")
    with open(f"{full}/filler", "wb") as f:
        try:
            f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    (tmp_path / "a-file").write_text("not a folder")
    homes = {"read-only": mounts("ro", "ro,size=1m"), "missing on a read-only disk": mounts("ro2", "ro,size=1m") + "/home",
             "a file": str(tmp_path / "a-file"), "full": full}
    sets = [a for s in TINY["mnist-classifier"] for a in ("--set", s)]
    for what, prefect_home in homes.items():
        root = tmp_path / f"root-{len(what)}"
        env = {"PREFECT_HOME": prefect_home, "PREFECT_API_URL": None, "TAPELINE_LOCAL_SERVER": mode}
        r = tapeline("run", "mnist-classifier", "--root", str(root), *sets, env=env, timeout=120)
        _one_line(r, "PREFECT_HOME", prefect_home)
        assert not root.exists(), what  # refused before anything is written
    r = tapeline("server", "start", env={"PREFECT_HOME": homes["read-only"], "PREFECT_API_URL": None,
                                         "TAPELINE_LOCAL_SERVER": ""}, timeout=120)
    _one_line(r, "PREFECT_HOME")
