"""Long-running stack processes (Prefect server, worker) started in their own session and found again by pid file."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def alive(pid_file: Path, marker: str, settle: float = 5.0) -> int | None:
    """The pid in pid_file when that process still runs and its command line contains marker
    (a recycled pid belongs to someone else and is never ours to stop).

    A process in the middle of an exec has an empty /proc/PID/cmdline for a moment (the kernel is swapping
    its memory map), and `Popen` can return inside that moment on a loaded machine: an empty command
    line of a live process is read again for up to `settle` seconds before it counts as not ours."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    deadline = time.monotonic() + settle
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        if cmdline.strip() or _zombie(pid) or time.monotonic() > deadline:
            return pid if marker in cmdline else None
        time.sleep(0.05)


def start(cmd: list[str], env: dict, log: Path, pid_file: Path, cwd: str | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def stop(pid_file: Path, marker: str, timeout: float = 20.0) -> bool:
    """SIGTERM the process group we started, SIGKILL after timeout; False when nothing of ours ran."""
    pid = alive(pid_file, marker)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return True
            except ChildProcessError:  # not our child (started by an earlier `up`): poll /proc
                if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                    return True
            time.sleep(0.2)
    return True


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def healthy(api_url: str, auth: str | None = None) -> bool:
    req = urllib.request.Request(f"{api_url}/health")
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(api_url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Wait for /api/health (Prefect serves it without auth) while the server we just started runs;
    whether it still runs is asked of the Popen we hold, never guessed from /proc."""
    deadline = time.time() + timeout
    while not healthy(api_url):
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"the Prefect server exited during start-up (exit {proc.returncode}); "
                               f"its log {log} ends:\n{tail}")
        if time.time() > deadline:
            raise RuntimeError(f"the Prefect server did not answer {api_url}/health in {timeout:.0f} s (log: {log})")
        time.sleep(0.5)
