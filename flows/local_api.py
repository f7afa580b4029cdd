"""The Prefect API a local `tapeline run` talks to: the reused local server, or a temporary one.

By default (TAPELINE_LOCAL_SERVER=reuse) a run uses the local server of flows/local_server.py,
starting it when none is up: later runs skip the 3-5 s start, and the UI stays open to look at.
With TAPELINE_LOCAL_SERVER=temporary a run gets Prefect's own per-run temporary server, as below.

The temporary server, out of the terminal's reach:

Prefect starts it as a uvicorn child in the run's own process group, so a Ctrl-C (or a SIGTERM
to the group) kills it first, and the flow engine then retries the dead API for minutes before
it exits with tracebacks. Started here instead, it has a session of its own: the terminal's
signals reach only the run, which stops cleanly, reports its final states to a live API and
stops the server at exit (Prefect's atexit hook). The kernel ends the server if the run itself
is killed (PR_SET_PDEATHSIG), so nothing of a run outlives it."""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from artifacts.errors import UserError
from components import interrupt

_PR_SET_PDEATHSIG = 1
MODE = "TAPELINE_LOCAL_SERVER"             # reuse (default) | temporary
IDLE = "TAPELINE_SERVER_IDLE_MINUTES"
DEFAULT_IDLE = 30 * 60.0                   # seconds without a run before the local server stops
PORTS = range(4200, 4300)


def idle_minutes() -> float:
    """$TAPELINE_SERVER_IDLE_MINUTES: minutes without a run before the local server stops."""
    text = os.environ.get(IDLE) or ""
    if not text.strip():
        return DEFAULT_IDLE / 60
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 7 * 24 * 60):
        raise UserError(f"bad value {text!r} for {IDLE}", "environment",
                        "give the minutes without a run before the local server stops, e.g. 30 (at most a week)")
    return value


