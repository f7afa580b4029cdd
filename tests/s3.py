"""A real S3 API for the tests: moto's server on loopback (started and stopped by the tests), the
"machines" that share nothing with each other but its endpoint and credentials, and a small
proxy in front of it that misbehaves on purpose (strips conditional headers, answers 503,
refuses the credentials)."""
from __future__ import annotations

import http.client
import http.server
import os
import socketserver
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass

from tests.conftest import PYTHONPATH

BUCKET = "tapeline-test"
ACCESS_KEY = "AKIATAPELINETEST0001"
# grepped for in the bucket, the logs and the Prefect database: it must appear in none of them
SECRET = "tapeline-secret-" + uuid.uuid4().hex


@dataclass
class Server:
    endpoint: str
    server: object

    def env(self, endpoint: str | None = None) -> dict:
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET, region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        out, token = [], None
        c = self.client()
        while True:
            kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = c.list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def start() -> Server:
    from moto.server import ThreadedMotoServer

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s = Server(f"http://{host}:{port}", server)
    s.client().create_bucket(Bucket=BUCKET)
    return s


def machine(tmp_path, name: str, env: dict) -> dict:
    """The environment of one 'machine': its own HOME, TMPDIR, cache, PREFECT_HOME and working
    folder; only the endpoint and the credentials are shared."""
    base = tmp_path / f"machine-{name}"
    folders = {k: base / k for k in ("home", "tmp", "cache", "prefect", "work")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    return {**os.environ, **env, "HOME": str(folders["home"]), "TMPDIR": str(folders["tmp"]),
            "TAPELINE_CACHE": str(folders["cache"]), "PREFECT_HOME": str(folders["prefect"]),
            "PYTHONPATH": PYTHONPATH, "PREFECT_LOGGING_LEVEL": "INFO", "_WORK": str(folders["work"])}


def tapeline(env: dict, *args: str, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    # its own session: a failpoint's kill takes the run's whole process group, never the test's
    return subprocess.run([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=env["_WORK"],
                          start_new_session=True, **kw)


def popen(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=env["_WORK"],
                            start_new_session=True)


class Proxy:
    """An HTTP proxy in front of the S3 server. mode: 'pass'; 'strip' (drops If-None-Match and
    If-Match: a store that ignores conditional writes); '503' (answers 503 SlowDown to every
    write); 'deny' (answers 403 InvalidAccessKeyId to everything)."""

    def __init__(self, upstream: str, mode: str = "pass"):
        self.upstream, self.mode = upstream.split("://", 1)[1], mode
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.mode == "deny":
                    return self._answer(403, b"<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key"
                                             b" Id you provided does not exist</Message></Error>")
                if proxy.mode == "503" and self.command in ("PUT", "POST", "DELETE"):
                    return self._answer(503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request"
                                             b" rate.</Message></Error>")
                headers = {k: v for k, v in self.headers.items()
                           if not (proxy.mode == "strip" and k.lower() in ("if-none-match", "if-match"))}
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                head = self.command == "HEAD"  # its Content-Length is the object's size, no body
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection") and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                conn.close()

            def _answer(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.httpd = Threaded(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
