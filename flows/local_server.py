"""The local Prefect server that `tapeline run` reuses: started once, stopped when idle.

Prefect's temporary server costs every run 3-5 s to start (and lived in the run's process
group, where a Ctrl-C killed it first). This one runs in a session of its own, serves the UI,
and is found again by later runs through a state file in PREFECT_HOME. It stops by itself after
`--idle` seconds without a run (a run touches the activity file while it lives), or with
`tapeline server stop`. Run as `python -m flows.local_server --port P --idle S --home HOME`:
this process supervises uvicorn, and the kernel ends uvicorn if this process dies
(PR_SET_PDEATHSIG). While it lives it holds an exclusive lock on HOME/tapeline-server.serving,
which also holds its record: a second supervisor for the same home (the same SQLite database)
refuses to start, and a damaged tapeline-server.json is repaired from it (local_api._record).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows import local_api


def _uvicorn(port: int) -> subprocess.Popen:
    import prefect

    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env={**os.environ, "PREFECT_UI_ENABLED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"},
        preexec_fn=local_api.die_with_parent)


def serve(port: int, idle: float, poll: float = 2.0) -> int:
    """Supervise the server until it is idle or signalled; the run that started this process
    wrote its record (state file) and this one removes it at the end."""
    state, activity = local_api.state_file(), local_api.activity_file()
    held = local_api.try_exclusive(local_api.serving_file())  # held for life; it will hold our record
    if held is None:
        print(f"another local Prefect server serves {local_api.home()}: not starting a second one on its database",
              file=sys.stderr)
        return 3
    os.ftruncate(held, 0)
    os.pwrite(held, json.dumps(local_api.record(os.getpid(), port, idle)).encode(), 0)
    child = _uvicorn(port)
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        url = f"http://127.0.0.1:{port}/api"
        while stop["signal"] is None and child.poll() is None and not local_api.healthy(url):
            time.sleep(0.2)
        activity.touch()  # the idle clock starts once it answers (a first start migrates a database)
        while stop["signal"] is None and child.poll() is None:
            time.sleep(poll)
            try:
                last = activity.stat().st_mtime
            except OSError:
                last = 0.0
            if time.time() - last > idle:
                stopping = local_api.idle_stop_lock()  # held until the record is gone: no run starts on us now
                if stopping is not None:
                    break
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        try:  # only our own record: a newer server may have replaced it
            if json.loads(state.read_text()).get("pid") == os.getpid():
                state.unlink()
        except (OSError, ValueError, AttributeError):
            pass
        os.ftruncate(held, 0)  # emptied while still held (never unlinked: a new lock must meet this file)
        os.close(held)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.local_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle", type=float, default=local_api.DEFAULT_IDLE)
    parser.add_argument("--home", required=True, help="the PREFECT_HOME it serves (named so a record is checked)")
    args = parser.parse_args(argv)
    if os.path.abspath(args.home) != str(local_api.home()):
        parser.error(f"--home {args.home} is not this environment's PREFECT_HOME {local_api.home()}")
    Path(local_api.state_file()).parent.mkdir(parents=True, exist_ok=True)
    return serve(args.port, args.idle)


if __name__ == "__main__":
    sys.exit(main())
