"""How the agent fails: an AgentError carries a kind and, where the failure is one model's, that file's name; the
CLI prints it as {"ok": false, "kind", "error", "model"}."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator


class AgentError(Exception):
    """kind and message for the caller; model: the file name of the model it failed on, where it is one."""

    def __init__(self, kind: str, message: str, model: str | None = None):
        super().__init__(message)
        self.kind, self.model = kind, model


def file_name(path: str) -> str:
    return os.path.basename(path.rstrip("/"))


@contextlib.contextmanager
def blame(path: str) -> Iterator[None]:
    """An error inside names the model at path (so a caller can time the other models without it)."""
    try:
        yield
    except AgentError as exc:
        raise AgentError(exc.kind, str(exc), file_name(path)) from None
    except Exception as exc:  # the runtime failed on this model (loading it, or its warm-up runs)
        raise AgentError("runtime_error", f"{type(exc).__name__}: {exc}", file_name(path)) from None


def require(module: str):
    """Import a runtime's Python package, or fail with runtime_missing and the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise AgentError("runtime_missing", f"the {package} Python package is not installed on this device "
                                            f"({sys.executable}); pip install {package}") from None
