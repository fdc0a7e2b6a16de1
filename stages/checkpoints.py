"""The files a training stage writes in its work folder: the epoch checkpoint a rerun resumes from (removed when
the stage completes) and the per-epoch metrics.

The checkpoint is read back from the cache, which anyone who can write there may have replaced: it is loaded
weights-only (tensors, numbers, strings, lists and dicts: no object of the file's choosing is built, no code in
it runs), and one that does not load so, or is not a training state, is damaged: the stage starts over."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"

# The training state stages/training.py saves each epoch: key -> the type its value must have.
STATE = {"model": dict, "optimizer": dict, "schedule": dict, "rng": dict, "torch_rng": list, "rows": list,
         "epoch": int, "world_size": int}


def load_weights_only(path: Path) -> Any:
    """torch.load of tensors and plain data only (no object of the file's choosing is built, no code in it runs).
    torch's multi-line warning about a pickle protocol it did not write is left out: a file that does not load
    is said in one line by the caller."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the training state, None), or (None, why it is damaged: "is damaged (...)")."""
    try:
        state = load_weights_only(path)
    except pickle.UnpicklingError as exc:  # objects a weights-only load refuses to build (and never runs)
        return None, f"is damaged ({type(exc).__name__}: it holds objects other than tensors and plain data)"
    except Exception as exc:  # truncated or edited
        return None, f"is damaged ({type(exc).__name__}: unreadable)"
    why = _shape(state)
    return (None, f"is damaged ({why})") if why else (state, None)


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from ("is damaged (...)"), or None."""
    return read(path)[1]


def _shape(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a training state"
    missing = [key for key in STATE if key not in state]
    if missing:
        return f"no {', '.join(repr(k) for k in missing)}"
    for key, kind in STATE.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is of type {type(value).__name__}, not {kind.__name__}"
    if not all(isinstance(row, dict) for row in state["rows"]):
        return "'rows' is not a list of metric rows"
    if state["epoch"] < 1 or state["world_size"] < 1:
        return f"epoch {state['epoch']}, world_size {state['world_size']}"
    return None
