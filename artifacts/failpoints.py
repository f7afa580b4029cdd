"""Named moments a crash test can stop a run at: `TAPELINE_FAILPOINTS=name@N[:action],...`.

The kill harness (tests/test_kill_harness.py, benchmarks/soak.py) sets the variable; without it
`hit()` is one dictionary lookup. At the Nth time a process passes `name` it either SIGKILLs its
whole process group (action `kill`, the default: a crash that runs no cleanup, exactly like the
OOM killer or a lost machine) or raises InjectedFault (action `raise`: a Python-level failure,
which a Prefect retry sees), or sends the process a SIGTERM (action `term`). `*` in a name matches anything (`store.built.*@2`). With
`TAPELINE_FAILPOINTS_TRACE=FILE` every moment passed is appended to FILE (how the soak learns
the moments a run has, and where a kill at a random time landed). Action `pause` stops the
process there, alive, until a test lets it go: it writes DIR/NAME.paused (DIR from
`TAPELINE_FAILPOINTS_PAUSE_DIR`, NAME the moment with `/` as `_`) and waits for DIR/NAME.resume
(how a test runs `gc` beside a live run at a moment it chooses).
"""
from __future__ import annotations

import fnmatch
import os
import signal
import time

ENV = "TAPELINE_FAILPOINTS"
_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised at a failpoint whose action is `raise`."""


def _rules(spec: str) -> list[tuple[str, int, str]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        pattern, _, rest = item.partition("@")
        count, _, action = rest.partition(":")
        out.append((pattern, int(count or 1), action or "kill"))
    return out


def hit(name: str) -> None:
    """Pass the moment `name`; stop here if a rule says this is the time."""
    trace = os.environ.get(ENV + "_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{name}\n")
    spec = os.environ.get(ENV)
    if not spec:
        return
    for pattern, count, action in _rules(spec):
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        _hits[pattern] = _hits.get(pattern, 0) + 1
        if _hits[pattern] != count:
            continue
        if action == "raise":
            raise InjectedFault(f"failpoint {name} ({pattern}@{count})")
        if action == "pause":
            _pause(name)
            continue
        if action == "term":  # what a Prefect cancel or `kill PID` sends, at exactly this moment
            os.kill(os.getpid(), signal.SIGTERM)
            continue
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _pause(name: str) -> None:
    stem = os.path.join(os.environ[ENV + "_PAUSE_DIR"], name.replace("/", "_"))
    with open(stem + ".paused", "w"):
        pass
    while not os.path.exists(stem + ".resume"):
        time.sleep(0.05)