def home() -> Path:
    """PREFECT_HOME as Prefect reads it (without importing Prefect: that takes a second), as an
    absolute path: the record names it, and a server is believed only for the home it serves."""
    return Path(os.path.abspath(os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect")))


def check_home() -> None:
    """PREFECT_HOME usable as Prefect uses it before a local or temporary server starts: a folder
    this process can create and write, with room (Prefect keeps its profiles and the server's
    SQLite database there). One line instead of a traceback, or a minute-long wait for a
    temporary server that cannot start."""
    where = home()
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".tapeline-probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"\0" * 65536)  # a full disk refuses this (no fsync: it would cost every run's start)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as e:
        why = "not a folder" if where.exists() and not where.is_dir() else (e.strerror or str(e)).lower()
        raise UserError(f"PREFECT_HOME {where} cannot be used: {why}", "environment",
                        "point PREFECT_HOME at a writable folder with free space (Prefect keeps its "
                        "profiles and the local server's database there), or set PREFECT_API_URL to "
                        "a running Prefect server") from None


def state_file() -> Path:
    return home() / "tapeline-server.json"


def activity_file() -> Path:
    return home() / "tapeline-server.active"


def serving_file() -> Path:
    """Held (an exclusive lock) by the supervisor serving this home for as long as it lives, and
    holding its record: one server per home whatever became of tapeline-server.json."""
    return home() / "tapeline-server.serving"


def healthy(url: str, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def serves_here(pid: int) -> bool:
    """Whether process pid is the supervisor of this home's local server: its command line is
    `... -m flows.local_server ... --home HOME` with this HOME. A record copied from another home
    (a copied ~/.prefect, a restored backup) or a pid reused by another process names none."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except (OSError, ValueError, TypeError):
        return False
    if "flows.local_server" not in args or "--home" not in args[:-1]:
        return False
    return args[args.index("--home") + 1] == str(home())


def _read(path: Path) -> dict | None:
    """A record as written: a JSON object naming this home and a pid serving it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            info = json.loads(f.read(65536))
        ok = isinstance(info, dict) and info.get("home") == str(home()) and serves_here(info["pid"]) \
            and all(isinstance(info.get(k), str) for k in ("url", "ui"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if ok else None


def _serving() -> dict | None:
    """The record the supervisor keeps in its serving file while it holds that file's lock."""
    try:
        fd = os.open(serving_file(), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it: no supervisor serves this home
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    return _read(serving_file())


def _record() -> dict | None:
    """The local server's record while its supervisor lives (starting or up), else None. It is
    believed only when its pid is the supervisor of this home (serves_here). A damaged or missing
    record while that supervisor lives is repaired from the one it keeps (serving_file), so the
    next run never starts a second server on the same database."""
    info = _read(state_file())
    if info is not None:
        return info
    info = _serving()
    if info is not None:
        with contextlib.suppress(OSError):
            _write_record(info)
    return info


def _write_record(info: dict) -> None:
    tmp = state_file().with_name(f".tapeline-server.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info))
    os.replace(tmp, state_file())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def running() -> dict | None:
    """The local server's record when it answers, else None."""
    info = _record()
    return info if info is not None and healthy(info["url"]) else None


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise OSError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for the local Prefect server")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    home().mkdir(parents=True, exist_ok=True)
    fd = os.open(home() / "tapeline-server.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LocalServer:
    ui: str                        # the address a browser opens
    up: threading.Event | None     # set once it answers (None: it answered already)
    started: bool                  # this process started it


def use_local_server() -> LocalServer | None:
    """Point this process at the local server (PREFECT_API_URL), starting it if none is up;
    None where the environment names an API or asks for the temporary server."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get(MODE, "reuse") == "temporary":
        return None
    check_home()
    _hold_runs_lock()  # before the record is read: the server cannot stop idle between here and the run's end
    info = running()
    if info is None:
        with _locked():  # two runs starting at once share one server: the record is written here
            info = _record()
            if info is None:
                info = _start()
    os.environ["PREFECT_API_URL"] = info["url"]
    activity_file().touch()
    if healthy(info["url"]):
        return LocalServer(info["ui"], None, False)
    up = threading.Event()

    def wait() -> None:
        end = time.time() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 90))
        while time.time() < end and _alive(info["pid"]) and not healthy(info["url"], 1.0):
            time.sleep(0.1)
        up.set()  # a server that never answered: the flow meets it and reports it

    threading.Thread(target=wait, name="local-server-start", daemon=True).start()
    return LocalServer(info["ui"], up, info.get("starter") == os.getpid())


def _start() -> dict:
    port = _free_port()
    idle = idle_minutes() * 60
    repo = str(Path(__file__).resolve().parents[1])
    with open(home() / "tapeline-server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.local_server", "--port", str(port), "--idle", str(idle),
                                 "--home", str(home())],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=repo,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                    filter(None, [repo, os.environ.get("PYTHONPATH")]))})
    info = {**record(proc.pid, port, idle), "starter": os.getpid()}
    _write_record(info)
    return info


def record(pid: int, port: int, idle: float) -> dict:
    """What the starter writes to tapeline-server.json and the supervisor keeps in serving_file."""
    return {"pid": pid, "home": str(home()), "port": port, "url": f"http://127.0.0.1:{port}/api",
            "ui": f"http://127.0.0.1:{port}", "idle_seconds": idle, "started": time.time()}


def runs_file() -> Path:
    return home() / "tapeline-server.runs"


@contextlib.contextmanager
def activity() -> Iterator[None]:
    """While a run lives it holds a shared lock on the runs file: the local server never stops
    idle under it, and `tapeline server stop` knows (the kernel drops the lock of a killed run).
    The activity file's time, touched at the start and end, is where the idle time counts from."""
    if os.environ.get(MODE, "reuse") == "temporary" or os.environ.get("PREFECT_API_URL") is None \
            or not state_file().exists():
        yield
        return
    _hold_runs_lock()
    try:
        activity_file().touch()
        yield
    finally:
        with contextlib.suppress(OSError):
            activity_file().touch()  # the idle time counts from the end of the last run


_lost: dict = {}  # the local server that stopped answering during this process's run: {"ui": ...}


@contextlib.contextmanager
def watched(every: float = 1.0, misses: int = 3) -> Iterator[None]:
    """While a run uses the local server, its supervisor and port are looked at every `every`
    seconds. When the server is gone (`tapeline server stop --force`, killed), the run is asked to
    stop as on SIGTERM: train saves a checkpoint at its next step, nothing half-done is committed.
    Prefect's logging is silenced first (its client would log every refused connection, with
    tracebacks), and the command ends with the one line of lost() instead."""
    info = _record() if os.environ.get(MODE, "reuse") != "temporary" else None
    if info is None or os.environ.get("PREFECT_API_URL") != info["url"]:
        yield
        return
    done, main = threading.Event(), threading.main_thread().ident

    def look() -> None:
        missed = 0
        while not done.wait(every):
            missed = 0 if _answers(info) else missed + 1
            if missed >= misses:
                break
        else:
            return
        _lost["ui"] = info["ui"]
        _silence_prefect()
        signal.pthread_kill(main, signal.SIGTERM)
        # between stages a first signal is only noted, and Prefect's client would retry the lost
        # server for minutes: once no stage is saving its step, a second one stops the run where it is
        while not done.wait(2.0):
            if not interrupt.deferring():
                signal.pthread_kill(main, signal.SIGTERM)

    watcher = threading.Thread(target=look, name="local-server-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()  # no signal from it after this


def _silence_prefect() -> None:
    """No more log lines: every record Prefect would log now is about the server that is gone.
    Its internal loggers ignore logging.disable (prefect._internal._logging.SafeLogger), so each
    is disabled itself."""
    import logging

    logging.disable(logging.CRITICAL)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("prefect"):
            logging.getLogger(name).disabled = True


def _answers(info: dict) -> bool:
    """Whether the local server is there: its supervisor alive and something listening on its
    port (a slow answer on a loaded machine is not a lost server)."""
    if not _alive(int(info["pid"])):
        return False
    try:
        socket.create_connection(("127.0.0.1", int(info["port"])), timeout=2).close()
    except ConnectionRefusedError:
        return False
    except OSError:
        pass
    return True


def lost(exc: BaseException) -> UserError | None:
    """The one line for a run whose local server stopped under it (see watched()), with where the
    run stopped; None where it did not."""
    if not _lost:
        return None
    stop = interrupt.stopped_at() or (exc if isinstance(exc, interrupt.Interrupted) else None)
    if stop is not None and stop.step is not None:
        at = f"{stop.stage} at step {stop.step}/{stop.total}, " + ("checkpoint saved" if stop.saved else
                                                                   "last checkpoint kept")
    elif stop is not None and stop.stage:
        at = f"{stop.stage}, {stop.note or 'nothing committed'}"
    else:
        at = "nothing committed since the last stage"
    return UserError(f"the local Prefect server at {_lost['ui']} stopped during the run ({at})", "environment",
                     "run the same command again to resume (it starts the server again)")


_held: list[int] = []  # the runs file, held shared by this process from its choice of the server to its exit


def _hold_runs_lock() -> None:
    """A shared lock on the runs file for the rest of this process. The supervisor stops idle only
    once it takes that file's lock exclusively (local_server.serve), so a run that chose the server
    never meets it stopping; a run that starts while it stops waits here, then finds no record
    and starts another."""
    if not _held:
        fd = os.open(runs_file(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _held.append(fd)


def try_exclusive(path: Path) -> int | None:
    """path opened (created where missing, never through a link) and locked exclusively without
    waiting: the fd, kept locked by the caller until it closes it; None while another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def idle_stop_lock() -> int | None:
    """For the supervisor: the runs file locked exclusively (no run holds it), kept by the caller
    until it has stopped and removed its record; None while a run holds it."""
    return try_exclusive(runs_file())


def runs_live() -> bool:
    """Whether a run holds the local server now."""
    try:
        fd = os.open(runs_file(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def busy_seconds_ago() -> float | None:
    """Seconds since a run last touched the activity file, None without one."""
    try:
        return time.time() - activity_file().stat().st_mtime
    except OSError:
        return None


def stop(timeout: float = 15.0) -> dict | None:
    """Stop the local server; its record, or None when none was running (a stale record goes)."""
    info = _record()
    if info is None:
        with contextlib.suppress(OSError):
            state_file().unlink()
        return None
    pid = int(info["pid"])
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    end = time.time() + timeout
    while time.time() < end and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return info


def die_with_parent() -> None:  # in the child, between fork and exec
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
    check_home()
    started = threading.Event()

    def body():
        try:
            _start_temporary()
        finally:
            started.set()
        # PR_SET_PDEATHSIG fires when the *thread* that forked the server ends: this one stays
        # (a daemon, so it never holds up exit)
        threading.Event().wait()

    threading.Thread(target=body, name="prefect-server", daemon=True).start()
    return started


def _start_temporary() -> None:
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
                start_new_session=True, preexec_fn=die_with_parent)

    return DetachedServer
