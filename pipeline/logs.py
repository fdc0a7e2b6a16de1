"""Third-party log noise, once: a library that logs the same kind of warning many times (coremltools' eight
"Failed to load _ML...Proxy" lines on Linux, its version notices) shows each kind once per process."""
from __future__ import annotations

import logging

NOISY = ("coremltools", "torch.utils.cpp_extension", "nncf")


class OncePerKind(logging.Filter):
    """Passes the first record of each kind: the same logger, level and first three words of the message."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, " ".join(str(record.msg).split()[:3]))
        if kind in self.seen:
            return False
        self.seen.add(kind)
        return True


def quiet_third_party() -> None:
    """Install the filter on the noisy libraries' loggers (before they are imported: they log at import)."""
    for name in NOISY:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerKind) for f in logger.filters):
            logger.addFilter(OncePerKind())
