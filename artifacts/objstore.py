"""Object-store roots (`s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`) through obstore.

obstore (Rust's object_store) was chosen over fsspec/s3fs after measuring both against moto's S3
server (docs/object-storage.md): its create-only put (`PutMode.Create`, `If-None-Match: *` on S3,
`ifGenerationMatch=0` on GCS) and its compare-and-swap put (`If-Match` on the ETag, the generation
on GCS) are first-class calls with their own exceptions, where s3fs writes an empty object over an
existing one through `open("xb")` and reports a stale ETag as a bare OSError; its retries with
backoff cover 5xx answers, throttling and dropped connections.

Endpoint and credentials come from where every AWS tool reads them (the `AWS_*` environment,
`AWS_ENDPOINT_URL`, `~/.aws/config` profiles, through botocore's own resolution), never from
tapeline's config; nothing here writes them anywhere."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from artifacts.errors import UserError, env_number

SCHEMES = ("s3://", "gs://")
_CHUNK = 8 << 20

_clients: dict[tuple[str, str], Any] = {}  # (scheme, bucket) -> store, made on first use
_clients_guard = threading.Lock()
_probed: set[str] = set()  # roots whose conditional writes were checked in this process


def is_object(uri: str) -> bool:
    return uri.startswith(SCHEMES)


def split(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of s3://bucket/key; the key has no leading or trailing slash."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key.strip("/")


class Exists(FileExistsError):
    """A create-only write met an object already there."""


class Changed(OSError):
    """A compare-and-swap write met an object changed (or removed) since it was read."""


@dataclass(frozen=True)
class Meta:
    key: str        # relative to the folder listed
    size: int
    etag: str
    modified: float  # seconds since the epoch, the store's clock


def _endpoint(session: Any) -> str | None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    try:  # a profile's endpoint_url (botocore reads it there too)
        return session._session.get_scoped_config().get("endpoint_url")  # noqa: SLF001 - botocore's resolution
    except Exception:  # noqa: BLE001 - no profile: the default endpoint
        return None


def _client(scheme: str, bucket: str) -> Any:
    with _clients_guard:
        if (scheme, bucket) in _clients:
            return _clients[scheme, bucket]
        retry = {"max_retries": env_number("TAPELINE_STORE_RETRIES", 4, 0, 100, "how often a request is retried",
                                           integer=True),
                 "retry_timeout": dt.timedelta(seconds=env_number(
                     "TAPELINE_STORE_RETRY_SECONDS", 30.0, 0.0, 3600.0, "the seconds a request is retried for")),
                 "backoff": {"init_backoff": dt.timedelta(milliseconds=100), "max_backoff": dt.timedelta(seconds=5),
                             "base": 2}}
        options = {"connect_timeout": "5s", "timeout": "120s"}
        if scheme == "s3":
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider
            from obstore.store import S3Store

            session = boto3.Session()
            endpoint = _endpoint(session)
            kw: dict[str, Any] = {"region": session.region_name or "us-east-1"}
            if endpoint:
                kw["endpoint"] = endpoint
                options["allow_http"] = endpoint.startswith("http://")
            client = S3Store(bucket, client_options=options, retry_config=retry,
                             credential_provider=Boto3CredentialProvider(session), **kw)
        else:
            from obstore.store import GCSStore

            client = GCSStore(bucket, client_options=options, retry_config=retry)
        _clients[scheme, bucket] = client
        return client


def forget_clients() -> None:
    """Drop the made clients (a test that changes the environment's endpoint or credentials)."""
    with _clients_guard:
        _clients.clear()
        _probed.clear()


def _at(uri: str) -> tuple[Any, str]:
    scheme, bucket, key = split(uri)
    return _client(scheme, bucket), key


# -- one object ------------------------------------------------------------------------------------
def head(uri: str) -> Meta | None:
    import obstore

    store, key = _at(uri)
    try:
        m = obstore.head(store, key)
    except FileNotFoundError:
        return None
    return Meta(key, m["size"], m["e_tag"] or "", m["last_modified"].timestamp())


def read(uri: str, limit: int | None = None) -> bytes:
    return read_tagged(uri, limit)[0]


def read_tagged(uri: str, limit: int | None = None) -> tuple[bytes, str]:
    """The object's bytes and its ETag (what a compare-and-swap names). FileNotFoundError if absent;
    ValueError when larger than limit (checked on the listing's size before anything is read)."""
    import obstore

    store, key = _at(uri)
    got = obstore.get(store, key)
    size = got.meta["size"]
    if limit is not None and size > limit:
        raise ValueError(f"{uri} is larger than {limit} bytes")
    return bytes(got.bytes()), got.meta["e_tag"] or ""


def write(uri: str, data: bytes) -> str:
    import obstore

    store, key = _at(uri)
    return obstore.put(store, key, data)["e_tag"] or ""


def create(uri: str, data: bytes) -> str:
    """Write data only where no object is (create-only); Exists otherwise. Returns the ETag."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    store, key = _at(uri)
    try:
        return obstore.put(store, key, data, mode="create")["e_tag"] or ""
    except (AlreadyExistsError, PreconditionError):
        raise Exists(uri) from None


def create_or_read(uri: str, data: bytes, limit: int = 4096) -> tuple[bool, bytes, str]:
    """(True, data, its ETag) when data was written create-only; else (False, the object there,
    its ETag): what a claim or a lock reads to decide whether to take it over by swap()."""
    while True:
        try:
            return True, data, create(uri, data)
        except Exists:
            pass
        try:
            return (False, *read_tagged(uri, limit))
        except FileNotFoundError:
            continue  # removed meanwhile: try to create it again


def swap(uri: str, data: bytes, etag: str) -> str:
    """Replace the object only if it is still the version with this ETag; Changed otherwise."""
    import obstore
    from obstore.exceptions import PreconditionError

    store, key = _at(uri)
    try:
        return obstore.put(store, key, data, mode={"e_tag": etag})["e_tag"] or ""
    except (PreconditionError, FileNotFoundError):
        raise Changed(0, "changed since it was read", uri) from None


def delete(uris: list[str]) -> None:
    import obstore

    by_store: dict[int, tuple[Any, list[str]]] = {}
    for uri in uris:
        store, key = _at(uri)
        by_store.setdefault(id(store), (store, []))[1].append(key)
    for store, keys in by_store.values():
        for i in range(0, len(keys), 1000):
            obstore.delete(store, keys[i:i + 1000])


def upload(local: str, uri: str) -> str:
    import obstore

    store, key = _at(uri)
    with open(local, "rb") as f:
        return obstore.put(store, key, f, chunk_size=_CHUNK)["e_tag"] or ""


def download(uri: str, local: str, limit: int | None = None) -> None:
    """The object into a local file, written under a temporary name and renamed into place."""
    import obstore

    store, key = _at(uri)
    got = obstore.get(store, key)
    if limit is not None and got.meta["size"] > limit:
        raise ValueError(f"{uri} is larger than {limit} bytes")
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f"{local}.part-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            for chunk in got:
                f.write(chunk)
        os.replace(tmp, local)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def sha256(uri: str) -> tuple[str, int]:
    """Digest and size of one object, streamed."""
    import hashlib

    import obstore

    store, key = _at(uri)
    h, size = hashlib.sha256(), 0
    for chunk in obstore.get(store, key):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def copy(src: str, dst: str) -> None:
    import obstore

    s_store, s_key = _at(src)
    d_store, d_key = _at(dst)
    if s_store is d_store:
        obstore.copy(s_store, s_key, d_key)
    else:
        write(dst, read(src))


# -- folders (prefixes) ----------------------------------------------------------------------------
def children(uri: str) -> tuple[list[str], list[str]]:
    """(folder names, object names) right below uri."""
    import obstore

    store, key = _at(uri)
    with _named_safely(uri):
        got = obstore.list_with_delimiter(store, key or None)
    cut = len(key) + 1 if key else 0
    dirs = sorted(p[cut:].rstrip("/") for p in got["common_prefixes"])
    files = sorted(o["path"][cut:] for o in got["objects"])
    return dirs, files


def listing(uri: str) -> Iterator[Meta]:
    """Every object below uri, keys relative to it."""
    import obstore

    store, key = _at(uri)
    cut = len(key) + 1 if key else 0
    with _named_safely(uri):
        chunks = list(obstore.list(store, key + "/" if key else None))
    for chunk in chunks:
        for o in chunk:
            if not key or o["path"].startswith(key + "/"):
                yield Meta(o["path"][cut:], o["size"], o["e_tag"] or "", o["last_modified"].timestamp())


@contextlib.contextmanager
def _named_safely(uri: str) -> Iterator[None]:
    """A listing that meets a key with an empty, `.` or `..` part (any client of the bucket can
    write one; obstore refuses to parse it) is the one-line error, never a path tapeline follows."""
    from obstore.exceptions import InvalidPathError

    try:
        yield
    except InvalidPathError as e:
        found = str(e).split('"')[1] if '"' in str(e) else "?"
        raise UserError("the bucket holds an object whose name has an empty, '.' or '..' part", found,
                        f"remove it (below {uri}): tapeline never addresses such names") from None


def is_folder(uri: str) -> bool:
    dirs, files = children(uri)
    return bool(dirs or files)


def remove_tree(uri: str) -> None:
    keys = [f"{uri.rstrip('/')}/{m.key}" for m in listing(uri)]
    if keys:
        delete(keys)


# -- the store's guarantees ----------------------------------------------------------------------
def probe(root: str) -> None:
    """Check once per process that the store under root honours create-only and compare-and-swap
    writes (some S3-compatible servers accept the headers and ignore them); a UserError naming the
    store otherwise. The probe's one object is removed whatever happens."""
    if root in _probed:
        return
    scheme, bucket, _ = split(root)
    where = f"{scheme}://{bucket}"
    key = f"{root.rstrip('/')}/_probe/{uuid.uuid4().hex}"
    fix = ("use a store with conditional writes (AWS S3 since 2024-11, GCS, moto with its defaults, Cloudflare R2)"
           " — tapeline's commits and champions rest on them")
    try:
        tag = create(key, b"probe 1")
        try:
            create(key, b"probe 2")
        except Exists:
            pass
        else:
            raise UserError("the object store ignores create-only writes (If-None-Match: *)", where, fix)
        try:
            swap(key, b"probe 3", '"0000-not-the-etag"')
        except Changed:
            pass
        else:
            raise UserError("the object store ignores compare-and-swap writes (If-Match)", where, fix)
        swap(key, b"probe 4", tag)
    except Changed:
        raise UserError("the object store refused a compare-and-swap on its own ETag", where, fix) from None
    except UserError:
        raise
    except Exception as e:
        user = user_error(e, root, "")
        if user is None:
            raise
        raise user from None
    finally:
        try:
            delete([key])
        except Exception:  # noqa: BLE001 - the probe's own error (or a refused delete) is reported
            pass
    _probed.add(root)


def user_error(exc: BaseException, root: str, where: str) -> UserError | None:
    """An object store's persistent failure (after the library's retries) as the one line naming
    the store and the fix; None when exc is no such failure."""
    try:
        from obstore import exceptions as ox
    except ImportError:
        return None
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        scheme, bucket, _ = split(root)
        store = f"{scheme}://{bucket}" + (f", {where}" if where else "")
        if "NoSuchBucket" in text:
            return UserError(f"bucket {bucket!r} does not exist", store, "create it, or fix --root / TAPELINE_ROOT")
        if isinstance(e, ox.UnauthenticatedError) or any(t in text for t in (
                "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "401 Unauthorized")):
            return UserError("the object store refused the credentials (wrong, or expired)", store,
                             "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile (aws sts get-caller-identity)")
        if isinstance(e, ox.PermissionDeniedError) or "AccessDenied" in text or "403 Forbidden" in text:
            return UserError("the object store denied access (its policy)", store,
                             "give these credentials read and write on the bucket and prefix")
        if isinstance(e, ox.GenericError) or isinstance(e, ox.BaseError):
            if "SlowDown" in text or "503" in text:
                return UserError("the object store kept answering 503 (throttled or unavailable) after retries",
                                 store, "run again later; the rerun resumes")
            if "error sending request" in text or "onnect" in text or "timed out" in text:
                return UserError("the object store is unreachable (after retries)", store,
                                 "check AWS_ENDPOINT_URL and the network, then run again: the rerun resumes")
            if any(c in text for c in ("500", "502", "504")):
                return UserError("the object store kept failing (5xx) after retries", store,
                                 "run again later; the rerun resumes")
        e = e.__cause__ or e.__context__
    return None


def record(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
