"""`python -m flows.stack up|down|status|env`: PostgreSQL, Prefect server, process work pool, deployments, worker.

State (pid files, logs, the secrets file, what `up` started) lives in a directory outside git:
$TAPELINE_STACK_DIR, else ~/.local/state/tapeline/stack. `down` stops only what `up` started."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import sys
from pathlib import Path

from artifacts.errors import UserError
from artifacts.store import default_root
from flows import stack_postgres, stack_prefect, stack_process

REPO = Path(__file__).resolve().parents[1]
SERVER, WORKER = "prefect-server", "prefect-worker"
MARKERS = {SERVER: "server start", WORKER: "worker start"}


def default_dir() -> Path:
    env = os.environ.get("TAPELINE_STACK_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "tapeline" / "stack"


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Stack:
    def __init__(self, state_dir: Path | str | None = None, **options):
        self.dir = Path(state_dir) if state_dir else default_dir()
        saved = json.loads(self._file("stack.json").read_text()) if self._file("stack.json").exists() else {}
        given = {k: v for k, v in options.items() if v is not None}
        self.cfg = {"host": "127.0.0.1", "port": 4200, "pg_cluster": "tapeline", "pg_port": None,
                    "pool": "tapeline", "root": default_root(),
                    "started": [], **saved, **given}

    def _file(self, name: str) -> Path:
        return self.dir / name

    def _save(self) -> None:
        self._file("stack.json").write_text(json.dumps(self.cfg, indent=1) + "\n")

    # -- secrets: generated once, readable by their owner only, never in git (the state dir is outside it)
    def secrets(self) -> dict:
        path = self._file("secrets.json")
        if not path.exists():
            data = {"db_password": secrets.token_urlsafe(24),
                    "api_auth": f"tapeline:{secrets.token_urlsafe(24)}"}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
        if path.stat().st_mode & 0o077:
            raise UserError("the stack's secrets file is readable by others", str(path), f"chmod 600 {path}")
        return json.loads(path.read_text())

    @property
    def api_url(self) -> str:
        host = self.cfg["host"]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{shown}:{self.cfg['port']}/api"

    @property
    def ui_url(self) -> str:
        return self.api_url[:-len("/api")]

    def auth(self) -> str | None:
        """Basic auth is required as soon as the server listens beyond loopback."""
        return None if loopback(self.cfg["host"]) else self.secrets()["api_auth"]

    def client_env(self) -> dict:
        """What the Prefect CLI, the worker and its flow runs need to reach this server."""
        env = {"PREFECT_API_URL": self.api_url}
        if self.auth():
            env["PREFECT_API_AUTH_STRING"] = self.auth()
        return env

    def _env(self, extra: dict) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        # its own PREFECT_HOME: the stack's processes never touch the user's profiles
        return {**env, "PREFECT_HOME": str(self._file("prefect-home")), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                **self.client_env(), **extra}

    # -- components
    def _cluster(self) -> stack_postgres.Cluster:
        return stack_postgres.Cluster(self.cfg["pg_cluster"], self.cfg["pg_port"] or _free_port(5433))

    def _database_url(self) -> str:
        external = os.environ.get("TAPELINE_STACK_DATABASE_URL")
        if external:
            return external
        why = stack_postgres.available()
        if why:
            raise UserError("cannot run PostgreSQL for the stack", why,
                            "install postgresql and run as root, or set TAPELINE_STACK_DATABASE_URL")
        cluster = self._cluster()
        if not cluster.exists():
            cluster.create()
            self._mark("pg-cluster-created")
        self.cfg["pg_port"] = cluster.real_port()
        if not cluster.running():
            cluster.start()
            self._mark("postgres")
            print(f"postgres      started   cluster {cluster.version}/{cluster.name} on 127.0.0.1:{cluster.real_port()}")
        else:
            print(f"postgres      running   cluster {cluster.version}/{cluster.name} on 127.0.0.1:{cluster.real_port()}")
        cluster.ensure_database(self.secrets()["db_password"])
        return cluster.url(self.secrets()["db_password"])

    def _mark(self, what: str) -> None:
        if what not in self.cfg["started"]:
            self.cfg["started"].append(what)
        self._save()

    def _server(self, db_url: str) -> None:
        pid_file, log = self._file(f"{SERVER}.pid"), self._file(f"{SERVER}.log")
        if stack_process.alive(pid_file, MARKERS[SERVER]):
            print(f"server        running   {self.ui_url}")
            return
        if stack_process.healthy(self.api_url, self.auth()):
            raise UserError("another server already answers on the stack's port", self.api_url,
                            "stop it, or pass --port with a free port")
        env = self._env({"PREFECT_API_DATABASE_CONNECTION_URL": db_url,
                         "PREFECT_SERVER_API_HOST": self.cfg["host"],
                         "PREFECT_SERVER_API_PORT": str(self.cfg["port"]),
                         # what browsers call: on another host they need this machine's name
                         "PREFECT_UI_API_URL": os.environ.get("PREFECT_UI_API_URL") or self.api_url})
        if self.auth():
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth()
        proc = stack_process.start([sys.executable, "-m", "prefect", "server", "start"], env, log, pid_file)
        self._mark(SERVER)
        stack_process.wait_healthy(self.api_url, proc, log)
        print(f"server        started   {self.ui_url}   (log {log})")

    def _worker(self) -> None:
        pid_file, log = self._file(f"{WORKER}.pid"), self._file(f"{WORKER}.log")
        if stack_process.alive(pid_file, MARKERS[WORKER]):
            print(f"worker        running   pool {self.cfg['pool']}")
            return
        stack_process.start([sys.executable, "-m", "prefect", "worker", "start", "--pool", self.cfg["pool"],
                             "--type", "process"], self._env(worker_env(self.cfg["root"])), log, pid_file,
                            cwd=str(REPO))
        self._mark(WORKER)
        print(f"worker        started   pool {self.cfg['pool']}   (log {log})")

    def up(self, interval: int | None = None, interval_sets: list[str] | None = None,
           only: list[str] | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._save()
        self._server(self._database_url())
        env = self._env({})
        # `prefect deploy` fills in {{ $VAR }} from its own environment when VAR is set: without
        # TAPELINE_REPO here, prefect.yaml's pull step keeps its placeholder for each worker to fill
        env.pop("TAPELINE_REPO", None)
        stack_prefect.ensure_pool(self.cfg["pool"], env)
        stack_prefect.deploy(env, REPO)
        stack_prefect.ensure_automations(env, int(worker_env(self.cfg["root"])["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]))
        if interval:
            for name in stack_prefect.add_interval(env, interval, interval_sets or [], only):
                print(f"schedule      every {interval} s   {name}")
        self._worker()
        print(f"Prefect UI:   {self.ui_url}" + ("   (user:password in " + str(self._file("secrets.json")) + ")"
                                                if self.auth() else ""))
        print(f"CLI and API:  eval \"$(python -m flows.stack env --dir {self.dir})\"")

    def down(self, purge: bool = False) -> None:
        for name in (WORKER, SERVER):
            if name in self.cfg["started"]:
                stopped = stack_process.stop(self._file(f"{name}.pid"), MARKERS[name])
                print(f"{name:<15}{'stopped' if stopped else 'was not running'}")
        if "postgres" in self.cfg["started"]:
            cluster = self._cluster()
            cluster.stop()
            print(f"postgres      stopped   cluster {cluster.version}/{cluster.name}")
        if purge and "pg-cluster-created" in self.cfg["started"]:  # never a cluster up did not create
            self._cluster().drop()
            print("postgres      cluster dropped")
            self.cfg["started"] = []
        else:
            self.cfg["started"] = [s for s in self.cfg["started"] if s == "pg-cluster-created"]
        if self.dir.exists():
            self._save()

    def status(self) -> dict:
        out = {"ui": self.ui_url, "api": self.api_url, "state_dir": str(self.dir), "root": self.cfg["root"],
               SERVER: bool(stack_process.alive(self._file(f"{SERVER}.pid"), MARKERS[SERVER])),
               WORKER: bool(stack_process.alive(self._file(f"{WORKER}.pid"), MARKERS[WORKER])),
               "api_healthy": stack_process.healthy(self.api_url, self.auth() if self.dir.exists() else None)}
        if not os.environ.get("TAPELINE_STACK_DATABASE_URL") and stack_postgres.available() is None:
            out["postgres"] = self._cluster().running()
        return out


def worker_env(root: str) -> dict:
    """The worker's environment: where the code is (prefect.yaml's pull step), how to import it, the root."""
    return {"TAPELINE_REPO": str(REPO), "PYTHONPATH": str(REPO), "TAPELINE_ROOT": root,
            # heartbeats let the server notice a run whose process died (see ensure_automations)
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": os.environ.get("TAPELINE_STACK_HEARTBEAT_SECONDS", "30"),
            # how often the worker asks the pool for runs (Prefect's default is 10 s)
            "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("TAPELINE_STACK_POLL_SECONDS", "10")}


def _free_port(start: int) -> int:
    import socket

    for port in range(start, start + 200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {start}..{start + 200}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.stack", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "down", "status", "env"])
    ap.add_argument("--dir", help="state directory (default $TAPELINE_STACK_DIR or ~/.local/state/tapeline/stack)")
    ap.add_argument("--host", help="address the server listens on (default 127.0.0.1; any other requires auth)")
    ap.add_argument("--port", type=int, help="server port (default 4200)")
    ap.add_argument("--root", help="artifact root the worker's runs use (default $TAPELINE_ROOT or ./tapeline-artifacts)")
    ap.add_argument("--pg-cluster", help="Debian cluster name (default tapeline)")
    ap.add_argument("--interval", type=int, default=int(os.environ.get("TAPELINE_STACK_INTERVAL") or 0) or None,
                    help="also schedule the deployments every N seconds, for trying it out ($TAPELINE_STACK_INTERVAL)")
    ap.add_argument("--only", action="append", help="with --interval: only this pipeline (repeatable)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="with --interval: overrides the interval schedule's runs use")
    ap.add_argument("--purge", action="store_true", help="with down: also drop the PostgreSQL cluster up created")
    a = ap.parse_args(argv)
    try:
        stack = Stack(a.dir, host=a.host, port=a.port, root=a.root, pg_cluster=a.pg_cluster)
        if a.command == "up":
            stack.up(a.interval, a.sets, a.only)
        elif a.command == "down":
            stack.down(purge=a.purge)
        elif a.command == "env":
            print("\n".join(f"export {k}={_quote(v)}" for k, v in stack.client_env().items()))
        else:
            st = stack.status()
            print("\n".join(f"{k:<15}{v}" for k, v in st.items()))
            return 0 if st["api_healthy"] else 3
    except UserError as e:
        print(f"tapeline: error: {e.line()}", file=sys.stderr)
        return 2
    return 0


def _quote(v: str) -> str:
    import shlex

    return shlex.quote(v)


if __name__ == "__main__":
    sys.exit(main())
