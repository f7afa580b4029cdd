"""PostgreSQL for the stack: a Debian cluster (pg_createcluster / pg_ctlcluster) with a role and database."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from artifacts.errors import UserError

ROLE = "tapeline"
DATABASE = "prefect"


@dataclass
class Cluster:
    """One Debian-managed cluster: `pg_ctlcluster VERSION NAME ...` runs it as the postgres user."""
    name: str
    port: int
    version: str = ""

    def __post_init__(self):
        self.version = self.version or _newest_version()

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(list(cmd), capture_output=True, text=True)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-800:]}")
        return out

    def _status(self) -> tuple[bool, bool]:
        """(exists, running) from pg_lsclusters."""
        out = self._run("pg_lsclusters", "--no-header", check=False).stdout
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4 and cols[0] == self.version and cols[1] == self.name:
                return True, cols[3] == "online"
        return False, False

    def exists(self) -> bool:
        return self._status()[0]

    def running(self) -> bool:
        return self._status()[1]

    def real_port(self) -> int:
        """The port an existing cluster was created with (its postgresql.conf, as Debian keeps it)."""
        conf = f"/etc/postgresql/{self.version}/{self.name}/postgresql.conf"
        m = re.search(r"^\s*port\s*=\s*(\d+)", open(conf).read(), re.M) if os.path.exists(conf) else None
        return int(m.group(1)) if m else self.port

    def create(self) -> None:
        # local connections by peer (the postgres user administers), TCP by password only
        self._run("pg_createcluster", self.version, self.name, "--port", str(self.port),
                  "--start-conf", "manual", "--", "--auth-local=peer", "--auth-host=scram-sha-256")

    def start(self) -> None:
        self._run("pg_ctlcluster", self.version, self.name, "start")

    def stop(self) -> None:
        self._run("pg_ctlcluster", self.version, self.name, "stop", "--", "-m", "fast", check=False)

    def drop(self) -> None:
        self._run("pg_dropcluster", "--stop", self.version, self.name, check=False)

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the cluster's superuser over the local socket (peer authentication)."""
        cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-p", str(self.real_port()),
               "-d", db, "-c", sql]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return self._run(*cmd).stdout.strip()

    def ensure_database(self, password: str) -> None:
        """The role with its password, the database it owns, and pg_trgm (Prefect's migrations need it)."""
        esc = password.replace("'", "''")
        if self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'") != "1":
            self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{esc}'")
        else:  # the secrets file is the truth: a regenerated password is applied
            self.psql(f"ALTER ROLE {ROLE} PASSWORD '{esc}'")
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
            self.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_trgm", db=DATABASE)

    def url(self, password: str) -> str:
        from urllib.parse import quote

        return f"postgresql+asyncpg://{ROLE}:{quote(password, safe='')}@127.0.0.1:{self.real_port()}/{DATABASE}"


def _newest_version() -> str:
    versions = sorted((os.path.basename(p) for p in glob.glob("/usr/lib/postgresql/*")
                       if os.path.exists(os.path.join(p, "bin", "postgres"))), key=lambda v: float(v))
    if not versions:
        raise UserError("PostgreSQL is not installed", "/usr/lib/postgresql",
                        "apt-get install postgresql, or set TAPELINE_STACK_DATABASE_URL")
    return versions[-1]


def available() -> str | None:
    """Why the Debian cluster tools cannot be used here, or None when they can."""
    for tool in ("pg_createcluster", "pg_ctlcluster", "pg_lsclusters", "psql"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install postgresql)"
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        return "no PostgreSQL server binaries under /usr/lib/postgresql"
    if os.geteuid() != 0:
        return "creating a Debian cluster needs root (or set TAPELINE_STACK_DATABASE_URL)"
    return None
