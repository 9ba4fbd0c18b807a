"""One exception type for every user-facing failure.

The CLI turns a :class:`SmoothcertError` into a single line on stderr and exit
status 2, never a traceback: bad input is the user's to fix, not a crash.
"""


class SmoothcertError(Exception):
    """A clear, one-line error about bad input (config, checkpoint, data, arguments)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`SmoothcertError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SmoothcertError(message)


def one_line(exc: BaseException) -> str:
    """The line of an exception that says what went wrong, at most 200 characters: its first non-empty line
    (TorchScript's interpreter errors put it last, after a traceback), else the exception's type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        lines = lines[-1:]
    return (lines[0] if lines else type(exc).__name__)[:200]
