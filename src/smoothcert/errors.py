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
