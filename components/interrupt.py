"""Ctrl-C and SIGTERM as a request to stop: the running stage stops at its next safe point.

A stage that can stop cleanly mid-way (train, at a step boundary) runs inside `deferred()`: a
signal there is only noted, and the stage polls `requested()`, saves, and raises `Interrupted`
itself. Anywhere else the first signal raises `Interrupted` at once: Beam, evaluate and render
abandon their work, and nothing is committed (an artifact exists only once `_COMMITTED` is
written). A second signal always raises at once. The orchestrator installs the handlers
(`handlers()`) and says which stage runs (`stage()`); components only poll.
"""
from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run stopped on a signal. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way (Beam, Prefect, a component) takes it for a failure."""

    def __init__(self, signum: int, stage: str = "", step: int | None = None, total: int | None = None,
                 saved: bool = False):
        self.signum, self.stage, self.step, self.total, self.saved = signum, stage, step, total, saved
        self.note = ""  # what the stage had done when stopped, where "nothing committed" is untrue
        super().__init__(self.line())
        if step is not None and _state.saved is None:
            _state.saved = self  # where the run stopped, whatever is raised on the way out after it

    def __str__(self) -> str:
        return self.line()

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended: 130, 143

    def line(self) -> str:
        """The one line a stopped run ends with (after `tapeline: `); parse() reads it back."""
        where = f" during {self.stage}" if self.stage else ""
        if self.step is not None:
            where += f" at step {self.step}/{self.total}"
            where += " (checkpoint saved)" if self.saved else " (last checkpoint kept)"
        elif self.stage:
            where += f" ({self.note or 'nothing committed'})"
        return f"interrupted{where}{_RESUME}"

    @classmethod
    def parse(cls, text: str, signum: int = signal.SIGINT) -> "Interrupted | None":
        """The Interrupted whose line() text is (with or without `tapeline: ` and a prefix such as
        a worker's `[worker 1] `), or None: how the launcher learns the step its workers stopped at."""
        m = _LINE.search(text or "")
        if m is None:
            return None
        step = None if m["step"] is None else int(m["step"])
        stop = cls(signum, m["stage"] or "", step, None if m["total"] is None else int(m["total"]),
                   m["saved"] == "checkpoint saved")
        stop.note = "" if m["note"] in (None, "nothing committed") else m["note"]
        return stop


_RESUME = " — run the same command again to resume"
_LINE = re.compile(r"interrupted(?: during (?P<stage>\S+))?(?: at step (?P<step>\d+)/(?P<total>\d+) "
                   r"\((?P<saved>checkpoint saved|last checkpoint kept)\)| \((?P<note>[^()]*)\))?" + re.escape(_RESUME) + "$")


class _State:
    def __init__(self):
        self.signum: int | None = None   # the first signal received, until reset()
        self.deferring = 0               # > 0 while a stage polls requested() itself
        self.stage = ""                  # the stage whose own work runs now, for the message
        self.immediate = True            # outside a stage: raise at once (False: only note it)
        self.saved: Interrupted | None = None  # the first stop at a step boundary, until reset()


_state = _State()


def _handler(signum, frame) -> None:
    first = _state.signum is None
    if first:
        _state.signum = signum
    if first and (_state.deferring or not (_state.stage or _state.immediate)):
        return  # noted: the stage saves at its next step boundary, or the next stage does not start
    if _in_finalizer(frame):
        # Python prints and drops an exception raised in a finalizer ("Exception ignored in
        # ... __del__", a traceback) and the stage would go on: deliver the signal again in a
        # moment, once the finalizer has returned (noted now, the handler then raises)
        _redeliver(signum)
        return
    raise Interrupted(signum, _state.stage)


def _in_finalizer(frame) -> bool:
    """Whether the signal landed inside an object's __del__ (a garbage collection, e.g. an
    asyncio transport's) where a raised exception is lost."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    main = threading.main_thread().ident
    timer = threading.Timer(0.01, signal.pthread_kill, (main, signum))
    timer.daemon = True
    timer.start()


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _state.signum


def reset() -> None:
    _state.signum = None
    _state.saved = None


def stopped_at() -> "Interrupted | None":
    """The first stop raised at a step boundary (train's, with its step and checkpoint) since the
    last reset(), or None."""
    return _state.saved


def deferring() -> bool:
    """Whether a stage is polling requested() now (a first signal only noted, its step being saved)."""
    return _state.deferring > 0


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While inside, a first signal is only noted: the caller polls requested() at safe points
    and stops there (raising Interrupted with what it saved)."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """The stage's own work runs inside (its name is in the interrupted line); a signal there
    abandons it at once unless it is deferred()."""
    previous, _state.stage = _state.stage, name
    try:
        yield
    finally:
        _state.stage = previous


@contextlib.contextmanager
def handlers(between_stages: bool = False) -> Iterator[None]:
    """Install the stop handlers for SIGINT and SIGTERM (main thread only: elsewhere Python
    cannot take signals, and this is a no-op); the previous ones come back on exit.

    between_stages: the orchestrator's own work between stages (Prefect's state bookkeeping, a
    committed stage's result) is not interrupted: a signal there is noted, and check() raises
    before the next stage starts. Otherwise (a command's start-up) a signal raises at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    mode, _state.immediate = _state.immediate, not between_stages
    hook = sys.unraisablehook
    for s in SIGNALS:
        signal.signal(s, _handler)
    sys.unraisablehook = _unraisable_hook(hook)
    try:
        yield
    finally:
        _state.immediate = mode
        sys.unraisablehook = hook
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _unraisable_hook(previous):
    """Where Python cannot raise (a weakref callback or other garbage-collection callback, a
    finalizer _in_finalizer missed), the stop raised there would be printed as "Exception ignored
    in ..." and dropped while the stage went on (seen: a SIGTERM in evaluate, inside a
    WeakValueDictionary's remove callback, and evaluate ran to its end). It is delivered again
    instead, once that callback has returned."""
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            _redeliver(unraisable.exc_value.signum)
            return
        previous(unraisable)
    return hook


def check(next_stage: str = "") -> None:
    """Raise Interrupted now if a stop was requested (before next_stage starts)."""
    if _state.signum is not None:
        raise Interrupted(_state.signum, next_stage or _state.stage)
