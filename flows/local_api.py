"""Prefect's temporary API server for a local run, out of the terminal's reach.

Prefect starts it as a uvicorn child in the run's own process group, so a Ctrl-C (or a SIGTERM
to the group) kills it first, and the flow engine then retries the dead API for minutes before
it exits with tracebacks. Started here instead, it has a session of its own: the terminal's
signals reach only the run, which stops cleanly, reports its final states to a live API and
stops the server at exit (Prefect's atexit hook). The kernel ends the server if the run itself
is killed (PR_SET_PDEATHSIG), so nothing of a run outlives it."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # in the child, between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: Prefect's atexit hook still stops it
        pass


def start_in_background() -> threading.Event | None:
    """Start the temporary server on a thread of its own while the caller goes on importing;
    wait() on the event (set once it is up, or failed) before the flow runs. None where the
    environment names an API."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    started = threading.Event()

    def body():
        try:
            _start()
        finally:
            started.set()
        # PR_SET_PDEATHSIG fires when the *thread* that forked the server ends: this one stays
        # (a daemon, so it never holds up exit)
        threading.Event().wait()

    threading.Thread(target=body, name="prefect-server", daemon=True).start()
    return started


def _start() -> None:
    try:
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return
        _detached(SubprocessASGIServer)().start()
    except Exception:  # noqa: BLE001 - get_client starts one again and raises properly
        pass


def _detached(base):
    class DetachedServer(base):
        """Prefect 3.8's SubprocessASGIServer, its uvicorn child in a session of its own.
        Registered as the instance of the default port, so Prefect's get_client uses it."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect
            from prefect.settings import get_current_settings

            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                 "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                     "PREFECT__SERVER_FINAL": "1",
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
                start_new_session=True, preexec_fn=_die_with_parent)

    return DetachedServer
