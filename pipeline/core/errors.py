"""Errors the CLI reports in one line with exit code 2: the user can fix them."""
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in the config, the command line or the user's files; the message says the fix."""


def root_cause(exc: BaseException) -> str:
    """The first line of the innermost exception in a chain: exporters and converters wrap the one that names
    the op several times. A bare value (a KeyError's key) comes with the exception's type."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if " " in line:
        return line
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how long it was (a 50 MB value must not become the message)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


QUOTE_CHARS = 120  # a value the user gave is quoted up to this many characters in a message


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """repr(value) for a one-line message: escapes newlines and control characters, cut to `limit`."""
    return clip(repr(value), limit)


@contextmanager
def skippable(*switches: str) -> Iterator[None]:
    """A UserError raised inside (a format the user's model cannot take) also says how to go on without that
    format: the switches to turn off. The stages before are cached, so that rerun starts where this one stopped."""
    try:
        yield
    except UserError as exc:
        if not switches:  # a format every run needs (ONNX)
            raise
        turned_off = " and ".join(f"{switch} = false" for switch in switches)
        raise UserError(f"{exc}; or go on without it: {turned_off}") from None
