"""The accuracy-aware fallback every static INT8 backend shares (ONNX Runtime, ExecuTorch, LiteRT): quantize
everything; while the top-1 drop exceeds max_drop, keep the next most sensitive layer in float."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Fallback:
    """What the accuracy-aware loop did: the drop after each step and the layers kept in float."""

    max_drop: float
    fp32_top1: float
    steps: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)

    @property
    def excluded(self) -> list[str]:
        return self.steps[-1]["excluded"] if self.steps else []

    @property
    def met(self) -> bool:
        return bool(self.steps) and self.steps[-1]["drop"] <= self.max_drop

    def as_dict(self) -> dict:
        return {"max_drop": self.max_drop, "fp32_top1": self.fp32_top1, "met": self.met, "excluded": self.excluded,
                "steps": self.steps, "sensitivity": self.sensitivity}


def with_fallback(what: str, fp32_top1: float, max_drop: float, max_layers: int,
                  quantized_top1: Callable[[list[str]], float], rank: Callable[[], list[dict]],
                  shown: Callable[[str], str] = str) -> Fallback:
    """`quantized_top1(excluded)` writes the INT8 model with those layers in float and returns its top-1; `rank()`
    scores the layers once ({"node", "relative_mse"}, most harmful first), only when the first step is over
    budget. Stops within budget, at `max_layers` layers kept in float, or when none is left. `shown` names a
    layer in the log."""
    result = Fallback(max_drop, fp32_top1)
    excluded: list[str] = []
    ranked: list[dict] | None = None
    while True:
        drop = fp32_top1 - quantized_top1(excluded)
        result.steps.append({"excluded": list(excluded), "drop": round(drop, 3)})
        if drop <= max_drop or len(excluded) >= max_layers:
            return result
        if ranked is None:
            log.info(f"{what} loses {drop:.2f} top-1 points (max_drop {max_drop}): ranking layers")
            ranked = result.sensitivity = rank()
        remaining = [r["node"] for r in ranked if r["node"] not in excluded]
        if not remaining:
            return result
        excluded.append(remaining[0])
        log.info(f"keeping {shown(remaining[0])} in float")
