"""What a `tapeline` command prints besides its own output: library noise off unless --verbose.

TensorFlow's C++ start-up log (oneDNN notes, CPU features, cuInit failures), gRPC/absl notes
and the tracebacks Prefect and Beam log for a failed task would bury the one line a user
needs. A `UserError` is reported once, by the CLI, as that line; its traceback is dropped from
every log record that carries it (the record's one-line message stays). Bugs keep theirs.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading

from artifacts.errors import UserError

# Each set only when the user has not set it: their own choice always wins.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",     # TensorFlow's C++ log: errors surface as Python exceptions
    "GRPC_VERBOSITY": "ERROR",       # Beam's portable runners
    "GLOG_minloglevel": "2",         # absl/glog in native extensions
}
ALWAYS_ENV = {
    # Prefect's anonymous usage heartbeat races the temporary server's fresh SQLite database
    # ("database is locked" tracebacks on stderr), and a local tool should not phone home.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect gives its temporary server 20 s to start; a busy 2-core machine needs more.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}
# Python loggers whose warnings are start-up chatter, not advice for a tapeline user.
CHATTY = ("tensorflow", "absl", "h5py")


# TensorFlow 2.21 logs at library load, before absl::InitializeLog(), ignoring
# TF_CPP_MIN_LOG_LEVEL (abseil-cpp PR 1957, open): "WARNING: All log messages before ...",
# "I0000 ... port.cc:153] oneDNN custom operations are on", cuInit failures. These packages are
# imported with stderr captured, and what they print is replayed without those lines.
NOISY_IMPORTS = ("tensorflow", "keras", "apache_beam", "tensorflow_datasets")
_CPP_LOG = re.compile(rb"^(?:[IWEF]\d{4} [\d:. ]+\d+ [\w./-]+:\d+\]|WARNING: All log messages before absl"
                      rb"|To enable the following instructions: )")
# what the run's stderr filter drops: C++ info, warning and error lines; a fatal one (F, a
# CHECK failure) says why the process is about to abort, and passes
_DROPPED = re.compile(rb"^(?:[IWE]\d{4} [\d:. ]+\d+ [\w./-]+:\d+\]|WARNING: All log messages before absl"
                      rb"|To enable the following instructions: )")
_CPP_LOG_STARTS = (b"WARNING: All log messages", b"To enable the following")


def _could_start_cpp_log(partial: bytes) -> bool:
    """Whether a line written so far (no newline yet) may still turn out to be a C++ log line."""
    return bool(re.match(rb"[IWEF](?:\d|$)", partial)) or any(
        s.startswith(partial) or partial.startswith(s) for s in _CPP_LOG_STARTS)


@contextlib.contextmanager
def native_stderr_filtered():
    """Route file descriptor 2 (where C++ libraries write) to a file for the block, then
    replay it without the C++ log lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True) if not _CPP_LOG.match(ln)]
            if kept:
                os.write(2, b"".join(kept))


class NativeStderrFilter:
    """For a whole `tapeline` command: what is written to file descriptor 2 by C++ code (and by
    child processes, which inherit it) passes through a pipe that drops C++ log lines, e.g. TF
    2.21's grappler `E0000 ... meta_optimizer.cc:967] remapper failed`, which no log level
    silences. Python's own sys.stderr keeps writing to the terminal directly, so tqdm and
    Prefect still see a terminal (colours, the progress bar) and nothing of theirs is delayed."""

    def __init__(self):
        sys.stderr.flush()
        self._terminal = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        sys.stderr = os.fdopen(os.dup(self._terminal), "w", buffering=1, encoding=sys.stderr.encoding,
                               errors=sys.stderr.errors)
        self._thread = threading.Thread(target=self._pump, args=(read,), name="native-stderr", daemon=True)
        self._thread.start()

    def _pump(self, read: int) -> None:
        pending = b""
        while True:
            chunk = os.read(read, 65536)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            kept = [ln + b"\n" for ln in lines if not _DROPPED.match(ln)]
            if pending and not _could_start_cpp_log(pending):  # a partial line: pass it on now
                kept.append(pending)
                pending = b""
            if kept:
                self._write(b"".join(kept))
        if pending and not _DROPPED.match(pending):
            self._write(pending)
        os.close(read)

    def _write(self, data: bytes) -> None:
        """All of data to the terminal; a terminal that is gone (a closed pipe, a hang-up) only
        loses it: the pump goes on reading, so no writer to fd 2 ever blocks on a full pipe."""
        while data:
            try:
                data = data[os.write(self._terminal, data):]
            except InterruptedError:
                continue
            except OSError:
                return

    def close(self, timeout: float = 1.0) -> None:
        """Put the terminal back on fd 2 and pass on what is still in the pipe."""
        sys.stderr.flush()
        os.dup2(self._terminal, 2)  # our end of the pipe closes: the pump reads to its end
        self._thread.join(timeout)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner, name: str):
        self._inner, self._name = inner, name

    def __getattr__(self, attr):  # resources, is_package, ...: the real loader's
        return getattr(self._inner, attr)

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        # Python-level import chatter too (Beam: "apitools not found ..." on the root logger)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with native_stderr_filtered():
                self._inner.exec_module(module)
                if self._name == "tensorflow":  # device discovery logs cuInit failures: now
                    module.config.list_physical_devices()
        finally:
            if logging.root.manager.disable == logging.WARNING:  # unless another thread silenced more since
                logging.disable(previous)


class _QuietImports(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._busy = False

    def find_spec(self, name, path=None, target=None):
        if name not in NOISY_IMPORTS or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, name)
        return spec


def is_user_error(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and UserError.find(exc) is not None:
        return True
    return UserError.TAG in record.getMessage()


class DropUserErrorTraceback(logging.Filter):
    """Keeps the record, drops its traceback when the exception is (or wraps) a UserError."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_user_error(record):
            record.exc_info, record.exc_text = None, None
        return True


class DropTemporaryServerStop(logging.Filter):
    """Prefect says "Stopping temporary server" at exit, after tapeline's last line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Stopping temporary server")


def verbose_env() -> bool:
    """$TAPELINE_VERBOSE=1: what --verbose does."""
    return os.environ.get("TAPELINE_VERBOSE", "") not in ("", "0", "false")


def setup_env(verbose: bool) -> None:
    """Call before TensorFlow, Beam or Prefect is imported (they read these at import)."""
    for key, value in ALWAYS_ENV.items():
        os.environ.setdefault(key, value)
    if verbose:
        return
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and \
            not any(isinstance(f, _QuietImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImports())
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def setup_logging(verbose: bool) -> None:
    """Filters on the loggers that report failed runs; Prefect configures its own handlers
    when imported, so this imports it first and then adds to them."""
    if verbose:
        return
    import prefect.logging  # noqa: F401 - its logging config first, our filters on top

    keep = DropUserErrorTraceback()
    for name in ("prefect.task_runs", "prefect.flow_runs", "prefect"):
        logging.getLogger(name).addFilter(keep)
    logging.getLogger("prefect").addFilter(DropTemporaryServerStop())
    # Beam's workers log a failed bundle on their own loggers, which reach the root's handler
    # (or Python's last-resort one): filter there, where every such record passes.
    root = logging.getLogger()
    for handler in root.handlers or [logging.lastResort]:
        if handler is not None:
            handler.addFilter(keep)
    quiet_libraries(verbose)


def quiet_libraries(verbose: bool) -> None:
    """The libraries' start-up chatter (tfds's `Variant folder ... has no dataset_info.json`)
    off for every command, without importing Prefect."""
    if verbose:
        return
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR)
