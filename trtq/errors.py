"""Error types. A :class:`TrtqError` is a problem the user can fix; the CLI prints it as one
line and exits with status 2. Anything else is a bug (exit 1)."""

from __future__ import annotations


class TrtqError(Exception):
    """Bad input, a missing file, an impossible option combination: the user's to fix."""

    exit_code = 2


class MissingDependencyError(TrtqError):
    """An optional package (tensorrt, pycuda, cuda-python) is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed; "
            f"install it with: pip install 'trtq[{extra}]'"
        )
        self.package = package
        self.extra = extra


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first non-empty line of an exception's message (libraries put long dumps after it),
    else ``default``, else the exception's type name: what a one-line error shows of a cause."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (default or type(exc).__name__)


class TargetMissed(TrtqError):
    """``trtq quantize``'s accuracy target was not met (exit status 3, as a failed gate of ``trtq run``)."""

    exit_code = 3
