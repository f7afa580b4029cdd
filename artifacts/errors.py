"""The one error type for bad user input: printed as one line, exit status 2."""
from __future__ import annotations


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
