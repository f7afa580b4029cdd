"""The one error type for bad user input: printed as one line, exit status 2."""
from __future__ import annotations

import errno
import math
import os


class UserError(Exception):
    """Bad input the user can fix: a config key, a data file, a resume that no longer matches.

    Rendered by the CLI as `tapeline: error: WHAT (WHERE) — HOW TO FIX`.
    """

    # Beam and Prefect re-raise worker exceptions as strings; this tag lets us find ours again.
    TAG = "[tapeline-user-error]"

    def __init__(self, what: str, where: str = "", fix: str = ""):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.line())

    def line(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f" — {self.fix}"
        return " ".join(text.split())

    def tagged(self) -> str:
        return f"{self.TAG}{self.line()}{self.TAG}"

    @classmethod
    def find(cls, exc: BaseException) -> "UserError | None":
        """The UserError behind exc: itself, a cause in its chain, or one embedded in its message."""
        seen = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, cls):
                return exc
            text = str(exc)
            start = text.find(cls.TAG)
            if start >= 0:
                end = text.find(cls.TAG, start + len(cls.TAG))
                if end > start:
                    return cls(text[start + len(cls.TAG):end])
            exc = exc.__cause__ or exc.__context__
        return None


def env_number(name: str, default: float, low: float, high: float, meaning: str, integer: bool = False) -> float:
    """$name as a number in [low, high], default when unset or blank; anything else (a word,
    nan, inf, out of range, a fraction where a count is meant) is the one-line error."""
    text = os.environ.get(name) or ""
    if not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high) or (integer and value != int(value)):
        raise UserError(f"bad value {text!r} for {name}", "environment",
                        f"give {meaning}, from {low:g} to {high:g} (unset: {default:g})")
    return int(value) if integer else value


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")
_CANNOT_WRITE = {errno.EROFS: "Read-only file system", errno.EIO: "Input/output error"}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def storage_error(exc: BaseException, root: str, stage: str) -> UserError | None:
    """A full disk (ENOSPC, a quota) or a filesystem that refuses writes, met anywhere in exc's
    chain or text (TensorFlow and Beam re-raise OSErrors as their own types, with the strerror
    in the message), as the one-line error; an object store's persistent failure too (after its
    client's retries: unreachable, throttled, refused credentials); None for anything else."""
    if root.startswith(("s3://", "gs://")):
        from artifacts import objstore  # a leaf here: only object-store roots need it

        user = objstore.user_error(exc, root, stage)
        if user is not None:
            return user
    for e in _chain(exc):
        text = str(e)
        code = getattr(e, "errno", None)
        if code in _NO_SPACE or any(t in text for t in _NO_SPACE_TEXT):
            return UserError(f"no space left on {root}", stage, "free space and run again")
        reason = _CANNOT_WRITE.get(code) or next((t for t in _CANNOT_WRITE.values() if t in text), None)
        if reason:
            return UserError(f"cannot write to {root}: {reason}", stage, "check the filesystem and run again")
    return None
